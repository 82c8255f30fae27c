"""The in-context probes (self-report, stop) after each of a list of experiences, in one engine call.

Everything that reads wellbeing after experiences scores through here: the evaluation, exposure
episodes, ranking a subject's own replies, a session's live trace. An experience's prompts share its
context, so the engine runs that prefix once for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.scoring import NextTokenScorer

IN_CONTEXT = ("self_report", "stop")
_REQUESTS = {"self_report": P.self_report_requests, "stop": P.stop_requests}
_PER_EXPERIENCE = {"self_report": len(P.SELF_REPORT_ITEMS), "stop": 2}  # prompts per experience
_LABELS = P.LIKERT + P.CHOICE


@dataclass(frozen=True)
class InContextScores:
    """Label probabilities of every prompt: each probe's prompts for the experiences, in their order."""

    requests: list[P.Request]
    prompts: list[str]
    probs: np.ndarray  # [len(requests), len(LIKERT) + len(CHOICE)]
    n_experiences: int

    def prompt_scores(self, probe: str) -> tuple[list[int], np.ndarray, np.ndarray]:
        """The rows of `probe`'s prompts and, per prompt, its score (the expected digit; for stop, P(answer A))
        and its probability mass on valid answers."""
        rows = [k for k, r in enumerate(self.requests) if r.probe == probe]
        if probe == "self_report":
            return rows, *P.self_report_scores(self.probs[rows, : len(P.LIKERT)])
        return rows, *P.choice_first(self.probs[rows, len(P.LIKERT) :])

    def experience_scores(self, probe: str) -> tuple[np.ndarray, np.ndarray]:
        """Per experience: the probe's score (mean self-report over the items; P(end) over both option
        orders) and the mean valid mass of its prompts."""
        _, score, mass = self.prompt_scores(probe)
        if probe == "self_report":
            value = score.reshape(self.n_experiences, -1).mean(axis=1)
        else:  # stop_requests asks "end" as A, then as B, for each experience in turn
            value = P.stop_probability(score[0::2], score[1::2])
        return value, mass.reshape(self.n_experiences, -1).mean(axis=1)


def score_in_context(
    scorer: NextTokenScorer,
    experiences: Sequence[Experience],
    probes: Sequence[str] = IN_CONTEXT,
    desc: str = "self-report + stop",
) -> InContextScores:
    """Score `probes` (some of IN_CONTEXT) after each experience, on `scorer`'s model."""
    requests: list[P.Request] = []
    groups: list[tuple[str, int]] = []
    for probe in probes:
        asked = _REQUESTS[probe](experiences)
        requests += asked
        # Keyed by position, not id: two lived copies of one experience (own replies) are different contexts.
        groups += [(probe, k // _PER_EXPERIENCE[probe]) for k in range(len(asked))]
    prompts = [P.render_prompt(scorer.tokenizer, r.messages) for r in requests]
    probs = scorer.label_probs(prompts, _LABELS, groups=groups, desc=desc)
    return InContextScores(requests, prompts, probs, len(experiences))
