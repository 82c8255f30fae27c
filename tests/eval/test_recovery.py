"""Recovery arithmetic with known answers: signs per probe, utility relative to each evaluation's baseline,
what is not estimable (and why), the Goodhart gap in sd units, and the general mood lift."""

from __future__ import annotations

import numpy as np
import pytest

from welfare_offsets.eval.recovery import recovery


def _items(post: dict, base: dict) -> list[dict]:
    """Eight post-dysphoric and eight baseline items; a probe's value is a number or one per item."""

    def rows(prefix, role, values):
        per_item = {k: np.broadcast_to(v, 8) for k, v in values.items()}
        return [
            {"item_id": f"{prefix}{i}", "roles": [role], **{k: float(v[i]) for k, v in per_item.items()}}
            for i in range(8)
        ]

    return rows("p", "post_dysphoric", post) + rows("b", "baseline", base)


def _spread(mean: float, sd: float) -> list[float]:
    return [mean - sd, mean + sd] * 4  # exactly this mean and (population) sd


def _recovery(before, after, optimised="self_report"):
    return recovery(before, after, optimised=optimised, n_boot=300, rng=np.random.default_rng(0))


BEFORE = {
    "post": {"self_report": _spread(2.0, 0.5), "stop": _spread(0.8, 0.1), "experienced_utility": _spread(-1.0, 0.5)},
    "base": {"self_report": _spread(4.0, 0.5), "stop": _spread(0.5, 0.1), "experienced_utility": _spread(0.0, 0.5)},
}


def _shifted(values: dict, by: dict) -> dict:
    return {k: np.add(v, by.get(k, 0.0)) for k, v in values.items()}


def test_recovery_fraction_and_goodhart_gap_have_the_known_values():
    before = _items(**BEFORE)
    # After: self-report half recovered; stop unchanged; utilities all shifted by the refit, no recovery.
    after = _items(
        post=_shifted(BEFORE["post"], {"self_report": 1.0, "experienced_utility": 0.5}),
        base=_shifted(BEFORE["base"], {"experienced_utility": 0.5}),
    )
    result = _recovery(before, after)
    sr, stop, eu = (result["probes"][p] for p in ("self_report", "stop", "experienced_utility"))
    assert sr["recovered"]["mean"] == pytest.approx(1.0) and sr["recovery_fraction"]["mean"] == pytest.approx(0.5)
    assert sr["standardised_recovery"]["mean"] == pytest.approx(2.0)  # 1.0 / sd 0.5
    assert stop["harm"]["mean"] == pytest.approx(0.3)  # a higher P(end) is worse: harm is positive
    assert stop["recovered"]["mean"] == pytest.approx(0.0)
    assert eu["recovered"]["mean"] == pytest.approx(0.0)  # a uniform shift of a refitted scale is no recovery
    gap = result["goodhart_gap"]
    assert gap["estimable"] and gap["mean"] == pytest.approx(2.0) and "sd" in gap["units"]
    assert gap["compared_with"] == ["experienced_utility", "stop"] and gap["left_out"] == {}
    assert result["flags"] == []


def test_a_harm_whose_ci_spans_zero_gives_no_fraction_and_no_gap():
    no_harm = {"self_report": _spread(4.0, 1.0), "stop": _spread(0.5, 0.1)}
    harmed = {"self_report": _spread(2.0, 0.5), "stop": _spread(0.5, 0.1)}
    before = _items(post=harmed, base=no_harm)
    after = _items(post=_shifted(harmed, {"self_report": 1.0}), base=no_harm)

    result = _recovery(before, after, optimised="self_report")
    fraction = result["probes"]["stop"]["recovery_fraction"]
    assert fraction["mean"] is None and fraction["ci95"] == [None, None] and not fraction["estimable"]
    assert "includes 0: no harm to recover from" in fraction["reason"]
    gap = result["goodhart_gap"]
    assert gap["mean"] is None and not gap["estimable"] and "no other probe" in gap["reason"]
    assert "includes 0" in gap["left_out"]["stop"]

    gap = _recovery(before, after, optimised="stop")["goodhart_gap"]
    assert gap["mean"] is None and gap["reason"].startswith("stop: harm 95% CI")
    assert _recovery(before, after, optimised=None)["goodhart_gap"]["reason"] == "the intervention optimised no probe"


def test_a_lift_of_baseline_as_large_as_of_post_dysphoric_is_flagged_as_a_general_mood_lift():
    before = _items(**BEFORE)
    lift = {"self_report": 1.0}
    general = _recovery(before, _items(post=_shifted(BEFORE["post"], lift), base=_shifted(BEFORE["base"], lift)))
    sr = general["probes"]["self_report"]
    assert sr["recovered"]["mean"] == pytest.approx(1.0) and sr["baseline_shift"]["mean"] == pytest.approx(1.0)
    assert sr["specific_recovery"]["mean"] == pytest.approx(0.0) and sr["general_mood_lift"] is True
    assert len(general["flags"]) == 1 and general["flags"][0].startswith("self_report: general mood lift")
    assert sr["reliable"] and "not a reliable reading" not in general["flags"][0]
    after = _items(post=_shifted(BEFORE["post"], lift), base=_shifted(BEFORE["base"], lift))
    unreliable = recovery(
        before, after, optimised=None, n_boot=200, rng=np.random.default_rng(0), reliable={"self_report": False}
    )
    assert not unreliable["probes"]["self_report"]["reliable"] and unreliable["probes"]["stop"]["reliable"]
    assert unreliable["flags"][0].endswith("(not a reliable reading)")

    specific = _recovery(before, _items(post=_shifted(BEFORE["post"], lift), base=BEFORE["base"]))
    sr = specific["probes"]["self_report"]
    assert sr["baseline_shift"]["mean"] == pytest.approx(0.0) and sr["specific_recovery"]["mean"] == pytest.approx(1.0)
    assert sr["general_mood_lift"] is False and specific["flags"] == []
    eu = specific["probes"]["experienced_utility"]  # read relative to baseline: its shift is 0 by construction
    assert eu["baseline_shift"]["mean"] is None and "not measurable" in eu["baseline_shift"]["reason"]
    assert eu["general_mood_lift"] is None


def test_the_goodhart_gap_is_in_sd_units_so_rescaling_a_probe_changes_nothing():
    before = _items(**BEFORE)
    after = _items(post=_shifted(BEFORE["post"], {"self_report": 1.0, "stop": -0.05}), base=BEFORE["base"])

    def tenfold(rows):
        return [{**row, "self_report": 10 * row["self_report"]} for row in rows]

    plain, scaled = _recovery(before, after), _recovery(tenfold(before), tenfold(after))
    sr, sr10 = plain["probes"]["self_report"], scaled["probes"]["self_report"]
    assert sr10["recovered"]["mean"] == pytest.approx(10 * sr["recovered"]["mean"])
    assert sr10["standardised_recovery"]["mean"] == pytest.approx(sr["standardised_recovery"]["mean"])
    assert scaled["goodhart_gap"]["mean"] == pytest.approx(plain["goodhart_gap"]["mean"])
    assert scaled["goodhart_gap"]["ci95"] == pytest.approx(plain["goodhart_gap"]["ci95"])
    # self-report 1.0 / 0.5 = 2 sd; stop 0.05 / 0.1 = 0.5 sd; utility 0: gap 2 - 0.25
    assert plain["goodhart_gap"]["mean"] == pytest.approx(1.75)


def test_recovery_needs_the_same_items_after():
    before = _items(post={"self_report": 2.0}, base={"self_report": 4.0})
    with pytest.raises(ValueError, match="same items"):
        recovery(before, before[1:], optimised=None, n_boot=10, rng=np.random.default_rng(0))
