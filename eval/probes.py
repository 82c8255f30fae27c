"""The wellbeing probes: how each one turns experiences into prompts, and label probabilities into scores.

Probes only build text and read probabilities; the scoring engine (eval.scoring) runs the model. The
wording is data (eval.instrument): every builder takes an `Instrument`, the built-in one by default.

* self_report: each battery item asked in its own continuation of the experience; the score is the
  expected digit under the next-token distribution renormalised over "1".."7" (8 minus that for a
  reversed item). The headline is the instrument's headline item; the battery mean is reported beside it.
* experienced_utility: two experiences *lived*, as real user and assistant turns one after the other,
  then "which made you feel better", A/B with both orders averaged; a Thurstonian fit gives utilities.
* decision_utility: the choice framing (which conversation would you pick), both shown as transcripts in
  one message; the same pairwise fit. It is a different construct and may disagree with experienced utility.
* stop: an end-conversation tool offered in the system prompt; at each assistant turn, the exact
  probability that the reply begins with the call. Per experience: the chance it is called at some turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.instrument import Instrument, load_instrument

PAIRWISE = ("experienced_utility", "decision_utility")
PROBES = ("self_report", "experienced_utility", "decision_utility", "stop")
LIKERT = ("1", "2", "3", "4", "5", "6", "7")
CHOICE = ("A", "B")
SR_NEUTRAL = 4.0


@cache
def default_instrument() -> Instrument:
    return load_instrument()


@dataclass(frozen=True)
class Request:
    """One prompt to score, with what it means. `group` marks prompts that share a context; `answer`, when
    set, is the text whose probability as the start of the reply is wanted (otherwise a label's)."""

    probe: str
    item_id: str
    question: str
    messages: tuple[dict, ...]
    group: object
    answer: str | None = None


def render_prompt(tokenizer, messages: Sequence[dict]) -> str:
    """The exact text the model sees: its chat template with the generation prompt, or a plain transcript.

    Base models without a chat template (e.g. Pythia) get "User: ...\\nAssistant:" turns.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return transcript(messages) + "\nAssistant:"


def transcript(messages: Sequence[dict]) -> str:
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def self_report_requests(experiences: Sequence[Experience], instrument: Instrument | None = None) -> list[Request]:
    """One prompt per experience and battery item: the experience, then the item as the next user turn."""
    instrument = instrument or default_instrument()
    return [
        Request(
            "self_report",
            e.id,
            item.id,
            _joined(e.messages + ({"role": "user", "content": item.question},)),
            group=f"{e.id}/self_report",
        )
        for e in experiences
        for item in instrument.self_report
    ]


def stop_requests(experiences: Sequence[Experience], instrument: Instrument | None = None) -> list[Request]:
    """One prompt per assistant turn (and one after a final user turn): the conversation up to that turn,
    with the tool offered in the system prompt; `answer` is the call."""
    instrument = instrument or default_instrument()
    requests = []
    for e in experiences:
        offered = _with_system(e.messages, instrument.stop_system)
        turns = [k for k, m in enumerate(offered) if m["role"] == "assistant"]
        if offered[-1]["role"] != "assistant":
            turns.append(len(offered))
        for n, k in enumerate(turns):
            requests.append(
                Request("stop", e.id, f"turn {n + 1}", offered[:k], group=f"{e.id}/stop", answer=instrument.stop_call)
            )
    return requests


def comparison_requests(
    pairs: Sequence[tuple[Experience, Experience]],
    probe: str = "experienced_utility",
    instrument: Instrument | None = None,
) -> list[Request]:
    """Two prompts per pair (i, j): i shown as A, then j shown as A. Grouped by what is shown as A, whose
    lived turns (experienced utility) are the shared prefix of every pair it opens."""
    if probe not in PAIRWISE:
        raise ValueError(f"comparison_requests: probe must be one of {PAIRWISE}, got {probe!r}")
    instrument = instrument or default_instrument()
    build = _lived_pair if probe == "experienced_utility" else _described_pair
    return [
        Request(probe, f"{a.id}|{b.id}", "A_first", build(a, b, instrument), group=a.id)
        for first, second in pairs
        for a, b in ((first, second), (second, first))
    ]


def _lived_pair(a: Experience, b: Experience, instrument: Instrument) -> tuple[dict, ...]:
    """Conversation A's turns, then B's, each opened by its header, then the question as the last user turn.

    Only the very first message may be a system message in most chat templates, so B's system text (and
    A's, when it is not first) is carried into its conversation's first user turn.
    """
    messages: list[dict] = []
    for label, e in (("A", a), ("B", b)):
        header = instrument.conversation_header.replace("{label}", label)
        notes = [m["content"] for m in e.messages if m["role"] == "system"]
        turns = [dict(m) for m in e.messages if m["role"] != "system"]
        if label == "A" and notes:
            messages.append({"role": "system", "content": "\n\n".join(notes)})
            notes = []
        opening = "\n\n".join([header, *notes])
        if turns and turns[0]["role"] == "user":
            turns[0]["content"] = f"{opening}\n\n{turns[0]['content']}"
        else:
            turns.insert(0, {"role": "user", "content": opening})
        messages += turns
    messages.append({"role": "user", "content": instrument.experienced_utility_question})
    return _joined(messages)


def _described_pair(a: Experience, b: Experience, instrument: Instrument) -> tuple[dict, ...]:
    text = instrument.decision_utility_question.replace("{a}", transcript(a.messages)).replace(
        "{b}", transcript(b.messages)
    )
    return ({"role": "user", "content": text},)


def _with_system(messages: Sequence[dict], text: str) -> tuple[dict, ...]:
    """The conversation with `text` as (the start of) its system prompt."""
    if messages and messages[0]["role"] == "system":
        return ({"role": "system", "content": f"{text}\n\n{messages[0]['content']}"}, *messages[1:])
    return ({"role": "system", "content": text}, *messages)


def _joined(messages: Sequence[dict]) -> tuple[dict, ...]:
    """Consecutive messages of one role merged (chat templates that require alternating roles refuse them)."""
    out: list[dict] = []
    for m in messages:
        if out and out[-1]["role"] == m["role"]:
            out[-1] = {"role": m["role"], "content": f"{out[-1]['content']}\n\n{m['content']}"}
        else:
            out.append(dict(m))
    return tuple(out)


def self_report_scores(probs: np.ndarray, reversed_items: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Expected digit (renormalised over 1-7; 8 minus it where the item is reversed) and valid-digit mass, per
    row of [n, 7] probabilities. A row with no mass at all on the digits says nothing: it reads as the
    scale's midpoint 4, and its mass of 0 marks it as low adherence."""
    mass = probs.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(mass > 0, probs @ np.arange(1, 8) / mass, SR_NEUTRAL)
    if reversed_items is not None:
        expected = np.where(reversed_items, 8.0 - expected, expected)
    return expected, mass


def choice_first(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P(answer A) renormalised over {A, B}, and the A/B mass, per row of [n, 2] probabilities; with no
    mass on either answer, no preference (0.5)."""
    mass = probs.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mass > 0, probs[:, 0] / mass, 0.5), mass


def stop_probability(p_call_per_turn: Sequence[float]) -> float:
    """P(the tool is called at some turn), the conversation otherwise going on as it did."""
    return float(1.0 - np.prod(1.0 - np.asarray(p_call_per_turn, dtype=np.float64)))


def preference_probability(p_a_forward: np.ndarray, p_a_reversed: np.ndarray) -> np.ndarray:
    """P(first preferred over second) from both presentation orders; a constant A-bias cancels at ties."""
    return 0.5 * (p_a_forward + (1.0 - p_a_reversed))
