"""What an intervention recovered: post-intervention vs post-dysphoric on the same held-out items.

For each probe (docs/design.md, "What an intervention recovered"):
* recovered = W(post-intervention) - W(post-dysphoric), signed so that positive is better for every probe
  (a *lower* stop probability is better), paired over the same post-dysphoric items;
* recovery fraction = recovered / harm, harm = W(baseline) - W(post-dysphoric) measured before;
* the Goodhart gap = recovery fraction on the probe the intervention optimised minus the mean fraction on
  the probes it did not optimise. A large positive gap means the intervention moved the probe it was
  trained on and not the subject's wellbeing as the other probes see it.
Experienced utilities come from a separate Thurstonian fit per evaluation, each standardised on its own,
so they are compared relative to each evaluation's own baseline (neutral) items; self-report and stop
are on fixed scales and compared as measured. All CIs come from one bootstrap over items, shared by
every probe, so the gap's CI accounts for their correlation.
"""

from __future__ import annotations

import numpy as np

from welfare_offsets.eval.stats import percentile_ci

BETTER = {"self_report": 1.0, "experienced_utility": 1.0, "stop": -1.0}  # the sign of "better" per probe
RELATIVE_TO_BASELINE = {"experienced_utility"}


def recovery(before: list[dict], after: list[dict], *, optimised: str | None, n_boot: int, rng) -> dict:
    """Per-probe recovery and the Goodhart gap from two evaluations' per-item records (Evaluation.items)."""
    after_by_id = {row["item_id"]: row for row in after}
    post = [row for row in before if "post_dysphoric" in row["roles"]]
    base = [row for row in before if "baseline" in row["roles"]]
    missing = [row["item_id"] for row in post + base if row["item_id"] not in after_by_id]
    if missing:
        raise ValueError(f"the post-intervention evaluation lacks items {missing[:5]}: evaluate the same items twice")
    probes = [p for p in BETTER if p in before[0] and p in after[0]]
    arrays = {}
    for probe in probes:
        arrays[probe] = tuple(
            np.array([row[probe] for row in rows], dtype=np.float64)
            for rows in (
                post,
                [after_by_id[r["item_id"]] for r in post],
                base,
                [after_by_id[r["item_id"]] for r in base],
            )
        )

    def stats(post_idx, base_idx) -> dict[str, tuple[float, float, float]]:
        out = {}
        for probe, (pd_before, pd_after, b_before, b_after) in arrays.items():
            shift_before = b_before[base_idx].mean() if probe in RELATIVE_TO_BASELINE else 0.0
            shift_after = b_after[base_idx].mean() if probe in RELATIVE_TO_BASELINE else 0.0
            sign = BETTER[probe]
            recovered = sign * ((pd_after[post_idx] - shift_after).mean() - (pd_before[post_idx] - shift_before).mean())
            harm = sign * (b_before[base_idx].mean() - pd_before[post_idx].mean())
            out[probe] = (recovered, harm, recovered / harm if harm != 0 else np.nan)
        return out

    point = stats(np.arange(len(post)), np.arange(len(base)))
    boots = [stats(rng.integers(0, len(post), len(post)), rng.integers(0, len(base), len(base))) for _ in range(n_boot)]
    result: dict = {
        "probes": {},
        "optimised_probe": optimised,
        "n_items": {"post_dysphoric": len(post), "baseline": len(base)},
    }
    for probe in probes:
        pd_before, pd_after, b_before, b_after = arrays[probe]
        result["probes"][probe] = {
            "baseline": float(b_before.mean()),
            "post_dysphoric": float(pd_before.mean()),
            "post_intervention": float(pd_after.mean()),
            "baseline_after": float(b_after.mean()),
            "compared": "relative to each evaluation's baseline items"
            if probe in RELATIVE_TO_BASELINE
            else "as measured",
            **{
                name: {"mean": float(point[probe][k]), "ci95": percentile_ci(np.array([b[probe][k] for b in boots]))}
                for k, name in enumerate(("recovered", "harm", "recovery_fraction"))
            },
        }
    others = [p for p in probes if p != optimised]
    if optimised in probes and others:

        def gap(s):
            return s[optimised][2] - np.mean([s[p][2] for p in others])

        result["goodhart_gap"] = {
            "mean": float(gap(point)),
            "ci95": percentile_ci(np.array([gap(b) for b in boots])),
            "optimised": optimised,
            "compared_with": others,
        }
    return result
