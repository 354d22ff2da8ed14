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

:func:`select_top` picks a batch from the unlabelled pool.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

__all__ = ["ucb", "expected_improvement", "probability_of_improvement", "window_probability", "select_top",
           "ACQUISITIONS"]


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


ACQUISITIONS = ("p_window", "ucb", "ei", "random")
