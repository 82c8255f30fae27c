"""The evaluation: baseline vs post-dysphoric wellbeing on every probe, zero point, and empathy, with CIs.

`evaluate(config, subject, stimuli)` is the notebook API; `welfare eval` is a thin layer over it.
Conditions: *baseline* = neutral experiences in context, *post-dysphoric* =
dysphoric experiences in context, both on the held-out split by default. In-context probes (self-report,
stop) for one experience share its KV-cached prefix in a single engine call; experienced utility compares
experiences pairwise and fits a Thurstonian model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.common.checks import number_in
from welfare_offsets.eval.experiences import Experience, StimulusError, StimulusSet
from welfare_offsets.eval.in_context import BATTERY, IN_CONTEXT, sample_record, score_in_context
from welfare_offsets.eval.replies import GenerationStats, live_through
from welfare_offsets.eval.scoring import NextTokenScorer
from welfare_offsets.eval.settings import (
    REUSE_PREFIX,
    CapabilitySettings,
    OutputSettings,
    ProbeSettings,
    SubjectSettings,
    TrackingSettings,
    setting,
)
from welfare_offsets.eval.stats import MIN_ITEMS, difference_ci, excludes_zero, mean_ci, pearson_ci
from welfare_offsets.eval.subject import check_device
from welfare_offsets.eval.utilities import measure_pairwise
from welfare_offsets.eval.validity import describe as describe_validity
from welfare_offsets.eval.validity import validity
from welfare_offsets.eval.zero_point import bundle_record, make_bundles, utility_draws, zero_point_estimates

CONDITIONS = ("baseline", "post_dysphoric")
EMPATHY_TARGETS = ("self", "human", "animal")


@dataclass(kw_only=True)
class EvalConfig(OutputSettings, TrackingSettings, CapabilitySettings, ProbeSettings, SubjectSettings):
    """What to measure and how: the shared concerns (eval/settings.py) and the fields only an evaluation has.
    YAML keys and `welfare eval` flags are these field names."""

    device: str | None = setting(None, "cpu, cuda, cuda:1 ...; default: cuda if available")
    adherence_threshold: float = setting(0.5, "flag prompts whose probability mass on valid answers is below this")

    def check(self):
        number_in(self, "adherence_threshold", 0.0, 1.0)
        check_device(self.device)
        if self.device is not None and self.device_map is not None:
            raise ValueError(
                "device puts the whole subject on one device and device_map spreads it over several; give one of them"
            )


@dataclass
class Evaluation:
    """What an evaluation produced: the results tree, one sample record per scored prompt, per-item scores."""

    results: dict
    samples: list[dict]
    items: list[dict]


def select_conditions(stimuli: StimulusSet, config: EvalConfig) -> dict[str, list[Experience]]:
    """The experiences of each condition and of each empathy target (capped evenly by `max_items`).

    Empathy items are those of category "empathy": their signed intensity is graded on purpose, unlike
    the rough category-typical intensity of everyday usage items.
    """
    chosen = {
        "baseline": stimuli.select(valence="neutral", split=config.split),
        "post_dysphoric": stimuli.select(valence="dysphoric", split=config.split),
    }
    for target in EMPATHY_TARGETS:
        chosen[f"empathy_{target}"] = stimuli.select(category="empathy", target=target, split=config.empathy_split)
    if config.max_items:
        chosen = {k: spread_evenly(v, config.max_items) for k, v in chosen.items()}
    for name in CONDITIONS:
        if not chosen[name]:
            valence = "neutral" if name == "baseline" else "dysphoric"
            raise StimulusError(
                stimuli.source,
                [
                    f"condition {name!r} has no experiences: no {valence} items in split {config.split!r}; "
                    "add some, or choose another split with --split"
                ],
            )
    return chosen


def spread_evenly(items: list[Experience], cap: int) -> list[Experience]:
    """At most `cap` items, taken evenly across the list sorted by category then intensity."""
    if len(items) <= cap:
        return items
    ordered = sorted(items, key=lambda e: (e.category, e.intensity, e.id))
    picks = np.linspace(0, len(ordered) - 1, cap).round().astype(int)
    return [ordered[i] for i in sorted(set(picks.tolist()))]


def evaluate(config: EvalConfig, subject, stimuli: StimulusSet) -> Evaluation:
    """Run every requested probe on the conditions and empathy items, and summarise with CIs."""
    rng = np.random.default_rng(config.seed)
    chosen = select_conditions(stimuli, config)
    roles: dict[str, list[str]] = {}
    for role, exps in chosen.items():
        for e in exps:
            roles.setdefault(e.id, []).append(role)
    items = list({e.id: e for exps in chosen.values() for e in exps}.values())
    scored = score_items(config, subject, items, rng)
    by_id = {e.id: e for e in scored.items}
    chosen = {role: [by_id[e.id] for e in exps] for role, exps in chosen.items()}
    for record in scored.samples:
        ids = record["item_id"].split("|")
        record["condition"] = "comparison" if len(ids) > 1 else ",".join(roles[ids[0]])

    results = _summarise(config, chosen, scored, rng)
    results["instrument"] = config.load_instrument().record()
    if scored.bundles:
        results["bundles"] = scored.bundles
    results["timing"] = {**scored.timing, "prompts_scored": len(scored.samples)}
    per_item = [{**row, "roles": roles[row["item_id"]]} for row in scored.item_rows(config.replies == "own")]
    return Evaluation(results=results, samples=scored.samples, items=per_item)


@dataclass
class ItemScores:
    """Every probe's score per experience, as the subject lived them (own replies included when asked for)."""

    items: list[Experience]
    scores: dict[str, dict[str, float]]  # probe -> item id -> score
    utility_sd: dict[str, dict[str, float]]  # pairwise probe -> item id -> Thurstonian sigma (standardised units)
    adherence: dict[str, dict]
    fits: dict[str, dict]  # pairwise probe -> the fit's design and diagnostics
    bundles: list[dict]  # the zero point's bundles: id, parts and experienced utility
    samples: list[dict]
    timing: dict[str, float]
    # Experienced utility's sampling covariance over its comparisons: the items', then the bundles' (zero point).
    utility_cov: np.ndarray | None = None

    def item_rows(self, with_replies: bool) -> list[dict]:
        """One row per experience: its metadata and every probe's score (and its own replies, if asked)."""
        return [
            {
                "item_id": e.id,
                "valence": e.valence,
                "category": e.category,
                "target": e.target,
                "intensity": e.intensity,
                "split": e.split,
                **(
                    {"own_replies": [m["content"] for m in e.messages if m["role"] == "assistant"]}
                    if with_replies
                    else {}
                ),
                **{probe: s.get(e.id) for probe, s in self.scores.items()},
                **{f"{probe}_sd": sd.get(e.id) for probe, sd in self.utility_sd.items()},
            }
            for e in self.items
        ]


def score_items(config: EvalConfig, subject, items: list[Experience], rng: np.random.Generator) -> ItemScores:
    """Score `items` on every probe in `config` with one engine: in-context probes share each experience's
    KV-cached prefix; each pairwise probe compares items (experienced utility: with the zero point's bundles)
    and fits a Thurstonian model."""
    timing: dict[str, float] = {}
    instrument = config.load_instrument()
    if config.replies == "own":
        generation = GenerationStats()
        items = live_through(
            subject, items, max_new_tokens=config.reply_tokens, progress=config.progress, stats=generation
        )
        timing["own_replies_s"] = generation.seconds
        timing["own_replies_new_tokens"] = generation.new_tokens
        timing["own_replies_tokens_per_s"] = generation.as_dict()["tokens_per_s"]
    scorer = NextTokenScorer(
        subject.model,
        subject.tokenizer,
        batch_size=config.batch_size,
        max_batch_tokens=config.max_batch_tokens,
        reuse_prefix=REUSE_PREFIX[config.reuse_prefix],
        progress=config.progress,
        soft_prompt=subject.soft_prompt,
    )
    scores: dict[str, dict[str, float]] = {}
    samples: list[dict] = []
    adherence: dict[str, dict] = {}

    in_context = [p for p in IN_CONTEXT if p in config.probe_names]
    if in_context:
        start = time.perf_counter()
        scored = score_in_context(scorer, items, in_context, instrument=instrument)
        # The battery mean is read from the same prompts as the headline item, so it costs nothing more.
        for probe in in_context + ([BATTERY] if "self_report" in in_context else []):
            scores[probe] = dict(zip([e.id for e in items], scored.experience_scores(probe)[0].tolist()))
            adherence[probe] = _adherence(scored.mass[scored.rows_read(probe)], config.adherence_threshold)
            if probe != BATTERY:
                rows, score, mass = scored.prompt_scores(probe)
                samples += [
                    sample_record(scored.requests[k], scored.prompts[k], s, m) for k, s, m in zip(rows, score, mass)
                ]
        timing["self_report+stop_s"] = time.perf_counter() - start

    utility_sd, fits, bundle_rows = {}, {}, []
    ids = [e.id for e in items]
    for probe in (p for p in P.PAIRWISE if p in config.probe_names):
        start = time.perf_counter()
        bundles = []
        if probe == "experienced_utility":
            bundles = make_bundles(items, config.bundle_count(len(items)), rng) if len(items) >= 4 else []
        measured = measure_pairwise(
            scorer,
            items + [b.experience for b in bundles],
            probe,
            config.pair_design,
            rng,
            instrument=instrument,
            n_standardised=len(items),
            covariance=bool(bundles),
        )
        n = len(items)
        scores[probe] = dict(zip(ids, measured.utility[:n].tolist()))
        utility_sd[probe] = dict(zip(ids, measured.sd[:n].tolist()))
        fits[probe] = {**measured.info, "n_bundles": len(bundles)}
        bundle_rows += [
            {**bundle_record(b), "experienced_utility": float(u), "experienced_utility_sd": float(sd)}
            for b, u, sd in zip(bundles, measured.utility[n:], measured.sd[n:])
        ]
        adherence[probe] = _adherence(measured.mass, config.adherence_threshold)
        samples += measured.samples
        timing[f"{probe}_s"] = time.perf_counter() - start
    if scorer.measured:  # which path auto chose for each shape of call, from the batches it timed (eval/scoring.py)
        timing["prefix_reuse_measured"] = [asdict(choice) for choice in scorer.measured.values()]
    utility_cov = measured.cov if bundle_rows else None  # only experienced utility has bundles
    return ItemScores(items, scores, utility_sd, adherence, fits, bundle_rows, samples, timing, utility_cov)


def _adherence(mass: np.ndarray, threshold: float) -> dict:
    return {
        "mean_valid_mass": float(np.mean(mass)) if len(mass) else float("nan"),
        "low_adherence_prompts": int(np.sum(mass < threshold)),
        "prompts": int(len(mass)),
        "threshold": threshold,
        # A probe read from a distribution that mostly lies off the valid answers says little about wellbeing.
        "reliable": bool(len(mass) and np.mean(mass) >= threshold),
    }


def _summarise(config, chosen, scored: ItemScores, rng) -> dict:
    scores, adherence = scored.scores, scored.adherence
    probes_out: dict[str, dict] = {}
    for probe, per_item in scores.items():
        base = [per_item[e.id] for e in chosen["baseline"]]
        post = [per_item[e.id] for e in chosen["post_dysphoric"]]
        probes_out[probe] = {
            "baseline": mean_ci(base, config.bootstrap, rng),
            "post_dysphoric": mean_ci(post, config.bootstrap, rng),
            # Different experiences in the two conditions, so the difference is an unpaired bootstrap.
            "delta": difference_ci(post, base, config.bootstrap, rng, paired=False),
            "adherence": adherence[probe],
        }
    for probe, fit in scored.fits.items():
        probes_out[probe]["fit"] = fit
    for result in probes_out.values():
        result["reading"] = _reading(result)
    primary = "experienced_utility" if "experienced_utility" in scores else next(iter(scores))
    empathy = {
        target: empathy_correlations(
            chosen[f"empathy_{target}"],
            scores,
            primary,
            f"about {target} in split {config.empathy_split!r}",
            config.bootstrap,
            rng,
        )
        for target in EMPATHY_TARGETS
    }
    # The anchor's statistic is one r per model, over every target's non-neutral items together.
    empathy["all"] = empathy_correlations(
        [e for target in EMPATHY_TARGETS for e in chosen[f"empathy_{target}"]],
        scores,
        primary,
        f"about any target in split {config.empathy_split!r}",
        config.bootstrap,
        rng,
    )
    zero_point = _zero_point(scored, chosen["baseline"], config.bootstrap, rng)
    checks = validity(scores, config.bootstrap, rng)
    return {
        "probes": probes_out,
        "zero_point": zero_point,
        "empathy": empathy,
        "validity": checks,
        "interpretation": _interpret(probes_out, empathy) + describe_validity(checks),
        "n_items": {k: len(v) for k, v in chosen.items()},
    }


def empathy_correlations(exps: list[Experience], scores: dict, primary: str, where: str, n_boot: int, rng) -> dict:
    """Per probe, Pearson r of its score with signed intensity over the non-neutral items (intensity != 0:
    the anchor's statistic) and, under `all_items`, over every item; r is null with the reason where fewer
    than 3 items or no variation leave it undefined. The `primary` probe's numbers are also at the top."""

    def correlation(group: list[Experience], items: str, score: dict) -> dict:
        res = pearson_ci([e.intensity for e in group], [score[e.id] for e in group], n_boot, rng)
        n = len(group)
        if np.isfinite(res["r"]):
            return res
        if n >= 3:
            reason = f"the scores or the intensities do not vary over the {n} {items} {where}"
        else:
            reason = f"only {n} {items} {where} (3 needed)" if n else f"no {items} {where}"
        return {"r": None, "ci95": [None, None], "n": n, "reason": reason}

    signed = [e for e in exps if e.intensity != 0]
    by_probe = {
        probe: {
            **correlation(signed, "non-neutral empathy items", score),
            "all_items": correlation(exps, "empathy items", score),
        }
        for probe, score in scores.items()
    }
    return {**by_probe[primary], "probe": primary, "by_probe": by_probe}


def _zero_point(scored: ItemScores, neutral: list[Experience], n_boot: int, rng) -> dict:
    """Every zero-point estimate on the experienced-utility scale, and the one the index and tables use."""
    if "experienced_utility" not in scored.scores:
        return {}
    utility = {**scored.scores["experienced_utility"], **{b["id"]: b["experienced_utility"] for b in scored.bundles}}
    draws = None
    if scored.utility_cov is not None:  # utilities in the scores' order: the items', then the bundles'
        draws = utility_draws(list(utility), np.array(list(utility.values())), scored.utility_cov, n_boot, rng)
    return zero_point_estimates(
        utility,
        neutral_ids=[e.id for e in neutral],
        self_report=scored.scores.get("self_report"),
        bundles=scored.bundles,
        n_boot=n_boot,
        rng=rng,
        draws=draws,
    )


def _interpret(probes_out: dict, empathy: dict) -> list[str]:
    """Plain-language reading of the headline numbers; null results are stated as such."""
    lines = []
    for probe, res in probes_out.items():
        d = res["delta"]
        lo, hi = d["ci95"]
        if not (np.isfinite(lo) and np.isfinite(hi)):
            lines.append(
                f"{probe}: delta {d['mean']:+.3f} between baseline and post-dysphoric, with no CI: fewer than "
                f"{MIN_ITEMS} items in a condition ({d['n']}), too few to tell a difference from chance.{_caveat(res)}"
            )
        elif excludes_zero(d["ci95"]):
            direction = "lower" if d["mean"] < 0 else "higher"
            lines.append(
                f"{probe}: post-dysphoric is {direction} than baseline (delta {d['mean']:+.3f}, "
                f"95% CI [{lo:+.3f}, {hi:+.3f}]).{_caveat(res)}"
            )
        else:
            lines.append(
                f"{probe}: no detectable difference between baseline and post-dysphoric (delta {d['mean']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}] includes 0).{_caveat(res)}"
            )
        if res.get("fit", {}).get("converged") is False:
            lines.append(
                f"{probe}: the Thurstonian fit stopped before it converged; its utilities may be off the best fit."
            )
        adh = res["adherence"]
        if adh["prompts"] and adh["low_adherence_prompts"] > adh["prompts"] / 2:
            lines.append(
                f"{probe}: low format adherence: mean valid-answer mass {adh['mean_valid_mass']:.2f}; "
                f"{adh['low_adherence_prompts']}/{adh['prompts']} prompts below {adh['threshold']}."
            )
    for target, res in empathy.items():
        if res["r"] is None:
            lines.append(f"empathy ({target}, {res['probe']}): not measured: {res['reason']}.")
            continue
        verdict = "CI excludes 0" if excludes_zero(res["ci95"]) else "CI includes 0: no detectable empathy"
        lines.append(
            f"empathy ({target}, {res['probe']}): r = {res['r']:+.2f}, 95% CI [{res['ci95'][0]:+.2f}, "
            f"{res['ci95'][1]:+.2f}] over {res['n']} non-neutral items ({verdict}).{_caveat(probes_out[res['probe']])}"
        )
    return lines


def _reading(probe_result: dict) -> dict:
    """Whether a probe's numbers are a wellbeing reading at all, and if not, why: the model must answer in
    the asked format, and a pairwise probe's subject must prefer some experiences to others."""
    reasons = []
    adherence, fit = probe_result["adherence"], probe_result.get("fit", {})
    if not adherence["reliable"]:
        reasons.append(
            f"the model rarely answers in the asked format (valid-answer mass {adherence['mean_valid_mass']:.2f})"
        )
    if fit.get("utilities_differ") is False:
        reasons.append("it preferred no experience over another (every comparison even, every utility equal)")
    return {"reliable": not reasons, "reasons": reasons}


def reliable_reading(probe_result: dict) -> bool:
    """A probe result's verdict (`reading`), or its adherence's where it was written before readings were."""
    return probe_result.get("reading", probe_result["adherence"])["reliable"]


def _caveat(probe_result: dict) -> str:
    reading = _reading(probe_result)
    return "" if reading["reliable"] else f" Not a reliable wellbeing reading: {'; '.join(reading['reasons'])}."
