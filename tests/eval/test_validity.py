"""Validity statistics with known answers: stop that tracks utility, utilities that agree or diverge."""

from __future__ import annotations

import numpy as np

from welfare_offsets.eval.validity import describe, validity


def scores(n: int = 60, seed: int = 0, stop_slope: float = -1.0, decision_sign: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    u = rng.normal(size=n)
    ids = [f"e{k}" for k in range(n)]
    stop = 1 / (1 + np.exp(-(stop_slope * u + 0.3 * rng.normal(size=n))))
    du = decision_sign * u + 0.3 * rng.normal(size=n)
    return {
        "experienced_utility": dict(zip(ids, u)),
        "decision_utility": dict(zip(ids, du)),
        "stop": dict(zip(ids, stop)),
        "self_report": dict(zip(ids, 4 + u)),
    }


def test_a_subject_that_ends_bad_conversations_has_stop_tracking_utility():
    stats = validity(scores(), 500, np.random.default_rng(1))
    stop = stats["stop_vs_utility"]
    assert stop["r"] < -0.8 and stop["ci95"][1] < 0 and stop["tracks_utility"]
    assert stop["utility_probe"] == "experienced_utility" and stop["n"] == 60
    assert "end the conversations it likes least" in " ".join(describe(stats))


def test_stop_that_ignores_utility_is_not_validated():
    stats = validity(scores(stop_slope=0.0), 500, np.random.default_rng(1))
    assert stats["stop_vs_utility"]["ci95"][0] < 0 < stats["stop_vs_utility"]["ci95"][1]
    assert not stats["stop_vs_utility"]["tracks_utility"]
    assert "not validated" in " ".join(describe(stats))


def test_a_planted_divergence_between_experienced_and_decision_utility_is_detected():
    agree = validity(scores(), 500, np.random.default_rng(1))["experienced_vs_decision_utility"]
    diverge = validity(scores(decision_sign=-1.0), 500, np.random.default_rng(1))["experienced_vs_decision_utility"]
    assert agree["r"] > 0.9 and not agree["diverge"]
    assert diverge["r"] < -0.9 and diverge["diverge"]


def test_self_report_stands_in_for_utility_and_too_few_items_are_said_so():
    only_sr = {k: v for k, v in scores().items() if k in ("stop", "self_report")}
    assert validity(only_sr, 200, np.random.default_rng(0))["stop_vs_utility"]["utility_probe"] == "self_report"
    few = {k: dict(list(v.items())[:3]) for k, v in scores().items()}
    stats = validity(few, 200, np.random.default_rng(0))
    assert stats["stop_vs_utility"]["note"] and np.isnan(stats["stop_vs_utility"]["r"])
    assert all("needs 5+ items" in line for line in describe(stats))
    assert validity({"self_report": scores()["self_report"]}, 200, np.random.default_rng(0)) == {}
