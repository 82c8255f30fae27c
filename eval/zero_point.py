"""Zero-point estimators: the utility that separates experiences a subject is glad of from ones it is not.

Thurstonian utilities (mean 0, sd 1 over the items) have an arbitrary origin, so where "good" turns into
"bad" must be estimated. Four estimators are reported side by side:

* neutral_mean: the mean utility of the neutral items; biased whenever "neutral" tasks are mildly liked.
* sr_crossing: where a least-squares line of self-report (1-7) on utility crosses the neutral point 4.
* sr_crossing_sigmoid: the same crossing from SR = 1 + 6 sigmoid(k (u - u0)), which respects the bounded
  scale instead of letting a line run past 1 and 7.
* combination (the primary estimate of "AI Wellbeing", CAIS 2026): bundles of 2-4 experiences, lived as one
  conversation, get utilities from the same pairwise comparisons as single experiences. A bundle's utility
  is modelled as U = C + g [log(1 + a P) - log(1 + b N)], with P and N the summed gains and losses of its
  parts against C; gains and losses only add up this way around the true zero, so the fitted C is the zero.

`chosen` is the combination estimate where its fit is reliable (r^2 >= 0.4, the anchor's bar), otherwise
the neutral mean, with the reason in words. Every CI is a percentile bootstrap over items (bundles for the
combination fit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.special import expit

from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.probes import SR_NEUTRAL, _joined
from welfare_offsets.eval.stats import excludes_zero, mean_ci, percentile_ci

R2_RELIABLE = 0.4  # the anchor's bar: below it the combination model does not describe the bundles
MIN_BUNDLES = 20  # four parameters fitted to a handful of bundles reach r^2 0.4 by chance
MIN_SELF_REPORTS = 3  # a line through two points has no residual, and its bootstrap is degenerate


@dataclass(frozen=True)
class Bundle:
    id: str
    parts: tuple[str, ...]  # experience ids, in the order they are lived
    experience: Experience  # the parts' conversations one after another


@dataclass(frozen=True)
class CombinationFit:
    C: float  # the zero point
    g: float
    a: float
    b: float
    r2: float  # of predicted vs observed bundle utilities
    converged: bool


def make_bundles(
    items: Sequence[Experience], n_bundles: int, rng: np.random.Generator, sizes=(2, 3, 4)
) -> list[Bundle]:
    """`n_bundles` distinct bundles of distinct items, the sizes taken in turn. Parts come in random order,
    so no position in the conversation is held by the same kind of experience throughout."""
    if len({e.id for e in items}) != len(items):
        raise ValueError("bundle items must have distinct ids")
    sizes = [s for s in sizes if s <= len(items)]
    possible = sum(math.comb(len(items), s) for s in sizes)
    if n_bundles > possible:
        raise ValueError(f"{n_bundles} bundles asked for, but {len(items)} items make only {possible}")
    seen: set[frozenset[str]] = set()
    bundles = []
    attempt = 0
    while len(bundles) < n_bundles:
        # Advancing the size on every attempt, not every bundle, cannot stall on a size that is used up.
        parts = [items[i] for i in rng.choice(len(items), size=sizes[attempt % len(sizes)], replace=False)]
        attempt += 1
        key = frozenset(e.id for e in parts)
        if key not in seen:
            seen.add(key)
            bundles.append(_bundle(parts))
    return bundles


def _bundle(parts: Sequence[Experience]) -> Bundle:
    """The parts as one conversation. Chat templates take a system message only first, so a later one
    becomes user text, merged into the user turn that follows it."""
    lived = [m for e in parts for m in e.messages]
    messages = [{**m, "role": "user"} if k > 0 and m["role"] == "system" else m for k, m in enumerate(lived)]
    ids = tuple(e.id for e in parts)
    experience = Experience(
        id="bundle:" + "+".join(ids),
        messages=_joined(messages),
        valence="neutral",  # other code accepts only stimulus valences; category marks it as a bundle
        category="bundle",
        target="none",
        intensity=0.0,
        split="heldout" if any(e.split == "heldout" for e in parts) else parts[0].split,
    )
    return Bundle(experience.id, ids, experience)


def bundle_record(bundle: Bundle) -> dict:
    """What to save with results so the bundles can be rebuilt from the stimulus set."""
    return {"id": bundle.id, "parts": list(bundle.parts)}


def _combination_model(theta, values, total, size, y):
    """Residuals [B, bundles] and Jacobian [B, bundles, 4] at B parameter rows (C, g, a, b). `values` holds
    each bundle's part utilities ([bundles, parts], or one such per parameter row), padded with -inf (never
    a gain); losses follow from gains, since gains minus losses is the parts' summed difference from C."""
    C, g, a, b = (theta[:, k, None] for k in range(4))
    # A loop over part positions (at most 4) is much faster than reducing a short trailing axis.
    columns = np.moveaxis(values, -1, 0)
    P = sum(np.maximum(column - C, 0.0) for column in columns)
    N = np.maximum(P - (total - C * size), 0.0)
    n_gains = sum(column > C for column in columns)
    logs = np.log1p(a * P) - np.log1p(b * N)
    dC = 1.0 - g * a * n_gains / (1 + a * P) - g * b * (size - n_gains) / (1 + b * N)
    return C + g * logs - y, np.stack([dC, logs, g * P / (1 + a * P), -g * N / (1 + b * N)], axis=-1)


def fit_combination(
    part_utilities: list[np.ndarray], bundle_utilities: np.ndarray, rng: np.random.Generator, n_starts: int = 8
) -> CombinationFit:
    """Least-squares fit of the combination model; the best of `n_starts` seeded starts (the loss is not
    convex in C: each C splits the parts into gains and losses differently)."""
    model, (lo, hi) = _combination_problem(part_utilities, bundle_utilities)
    y = np.asarray(bundle_utilities, dtype=np.float64)
    starts = [np.array([(lo[0] + hi[0]) / 2, 1.0, 1.0, 1.0])]
    for _ in range(n_starts - 1):
        starts.append(np.concatenate([[rng.uniform(lo[0], hi[0])], np.exp(rng.uniform(np.log(0.1), np.log(10), 3))]))
    best = min((_least_squares(model, x0, lo, hi) for x0 in starts), key=lambda r: r.cost)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - 2.0 * best.cost / total if total > 0 else float("nan")
    C, g, a, b = (float(v) for v in best.x)
    return CombinationFit(C, g, a, b, float(r2), bool(best.success))


@dataclass(frozen=True)
class UtilityDraws:
    """Utilities as they might have come out of other comparisons: `values[b]` is draw b of the utilities
    of `ids` (from the fit's sampling covariance), for CIs that carry the fit's own uncertainty."""

    ids: list[str]
    values: np.ndarray  # [draws, len(ids)]

    def of(self, ids: Sequence[str]) -> np.ndarray:
        """The draws of `ids`, [draws, len(ids)]."""
        column = {item: k for k, item in enumerate(self.ids)}
        return self.values[:, [column[item] for item in ids]]


def utility_draws(ids: list[str], utility: np.ndarray, cov: np.ndarray, n_draws: int, rng) -> UtilityDraws:
    """`n_draws` draws of N(utility, cov); cov may be singular (centred utilities have no spread along 1)."""
    variances, axes = np.linalg.eigh(0.5 * (cov + cov.T))
    spread = axes * np.sqrt(np.clip(variances, 0.0, None))
    return UtilityDraws(ids, utility + rng.standard_normal((n_draws, len(ids))) @ spread.T)


def combination_replicates(
    fit: CombinationFit,
    part_utilities: list[np.ndarray],
    bundle_utilities: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
    drawn: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """C refitted to `n_boot` resamples of the bundles, each refit started once, from the point estimate.
    With `drawn` (the parts' utilities [draws, bundles, parts], -inf padded, and the bundles' [draws,
    bundles]), refit b also sees utilities of draw b: the CI then carries the utilities' own uncertainty,
    without which it covered about 70% (a bundle resample alone treats every fitted utility as exact)."""
    model, (lo, hi) = _combination_problem(part_utilities, bundle_utilities)
    if drawn is not None:
        values, y = drawn
        lo[0], hi[0] = min(lo[0], np.nanmin(np.where(np.isinf(values), np.nan, values))), max(hi[0], values.max())
        total, size = np.where(np.isinf(values), 0.0, values).sum(-1), np.isfinite(values).sum(-1)
        model = lambda theta, rows: _combination_model(theta, values[rows], total[rows], size[rows], y[rows])  # noqa: E731
    x = np.array([fit.C, fit.g, fit.a, fit.b])
    return _bootstrap_refits(model, x, len(bundle_utilities), lo, hi, n_boot, rng)[:, 0]


def combination_estimate(
    utility: dict[str, float],
    bundles: Sequence[dict],
    n_boot: int,
    rng: np.random.Generator,
    draws: UtilityDraws | None = None,
) -> tuple[dict, np.ndarray] | None:
    """The combination fit over the bundles whose utility and parts' utilities are known, as reported, and
    its bootstrap replicates of C (with `draws`, each over a draw of the utilities too); None with fewer
    than MIN_BUNDLES such bundles."""
    measured = [b for b in bundles if b["id"] in utility and all(p in utility for p in b["parts"])]
    if len(measured) < MIN_BUNDLES:
        return None
    parts = [np.array([utility[p] for p in b["parts"]]) for b in measured]
    y = np.array([utility[b["id"]] for b in measured])
    if not np.ptp(np.concatenate(parts)) > 0:  # a subject that prefers nothing: no gains, no losses, no zero
        entry = {"mean": float("nan"), "ci95": [float("nan")] * 2, "r2": float("nan"), "n_bundles": len(measured)}
        return {**entry, "reliable": False, "converged": False, "degenerate": True}, np.full(n_boot, np.nan)
    fit = fit_combination(parts, y, rng)
    drawn = None
    if draws is not None:
        width = max(len(p) for p in parts)
        padded = [list(b["parts"]) + [None] * (width - len(b["parts"])) for b in measured]
        ids = [p for row in padded for p in row if p is not None]
        flat = draws.of(ids)
        values = np.full((n_boot, len(measured), width), -np.inf)
        mask = np.array([[p is not None for p in row] for row in padded])
        values[:, mask] = flat
        drawn = values, draws.of([b["id"] for b in measured])
    replicates = combination_replicates(fit, parts, y, n_boot, rng, drawn)
    entry = {
        "mean": fit.C,
        "ci95": percentile_ci(replicates),
        "r2": fit.r2,
        "params": {"C": fit.C, "g": fit.g, "a": fit.a, "b": fit.b},
        "n_bundles": len(measured),
        "reliable": fit.converged and fit.r2 >= R2_RELIABLE,
        "converged": fit.converged,
    }
    return entry, replicates


def _combination_problem(part_utilities, bundle_utilities):
    """The model as a function of parameter rows, and its bounds: C within the range of the part utilities,
    g, a and b positive and finite."""
    y = np.asarray(bundle_utilities, dtype=np.float64)
    values = np.full((len(part_utilities), max(len(p) for p in part_utilities)), -np.inf)
    for k, p in enumerate(part_utilities):
        values[k, : len(p)] = p
    parts = np.concatenate(part_utilities)
    if not parts.max() > parts.min():
        raise ValueError("a combination fit needs part utilities that differ")
    total, size = np.array([p.sum() for p in part_utilities]), np.array([len(p) for p in part_utilities])
    bounds = np.array([parts.min(), 1e-3, 1e-3, 1e-3]), np.array([parts.max(), 1e3, 1e3, 1e3])
    return (lambda theta, rows=None: _combination_model(theta, values, total, size, y)), bounds


def _least_squares(model, x0, lo, hi):
    """scipy's bounded least squares on a batched model, for the point estimates."""
    return least_squares(
        lambda t: model(t[None])[0][0], x0, jac=lambda t: model(t[None])[1][0], bounds=(lo, hi), max_nfev=500
    )


def _bootstrap_refits(model, x, n, lo, hi, n_boot, rng) -> np.ndarray:
    """Parameters refitted to `n_boot` resamples of the n observations, all at once: a resample is the same
    data with multinomial counts as weights, so one batched solver does every refit."""
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    return _batched_lm(model, np.tile(x, (n_boot, 1)), weights, lo, hi)


def _batched_lm(model, theta, weights, lo, hi, max_iterations=30, rtol=1e-9):
    """Weighted least squares for many problems at once by Levenberg-Marquardt, steps projected into the
    bounds (`model(theta, rows)`: residuals and Jacobians of problems `rows` at their parameters `theta`);
    a problem leaves the batch once settled. Started at a nearby optimum (the point estimate), most
    settle in a few steps; one still crawling after `max_iterations` is in a flat valley of the loss, where
    more steps barely move it (against per-resample scipy refits, the CI ends agreed to 0.001 for fits with
    r^2 >= 0.4)."""
    theta = theta.copy()
    r, J = model(theta, np.arange(len(theta)))
    cost = (weights * r * r).sum(1)
    damping = np.full(len(theta), 1e-3)
    active = np.arange(len(theta))
    for _ in range(max_iterations):
        if active.size == 0:
            break
        w, lam = weights[active], damping[active, None, None]
        JtW = J[active].transpose(0, 2, 1) * w[:, None, :]
        A = JtW @ J[active]
        scaled = lam * np.eye(theta.shape[1]) * np.maximum(np.einsum("bii->bi", A), 1e-12)[:, None, :]
        step = np.linalg.solve(A + scaled, -(JtW @ r[active, :, None]))[..., 0]
        trial = np.clip(theta[active] + step, lo, hi)
        r_trial, J_trial = model(trial, active)
        cost_trial = (w * r_trial * r_trial).sum(1)
        better = cost_trial < cost[active]
        # Settled: an accepted step that barely helps, or a step too small to move.
        settled = better & (cost[active] - cost_trial <= rtol * cost[active])
        settled |= (np.abs(trial - theta[active]) <= 1e-10).all(1)
        moved = active[better]
        theta[moved], cost[moved] = trial[better], cost_trial[better]
        r[moved], J[moved] = r_trial[better], J_trial[better]
        damping[active] = np.where(better, damping[active] / 3, damping[active] * 3)
        active = active[~settled]
    return theta


def sr_crossing(u: np.ndarray, sr: np.ndarray, n_boot: int, rng: np.random.Generator) -> dict:
    """Utility at which a least-squares line of self-report on utility crosses the neutral point 4.
    Reliable only when the slope's CI excludes 0 (without an SR-utility relation the crossing is an
    extrapolation, not an estimate) and the crossing lies within the measured utilities (beyond them the
    line is extrapolated)."""
    u, sr = np.asarray(u, dtype=np.float64), np.asarray(sr, dtype=np.float64)
    slope, crossing = _lines(u[None], sr[None])
    idx = rng.integers(0, len(u), (n_boot, len(u)))
    slopes, crossings = _lines(u[idx], sr[idx])
    slope_ci = percentile_ci(slopes)
    return {
        "mean": float(crossing[0]),
        "ci95": percentile_ci(crossings),
        "slope": float(slope[0]),
        "slope_ci95": slope_ci,
        "reliable": excludes_zero(slope_ci) and bool(u.min() <= crossing[0] <= u.max()),
        "n": int(len(u)),
    }


def _lines(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slope, crossing of SR_NEUTRAL) of a least-squares line per row; nan where x is constant or the line flat."""
    dx, dy = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    sxx = (dx * dx).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(sxx > 0, (dx * dy).sum(1) / sxx, np.nan)
        crossing = x.mean(1) + (SR_NEUTRAL - y.mean(1)) / np.where(slope != 0, slope, np.nan)
    return slope, crossing


def _sigmoid_model(theta, u, sr):
    """Residuals [B, items] and Jacobian [B, items, 2] at B parameter rows (k, u0)."""
    k, u0 = theta[:, 0, None], theta[:, 1, None]
    s = expit(k * (u - u0))
    ds = 6.0 * s * (1.0 - s)
    return 1.0 + 6.0 * s - sr, np.stack([ds * (u - u0), -ds * k], axis=-1)


def sr_crossing_sigmoid(u: np.ndarray, sr: np.ndarray, n_boot: int, rng: np.random.Generator) -> dict:
    """u0 of SR = 1 + 6 sigmoid(k (u - u0)), where the curve passes 4; reliable when the fit converged, k's
    CI excludes 0 (a flat curve has no crossing) and u0 lies within the measured utilities (beyond them
    it is an extrapolation). Bounds keep k and u0 finite when SR barely varies."""
    u, sr = np.asarray(u, dtype=np.float64), np.asarray(sr, dtype=np.float64)
    span = float(np.ptp(u)) or 1.0
    lo, hi = np.array([-50.0 / span, u.min() - span]), np.array([50.0 / span, u.max() + span])
    slope, crossing = _lines(u[None], sr[None])
    # The curve's slope at u0 is 1.5 k, so the line gives the start.
    start = np.clip(np.nan_to_num(np.array([slope[0] / 1.5, crossing[0]])), lo, hi)
    model = lambda theta, rows=None: _sigmoid_model(theta, u, sr)  # noqa: E731
    fit = _least_squares(model, start, lo, hi)
    boots = _bootstrap_refits(model, fit.x, len(u), lo, hi, n_boot, rng)
    k_ci = percentile_ci(boots[:, 0])
    return {
        "mean": float(fit.x[1]),
        "ci95": percentile_ci(boots[:, 1]),
        "k": float(fit.x[0]),
        "k_ci95": k_ci,
        "converged": bool(fit.success),
        "reliable": bool(fit.success) and excludes_zero(k_ci) and bool(u.min() <= fit.x[1] <= u.max()),
        "n": int(len(u)),
    }


def zero_point_estimates(
    utility: dict[str, float],
    *,
    neutral_ids: list[str],
    self_report: dict[str, float] | None,
    bundles: Sequence[dict],
    n_boot: int,
    rng: np.random.Generator,
    draws: UtilityDraws | None = None,
) -> dict:
    """Every estimator whose inputs are present, and the chosen zero point; JSON-ready. `bundles` are
    `bundle_record`s; `utility` holds the utilities of the items and of the bundles alike. With `draws`
    (n_boot of them) the neutral mean's and the combination fit's CIs carry the utilities' uncertainty."""
    out: dict = {}
    neutral_ids = [i for i in neutral_ids if i in utility]
    if neutral_ids:
        values = [utility[i] for i in neutral_ids]
        out["neutral_mean"] = mean_ci(values, n_boot, rng, None if draws is None else draws.of(neutral_ids))
    if self_report:
        ids = sorted(set(utility) & set(self_report))
        if len(ids) >= MIN_SELF_REPORTS:
            u, sr = np.array([utility[i] for i in ids]), np.array([self_report[i] for i in ids])
            out["sr_crossing"] = sr_crossing(u, sr, n_boot, rng)
            out["sr_crossing_sigmoid"] = sr_crossing_sigmoid(u, sr, n_boot, rng)
    combination = combination_estimate(utility, bundles, n_boot, rng, draws)
    if combination:
        out["combination"] = combination[0]
    out["chosen"] = chosen_zero_point(out.get("combination"), out.get("neutral_mean"))
    return out


def zero_point_draws(
    utility: dict[str, float], neutral_ids: Sequence[str], bundles: Sequence[dict], n_boot: int, rng
) -> tuple[np.ndarray, dict]:
    """[point, replicate_1 .. replicate_B] of the chosen zero point, and {"estimator", "reason"}: for
    statistics measured against the zero point, whose CIs must carry its uncertainty. `utility` holds the
    bundles' utilities too; the neutral mean's replicates resample the neutral items."""
    neutral = np.array([utility[i] for i in neutral_ids], dtype=np.float64)
    neutral_draws = np.full(n_boot + 1, np.nan)
    if len(neutral):
        picks = rng.integers(0, len(neutral), (n_boot, len(neutral)))
        neutral_draws = np.concatenate([[neutral.mean()], neutral[picks].mean(axis=1)])
    combination = combination_estimate(utility, bundles, n_boot, rng) if bundles else None
    neutral_mean = {"mean": float(neutral_draws[0]), "ci95": percentile_ci(neutral_draws[1:])} if len(neutral) else None
    chosen = chosen_zero_point(combination and combination[0], neutral_mean)
    info = {"estimator": chosen["estimator"], "reason": chosen["reason"]}
    if chosen["estimator"] == "combination":
        return np.concatenate([[combination[0]["mean"]], combination[1]]), info
    return neutral_draws, info


def chosen_zero_point(combination: dict | None, neutral_mean: dict | None) -> dict:
    """The combination estimate where reliable, else the neutral mean ({mean, ci95}), and why."""
    if combination and combination["reliable"]:
        reason = (
            f"combination fit r^2 {combination['r2']:.2f} >= {R2_RELIABLE} over {combination['n_bundles']} "
            "bundles: reliable"
        )
        return {"estimator": "combination", "mean": combination["mean"], "ci95": combination["ci95"], "reason": reason}
    if combination is None:
        why = f"fewer than {MIN_BUNDLES} bundles with utilities: no combination fit"
    elif combination.get("degenerate"):
        why = "the parts of every bundle have the same utility (no preference between experiences): no combination fit"
    elif not combination["converged"]:
        why = "combination fit did not converge: not reliable"
    else:
        why = f"combination fit r^2 {combination['r2']:.2f} < {R2_RELIABLE}: not reliable"
    if neutral_mean is None:
        return {
            "estimator": None,
            "mean": float("nan"),
            "ci95": [float("nan")] * 2,
            "reason": f"{why}; no neutral items",
        }
    return {
        "estimator": "neutral_mean",
        "mean": neutral_mean["mean"],
        "ci95": neutral_mean["ci95"],
        "reason": f"{why}; using the neutral-item mean",
    }
