"""Pairwise utilities: which comparisons to ask, asking them, the Thurstonian fit and its out-of-sample check.

One routine serves both pairwise probes (experienced utility: two lived conversations; decision utility:
a choice between two described ones). The design follows the anchor paper's budget: about
`pair_budget` x N log2 N comparisons for N experiences (2 N log2 N by default), each asked in both orders.
A random connected design comes first; a share of the budget is then spent in rounds on the pairs the
current fit is least sure of (near-ties, least-compared items first); a random 5% of the random pairs is
held out of the fit, so the fit's accuracy on comparisons it never saw can be reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.in_context import sample_record
from welfare_offsets.eval.instrument import Instrument
from welfare_offsets.eval.scoring import NextTokenScorer
from welfare_offsets.eval.thurstonian import (
    ThurstonianFit,
    active_pairs,
    all_pairs,
    connected_design,
    connecting_pairs,
    fit_thurstonian,
    predicted_first,
)

MIN_HELDOUT = 4  # fewer held-out comparisons say nothing about out-of-sample accuracy


class DesignStopped(Exception):
    """`keep_going()` said stop before the design was complete (a session's budget ran short)."""


@dataclass(frozen=True)
class PairDesign:
    """How many comparisons to ask and how to choose them (the `pair_*` settings)."""

    budget: float = 2.0  # comparisons = budget x N log2 N, at most every pair
    active_share: float = 0.5  # of the fitted comparisons, the share chosen by the fit (near-ties)
    active_rounds: int = 2  # refits the active share is spread over
    holdout: float = 0.05  # share of the comparisons kept out of the fit, drawn from the random design

    def sizes(self, n_items: int) -> tuple[int, int, int]:
        """(random, active, held-out) comparison counts for `n_items` experiences."""
        if n_items < 2:
            return 0, 0, 0
        total = min(all_pairs(n_items), math.ceil(self.budget * n_items * math.log2(n_items)))
        total = max(total, connecting_pairs(n_items))
        heldout = round(self.holdout * total)
        heldout = heldout if heldout >= MIN_HELDOUT and total - heldout >= connecting_pairs(n_items) else 0
        active = min(round(self.active_share * (total - heldout)), total - heldout - connecting_pairs(n_items))
        active = active if self.active_rounds > 0 else 0
        return total - heldout - active, active, heldout


@dataclass
class PairwiseUtilities:
    """A pairwise probe's result: utilities per experience, the fit's diagnostics, every asked prompt."""

    utility: np.ndarray  # standardised over the first `n_standardised` experiences
    sd: np.ndarray
    info: dict
    samples: list[dict]
    mass: np.ndarray  # probability on the two answer labels, per prompt
    cov: np.ndarray | None = None  # the sampling covariance of `utility` over the comparisons, if asked for


def measure_pairwise(
    scorer: NextTokenScorer,
    items: Sequence[Experience],
    probe: str,
    design: PairDesign,
    rng: np.random.Generator,
    *,
    instrument: Instrument | None = None,
    n_standardised: int | None = None,
    keep_going: Callable[[], bool] | None = None,
    step_pairs: int = 32,
    covariance: bool = False,
) -> PairwiseUtilities:
    """Ask `probe` (experienced or decision utility) about pairs of `items` and fit utilities.

    Utilities are standardised (mean 0, sd 1) over the first `n_standardised` items (default: all), so
    extra items compared in the same design (bundles for the zero point, a session's episodes) do not move
    the scale of the experiences themselves. With `keep_going`, the pairs are asked `step_pairs` at a time
    and `keep_going()` is asked before each step; on False, DesignStopped is raised. With `covariance`, the
    result carries how much the utilities vary over the comparisons asked (thurstonian.py `_sandwich`).
    """
    n = len(items)
    n_random, n_active, n_heldout = design.sizes(n)
    random_pairs = connected_design(n, n_random + n_heldout, rng)
    cycle = connecting_pairs(n)
    held_idx = cycle + rng.choice(len(random_pairs) - cycle, n_heldout, replace=False) if n_heldout else []
    held = {random_pairs[k] for k in np.atleast_1d(held_idx)}
    fitted = [pair for pair in random_pairs if pair not in held]
    heldout = [pair for pair in random_pairs if pair in held]

    observed: dict[tuple[int, int], float] = {}
    samples: list[dict] = []
    masses: list[np.ndarray] = []

    def ask(pairs: list[tuple[int, int]], round_name: str) -> None:
        step = step_pairs if keep_going is not None else max(len(pairs), 1)
        for start in range(0, len(pairs), step):
            if keep_going is not None and not keep_going():
                raise DesignStopped(f"stopped in the {round_name} with {len(observed)} comparisons asked")
            ask_step(pairs[start : start + step], round_name)

    def ask_step(pairs: list[tuple[int, int]], round_name: str) -> None:
        requests = P.comparison_requests([(items[a], items[b]) for a, b in pairs], probe, instrument)
        prompts = [P.render_prompt(scorer.tokenizer, r.messages) for r in requests]
        values = scorer.label_probs(
            prompts, P.CHOICE, groups=[r.group for r in requests], desc=f"{probe.replace('_', ' ')} ({round_name})"
        )
        p_a, mass = P.choice_first(values)
        samples.extend(
            sample_record(r, prompt, float(s), float(m), design_round=round_name)
            for r, prompt, s, m in zip(requests, prompts, p_a, mass)
        )
        masses.append(mass)
        observed.update(zip(pairs, P.preference_probability(p_a[0::2], p_a[1::2]).tolist()))

    ask(fitted + heldout, "random design")
    per_round = [
        n_active // design.active_rounds + (r < n_active % design.active_rounds) for r in range(design.active_rounds)
    ]
    fit = _fit(n, fitted, observed, covariance=covariance and not any(per_round))
    for r, size in enumerate(per_round):
        new = active_pairs(fit, set(observed), size) if size else []
        if not new:
            continue
        ask(new, f"active round {r + 1}")
        fitted += new
        fit = _fit(n, fitted, observed, covariance=covariance and r == len(per_round) - 1)

    if covariance and fit.mu_cov is None:  # the last round asked nothing new: its fit is an earlier one
        fit = _fit(n, fitted, observed, covariance=True)
    k = n if n_standardised is None else n_standardised
    centre, scale = fit.mu[:k].mean(), fit.mu[:k].std() or 1.0
    info = {
        "n_items": n,
        "n_pairs": len(fitted),
        "n_random": n_random,
        "n_active": len(fitted) - n_random,
        "pairs_per_item": 2 * len(fitted) / n if n else 0.0,
        "budget": f"{design.budget:g} x N log2 N",
        "converged": fit.converged,
        # False for a subject that preferred no item over another (every comparison even): all utilities 0.
        "utilities_differ": bool(np.ptp(fit.mu[:k]) > 0),
        "sigma_mean": float(np.mean(fit.sigma[:k] / scale)),
        **_heldout_check(fit, heldout, observed),
    }
    cov = None
    if fit.mu_cov is not None:  # restandardised as the utilities are: centred on the first k, in their sd
        centring = np.eye(n) - np.outer(np.ones(n), np.arange(n) < k) / k
        cov = centring @ fit.mu_cov @ centring.T / scale**2
    return PairwiseUtilities((fit.mu - centre) / scale, fit.sigma / scale, info, samples, np.concatenate(masses), cov)


def _fit(n: int, pairs: list[tuple[int, int]], observed: dict, covariance: bool = False) -> ThurstonianFit:
    return fit_thurstonian(n, np.array(pairs), np.array([observed[p] for p in pairs]), covariance=covariance)


def _heldout_check(fit: ThurstonianFit, heldout: list[tuple[int, int]], observed: dict) -> dict:
    """Accuracy and log-loss of the fit on the comparisons it never saw.

    Accuracy: the share of held-out pairs whose preferred side the fit predicts (a pair the subject
    rates a perfect tie, or the fit predicts as one, counts half). Log-loss: cross-entropy of the subject's preference probability
    under the fitted one, in nats (0.693 is a coin).
    """
    if not heldout:
        return {"heldout_pairs": 0, "heldout_accuracy": None, "heldout_log_loss": None}
    q = np.clip(predicted_first(fit, np.array(heldout)), 1e-6, 1 - 1e-6)
    p = np.array([observed[pair] for pair in heldout])
    agree = np.where((p == 0.5) | (q == 0.5), 0.5, ((q > 0.5) == (p > 0.5)).astype(float))
    log_loss = -np.mean(p * np.log(q) + (1 - p) * np.log(1 - q))
    return {"heldout_pairs": len(heldout), "heldout_accuracy": float(agree.mean()), "heldout_log_loss": float(log_loss)}
