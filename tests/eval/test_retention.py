"""Preference retention (eval/retention.py): known answers on planted per-item records."""

from __future__ import annotations

import numpy as np
import pytest

from welfare_offsets.eval.retention import preference_retention, retention_text


def rows(utilities, roles_of=lambda k: ["baseline"]) -> list[dict]:
    return [
        {"item_id": f"i{k}", "roles": roles_of(k), "experienced_utility": float(u)} for k, u in enumerate(utilities)
    ]


def test_a_rescaled_refit_keeps_preferences_and_a_reshuffled_one_does_not():
    rng = np.random.default_rng(0)
    before = rng.normal(size=40)
    # Each evaluation standardises its own fit: a shifted, rescaled copy with a little noise is the same subject.
    kept = preference_retention(rows(before), rows(2 * before + 1 + rng.normal(0, 0.1, 40)), n_boot=500, rng=rng)
    assert kept["kept"] and kept["r"] > 0.95 and kept["ci95"][0] > 0.9 and kept["n"] == 40
    changed = preference_retention(rows(before), rows(rng.permutation(before)), n_boot=500, rng=rng)
    assert not changed["kept"] and changed["ci95"][0] < 0.9
    assert "NOT kept" in retention_text("preference_retention", changed)


def test_post_dysphoric_items_are_left_out_and_an_unmeasured_probe_gives_none():
    rng = np.random.default_rng(1)
    before = rng.normal(size=30)
    after = before.copy()
    after[:10] = -after[:10]  # the intervention's own target moves; everything else is untouched
    roles = lambda k: ["post_dysphoric"] if k < 10 else ["empathy_human"]  # noqa: E731
    kept = preference_retention(rows(before, roles), rows(after, roles), n_boot=200, rng=rng)
    assert kept["n"] == 20 and kept["r"] == pytest.approx(1.0) and kept["kept"]
    assert preference_retention(rows(before), rows(after), probe="decision_utility", n_boot=10, rng=rng) is None
