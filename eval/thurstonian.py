"""Thurstonian utilities from pairwise preference probabilities, and which pairs to ask about.

Each experience i has a utility distribution N(mu_i, sigma_i^2); P(i preferred over j) =
Phi((mu_i - mu_j) / sqrt(sigma_i^2 + sigma_j^2)). We fit mu and log sigma by maximum likelihood on soft
outcomes (the probability the model put on each answer, not a sampled choice), with a weak Gaussian prior
that fixes the otherwise free shift and scale and keeps perfectly separated items finite. Utilities are
then standardised to mean 0, sd 1 across the fitted items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_ndtr

_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)


@dataclass(frozen=True)
class ThurstonianFit:
    mu: np.ndarray  # standardised utilities
    sigma: np.ndarray  # per-item sd, in the same standardised units
    converged: bool
    negative_log_likelihood: float


def fit_thurstonian(n_items: int, pairs: np.ndarray, p_first: np.ndarray, prior: float = 0.01) -> ThurstonianFit:
    """Fit utilities to comparisons: `pairs[k] = (i, j)` with P(i over j) = `p_first[k]`."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    p = np.clip(np.asarray(p_first, dtype=np.float64), 0.0, 1.0)
    if len(pairs) != len(p):
        raise ValueError(f"{len(pairs)} pairs but {len(p)} probabilities")
    if n_items < 2 or len(pairs) == 0:
        raise ValueError("a Thurstonian fit needs at least two items and one comparison")
    i, j = pairs[:, 0], pairs[:, 1]

    def objective(theta):
        mu, rho = theta[:n_items], theta[n_items:]
        var = np.exp(2 * rho)
        s = np.sqrt(var[i] + var[j])
        d = (mu[i] - mu[j]) / s
        log_cdf_pos, log_cdf_neg = log_ndtr(d), log_ndtr(-d)
        log_pdf = -0.5 * d * d - _LOG_SQRT_2PI
        nll = -np.sum(p * log_cdf_pos + (1 - p) * log_cdf_neg) + 0.5 * prior * (mu @ mu + rho @ rho)
        dl_dd = p * np.exp(log_pdf - log_cdf_pos) - (1 - p) * np.exp(log_pdf - log_cdf_neg)
        g_mu = np.zeros(n_items)
        np.add.at(g_mu, i, -dl_dd / s)
        np.add.at(g_mu, j, dl_dd / s)
        g_rho = np.zeros(n_items)
        np.add.at(g_rho, i, dl_dd * d * var[i] / s**2)
        np.add.at(g_rho, j, dl_dd * d * var[j] / s**2)
        return nll, np.concatenate([g_mu + prior * mu, g_rho + prior * rho])

    result = minimize(objective, np.zeros(2 * n_items), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    mu, sigma = result.x[:n_items], np.exp(result.x[n_items:])
    scale = mu.std() if mu.std() > 0 else 1.0
    return ThurstonianFit((mu - mu.mean()) / scale, sigma / scale, bool(result.success), float(result.fun))


def initial_pairs(n_items: int, degree: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """A connected random design where each item meets about `degree` others (not all n^2 pairs).

    Each round joins items along a random cycle, adding two comparisons per item; cycles guarantee
    connectivity, which the fit needs to place every item on one scale.
    """
    if n_items < 2:
        return []
    pairs: set[tuple[int, int]] = set()
    for _ in range(max(1, degree // 2)):
        order = rng.permutation(n_items)
        for a, b in zip(order, np.roll(order, -1)):
            if a != b:
                pairs.add((int(min(a, b)), int(max(a, b))))
    return sorted(pairs)


def active_pairs(
    fit: ThurstonianFit, asked: set[tuple[int, int]], n_new: int, candidates: int = 8
) -> list[tuple[int, int]]:
    """The next comparisons to ask: near-ties, starting from the least-compared items.

    A comparison is most informative where the outcome is least certain (|mu_i - mu_j| small relative to
    the spread), and low-degree items have the widest uncertainty.
    """
    n = len(fit.mu)
    degree = np.zeros(n, dtype=int)
    for a, b in asked:
        degree[a] += 1
        degree[b] += 1
    chosen: list[tuple[int, int]] = []
    taken = set(asked)
    for a in np.argsort(degree, kind="stable"):
        if len(chosen) >= n_new:
            break
        spread = np.sqrt(fit.sigma[a] ** 2 + fit.sigma**2)
        closeness = np.abs(fit.mu[a] - fit.mu) / spread
        closeness[a] = np.inf
        for b in np.argsort(closeness)[:candidates]:
            pair = (int(min(a, b)), int(max(a, b)))
            if pair not in taken and np.isfinite(closeness[b]):
                taken.add(pair)
                chosen.append(pair)
                break
    return chosen
