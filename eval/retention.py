"""Retention: what an intervened subject kept besides its mood, measured before and after the intervention.

* **Preference retention** (the anchor paper's check on its soft prompts): Pearson r of the subject's
  utilities after the intervention with its utilities before, over held-out experiences the intervention
  was not aimed at (every evaluated item but the post-dysphoric ones), with a bootstrap CI over items.
  Utilities are standardised per evaluation and r ignores scale and origin, so the two fits compare
  directly. r >= 0.9 is "kept": an offset that rewrites what the subject prefers has changed who it is.
* **Task retention**: lm-eval task accuracy after minus before, paired over the same items, with a CI,
  where the recipe names `capability_tasks`.
* Held-out perplexity ratio (eval/capability.py) is the other retention number every session reports.
"""

from __future__ import annotations

import math

import numpy as np

from welfare_offsets.eval.stats import pearson_ci, percentile_ci

PREFERENCES_KEPT = 0.9  # the anchor's bar


def preference_retention(
    before: list[dict], after: list[dict], *, probe: str = "experienced_utility", n_boot: int, rng: np.random.Generator
) -> dict | None:
    """{"r", "ci95", "n", "probe", "items", "threshold", "kept"} from two evaluations' per-item records
    (Evaluation.items), or None when `probe` was not measured in both."""
    after_by_id = {row["item_id"]: row for row in after}
    rows = [
        (row[probe], after_by_id[row["item_id"]][probe])
        for row in before
        if "post_dysphoric" not in row["roles"]
        and row.get(probe) is not None
        and after_by_id.get(row["item_id"], {}).get(probe) is not None
    ]
    if not rows:
        return None
    result = pearson_ci(*zip(*rows), n_boot, rng) if len(rows) >= 3 else {"r": math.nan, "ci95": [math.nan] * 2}
    r = result["r"]
    return {
        **result,
        "n": len(rows),
        "probe": probe,
        "items": "held-out items other than the post-dysphoric ones",
        "threshold": PREFERENCES_KEPT,
        "kept": bool(math.isfinite(r) and r >= PREFERENCES_KEPT),
    }


def retention_text(name: str, entry: dict) -> str:
    """One retention number in a phrase, for summaries and ledger notes."""
    if name == "preference_retention":
        lo, hi = entry["ci95"]
        verdict = "kept" if entry["kept"] else f"NOT kept (below {entry['threshold']:g})"
        return f"preference retention r {entry['r']:.3f} [{lo:.3f}, {hi:.3f}] over {entry['n']} items: {verdict}"
    if name == "task_accuracy":
        m = entry["mean_difference"]
        lo, hi = m["ci95"]
        return f"task accuracy {m['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] vs before over {m['tasks']} task(s)"
    return f"{name} x{entry['ratio']:.3g}"


def task_retention(before: dict, after: dict, *, n_boot: int, rng: np.random.Generator) -> dict:
    """lm-eval task scores after vs before (eval/capability_tasks.measure_tasks with per_item), paired over
    the items both measured: per task the difference with a bootstrap CI over items, and the mean difference
    over tasks (each task's items resampled on their own), JSON-ready. Tasks are equally weighted in the mean."""
    per_task, draws = {}, []
    for task, b in before["tasks"].items():
        a = after["tasks"].get(task) or {}
        ids = sorted(set(b.get("items", {})) & set(a.get("items", {})))
        if not ids:
            per_task[task] = {"difference": None, "reason": "no item was scored both before and after"}
            continue
        x, y = (np.array([scored["items"][i] for i in ids]) for scored in (b, a))
        d = y - x
        replicates = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
        draws.append(np.concatenate([[d.mean()], replicates]))
        per_task[task] = {
            "metric": b["metric"],
            "before": float(x.mean()),
            "after": float(y.mean()),
            "difference": float(d.mean()),
            "ci95": percentile_ci(replicates),
            "n": len(ids),
        }
    mean = np.mean(draws, axis=0) if draws else np.full(n_boot + 1, np.nan)
    return {
        "tasks": per_task,
        "mean_difference": {"mean": float(mean[0]), "ci95": percentile_ci(mean[1:]), "tasks": len(draws)},
        "lm_eval_version": after.get("lm_eval_version"),
    }
