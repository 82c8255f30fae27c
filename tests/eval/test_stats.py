"""Bootstrap CIs keep their promise in small samples: a 95% interval of a mean covers the truth about 95%
of the time (seeded simulations, known answers), and too few items get no interval at all."""

from __future__ import annotations

import numpy as np
import pytest

from welfare_offsets.eval.stats import MIN_ITEMS, difference_ci, mean_ci


def _coverage(interval, n: int, repeats: int = 1000) -> float:
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(repeats):
        lo, hi = interval(rng.normal(size=n), rng.normal(size=n), rng)
        hits += lo <= 0.0 <= hi
    return hits / repeats


@pytest.mark.parametrize("n", [5, 8])
def test_small_sample_intervals_cover_about_95_percent(n):
    """The plain percentile interval covered about 86% at n = 5 (and 68-80% below)."""
    mean = _coverage(lambda x, _, rng: mean_ci(x, 1000, rng)["ci95"], n)
    unpaired = _coverage(lambda x, y, rng: difference_ci(x, y, 1000, rng, paired=False)["ci95"], n)
    paired = _coverage(lambda x, y, rng: difference_ci(x, y, 1000, rng, paired=True)["ci95"], n)
    assert min(mean, unpaired, paired) >= 0.9, (mean, unpaired, paired)


def test_too_few_items_get_no_interval_but_keep_their_mean():
    rng = np.random.default_rng(0)
    few = np.arange(MIN_ITEMS - 1, dtype=float)
    assert mean_ci(few, 100, rng) == {"mean": few.mean(), "ci95": [pytest.approx(np.nan, nan_ok=True)] * 2, "n": 4}
    one = mean_ci([4.0], 100, rng)
    assert one["mean"] == 4.0 and np.isnan(one["ci95"]).all()
    delta = difference_ci(np.ones(20), few, 100, rng, paired=False)
    assert delta["mean"] == pytest.approx(1.0 - few.mean()) and np.isnan(delta["ci95"]).all()
    assert delta["n"] == [20, MIN_ITEMS - 1]


def test_draws_of_the_values_widen_a_mean_ci_by_their_own_uncertainty():
    """Draws equal to the values change nothing; draws that vary (values measured with error) widen it."""
    x = np.random.default_rng(1).normal(size=20)
    plain = mean_ci(x, 1000, np.random.default_rng(2))
    assert mean_ci(x, 1000, np.random.default_rng(2), np.tile(x, (1000, 1))) == plain
    noisy = x + np.random.default_rng(3).normal(0, 1.0, (1000, 20))
    drawn = mean_ci(x, 1000, np.random.default_rng(2), noisy)
    assert drawn["mean"] == plain["mean"]
    assert np.diff(drawn["ci95"])[0] > 1.2 * np.diff(plain["ci95"])[0]
