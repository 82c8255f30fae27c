"""Empathy with known answers: r over the non-neutral items (the anchor's statistic), all items beside it,
and a target with too few items reported as not measured."""

from __future__ import annotations

import numpy as np
import pytest

from welfare_offsets.eval.evaluate import _interpret, empathy_correlations
from welfare_offsets.eval.experiences import Experience


def _exp(id_: str, intensity: float) -> Experience:
    valence = "neutral" if intensity == 0 else "euphoric" if intensity > 0 else "dysphoric"
    return Experience(
        id_, ({"role": "user", "content": "x"},), valence, "empathy", "human", float(intensity), "heldout"
    )


def _empathy(exps, scores):
    return empathy_correlations(
        exps, scores, "self_report", "about human in split 'heldout'", 200, np.random.default_rng(0)
    )


def test_empathy_r_ignores_the_neutral_items_and_reports_all_items_beside_it():
    signed = [_exp(f"s{i}", i) for i in (-8, -4, 4, 8)]
    neutral = [_exp(f"n{k}", 0) for k in range(4)]
    # Wellbeing follows intensity exactly; the neutral items read far off the line, as an unrelated whim would.
    score = {e.id: e.intensity / 10 for e in signed} | {e.id: v for e, v in zip(neutral, (3.0, -3.0, 3.0, -3.0))}
    res = _empathy(signed + neutral, {"self_report": score})
    assert res["r"] == pytest.approx(1.0) and res["n"] == 4 and res["probe"] == "self_report"
    assert res["all_items"]["n"] == 8 and res["all_items"]["r"] < 0.5
    assert res["by_probe"]["self_report"]["r"] == res["r"]


def test_an_empathy_target_without_items_reads_not_measured():
    empty = _empathy([], {"self_report": {}})
    assert empty["r"] is None and empty["ci95"] == [None, None] and empty["n"] == 0
    assert empty["reason"] == "no non-neutral empathy items about human in split 'heldout'"
    few = _empathy([_exp("a", 3), _exp("b", -3), _exp("c", 0)], {"self_report": {"a": 1.0, "b": 0.0, "c": 0.5}})
    assert few["r"] is None and "only 2 non-neutral empathy items" in few["reason"]

    line = _interpret({}, {"animal": empty})[0]
    assert line.startswith("empathy (animal, self_report): not measured: no non-neutral empathy items")
    assert "no detectable empathy" not in line and "nan" not in line


def test_all_targets_pooled_is_the_anchors_one_r_per_model():
    """Each target's wellbeing follows intensity exactly, at its own offset: r = 1 per target, and the
    pooled r (the study's statistic) is the correlation over all twelve items together."""
    from dataclasses import replace

    from welfare_offsets.eval.evaluate import EMPATHY_TARGETS, EvalConfig, ItemScores, _summarise

    def item(target, i):
        return replace(_exp(f"{target}{i}", i), target=target)

    offsets = {"self": 0.0, "human": 1.0, "animal": -1.0}
    chosen = {f"empathy_{t}": [item(t, i) for i in (-8, -4, 4, 8)] for t in EMPATHY_TARGETS}
    chosen["baseline"] = [replace(_exp(f"b{k}", 0), valence="neutral") for k in range(6)]
    chosen["post_dysphoric"] = [replace(_exp(f"d{k}", -5), valence="dysphoric") for k in range(6)]
    everything = [e for group in chosen.values() for e in group]
    score = {e.id: e.intensity / 10 + offsets.get(e.target, 0.0) for e in everything}
    adherence = {"mean_valid_mass": 0.9, "low_adherence_prompts": 0, "prompts": 30, "threshold": 0.5, "reliable": True}
    scored = ItemScores(everything, {"self_report": score}, {}, {"self_report": adherence}, {}, [], [], {})
    empathy = _summarise(EvalConfig(bootstrap=200), chosen, scored, np.random.default_rng(0))["empathy"]
    assert [empathy[t]["r"] for t in EMPATHY_TARGETS] == [pytest.approx(1.0)] * 3
    pooled = [e for t in EMPATHY_TARGETS for e in chosen[f"empathy_{t}"]]
    expected = np.corrcoef([e.intensity for e in pooled], [score[e.id] for e in pooled])[0, 1]
    assert empathy["all"]["r"] == pytest.approx(expected) and empathy["all"]["n"] == 12 and expected < 0.9
