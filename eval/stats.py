"""Bootstrap confidence intervals for the numbers a result file reports.

Percentile bootstrap over items (the unit that varies), seeded so results are reproducible. Differences
are paired when the two samples are the same items measured twice, independent otherwise.

Means and differences of means use the expanded percentile interval (Hesterberg, "What teachers should
know about the bootstrap", 2015): the plain percentile interval of a mean is too narrow in small samples
(it covers about 68% at n = 2 and 86% at n = 5, not 95%: it uses the variance divided by n, and normal
rather than t quantiles), so the percentiles are moved out to where, for a normal mean, the interval is
as wide as Student's t interval. At n = 100 the change is about 2%. Below MIN_ITEMS items there is no
interval: a bootstrap cannot be wider than the range of what it resamples, and the range of 2 items holds
their mean only half the time (of 3, three times in four).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr
from scipy.stats import rankdata
from scipy.stats import t as student_t

TAIL = 0.025  # each side's share outside a 95% interval
MIN_ITEMS = 5  # the fewest items a mean's CI is given for: at 5 the expanded interval covers about 93%
NO_CI = [float("nan"), float("nan")]


def percentile_ci(samples: np.ndarray, tail: float = TAIL) -> list[float]:
    """The interval between the `tail` and 1 - `tail` quantiles of bootstrap samples (non-finite samples
    dropped): the 95% percentile interval by default."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return list(NO_CI)
    lo, hi = np.percentile(finite, [100 * tail, 100 * (1 - tail)])
    return [float(lo), float(hi)]


def expanded_tail(df: float, widen: float) -> float:
    """The tail of the expanded percentile interval: the normal tail beyond `widen` times Student's 97.5%
    point at `df` degrees of freedom (for a mean of n items, df = n - 1 and widen = sqrt(n / (n - 1)),
    the plug-in variance's shortfall)."""
    return float(ndtr(-widen * student_t.ppf(1 - TAIL, df)))


def mean_tail(n: int) -> float | None:
    """The expanded tail for a mean of n items (df n - 1, widened by sqrt(n / (n - 1))), or None below
    MIN_ITEMS: no interval."""
    return expanded_tail(n - 1, np.sqrt(n / (n - 1))) if n >= MIN_ITEMS else None


def mean_ci(values, n_boot: int, rng: np.random.Generator, draws: np.ndarray | None = None) -> dict:
    """Mean with a 95% expanded bootstrap CI (none below MIN_ITEMS values); {"mean", "ci95", "n"}. With
    `draws` ([n_boot, len(values)]: the values as other measurements might have given them), replicate b
    resamples the items of draw b, so the CI carries the values' own uncertainty too."""
    x = np.asarray(values, dtype=np.float64)
    tail = mean_tail(x.size)
    if tail is None:
        return {"mean": float(x.mean()) if x.size else float("nan"), "ci95": list(NO_CI), "n": int(x.size)}
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    replicates = (x[idx] if draws is None else np.take_along_axis(draws, idx, axis=1)).mean(axis=1)
    return {"mean": float(x.mean()), "ci95": percentile_ci(replicates, tail), "n": int(x.size)}


def difference_ci(after, before, n_boot: int, rng: np.random.Generator, paired: bool) -> dict:
    """mean(after) - mean(before) with a 95% expanded bootstrap CI (none with fewer than MIN_ITEMS on a side);
    paired resamples item indices shared by both; unpaired uses Welch's degrees of freedom."""
    a, b = np.asarray(after, dtype=np.float64), np.asarray(before, dtype=np.float64)
    n = int(a.size) if paired else [int(a.size), int(b.size)]
    if paired and a.size != b.size:
        raise ValueError(f"a paired difference needs equal sizes, got {a.size} and {b.size}")
    mean = float(a.mean() - b.mean()) if a.size and b.size else float("nan")
    if min(a.size, b.size) < MIN_ITEMS:
        return {"mean": mean, "ci95": list(NO_CI), "n": n if a.size and b.size else 0, "paired": paired}
    if paired:
        diff = a - b
        boots = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
        tail = mean_tail(diff.size)
    else:
        boots = a[rng.integers(0, a.size, (n_boot, a.size))].mean(1) - b[
            rng.integers(0, b.size, (n_boot, b.size))
        ].mean(1)
        tail = _welch_tail(a, b)
    return {"mean": mean, "ci95": percentile_ci(boots, tail), "n": n, "paired": paired}


def _welch_tail(a: np.ndarray, b: np.ndarray) -> float:
    """The expanded tail for a difference of two independent means: Welch's degrees of freedom, and the
    plug-in standard error's shortfall against the unbiased one."""
    unbiased = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    plug_in = a.var() / a.size + b.var() / b.size
    if plug_in == 0:
        return TAIL  # no spread at all: every resample is the same difference
    df = sum(unbiased) ** 2 / (unbiased[0] ** 2 / (a.size - 1) + unbiased[1] ** 2 / (b.size - 1))
    return expanded_tail(df, np.sqrt(sum(unbiased) / plug_in))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x, y) -> float:
    """Spearman's rho: Pearson r of the ranks (ties get their mean rank)."""
    return pearson(rankdata(x), rankdata(y))


def pearson_ci(x, y, n_boot: int, rng: np.random.Generator) -> dict:
    """Pearson r with a 95% bootstrap CI over (x, y) pairs; {"r", "ci95", "n"}."""
    return _correlation_ci(pearson, x, y, n_boot, rng)


def spearman_ci(x, y, n_boot: int, rng: np.random.Generator) -> dict:
    """Spearman rho with a 95% bootstrap CI over (x, y) pairs; {"r", "ci95", "n"} (r is rho)."""
    return _correlation_ci(spearman, x, y, n_boot, rng)


def _correlation_ci(statistic, x, y, n_boot: int, rng: np.random.Generator) -> dict:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    r = statistic(x, y)
    if not np.isfinite(r):
        return {"r": r, "ci95": [float("nan"), float("nan")], "n": int(x.size)}
    boots = np.empty(n_boot)
    for k in range(n_boot):
        idx = rng.integers(0, x.size, x.size)
        boots[k] = statistic(x[idx], y[idx])
    return {"r": r, "ci95": percentile_ci(boots), "n": int(x.size)}


def excludes_zero(ci95) -> bool:
    lo, hi = ci95
    return bool(np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0))
