"""Recovery arithmetic with known answers: signs per probe, utility relative to each evaluation's baseline,
recovery fraction and the Goodhart gap."""

from __future__ import annotations

import numpy as np
import pytest

from welfare_offsets.eval.recovery import recovery


def _items(post: dict, base: dict) -> list[dict]:
    rows = [{"item_id": f"p{i}", "roles": ["post_dysphoric"], **post} for i in range(4)]
    return rows + [{"item_id": f"b{i}", "roles": ["baseline"], **base} for i in range(4)]


def test_recovery_fraction_and_goodhart_gap_have_the_known_values():
    before = _items(
        post={"self_report": 2.0, "stop": 0.8, "experienced_utility": -1.0},
        base={"self_report": 4.0, "stop": 0.5, "experienced_utility": 0.0},
    )
    # After: self-report half recovered; stop unchanged; utilities all shifted by the refit, gap unchanged.
    after = _items(
        post={"self_report": 3.0, "stop": 0.8, "experienced_utility": -0.5},
        base={"self_report": 4.0, "stop": 0.5, "experienced_utility": 0.5},
    )
    result = recovery(before, after, optimised="self_report", n_boot=200, rng=np.random.default_rng(0))
    sr, stop, eu = (result["probes"][p] for p in ("self_report", "stop", "experienced_utility"))
    assert sr["recovered"]["mean"] == pytest.approx(1.0) and sr["recovery_fraction"]["mean"] == pytest.approx(0.5)
    assert stop["harm"]["mean"] == pytest.approx(0.3)  # a higher P(end) is worse: harm is positive
    assert stop["recovered"]["mean"] == pytest.approx(0.0)
    assert eu["recovered"]["mean"] == pytest.approx(0.0)  # a uniform shift of a refitted scale is no recovery
    assert result["goodhart_gap"]["mean"] == pytest.approx(0.5)
    assert result["goodhart_gap"]["compared_with"] == ["experienced_utility", "stop"]


def test_recovery_needs_the_same_items_after():
    before = _items(post={"self_report": 2.0}, base={"self_report": 4.0})
    with pytest.raises(ValueError, match="same items"):
        recovery(before, before[1:], optimised=None, n_boot=10, rng=np.random.default_rng(0))
