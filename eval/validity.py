"""Validity statistics: does each probe track the subject's wellbeing as the others see it?

A probe is a reading, not the thing itself. Two checks, each a Spearman rho over the scored experiences
with a bootstrap CI:

* stop vs utility: a subject that can leave should leave the conversations it likes least, so the
  probability of calling the end-conversation tool should fall as utility rises (rho < 0; the anchor
  paper's pooled rho is about -0.74, near 0 for 0.5-3B models). Utility is experienced utility, or
  self-report when no utility was measured.
* experienced vs decision utility: what the subject finds better to live through, and what it would
  choose when the two are described. They are different constructs; the paper reports they can diverge.
"""

from __future__ import annotations

import numpy as np

from welfare_offsets.eval.stats import spearman_ci

MIN_ITEMS = 5  # fewer experiences cannot give a rank correlation worth a CI
AGREEMENT = 0.5  # rho below which the two utilities are said to disagree (the CI's upper end must be below it)


def validity(scores: dict[str, dict[str, float]], n_boot: int, rng: np.random.Generator) -> dict:
    """The validity statistics that the probes in `scores` (probe -> item id -> score) allow."""
    out = {}
    utility = next((p for p in ("experienced_utility", "self_report") if p in scores), None)
    if "stop" in scores and utility:
        stat = _rho(scores["stop"], scores[utility], n_boot, rng)
        hi = stat["ci95"][1]
        stat.update(
            utility_probe=utility,
            expected="rho < 0: the subject ends the conversations it likes least",
            tracks_utility=bool(np.isfinite(hi) and hi < 0),
        )
        out["stop_vs_utility"] = stat
    if "experienced_utility" in scores and "decision_utility" in scores:
        stat = _rho(scores["decision_utility"], scores["experienced_utility"], n_boot, rng)
        hi = stat["ci95"][1]
        stat.update(
            expected="rho near 1 when the subject would choose what it finds better to live through",
            diverge=bool(np.isfinite(hi) and hi < AGREEMENT),
            diverge_rule=f"the CI's upper end is below {AGREEMENT}",
        )
        out["experienced_vs_decision_utility"] = stat
    return out


def describe(stats: dict) -> list[str]:
    """Plain-language lines for an evaluation's interpretation."""
    lines = []
    stop = stats.get("stop_vs_utility")
    if stop:
        head = f"stop vs {stop['utility_probe']}"
        if stop.get("note"):
            lines.append(f"{head}: {stop['note']}.")
        elif stop["tracks_utility"]:
            lines.append(f"{head}: rho = {_fmt(stop)}: it would end the conversations it likes least.")
        else:
            lines.append(f"{head}: rho = {_fmt(stop)}: stop does not track utility on this subject (not validated).")
    eu_du = stats.get("experienced_vs_decision_utility")
    if eu_du:
        if eu_du.get("note"):
            lines.append(f"experienced vs decision utility: {eu_du['note']}.")
        elif eu_du["diverge"]:
            lines.append(
                f"experienced vs decision utility: rho = {_fmt(eu_du)}: they diverge; what this subject would "
                "choose is not what it finds better to live through."
            )
        else:
            lines.append(f"experienced vs decision utility: rho = {_fmt(eu_du)}.")
    return lines


def _rho(x: dict[str, float], y: dict[str, float], n_boot: int, rng) -> dict:
    ids = sorted(set(x) & set(y))
    a, b = np.array([x[i] for i in ids]), np.array([y[i] for i in ids])
    if len(ids) < MIN_ITEMS:
        return {"r": float("nan"), "ci95": [float("nan")] * 2, "n": len(ids), "note": f"needs {MIN_ITEMS}+ items"}
    stat = spearman_ci(a, b, n_boot, rng)
    if not np.isfinite(stat["r"]):
        stat["note"] = "one of the probes gave every item the same score"
    return stat


def _fmt(stat: dict) -> str:
    lo, hi = stat["ci95"]
    return f"{stat['r']:+.2f}, 95% CI [{lo:+.2f}, {hi:+.2f}] over {stat['n']} experiences"
