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
from scipy.special import log_ndtr, ndtr

_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)


@dataclass(frozen=True)
class ThurstonianFit:
    mu: np.ndarray  # standardised utilities
    sigma: np.ndarray  # per-item sd, in the same standardised units
    converged: bool
    negative_log_likelihood: float
    mu_cov: np.ndarray | None = None  # the sampling covariance of `mu`, where asked for (`covariance`)


def fit_thurstonian(
    n_items: int, pairs: np.ndarray, p_first: np.ndarray, prior: float = 0.01, *, covariance: bool = False
) -> ThurstonianFit:
    """Fit utilities to comparisons: `pairs[k] = (i, j)` with P(i over j) = `p_first[k]`. With `covariance`,
    also how much the standardised utilities would vary over the comparisons asked (`_sandwich`)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    p = np.clip(np.asarray(p_first, dtype=np.float64), 0.0, 1.0)
    if len(pairs) != len(p):
        raise ValueError(f"{len(pairs)} pairs but {len(p)} probabilities")
    if n_items < 2 or len(pairs) == 0:
        raise ValueError("a Thurstonian fit needs at least two items and one comparison")
    i, j = pairs[:, 0], pairs[:, 1]

    def per_pair(theta):
        """Each comparison's negative log-likelihood and its gradient's parts (by mu_i, mu_j, rho_i, rho_j)."""
        mu, rho = theta[:n_items], theta[n_items:]
        var = np.exp(2 * rho)
        s = np.sqrt(var[i] + var[j])
        d = (mu[i] - mu[j]) / s
        log_cdf_pos, log_cdf_neg = log_ndtr(d), log_ndtr(-d)
        log_pdf = -0.5 * d * d - _LOG_SQRT_2PI
        dl_dd = p * np.exp(log_pdf - log_cdf_pos) - (1 - p) * np.exp(log_pdf - log_cdf_neg)
        parts = (-dl_dd / s, dl_dd / s, dl_dd * d * var[i] / s**2, dl_dd * d * var[j] / s**2)
        return -(p * log_cdf_pos + (1 - p) * log_cdf_neg), parts

    def objective(theta):
        mu, rho = theta[:n_items], theta[n_items:]
        nll, (g_mu_i, g_mu_j, g_rho_i, g_rho_j) = per_pair(theta)
        g_mu = np.bincount(i, g_mu_i, n_items) + np.bincount(j, g_mu_j, n_items)
        g_rho = np.bincount(i, g_rho_i, n_items) + np.bincount(j, g_rho_j, n_items)
        penalty = 0.5 * prior * (mu @ mu + rho @ rho)
        return nll.sum() + penalty, np.concatenate([g_mu + prior * mu, g_rho + prior * rho])

    result = minimize(objective, np.zeros(2 * n_items), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    mu, sigma = result.x[:n_items], np.exp(result.x[n_items:])
    scale = mu.std() if mu.std() > 0 else 1.0
    mu_cov = None
    if covariance:
        centring = np.eye(n_items) - 1.0 / n_items
        raw = _sandwich(result.x, lambda theta: objective(theta)[1], per_pair(result.x)[1], i, j, n_items)
        mu_cov = centring @ raw @ centring / scale**2
    return ThurstonianFit((mu - mu.mean()) / scale, sigma / scale, bool(result.success), float(result.fun), mu_cov)


def _sandwich(theta: np.ndarray, gradient, parts, i: np.ndarray, j: np.ndarray, n_items: int) -> np.ndarray:
    """The covariance of the fitted mu over resamples of the comparisons, H^-1 (sum of g g^T) H^-1 (the
    sandwich, or infinitesimal jackknife), with g each comparison's gradient and H the Hessian of the whole
    objective (central differences of its gradient). It asks nothing of the likelihood's scale, which
    soft outcomes (probabilities, not sampled choices) leave undefined, and it still holds where the
    subject's preferences are not exactly Thurstonian."""
    size, rows = len(theta), np.arange(len(i))
    per_pair = np.zeros((len(i), size))
    for columns, values in zip((i, j, n_items + i, n_items + j), parts):
        per_pair[rows, columns] += values
    step = 1e-5
    hessian = np.empty((size, size))
    for k in range(size):
        shift = np.zeros(size)
        shift[k] = step
        hessian[:, k] = (gradient(theta + shift) - gradient(theta - shift)) / (2 * step)
    hessian = 0.5 * (hessian + hessian.T)
    bread = np.linalg.solve(hessian, per_pair.T)  # H^-1 G^T
    return (bread @ bread.T)[:n_items, :n_items]


def predicted_first(fit: ThurstonianFit, pairs: np.ndarray) -> np.ndarray:
    """The fitted P(i preferred over j) for each row (i, j) of `pairs`."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    i, j = pairs[:, 0], pairs[:, 1]
    return ndtr((fit.mu[i] - fit.mu[j]) / np.sqrt(fit.sigma[i] ** 2 + fit.sigma[j] ** 2))


def all_pairs(n_items: int) -> int:
    return n_items * (n_items - 1) // 2


def connecting_pairs(n_items: int) -> int:
    """How many pairs the random cycle that opens every design has: it alone connects all items."""
    return all_pairs(n_items) if n_items < 3 else n_items


def connected_design(n_items: int, n_pairs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """`n_pairs` distinct pairs (at most every pair), first a random cycle through all items, then more.

    The cycle connects the design, which the fit needs to place every item on one scale: it is the first
    `connecting_pairs(n_items)` entries. More random cycles follow, so each item meets about as many others
    as any other item; once a cycle finds mostly pairs already taken (a dense design), the rest are drawn
    uniformly from the pairs not yet taken. Pairs are (low, high) index tuples, in the order they were added.
    """
    n_pairs = min(n_pairs, all_pairs(n_items))
    pairs: list[tuple[int, int]] = []
    taken: set[tuple[int, int]] = set()

    def add(candidates) -> int:
        added = 0
        for a, b in candidates:
            pair = (int(min(a, b)), int(max(a, b)))
            if len(pairs) < n_pairs and a != b and pair not in taken:
                taken.add(pair)
                pairs.append(pair)
                added += 1
        return added

    while len(pairs) < n_pairs:
        order = rng.permutation(n_items)
        cycle = list(zip(order, np.roll(order, -1)))[: connecting_pairs(n_items)]
        if add(cycle) < len(cycle) / 2 and pairs:
            break
    if len(pairs) < n_pairs:
        rest = [(a, b) for a in range(n_items) for b in range(a + 1, n_items) if (a, b) not in taken]
        add([rest[k] for k in rng.permutation(len(rest))])
    return pairs


def active_pairs(fit: ThurstonianFit, asked: set[tuple[int, int]], n_new: int) -> list[tuple[int, int]]:
    """The next `n_new` comparisons to ask: near-ties, the least-compared items choosing first.

    A comparison is most informative where its outcome is least certain (|mu_i - mu_j| small relative to
    sqrt(sigma_i^2 + sigma_j^2)), and the least-compared items have the widest uncertainty. Pairs are chosen
    in passes: in each pass every item, least-compared first, takes its nearest tie among the items not yet
    taken in that pass and not yet compared with it, so no item gains more than one comparison per pass and
    the design stays balanced. Deterministic given the fit. Fewer than `n_new` only when no pair is left.
    """
    n = len(fit.mu)
    free = ~np.eye(n, dtype=bool)
    degree = np.zeros(n, dtype=int)
    for a, b in asked:
        free[a, b] = free[b, a] = False
        degree[a] += 1
        degree[b] += 1
    gap = np.abs(fit.mu[:, None] - fit.mu[None, :]) / np.sqrt(fit.sigma[:, None] ** 2 + fit.sigma[None, :] ** 2)
    chosen: list[tuple[int, int]] = []
    while len(chosen) < n_new and free.any():
        in_pass = np.zeros(n, dtype=bool)
        for a in np.argsort(degree, kind="stable"):
            if len(chosen) >= n_new:
                break
            options = free[a] & ~in_pass
            if in_pass[a] or not options.any():
                continue
            b = int(np.argmin(np.where(options, gap[a], np.inf)))
            free[a, b] = free[b, a] = False
            in_pass[[a, b]] = True
            degree[[a, b]] += 1
            chosen.append((int(min(a, b)), int(max(a, b))))
    return chosen
