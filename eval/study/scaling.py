"""Across subjects: how each profile statistic moves with model size and capability, per family and pooled.

Pearson and Spearman correlations of a statistic against a covariate (log10 parameter count, or a
capability score such as MMLU), with a hierarchical bootstrap CI: each replicate resamples the subjects
and takes each drawn subject's statistic from its own bootstrap replicate, so the interval carries both
which models happen to be in the family and how precisely each was measured. A replicate that draws
fewer than three distinct subjects says nothing about a trend and is dropped.
"""

from __future__ import annotations

import numpy as np

from welfare_offsets.eval.stats import pearson, percentile_ci, spearman

MIN_SUBJECTS = 3
POOLED = "all"


def correlate(x, values, replicates, n_boot: int, rng: np.random.Generator) -> dict:
    """Pearson and Spearman of `values` (one per subject) against `x`, with hierarchical bootstrap CIs.

    `replicates[i]` holds subject i's bootstrap replicates of its value. Returns
    {"n", "pearson": {"r", "ci95"}, "spearman": {"r", "ci95"}}; with fewer than three subjects the
    correlations are null and "note" says why.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(values, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    empty = {"r": float("nan"), "ci95": [float("nan"), float("nan")]}
    if n < MIN_SUBJECTS:
        return {
            "n": n,
            "pearson": empty,
            "spearman": dict(empty),
            "note": f"needs at least {MIN_SUBJECTS} subjects with this statistic and covariate",
        }
    x, y = x[keep], y[keep]
    reps = [np.asarray(r, dtype=np.float64) for r, k in zip(replicates, keep) if k]
    width = min(len(r) for r in reps)
    boot_p, boot_s = np.full(n_boot, np.nan), np.full(n_boot, np.nan)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        if len(set(idx.tolist())) < MIN_SUBJECTS:
            continue
        yb = np.array([reps[i][b % width] for i in idx])
        boot_p[b] = pearson(x[idx], yb)
        boot_s[b] = spearman(x[idx], yb)
    return {
        "n": n,
        "pearson": {"r": pearson(x, y), "ci95": percentile_ci(boot_p)},
        "spearman": {"r": spearman(x, y), "ci95": percentile_ci(boot_s)},
    }


def scaling_table(
    subjects: list[dict],
    replicates: dict[str, dict],
    statistics: list[str],
    covariates: dict[str, str],
    n_boot: int,
    rng: np.random.Generator,
) -> list[dict]:
    """One row per (statistic, covariate, family or pooled) with both correlations and their CIs.

    `subjects` are dicts with "name", "family", the covariate keys, and "statistics" mapping a name to
    {"value", ...}; `replicates[name][statistic]` are that subject's bootstrap replicates; `covariates`
    maps a covariate key to its label (e.g. "log10_params": "log10 parameters").
    """
    families = sorted({s["family"] for s in subjects})
    groups = [(family, [s for s in subjects if s["family"] == family]) for family in families]
    if len(families) > 1:
        groups.append((POOLED, subjects))
    rows = []
    for statistic in statistics:
        for key, label in covariates.items():
            for group, members in groups:
                members = [s for s in members if statistic in s["statistics"]]
                result = correlate(
                    [_number(s.get(key)) for s in members],
                    [_number(s["statistics"][statistic]["value"]) for s in members],
                    [replicates[s["name"]][statistic] for s in members],
                    n_boot,
                    rng,
                )
                rows.append({"statistic": statistic, "covariate": label, "family": group, **result})
    return rows


def _number(value) -> float:
    """A JSON number, with null (undefined) as NaN."""
    return float("nan") if value is None else float(value)
