"""The in-context probes (self-report, stop) after each of a list of experiences.

Everything that reads wellbeing after experiences scores through here: the evaluation, exposure
episodes, ranking a subject's own replies, a session's live trace. An experience's prompts share its
context, so the engine runs that prefix once for all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.instrument import Instrument
from welfare_offsets.eval.scoring import NextTokenScorer

IN_CONTEXT = ("self_report", "stop")
BATTERY = "self_report_battery"  # the mean over every self-report item, reported beside the headline item


@dataclass(frozen=True)
class InContextScores:
    """Every prompt of each probe for the experiences, in their order, with what was read from it."""

    requests: list[P.Request]
    prompts: list[str]
    owner: np.ndarray  # the experience index of each request
    score: np.ndarray  # per request: the expected digit (self-report) or P(the reply begins with the call)
    mass: np.ndarray  # per request: probability on valid answers (1 for stop: a reply calls the tool or not)
    n_experiences: int
    instrument: Instrument

    def prompt_scores(self, probe: str) -> tuple[list[int], np.ndarray, np.ndarray]:
        """The rows of `probe`'s prompts, and each one's score and valid-answer mass."""
        rows = [k for k, r in enumerate(self.requests) if r.probe == probe]
        return rows, self.score[rows], self.mass[rows]

    def rows_read(self, probe: str) -> list[int]:
        """The rows `probe`'s score is read from: self-report's headline item, every item for BATTERY, every
        turn for stop. Its adherence is judged on these rows alone."""
        rows, _, _ = self.prompt_scores("self_report" if probe == BATTERY else probe)
        if probe == "self_report":
            return [k for k in rows if self.requests[k].question == self.instrument.headline_item]
        return rows

    def experience_scores(self, probe: str) -> tuple[np.ndarray, np.ndarray]:
        """Per experience: the probe's score and the mean valid mass of the prompts it is read from (rows_read).
        Self-report is the headline item (BATTERY: the mean of all items); stop is the chance of a call at
        some turn."""
        rows = self.rows_read(probe)
        owner, score, mass = self.owner[rows], self.score[rows], self.mass[rows]
        values, masses = np.zeros(self.n_experiences), np.zeros(self.n_experiences)
        for i in range(self.n_experiences):
            mine = owner == i
            masses[i] = mass[mine].mean()
            values[i] = P.stop_probability(score[mine]) if probe == "stop" else score[mine].mean()
        return values, masses


def score_in_context(
    scorer: NextTokenScorer,
    experiences: Sequence[Experience],
    probes: Sequence[str] = IN_CONTEXT,
    desc: str = "self-report + stop",
    instrument: Instrument | None = None,
) -> InContextScores:
    """Score `probes` (some of IN_CONTEXT) after each experience, on `scorer`'s model."""
    instrument = instrument or P.default_instrument()
    requests: list[P.Request] = []
    owner: list[int] = []
    for probe in probes:
        for i, e in enumerate(experiences):
            asked = _builder(probe)([e], instrument)
            # Grouped by position, not id: two lived copies of one experience (own replies) are different contexts.
            requests += [P.Request(r.probe, r.item_id, r.question, r.messages, (probe, i), r.answer) for r in asked]
            owner += [i] * len(asked)
    prompts = [P.render_prompt(scorer.tokenizer, r.messages) for r in requests]
    score, mass = np.zeros(len(requests)), np.ones(len(requests))
    sr = [k for k, r in enumerate(requests) if r.probe == "self_report"]
    if sr:
        probs = scorer.label_probs([prompts[k] for k in sr], P.LIKERT, [requests[k].group for k in sr], desc=desc)
        reversed_items = {item.id for item in instrument.self_report if item.reversed}
        score[sr], mass[sr] = P.self_report_scores(
            probs, np.array([requests[k].question in reversed_items for k in sr])
        )
    stop = [k for k, r in enumerate(requests) if r.probe == "stop"]
    if stop:
        score[stop] = np.exp(
            scorer.answer_logprobs(
                [prompts[k] for k in stop], [requests[k].answer for k in stop], [requests[k].group for k in stop], desc
            )
        )
    return InContextScores(requests, prompts, np.array(owner), score, mass, len(experiences), instrument)


def sample_record(request: P.Request, prompt: str, score: float, mass: float, **extra) -> dict:
    """One line of samples.jsonl: a scored prompt, exactly as the model saw it, and what was read from it.

    With the prompt (and, for stop, the answer whose probability was read) anyone can recompute the score
    with plain transformers."""
    return {
        "probe": request.probe,
        "item_id": request.item_id,
        "question": request.question,
        "prompt": prompt,
        "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
        **({"answer": request.answer} if request.answer is not None else {}),
        "score": float(score),
        "valid_mass": float(mass),
        **extra,
    }


def _builder(probe: str):
    if probe not in IN_CONTEXT:
        raise ValueError(f"not an in-context probe: {probe!r}; choose from {IN_CONTEXT}")
    return P.self_report_requests if probe == "self_report" else P.stop_requests
