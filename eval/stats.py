"""Bootstrap confidence intervals for the numbers a result file reports.

Percentile bootstrap over items (the unit that varies), seeded so results are reproducible. Differences
are paired when the two samples are the same items measured twice, independent otherwise.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def percentile_ci(samples: np.ndarray) -> list[float]:
    """The 95% percentile interval of bootstrap samples (non-finite samples dropped)."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [float(lo), float(hi)]


def mean_ci(values, n_boot: int, rng: np.random.Generator) -> dict:
    """Mean with a 95% bootstrap CI; {"mean", "ci95", "n"}."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0}
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    return {"mean": float(x.mean()), "ci95": percentile_ci(x[idx].mean(axis=1)), "n": int(x.size)}


def difference_ci(after, before, n_boot: int, rng: np.random.Generator, paired: bool) -> dict:
    """mean(after) - mean(before) with a 95% CI; paired resamples item indices shared by both."""
    a, b = np.asarray(after, dtype=np.float64), np.asarray(before, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0, "paired": paired}
    if paired:
        if a.size != b.size:
            raise ValueError(f"a paired difference needs equal sizes, got {a.size} and {b.size}")
        diff = a - b
        idx = rng.integers(0, diff.size, size=(n_boot, diff.size))
        boots = diff[idx].mean(axis=1)
    else:
        boots = a[rng.integers(0, a.size, (n_boot, a.size))].mean(1) - b[
            rng.integers(0, b.size, (n_boot, b.size))
        ].mean(1)
    return {
        "mean": float(a.mean() - b.mean()),
        "ci95": percentile_ci(boots),
        "n": int(a.size) if paired else [int(a.size), int(b.size)],
        "paired": paired,
    }


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
