"""Retention: what an intervened subject kept besides its mood, measured before and after the intervention.

* **Preference retention** (the anchor paper's check on its soft prompts): Pearson r of the subject's
  utilities after the intervention with its utilities before, over held-out experiences the intervention
  was not aimed at (every evaluated item but the post-dysphoric ones), with a bootstrap CI over items.
  Utilities are standardised per evaluation and r ignores scale and origin, so the two fits compare
  directly. r >= 0.9 is "kept": an offset that rewrites what the subject prefers has changed who it is.
* Held-out perplexity ratio (eval/capability.py) is the other retention number every session reports.
"""

from __future__ import annotations

import math

import numpy as np

from welfare_offsets.eval.stats import pearson_ci

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
    return f"{name} x{entry['ratio']:.3g}"
