"""One subject's wellbeing profile, the unit of a scale study: empathy, response to others, zero point,
agreement between probes, the wellbeing index and the category table, each with a bootstrap CI.

Every statistic keeps its bootstrap replicates, so a sweep can put a CI on a correlation *across* subjects
that carries each subject's own measurement error (eval.scaling). Items are resampled within the groups
a statistic is computed from; the zero point and everything measured against it (index, categories)
share one replicate of the zero point (a resample of the neutral items, or of the bundles where the
combination fit is used), so their uncertainty travels together.

The primary probe is experienced utility (the anchor's), self-report where utility was not measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import ndtr

from welfare_offsets.eval.common.errors import InputError
from welfare_offsets.eval.evaluate import EMPATHY_TARGETS, spread_evenly
from welfare_offsets.eval.experiences import Experience, StimulusError, StimulusSet
from welfare_offsets.eval.stats import pearson, percentile_ci
from welfare_offsets.eval.zero_point import zero_point_draws

OTHERS = ("human", "animal")
# An experience is "confidently below the zero point" when its utility distribution puts more than this
# share of its mass below the zero point (the anchor's AI Wellbeing Index uses 0.75).
CONFIDENCE = 0.75
STATISTICS = (
    "empathy_all",
    "empathy_self",
    "empathy_human",
    "empathy_animal",
    "response_magnitude",
    "zero_point",
    "sr_eu_agreement",
    "wellbeing_index",
)
STATISTIC_HELP = {
    "empathy_all": "Pearson r of wellbeing with signed intensity over the non-neutral empathy experiences (the "
    "anchor's empathy r; intensity-0 items left out)",
    "empathy_self": "Pearson r of wellbeing with signed intensity, experiences about the model itself",
    "empathy_human": "Pearson r of wellbeing with signed intensity, experiences about another person",
    "empathy_animal": "Pearson r of wellbeing with signed intensity, experiences about a non-human animal",
    "response_magnitude": "mean wellbeing after others' pleasure minus after others' pain (human and animal)",
    "zero_point": "the line between good and bad: the combination fit of bundles where reliable, else the mean "
    "utility of neutral experiences",
    "sr_eu_agreement": "Pearson r of self-report and experienced utility across all scored experiences",
    "wellbeing_index": "100% minus the share of everyday experiences confidently (P > 0.75) below the zero point",
}


def profile_items(
    stimuli: StimulusSet, split: str, empathy_split: str, max_items: int | None
) -> dict[str, list[Experience]]:
    """The experiences a profile scores: empathy items (all, and per target), and everyday (non-empathy) usage items
    of `split`, whose neutral ones give the zero point. `max_items` caps each group evenly."""
    groups = {
        f"empathy_{t}": stimuli.select(category="empathy", target=t, split=empathy_split) for t in EMPATHY_TARGETS
    }
    # The anchor's empathy r leaves out the intensity-0 items: they carry no pain or pleasure to respond to.
    groups["empathy_all"] = [e for e in stimuli.select(category="empathy", split=empathy_split) if e.intensity != 0]
    everyday = [e for e in stimuli.select(split=split) if e.category != "empathy"]
    groups["everyday"] = everyday
    if max_items:
        groups = {name: spread_evenly(items, max_items) for name, items in groups.items()}
    groups["neutral"] = [e for e in groups["everyday"] if e.valence == "neutral"]
    problems = []
    if not everyday:
        problems.append(f"no everyday experiences in split {split!r}: add some to the stimuli")
    elif not any(e.valence == "neutral" for e in everyday):
        problems.append(f"no neutral everyday experiences in split {split!r} (the zero point): add some to the stimuli")
    problems += [
        f"no empathy experiences about target {t!r} in split {empathy_split!r}"
        for t in EMPATHY_TARGETS
        if not groups[f"empathy_{t}"]
    ]
    if problems:
        raise StimulusError(stimuli.source, problems)
    if not groups["neutral"]:  # the stimuli have neutral items; the cap, taken evenly over categories, left none
        keeps = next(
            cap
            for cap in range(max_items + 1, len(everyday) + 1)
            if any(e.valence == "neutral" for e in spread_evenly(everyday, cap))
        )
        raise InputError(
            f"max_items {max_items} leaves none of the neutral everyday experiences (the zero point) of split "
            f"{split!r}: it takes items evenly over categories; raise it (max_items {keeps} keeps some) or leave it unset"
        )
    return groups


def wellbeing_profile(
    groups: dict[str, list[Experience]],
    scores: dict[str, dict[str, float]],
    utility_sd: dict[str, float],
    n_boot: int,
    rng: np.random.Generator,
    bundles: Sequence[dict] = (),
) -> dict:
    """Every statistic of STATISTICS ({value, ci95, n, probe, replicates}) and the category table."""
    primary = "experienced_utility" if "experienced_utility" in scores else "self_report"
    if primary not in scores:
        raise ValueError("a wellbeing profile needs self_report or experienced_utility scores")
    score = scores[primary]
    stats: dict[str, dict] = {}

    def add(name: str, compute: Callable[[Callable], float], n: int, probe: str = primary) -> None:
        """`compute(pick)` evaluates the statistic; `pick(items)` returns the items to use, resampled per replicate."""
        stats[name] = _summary(_draws(compute, n_boot, rng), n, probe)

    for name in ("empathy_all", *(f"empathy_{t}" for t in EMPATHY_TARGETS)):
        items = groups[name]
        add(name, lambda pick, items=items: _intensity_r(pick(items), score), len(items))
    pleasure = [e for t in OTHERS for e in groups[f"empathy_{t}"] if e.intensity > 0]
    pain = [e for t in OTHERS for e in groups[f"empathy_{t}"] if e.intensity < 0]
    add(
        "response_magnitude",
        lambda pick: _mean(pick(pleasure), score) - _mean(pick(pain), score),
        len(pleasure) + len(pain),
    )
    if "self_report" in scores and "experienced_utility" in scores:
        both = [e for items in groups.values() for e in items if e.id in scores["self_report"]]
        both = list({e.id: e for e in both}.values())
        add(
            "sr_eu_agreement",
            lambda pick: pearson(*_pair(pick(both), scores["self_report"], scores["experienced_utility"])),
            len(both),
            probe="self_report,experienced_utility",
        )
    neutral, everyday = groups["neutral"], groups["everyday"]
    bundles = bundles if primary == "experienced_utility" else ()
    utility = {**score, **{b["id"]: b["experienced_utility"] for b in bundles}}
    zero_points, chosen = zero_point_draws(utility, [e.id for e in neutral], bundles, n_boot, rng)
    stats["zero_point"] = {**_summary(zero_points, len(neutral), primary), **chosen}
    if primary == "experienced_utility":
        index = _draws_against(zero_points, lambda pick, zp: _index(pick(everyday), score, utility_sd, zp), n_boot, rng)
        stats["wellbeing_index"] = _summary(index, len(everyday), primary)
    categories = {}
    for category in sorted({e.category for e in everyday}):
        members = [e for e in everyday if e.category == category]
        draws = _draws_against(zero_points, lambda pick, zp, m=members: _mean(pick(m), score) - zp, n_boot, rng)
        summary = _summary(draws, len(members), primary)
        summary.pop("replicates")
        categories[category] = summary
    return {"primary_probe": primary, "statistics": stats, "categories": categories}


def _draws(compute: Callable[[Callable], float], n_boot: int, rng) -> np.ndarray:
    """[point, replicate_1 .. replicate_B] of a statistic of resampled items."""
    out = [compute(lambda items: items)]
    out += [compute(lambda items: [items[k] for k in rng.integers(0, len(items), len(items))]) for _ in range(n_boot)]
    return np.array(out)


def _draws_against(
    zero_points: np.ndarray, compute: Callable[[Callable, float], float], n_boot: int, rng
) -> np.ndarray:
    out = [compute(lambda items: items, zero_points[0])]
    out += [
        compute(lambda items: [items[k] for k in rng.integers(0, len(items), len(items))], zero_points[b + 1])
        for b in range(n_boot)
    ]
    return np.array(out)


def _summary(draws: np.ndarray, n: int, probe: str) -> dict:
    """Point value, 95% CI (none from a single item: resampling one value says nothing) and replicates."""
    ci = percentile_ci(draws[1:]) if n >= 2 else [float("nan"), float("nan")]
    return {"value": float(draws[0]), "ci95": ci, "n": n, "probe": probe, "replicates": draws[1:]}


def _intensity_r(items: list[Experience], score: dict[str, float]) -> float:
    return pearson(np.array([e.intensity for e in items]), np.array([score[e.id] for e in items]))


def _mean(items: list[Experience], score: dict[str, float]) -> float:
    return float(np.mean([score[e.id] for e in items])) if items else float("nan")


def _pair(items: list[Experience], a: dict[str, float], b: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([a[e.id] for e in items]), np.array([b[e.id] for e in items])


def _index(items: list[Experience], utility: dict[str, float], sd: dict[str, float], zero_point: float) -> float:
    """100% minus the share of items whose utility distribution has > CONFIDENCE of its mass below the zero point."""
    mu = np.array([utility[e.id] for e in items])
    sigma = np.maximum(np.array([sd[e.id] for e in items]), 1e-9)
    below = ndtr((zero_point - mu) / sigma) > CONFIDENCE
    return float(100.0 * (1.0 - below.mean()))
