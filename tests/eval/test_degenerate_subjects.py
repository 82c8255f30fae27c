"""Subjects whose answers carry no wellbeing information must be reported as no reading, with the reason,
never as a valid-looking null effect, and must not crash the evaluation (a scripted scorer, no model)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from tests.synthetic_subject import write_stimuli
from welfare_offsets.eval import evaluate as E
from welfare_offsets.eval import probes as P
from welfare_offsets.eval.experiences import load_stimuli


class AlwaysA:
    """Answers "A" to every comparison, whatever the order (so every preference is exactly even), and a
    self-report of 5 to every item."""

    def __init__(self, model, tokenizer, **_):
        self.tokenizer, self.measured = tokenizer, {}

    def label_probs(self, prompts, labels, groups=None, desc=""):
        if tuple(labels) == tuple(P.LIKERT):
            return np.tile(np.eye(7)[4] * 0.9, (len(prompts), 1))
        return np.tile([0.9, 0.0], (len(prompts), 1))

    def answer_logprobs(self, prompts, answers, groups=None, desc=""):
        return np.full(len(prompts), np.log(1e-3))


def test_a_subject_that_prefers_nothing_is_no_reading_and_its_zero_point_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(E, "NextTokenScorer", AlwaysA)
    stimuli = load_stimuli(write_stimuli(tmp_path / "stimuli.jsonl", n_per_split=12))
    config = E.EvalConfig(
        progress=False, bootstrap=100, probes="self_report,experienced_utility", zero_point_bundles=24
    )
    results = E.evaluate(
        config, SimpleNamespace(model=None, tokenizer=SimpleNamespace(chat_template=None), soft_prompt=None), stimuli
    ).results
    utility = results["probes"]["experienced_utility"]
    assert utility["fit"]["utilities_differ"] is False
    assert not utility["reading"]["reliable"] and "preferred no experience" in utility["reading"]["reasons"][0]
    assert any(
        line.startswith("experienced_utility:") and "Not a reliable wellbeing reading" in line
        for line in results["interpretation"]
    )
    assert "no preference between experiences" in results["zero_point"]["chosen"]["reason"]
    assert results["probes"]["self_report"]["reading"] == {"reliable": True, "reasons": []}


def test_a_result_written_before_readings_is_judged_by_its_adherence():
    """A session resumed on an earlier evaluation's results.json, which has no `reading`, still says
    whether each probe was reliable."""
    assert E.reliable_reading({"adherence": {"reliable": False}}) is False
    assert E.reliable_reading({"adherence": {"reliable": True}}) is True
    assert (
        E.reliable_reading({"adherence": {"reliable": True}, "reading": {"reliable": False, "reasons": ["x"]}}) is False
    )
