"""Acquisition functions: which unlabelled candidates to send to the oracle next.

All are pure ``jnp`` functions of the ensemble's predictive mean and standard
deviation (arrays of any shape), larger = more worth labelling, for *maximizing*
an objective (negate a property to minimize it):

* :func:`ucb`: mean + β σ (Srinivas et al. 2010), optimism in the face of uncertainty;
* :func:`expected_improvement`: E[max(y - best - ξ, 0)] under N(mean, σ²) (Jones et al. 1998);
* :func:`probability_of_improvement`: P(y > best + ξ);
* :func:`window_probability`: P(lo <= y <= hi) for every target of a design
  window, multiplied over targets (independent Gaussians), the natural score
  when a hit is defined by thresholds, as in Castelli's screen.

:func:`select_top` picks a batch from the unlabelled pool, :func:`select_diverse` a batch
spread out in feature space.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

__all__ = ["ucb", "expected_improvement", "probability_of_improvement", "window_probability", "select_top",
           "select_diverse", "ACQUISITIONS"]


def ucb(mean, std, beta: float = 2.0):
    return mean + beta * std


def expected_improvement(mean, std, best, xi: float = 0.0):
    std = jnp.maximum(std, 1e-12)
    gain = mean - best - xi
    z = gain / std
    return gain * norm.cdf(z) + std * norm.pdf(z)


def probability_of_improvement(mean, std, best, xi: float = 0.0):
    return norm.cdf((mean - best - xi) / jnp.maximum(std, 1e-12))


def window_probability(mean, std, lo, hi):
    """P(lo <= y <= hi) per target, multiplied over the last axis.

    ``mean``, ``std``: (N, T); ``lo``, ``hi``: (T,) (use ±inf for open sides)."""
    std = jnp.maximum(std, 1e-12)
    p = norm.cdf((hi - mean) / std) - norm.cdf((lo - mean) / std)
    return jnp.prod(p, axis=-1)


def select_top(scores, labelled, k: int) -> np.ndarray:
    """Indices of the ``k`` highest-scoring rows not yet ``labelled`` (ties: lower index first)."""
    s = np.where(np.asarray(labelled, bool), -np.inf, np.asarray(scores, np.float64))
    s = np.where(np.isnan(s), -np.inf, s)
    k = min(int(k), int((~np.asarray(labelled, bool)).sum()))
    order = np.argsort(-s, kind="stable")
    return order[:k]


def select_diverse(scores, labelled, k: int, x, length: float = 0.5, sample: int = 2000) -> np.ndarray:
    """Greedy batch of ``k`` unlabelled rows: take the best score, then damp every
    other row's score by ``1 - exp(-d^2 / (2 l^2))`` with ``d`` its distance (rows of
    ``x``) to the nearest row already in the batch, repeat. ``l`` is ``length`` times
    the median nearest-neighbour distance among up to ``sample`` pool rows, so it
    adapts to the feature scale. A batch of near-copies (an A/B-swapped twin, the
    same cations with one anion changed) would otherwise spend several oracle calls
    on one question. Scores are shifted to a minimum of 0 first, so damping always
    lowers them."""
    labelled = np.asarray(labelled, bool)
    s = np.where(labelled, -np.inf, np.asarray(scores, np.float64))
    s = np.where(np.isnan(s), -np.inf, s)
    finite = np.isfinite(s)
    if finite.any():
        s[finite] -= s[finite].min()
    k = min(int(k), int((~labelled).sum()))
    x = np.asarray(x, np.float64)
    rng = np.random.default_rng(0)
    sub = x[rng.choice(len(x), min(sample, len(x)), replace=False)]
    sq = (sub**2).sum(-1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * sub @ sub.T, 0.0)  # Gram form: no (S, S, F) array
    np.fill_diagonal(d2, np.inf)
    ell2 = float(np.median(d2.min(1))) * length**2
    xsq = (x**2).sum(-1)
    damp = np.ones(len(s))
    out = []
    for _ in range(k):
        damped = np.full(len(s), -np.inf)
        damped[np.isfinite(s)] = s[np.isfinite(s)] * damp[np.isfinite(s)]
        j = int(np.argmax(damped))
        out.append(j)
        s[j] = -np.inf
        if ell2 > 0:
            dj = np.maximum(xsq + xsq[j] - 2.0 * x @ x[j], 0.0)
            damp *= 1.0 - np.exp(-dj / (2.0 * ell2))
    return np.asarray(out, np.int64)


ACQUISITIONS = ("p_window", "ucb", "ei", "random")
