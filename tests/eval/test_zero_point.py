"""Zero-point estimators on utilities simulated with a planted zero point (no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit

from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.zero_point import (
    R2_RELIABLE,
    bundle_record,
    fit_combination,
    make_bundles,
    sr_crossing,
    sr_crossing_sigmoid,
    zero_point_draws,
    zero_point_estimates,
)

TRUE_C = -0.3
NEUTRAL_OFFSET = 0.4  # "neutral" tasks mildly liked: the neutral mean sits this far above the true zero


def experience(i: int, system: str | None = None, split: str = "train") -> Experience:
    messages = ({"role": "system", "content": system},) if system else ()
    messages += ({"role": "user", "content": f"user {i}"}, {"role": "assistant", "content": f"assistant {i}"})
    return Experience(f"e{i}", messages, "neutral", "c", "none", 0.0, split)


def combination(parts: np.ndarray, C=TRUE_C, g=0.8, a=1.5, b=2.5) -> float:
    gains, losses = np.maximum(parts - C, 0).sum(), np.maximum(C - parts, 0).sum()
    return C + g * (np.log1p(a * gains) - np.log1p(b * losses))


def simulated(bundle_noise: float | None, seed: int = 0):
    """Utilities of 60 items (the first 10 neutral, placed NEUTRAL_OFFSET above the true zero) and of 300
    bundles: from the combination model plus noise, or pure noise when `bundle_noise` is None."""
    rng = np.random.default_rng(seed)
    items = [experience(i) for i in range(60)]
    u = rng.normal(size=60)
    u[:10] = TRUE_C + NEUTRAL_OFFSET + rng.normal(0, 0.05, 10)
    utility = {e.id: float(x) for e, x in zip(items, u)}
    bundles = make_bundles(items, 300, rng)
    for b in bundles:
        parts = np.array([utility[p] for p in b.parts])
        noise = rng.normal(0, bundle_noise or 1.0)
        utility[b.id] = float(noise if bundle_noise is None else combination(parts) + noise)
    return utility, [e.id for e in items[:10]], [bundle_record(b) for b in bundles]


def test_the_combination_fit_finds_the_planted_zero_where_the_neutral_mean_is_biased():
    utility, neutral, bundles = simulated(bundle_noise=0.05)
    out = zero_point_estimates(
        utility, neutral_ids=neutral, self_report=None, bundles=bundles, n_boot=200, rng=np.random.default_rng(1)
    )
    fit = out["combination"]
    assert abs(fit["mean"] - TRUE_C) < 0.05
    assert fit["ci95"][0] <= TRUE_C <= fit["ci95"][1]
    assert fit["r2"] > 0.9 and fit["reliable"] and fit["n_bundles"] == 300
    assert abs(out["neutral_mean"]["mean"] - TRUE_C - NEUTRAL_OFFSET) < 0.05
    assert out["chosen"]["estimator"] == "combination" and out["chosen"]["mean"] == fit["mean"]
    assert "sr_crossing" not in out and "sr_crossing_sigmoid" not in out


def test_bundles_of_pure_noise_are_not_reliable_and_the_neutral_mean_is_chosen():
    utility, neutral, bundles = simulated(bundle_noise=None)
    out = zero_point_estimates(
        utility, neutral_ids=neutral, self_report=None, bundles=bundles, n_boot=200, rng=np.random.default_rng(1)
    )
    assert out["combination"]["r2"] < R2_RELIABLE and not out["combination"]["reliable"]
    chosen = out["chosen"]
    assert chosen["estimator"] == "neutral_mean" and chosen["mean"] == out["neutral_mean"]["mean"]
    assert "r^2" in chosen["reason"] and "neutral-item mean" in chosen["reason"]


def test_without_bundle_utilities_there_is_no_combination_and_the_reason_says_so():
    utility, neutral, bundles = simulated(bundle_noise=0.05)
    singles = {k: v for k, v in utility.items() if not k.startswith("bundle:")}
    out = zero_point_estimates(
        singles, neutral_ids=neutral, self_report=None, bundles=bundles, n_boot=50, rng=np.random.default_rng(1)
    )
    assert set(out) == {"neutral_mean", "chosen"}
    assert out["chosen"]["estimator"] == "neutral_mean" and "no combination fit" in out["chosen"]["reason"]


def test_fit_combination_recovers_the_planted_parameters():
    rng = np.random.default_rng(2)
    u = rng.normal(size=50)
    parts = [u[rng.choice(50, size, replace=False)] for size in rng.integers(2, 5, 400)]
    fit = fit_combination(parts, np.array([combination(p) for p in parts]), rng)
    assert fit.converged and fit.r2 > 0.999
    assert (fit.C, fit.g, fit.a, fit.b) == pytest.approx((TRUE_C, 0.8, 1.5, 2.5), rel=0.01, abs=0.005)


def test_make_bundles_is_seeded_distinct_and_sized_two_to_four():
    items = [experience(i) for i in range(12)]
    bundles = make_bundles(items, 100, np.random.default_rng(5))
    assert [b.id for b in bundles] == [b.id for b in make_bundles(items, 100, np.random.default_rng(5))]
    assert [b.id for b in bundles] != [b.id for b in make_bundles(items, 100, np.random.default_rng(6))]
    assert all(len(set(b.parts)) == len(b.parts) for b in bundles)
    assert len({frozenset(b.parts) for b in bundles}) == 100
    assert {len(b.parts) for b in bundles} == {2, 3, 4}
    assert bundle_record(bundles[0]) == {"id": "bundle:" + "+".join(bundles[0].parts), "parts": list(bundles[0].parts)}
    with pytest.raises(ValueError, match="make only"):
        make_bundles(items[:4], 12, np.random.default_rng(0))  # 6 + 4 + 1 bundles exist


def test_a_bundle_is_one_conversation_with_a_later_system_prompt_moved_into_a_user_turn():
    items = [experience(i, system=f"system {i}", split="heldout" if i == 2 else "train") for i in range(4)]
    for bundle in make_bundles(items, 11, np.random.default_rng(0)):
        e, first, *later = bundle.experience, *bundle.parts
        roles = [m["role"] for m in e.messages]
        assert roles[0] == "system" and e.messages[0]["content"] == f"system {first[1:]}"
        assert "system" not in roles[1:]
        assert all(x != y for x, y in zip(roles, roles[1:]))
        for part in later:
            i = part[1:]
            assert {"role": "user", "content": f"system {i}\n\nuser {i}"} in e.messages
        assert (e.valence, e.category, e.target, e.intensity) == ("neutral", "bundle", "none", 0.0)
        assert e.split == ("heldout" if "e2" in bundle.parts else "train")


def test_the_linear_self_report_crossing_recovers_a_planted_crossing():
    rng = np.random.default_rng(3)
    u = rng.normal(size=200)
    out = sr_crossing(u, 4 + 1.2 * (u - 0.25) + rng.normal(0, 0.3, 200), 500, rng)
    assert out["mean"] == pytest.approx(0.25, abs=0.05) and out["ci95"][0] < 0.25 < out["ci95"][1]
    assert out["reliable"]
    flat = sr_crossing(u, 4.5 + rng.normal(0, 0.3, 200), 500, rng)
    assert not flat["reliable"]  # no SR-utility relation: the crossing is an extrapolation


def test_the_sigmoid_self_report_crossing_recovers_a_planted_u0():
    rng = np.random.default_rng(4)
    u = rng.normal(size=200)
    sr = 1 + 6 * expit(2.0 * (u + 0.2)) + rng.normal(0, 0.3, 200)
    out = sr_crossing_sigmoid(u, sr, 500, rng)
    assert out["mean"] == pytest.approx(-0.2, abs=0.05) and out["ci95"][0] < -0.2 < out["ci95"][1]
    assert out["k"] == pytest.approx(2.0, rel=0.15) and out["converged"] and out["reliable"]


def test_every_estimate_is_plain_json():
    utility, neutral, bundles = simulated(bundle_noise=0.05)
    rng = np.random.default_rng(7)
    self_report = {k: float(4 + v - TRUE_C + rng.normal(0, 0.3)) for k, v in utility.items() if k.startswith("e")}
    out = zero_point_estimates(
        utility, neutral_ids=neutral, self_report=self_report, bundles=bundles, n_boot=100, rng=rng
    )
    assert set(out) == {"neutral_mean", "sr_crossing", "sr_crossing_sigmoid", "combination", "chosen"}

    def leaves(x):
        if isinstance(x, dict):
            return [leaf for v in x.values() for leaf in leaves(v)]
        if isinstance(x, list):
            return [leaf for v in x for leaf in leaves(v)]
        return [x]

    assert {type(x) for x in leaves(out)} <= {float, int, bool, str, type(None)}
    assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_a_crossing_beyond_the_measured_utilities_is_not_reliable():
    """A clear SR-utility line whose SR = 4 lies past every measured utility is an extrapolation."""
    rng = np.random.default_rng(5)
    u = rng.normal(size=30)
    out = sr_crossing(u, 5.5 + 0.5 * u + rng.normal(0, 0.05, 30), 500, rng)
    assert out["slope_ci95"][0] > 0 and out["mean"] < u.min()
    assert not out["reliable"]


def test_a_subject_without_preferences_has_no_combination_fit_and_the_reason_says_so():
    """Every utility equal (a subject that answers the same whatever it is shown): no crash, no zero."""
    utility, neutral, bundles = simulated(bundle_noise=0.05)
    flat = dict.fromkeys(utility, 0.0)
    for estimates in (
        zero_point_estimates(
            flat, neutral_ids=neutral, self_report=None, bundles=bundles, n_boot=50, rng=np.random.default_rng(1)
        ),
        zero_point_estimates(
            flat,
            neutral_ids=neutral,
            self_report=dict.fromkeys(flat, 4.0),
            bundles=bundles,
            n_boot=50,
            rng=np.random.default_rng(1),
        ),
    ):
        assert not estimates["combination"]["reliable"] and estimates["combination"]["degenerate"]
        assert "no preference between experiences" in estimates["chosen"]["reason"]
    draws, info = zero_point_draws(flat, neutral, bundles, 50, np.random.default_rng(2))
    assert info["estimator"] == "neutral_mean" and "no preference" in info["reason"]


def test_the_combination_ci_carries_the_utilities_own_uncertainty():
    """Utilities fitted from noisy comparisons (the subject not exactly Thurstonian), then the zero point:
    the CI from bundle resamples and utility draws (the fit's sandwich covariance) covers the planted zero,
    mapped onto the fitted scale, in nearly every seeded run (16 of 16). Resampling the bundles alone
    covered 11 of these 16: it treated every fitted utility as exact."""
    from scipy.special import expit, logit, ndtr

    from welfare_offsets.eval.thurstonian import connected_design, fit_thurstonian
    from welfare_offsets.eval.zero_point import utility_draws

    covered = []
    for seed in range(16):
        rng = np.random.default_rng(100 + seed)
        items = [experience(i) for i in range(40)]
        u = rng.normal(size=40)
        bundles = make_bundles(items, 24, rng)
        u_all = np.concatenate([u, [combination(u[[int(p[1:]) for p in b.parts]]) for b in bundles]])
        n = len(u_all)
        pairs = np.array(connected_design(n, int(2 * n * np.log2(n)), rng))
        p = ndtr((u_all[pairs[:, 0]] - u_all[pairs[:, 1]]) / np.sqrt(2))
        p = expit(logit(p) + rng.normal(0, 1.0, len(p)))
        fit = fit_thurstonian(n, pairs, p, covariance=True)
        centre, scale = fit.mu[:40].mean(), fit.mu[:40].std()
        mu = (fit.mu - centre) / scale
        k = np.arange(n) < 40
        centring = np.eye(n) - np.outer(np.ones(n), k) / 40
        cov = centring @ fit.mu_cov @ centring.T / scale**2
        ids = [e.id for e in items] + [b.id for b in bundles]
        slope, intercept = np.polyfit(u, mu[:40], 1)  # the planted zero on the fitted scale
        draws = utility_draws(ids, mu, cov, 300, rng)
        out = zero_point_estimates(
            dict(zip(ids, mu.tolist())),
            neutral_ids=[],
            self_report=None,
            bundles=[bundle_record(b) for b in bundles],
            n_boot=300,
            rng=rng,
            draws=draws,
        )
        lo, hi = out["combination"]["ci95"]
        covered.append(lo <= intercept + slope * TRUE_C <= hi)
    assert np.mean(covered) >= 0.9, covered
