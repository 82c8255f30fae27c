"""The evaluation: baseline vs post-dysphoric wellbeing on every probe, zero point, and empathy, with CIs.

`evaluate(config, subject, stimuli)` is the notebook API; `welfare eval` is a thin layer over it.
Conditions: *baseline* = neutral experiences in context, *post-dysphoric* =
dysphoric experiences in context, both on the held-out split by default. In-context probes (self-report,
stop) for one experience share its KV-cached prefix in a single engine call; experienced utility compares
experiences pairwise and fits a Thurstonian model.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.common.checks import number_in
from welfare_offsets.eval.experiences import Experience, StimulusError, StimulusSet
from welfare_offsets.eval.in_context import BATTERY, IN_CONTEXT, score_in_context
from welfare_offsets.eval.replies import live_through
from welfare_offsets.eval.scoring import NextTokenScorer
from welfare_offsets.eval.settings import OutputSettings, ProbeSettings, SubjectSettings, TrackingSettings, setting
from welfare_offsets.eval.stats import difference_ci, excludes_zero, mean_ci, pearson_ci
from welfare_offsets.eval.subject import check_device
from welfare_offsets.eval.thurstonian import active_pairs, fit_thurstonian, initial_pairs
from welfare_offsets.eval.validity import describe as describe_validity
from welfare_offsets.eval.validity import validity

CONDITIONS = ("baseline", "post_dysphoric")
EMPATHY_TARGETS = ("self", "human", "animal")


@dataclass(kw_only=True)
class EvalConfig(OutputSettings, TrackingSettings, ProbeSettings, SubjectSettings):
    """What to measure and how: the shared concerns (eval/settings.py) and the fields only an evaluation has.
    YAML keys and `welfare eval` flags are these field names."""

    device: str | None = setting(None, "cpu, cuda, cuda:1 ...; default: cuda if available")
    adherence_threshold: float = setting(0.5, "flag prompts whose probability mass on valid answers is below this")

    def check(self):
        number_in(self, "adherence_threshold", 0.0, 1.0)
        check_device(self.device)


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

    results = _summarise(config, chosen, scored.scores, scored.adherence, scored.fit_info, rng)
    results["instrument"] = config.load_instrument().record()
    results["timing"] = {**scored.timing, "prompts_scored": len(scored.samples)}
    per_item = [{**row, "roles": roles[row["item_id"]]} for row in scored.item_rows(config.replies == "own")]
    return Evaluation(results=results, samples=scored.samples, items=per_item)


@dataclass
class ItemScores:
    """Every probe's score per experience, as the subject lived them (own replies included when asked for)."""

    items: list[Experience]
    scores: dict[str, dict[str, float]]  # probe -> item id -> score
    utility_sd: dict[str, float]  # item id -> Thurstonian sigma, in the standardised utility units
    adherence: dict[str, dict]
    fit_info: dict | None
    samples: list[dict]
    timing: dict[str, float]

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
                **({"experienced_utility_sd": self.utility_sd.get(e.id)} if self.utility_sd else {}),
            }
            for e in self.items
        ]


def score_items(config: EvalConfig, subject, items: list[Experience], rng: np.random.Generator) -> ItemScores:
    """Score `items` on every probe in `config` with one engine: in-context probes share each experience's
    KV-cached prefix; experienced utility compares items pairwise and fits a Thurstonian model."""
    timing: dict[str, float] = {}
    instrument = config.load_instrument()
    if config.replies == "own":
        start = time.perf_counter()
        items = live_through(
            subject, items, max_new_tokens=config.reply_tokens, batch_size=config.batch_size, progress=config.progress
        )
        timing["own_replies_s"] = time.perf_counter() - start
    scorer = NextTokenScorer(
        subject.model,
        subject.tokenizer,
        batch_size=config.batch_size,
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
        by_prompt = _Scored(scored.score, scored.prompts)
        # The battery mean is read from the same prompts as the headline item, so it costs nothing more.
        for probe in in_context + ([BATTERY] if "self_report" in in_context else []):
            rows, score, mass = scored.prompt_scores("self_report" if probe == BATTERY else probe)
            scores[probe] = dict(zip([e.id for e in items], scored.experience_scores(probe)[0].tolist()))
            adherence[probe] = _adherence(mass, config.adherence_threshold)
            if probe != BATTERY:
                samples += by_prompt.records([scored.requests[k] for k in rows], rows, score, mass)
        timing["self_report+stop_s"] = time.perf_counter() - start

    fit_info, utility_sd = None, {}
    if "experienced_utility" in config.probe_names:
        start = time.perf_counter()
        utilities, utility_sd, fit_info, eu_samples, mass = _experienced_utility(
            scorer, subject.tokenizer, items, config, rng
        )
        scores["experienced_utility"] = utilities
        adherence["experienced_utility"] = _adherence(mass, config.adherence_threshold)
        samples += eu_samples
        timing["experienced_utility_s"] = time.perf_counter() - start
    return ItemScores(items, scores, utility_sd, adherence, fit_info, samples, timing)


@dataclass
class _Scored:
    values: np.ndarray  # [n_requests, n_labels]
    prompts: list[str]

    def records(self, requests, rows, score, mass) -> list[dict]:
        return [
            {
                "probe": r.probe,
                "item_id": r.item_id,
                "question": r.question,
                "prompt": self.prompts[k],
                "prompt_sha256": hashlib.sha256(self.prompts[k].encode()).hexdigest(),
                "score": float(s),
                "valid_mass": float(m),
            }
            for r, k, s, m in zip(requests, rows, score, mass)
        ]


def _score(scorer: NextTokenScorer, tokenizer, requests: list[P.Request], labels, desc: str) -> _Scored:
    prompts = [P.render_prompt(tokenizer, r.messages) for r in requests]
    values = scorer.label_probs(prompts, labels, groups=[r.group for r in requests], desc=desc)
    return _Scored(values, prompts)


def _adherence(mass: np.ndarray, threshold: float) -> dict:
    return {
        "mean_valid_mass": float(np.mean(mass)) if len(mass) else float("nan"),
        "low_adherence_prompts": int(np.sum(mass < threshold)),
        "prompts": int(len(mass)),
        "threshold": threshold,
        # A probe read from a distribution that mostly lies off the valid answers says little about wellbeing.
        "reliable": bool(len(mass) and np.mean(mass) >= threshold),
    }


def _experienced_utility(scorer, tokenizer, items: list[Experience], config: EvalConfig, rng):
    """Pairwise comparisons (both orders), an initial random design plus active near-tie rounds, then a fit."""
    n = len(items)
    asked: list[tuple[int, int]] = []
    p_first: list[float] = []
    samples: list[dict] = []
    masses: list[np.ndarray] = []
    new_pairs = initial_pairs(n, config.eu_degree, rng)
    fit = None
    for round_index in range(config.eu_active_rounds + 1):
        if not new_pairs:
            break
        requests = P.comparison_requests([(items[a], items[b]) for a, b in new_pairs])
        scored = _score(scorer, tokenizer, requests, P.CHOICE, f"experienced utility (round {round_index + 1})")
        p_a, mass = P.choice_first(scored.values)
        samples += scored.records(requests, range(len(requests)), p_a, mass)
        masses.append(mass)
        asked += new_pairs
        p_first += P.preference_probability(p_a[0::2], p_a[1::2]).tolist()
        fit = fit_thurstonian(n, np.array(asked), np.array(p_first))
        new_pairs = active_pairs(fit, set(asked), n_new=max(1, n // 2))
    utilities = {e.id: float(u) for e, u in zip(items, fit.mu)}
    utility_sd = {e.id: float(sd) for e, sd in zip(items, fit.sigma)}
    info = {
        "n_items": n,
        "n_pairs": len(asked),
        "converged": fit.converged,
        "sigma_mean": float(np.mean(fit.sigma)),
        "pairs_vs_all_pairs": len(asked) / max(1, n * (n - 1) // 2),
    }
    return utilities, utility_sd, info, samples, np.concatenate(masses) if masses else np.zeros(0)


def _summarise(config, chosen, scores, adherence, fit_info, rng) -> dict:
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
    if fit_info:
        probes_out["experienced_utility"]["fit"] = fit_info
    empathy = {}
    primary = "experienced_utility" if "experienced_utility" in scores else next(iter(scores))
    for target in EMPATHY_TARGETS:
        exps = chosen[f"empathy_{target}"]
        intensity = np.array([e.intensity for e in exps])
        by_probe = {
            probe: pearson_ci(intensity, np.array([s[e.id] for e in exps]), config.bootstrap, rng)
            for probe, s in scores.items()
        }
        empathy[target] = {**by_probe[primary], "probe": primary, "by_probe": by_probe}
    zero_point = _zero_point(scores, chosen, config, rng)
    checks = validity(scores, config.bootstrap, rng)
    return {
        "probes": probes_out,
        "zero_point": zero_point,
        "empathy": empathy,
        "validity": checks,
        "interpretation": _interpret(probes_out, empathy) + describe_validity(checks),
        "n_items": {k: len(v) for k, v in chosen.items()},
    }


def _zero_point(scores, chosen, config, rng) -> dict:
    """Two simple zero-point estimates on the utility scale."""
    if "experienced_utility" not in scores:
        return {}
    utility = scores["experienced_utility"]
    out = {"neutral_mean": mean_ci([utility[e.id] for e in chosen["baseline"]], config.bootstrap, rng)}
    if "self_report" in scores:
        ids = sorted(set(utility) & set(scores["self_report"]))
        u = np.array([utility[i] for i in ids])
        sr = np.array([scores["self_report"][i] for i in ids])
        out["sr_crossing"] = _sr_crossing(u, sr, config.bootstrap, rng)
    return out


def _sr_crossing(u: np.ndarray, sr: np.ndarray, n_boot: int, rng) -> dict:
    """Utility at which a linear fit of self-report on utility crosses the neutral point 4."""

    def fit(x, y) -> tuple[float, float]:
        """(slope, crossing) of one least-squares line; nan where the line is undefined or flat."""
        if x.std() == 0:
            return float("nan"), float("nan")
        slope, intercept = np.polyfit(x, y, 1)
        return float(slope), (P.SR_NEUTRAL - intercept) / slope if slope != 0 else float("nan")

    slope, crossing = fit(u, sr)
    boots = np.array([fit(u[idx], sr[idx]) for idx in rng.integers(0, len(u), (n_boot, len(u)))])
    crossings = boots[:, 1][np.isfinite(boots[:, 1])]
    ci = [float(x) for x in np.percentile(crossings, [2.5, 97.5])] if crossings.size else [float("nan")] * 2
    slope_ci = [float(x) for x in np.nanpercentile(boots[:, 0], [2.5, 97.5])]
    return {
        "mean": float(crossing),
        "ci95": ci,
        "slope": slope,
        "slope_ci95": slope_ci,
        # With no reliable SR-utility relation the crossing is an extrapolation, not an estimate.
        "reliable": excludes_zero(slope_ci),
    }


def _interpret(probes_out: dict, empathy: dict) -> list[str]:
    """Plain-language reading of the headline numbers; null results are stated as such."""
    lines = []
    for probe, res in probes_out.items():
        d = res["delta"]
        lo, hi = d["ci95"]
        if excludes_zero(d["ci95"]):
            direction = "lower" if d["mean"] < 0 else "higher"
            lines.append(
                f"{probe}: post-dysphoric is {direction} than baseline (delta {d['mean']:+.3f}, "
                f"95% CI [{lo:+.3f}, {hi:+.3f}]).{_caveat(res)}"
            )
        else:
            lines.append(
                f"{probe}: no detectable difference between baseline and post-dysphoric (delta {d['mean']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}] includes 0)."
            )
        adh = res["adherence"]
        if adh["prompts"] and adh["low_adherence_prompts"] > adh["prompts"] / 2:
            lines.append(
                f"{probe}: low format adherence: mean valid-answer mass {adh['mean_valid_mass']:.2f}; "
                f"{adh['low_adherence_prompts']}/{adh['prompts']} prompts below {adh['threshold']}."
            )
    for target, res in empathy.items():
        if excludes_zero(res["ci95"]):
            verdict = "CI excludes 0" + _caveat(probes_out[res["probe"]])
        else:
            verdict = "CI includes 0: no detectable empathy"
        lines.append(
            f"empathy ({target}, {res['probe']}): r = {res['r']:+.2f}, 95% CI [{res['ci95'][0]:+.2f}, {res['ci95'][1]:+.2f}] ({verdict})."
        )
    return lines


def _caveat(probe_result: dict) -> str:
    if probe_result["adherence"]["reliable"]:
        return ""
    return (
        " Not a reliable wellbeing reading: the model rarely answers in the asked format"
        f" (valid-answer mass {probe_result['adherence']['mean_valid_mass']:.2f})."
    )
