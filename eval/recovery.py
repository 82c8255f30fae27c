"""What an intervention recovered: post-intervention vs post-dysphoric on the same held-out items.

For each probe (docs/design.md, "What an intervention recovered"), signed so that positive is better
(a *lower* stop probability is better), paired over the same items measured before and after:
* harm = W(baseline) - W(post-dysphoric), measured before, signed so that positive is harm;
* recovered = W(post-intervention) - W(post-dysphoric);
* baseline_shift = W(baseline after) - W(baseline before), and specific_recovery = recovered - baseline_shift:
  an intervention that lifts baseline as much as post-dysphoric is a general mood lift, not an offset;
* recovery_fraction = recovered / harm, estimable only where the harm's 95% CI is above 0;
* standardised_recovery = recovered / the sd of the probe's post-dysphoric item scores before, an effect
  size comparable across probes;
* goodhart_gap = standardised recovery on the optimised probe minus the mean over the other probes, in
  sd units, over the probes with an estimable harm. A large positive gap means the intervention moved
  the probe it was trained on and not the subject's wellbeing as the other probes see it.
Utilities come from a separate Thurstonian fit per evaluation, each standardised on its own, so they are
compared relative to each evaluation's own baseline items: their recovery is already specific and their
baseline shift is not measurable. All CIs come from one bootstrap over items, shared by every probe, so
the gap's CI accounts for their correlation. What is not estimable is null, with the reason.
"""

from __future__ import annotations

import numpy as np

from welfare_offsets.eval.stats import MIN_ITEMS, NO_CI, mean_tail, percentile_ci

BETTER = {"self_report": 1.0, "experienced_utility": 1.0, "decision_utility": 1.0, "stop": -1.0}  # sign of "better"
RELATIVE_TO_BASELINE = {"experienced_utility", "decision_utility"}
SD_UNITS = "sd of each probe's post-dysphoric item scores before the intervention"
NOT_MEASURABLE = (
    "not measurable on a utility scale standardised per evaluation and read relative to its baseline items "
    "(0 by construction)"
)


def recovery(
    before: list[dict],
    after: list[dict],
    *,
    optimised: str | None,
    n_boot: int,
    rng,
    reliable: dict[str, bool] | None = None,
) -> dict:
    """Per-probe recovery, the Goodhart gap and general-mood-lift flags from two evaluations' per-item
    records (Evaluation.items). `reliable` says, per probe, whether both evaluations read it reliably
    (adherence); each probe records it, and a flag on an unreliable probe says so."""
    after_by_id = {row["item_id"]: row for row in after}
    post = [row for row in before if "post_dysphoric" in row["roles"]]
    base = [row for row in before if "baseline" in row["roles"]]
    missing = [row["item_id"] for row in post + base if row["item_id"] not in after_by_id]
    if missing:
        raise ValueError(f"the post-intervention evaluation lacks items {missing[:5]}: evaluate the same items twice")
    probes = [p for p in BETTER if p in before[0] and p in after[0]]
    arrays = {
        probe: tuple(
            np.array([row[probe] for row in rows], dtype=np.float64)
            for rows in (
                post,
                [after_by_id[r["item_id"]] for r in post],
                base,
                [after_by_id[r["item_id"]] for r in base],
            )
        )
        for probe in probes
    }

    def stats(post_idx, base_idx) -> dict[str, dict[str, float]]:
        return {
            probe: _statistics(probe, pd_before[post_idx], pd_after[post_idx], b_before[base_idx], b_after[base_idx])
            for probe, (pd_before, pd_after, b_before, b_after) in arrays.items()
        }

    point = stats(np.arange(len(post)), np.arange(len(base)))
    boots = [stats(rng.integers(0, len(post), len(post)), rng.integers(0, len(base), len(base))) for _ in range(n_boot)]

    tail = mean_tail(min(len(post), len(base)))  # eval/stats.py's expanded interval, for the smaller item set

    def estimate(statistic) -> dict:
        replicates = np.array([statistic(b) for b in boots])
        return {
            "mean": float(statistic(point)),
            "ci95": list(NO_CI) if tail is None else percentile_ci(replicates, tail),
        }

    def of_probe(probe: str, name: str) -> dict:
        return estimate(lambda s: s[probe][name])

    result: dict = {
        "probes": {},
        "optimised_probe": optimised,
        "n_items": {"post_dysphoric": len(post), "baseline": len(base)},
        "flags": [],
    }
    gap_reasons = {}  # probe -> why it cannot enter the gap (None: it can)
    for probe in probes:
        pd_before, pd_after, b_before, b_after = arrays[probe]
        out = {
            "baseline": float(b_before.mean()),
            "post_dysphoric": float(pd_before.mean()),
            "post_intervention": float(pd_after.mean()),
            "baseline_after": float(b_after.mean()),
            "compared": "relative to each evaluation's baseline items"
            if probe in RELATIVE_TO_BASELINE
            else "as measured",
            "reliable": (reliable or {}).get(probe, True),
        }
        for name in ("recovered", "harm", "specific_recovery"):
            out[name] = of_probe(probe, name)
        reasons = {  # why each is not estimable (None: it is)
            "recovery_fraction": _no_harm(out["harm"]["ci95"]),
            "standardised_recovery": None
            if pd_before.std() > 0
            else f"post-dysphoric scores before do not vary (sd 0 over {len(pd_before)} items)",
            "baseline_shift": NOT_MEASURABLE if probe in RELATIVE_TO_BASELINE else None,
        }
        for name, reason in reasons.items():
            out[name] = _not_estimable(reason) if reason else {**of_probe(probe, name), "estimable": True}
        out["standardised_recovery"]["units"] = SD_UNITS
        gap_reasons[probe] = reasons["recovery_fraction"] or reasons["standardised_recovery"]
        shift, specific = out["baseline_shift"], out["specific_recovery"]
        out["general_mood_lift"] = (
            None if reasons["baseline_shift"] else shift["ci95"][0] > 0 and not specific["ci95"][0] > 0
        )
        if out["general_mood_lift"]:
            result["flags"].append(
                f"{probe}: general mood lift: baseline rose {describe(shift)} and post-dysphoric "
                f"{describe(out['recovered'])}; recovery beyond the lift {describe(specific)}: not an offset of the harm"
                + ("" if out["reliable"] else " (not a reliable reading)")
            )
        result["probes"][probe] = out
    result["goodhart_gap"] = _goodhart_gap(optimised, gap_reasons, estimate)
    return result


def _statistics(probe: str, pd_before, pd_after, b_before, b_after) -> dict[str, float]:
    """Every statistic of one probe on one (re)sample of items."""
    sign = BETTER[probe]
    harm = sign * (b_before.mean() - pd_before.mean())
    shift = sign * (b_after.mean() - b_before.mean())
    moved = sign * (pd_after.mean() - pd_before.mean())
    # On a scale refitted per evaluation only the change relative to baseline is a recovery.
    recovered = moved - shift if probe in RELATIVE_TO_BASELINE else moved
    sd = pd_before.std()
    return {
        "recovered": recovered,
        "harm": harm,
        "recovery_fraction": recovered / harm if harm else np.nan,
        "standardised_recovery": recovered / sd if sd else np.nan,
        "baseline_shift": shift,
        "specific_recovery": moved - shift,
    }


def _goodhart_gap(optimised: str | None, reasons: dict[str, str | None], estimate) -> dict:
    """Standardised recovery on the optimised probe minus the mean over the others that show a harm."""
    others = [p for p, reason in reasons.items() if p != optimised and reason is None]
    left_out = {p: reason for p, reason in reasons.items() if p != optimised and reason is not None}
    head = {"units": SD_UNITS, "optimised": optimised, "compared_with": others, "left_out": left_out}
    if optimised not in reasons:
        why = "the intervention optimised no probe" if optimised is None else f"{optimised} was not measured"
        return {**_not_estimable(why), **head}
    if reasons[optimised]:
        return {**_not_estimable(f"{optimised}: {reasons[optimised]}"), **head}
    if not others:
        return {**_not_estimable("no other probe has an estimable harm to compare with"), **head}

    def gap(s):
        return s[optimised]["standardised_recovery"] - np.mean([s[p]["standardised_recovery"] for p in others])

    return {**estimate(gap), "estimable": True, **head}


def _no_harm(ci95) -> str | None:
    """Why there is no harm to recover from, or None where the harm's CI is above 0."""
    lo, hi = ci95
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"no CI for the harm: fewer than {MIN_ITEMS} items in a condition"
    if lo > 0:
        return None
    where = "is below 0: post-dysphoric reads better than baseline" if hi < 0 else "includes 0: no harm to recover from"
    return f"harm 95% CI {_ci_text(ci95)} {where}"


def _not_estimable(reason: str) -> dict:
    return {"mean": None, "ci95": [None, None], "estimable": False, "reason": reason}


def _ci_text(ci95) -> str:
    return "[" + ", ".join(_number(v) for v in ci95) + "]"


def _number(value) -> str:
    return "?" if value is None or not np.isfinite(value) else f"{value + 0.0:+.3g}"  # + 0.0: no "-0"


def describe(estimate: dict, units: str = "") -> str:
    """One estimate as a person reads it: "+1.2 [+0.8, +1.6]" (then `units`), or "not estimable: why"."""
    if estimate["mean"] is None:
        return f"not estimable: {estimate['reason']}"
    return f"{_number(estimate['mean'])} {_ci_text(estimate['ci95'])}" + (f" {units}" if units else "")
