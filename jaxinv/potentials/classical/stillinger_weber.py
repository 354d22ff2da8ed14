"""Stillinger-Weber potential on the all-image graph.

F. H. Stillinger and T. A. Weber, Phys. Rev. B 31, 5262 (1985):

    E = sum_{i<j} eps A (B (sigma/r_ij)^p - (sigma/r_ij)^q) exp(sigma / (r_ij - a sigma))
      + sum_i sum_{j<k} eps lambda exp(gamma sigma / (r_ij - a sigma) + gamma sigma / (r_ik - a sigma))
                                  (cos theta_jik + 1/3)^2,

both terms vanishing with all derivatives at r = a sigma (3.7712 Å for Si).
The functional form and default parameters are those of
``jax_md.energy.stillinger_weber``; the three-body sum runs over the per-atom
neighbor table of :mod:`~jaxinv.potentials.classical.triplets`, so every
periodic image counts (jax-md assumes the minimum image).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxinv.potentials.base import Potential, pair_energy_sum, safe_norm
from jaxinv.potentials.classical._common import as_float_tree, atomic_numbers
from jaxinv.potentials.classical.triplets import neighbor_slots

__all__ = ["stillinger_weber", "SW_SILICON"]

# Stillinger & Weber (1985), Si: eps = 50 kcal/mol, sigma in Å; p = 4, q = 0.
SW_SILICON = {"epsilon": 2.16826, "sigma": 2.0951, "a": 1.80, "lambda": 21.0, "gamma": 1.20,
              "A": 7.049556277, "B": 0.6022245584, "p": 4.0, "q": 0.0}


def _decay(r, scale, rc):
    """exp(scale / (r - rc)) for r < rc, else 0; smooth (C-infinity) at rc with finite gradients."""
    inside = r < rc
    safe = jnp.where(inside, r - rc, -1.0)  # keeps the untaken branch finite under autodiff
    return jnp.where(inside, jnp.exp(scale / safe), 0.0)


def _two_body(p):
    def pair(r, zi, zj):
        s = p["sigma"] / r
        radial = p["A"] * (p["B"] * s ** p["p"] - s ** p["q"])
        return p["epsilon"] * radial * _decay(r, p["sigma"], p["a"] * p["sigma"])
    return pair


def _three_body(p, vec, valid):
    """sum_i sum_{j<k} of the angular term, (B,), from per-atom slots (B, N, D, 3)."""
    rc = p["a"] * p["sigma"]
    r = safe_norm(vec)
    radial = jnp.where(valid, _decay(r, p["gamma"] * p["sigma"], rc), 0.0)  # (B, N, D)
    unit = vec / jnp.where(valid, r, 1.0)[..., None]
    cos = jnp.einsum("bnjx,bnkx->bnjk", unit, unit)
    d = vec.shape[-2]
    upper = jnp.triu(jnp.ones((d, d), bool), k=1)  # j < k: each angle once
    h = radial[..., :, None] * radial[..., None, :] * (cos + 1.0 / 3.0) ** 2
    return p["epsilon"] * p["lambda"] * jnp.sum(jnp.where(upper, h, 0.0), axis=(-3, -2, -1))


def stillinger_weber(params: dict | None = None, species: Sequence = ("Si",), max_neighbors: int = 32) -> Potential:
    """Stillinger-Weber potential (default: the original 1985 silicon parameters).

    Diamond Si has its minimum at a = 5.431 Å with E = -2 eps = -4.3365 eV/atom.

    Args:
      params: overrides of :data:`SW_SILICON` (epsilon eV, sigma Å, a, lambda,
        gamma, A, B, p, q dimensionless).
      species: the element(s) the parameters apply to (one parameter set for all).
      max_neighbors: static size of the per-atom neighbor table; structures with an
        atom of more neighbors inside a sigma get NaN energy (see
        :mod:`~jaxinv.potentials.classical.triplets`).
    """
    p0 = as_float_tree({**SW_SILICON, **(params or {})})
    cutoff = float(p0["a"] * p0["sigma"])

    def energy_fn(p, crystal, graph):
        two = pair_energy_sum(_two_body(p), crystal, graph)
        vec, _, valid, overflow = neighbor_slots(crystal, graph, max_neighbors)
        three = _three_body(p, vec, valid)
        return jnp.where(overflow, jnp.nan, two + three)

    return Potential("stillinger-weber", energy_fn, p0, cutoff, atomic_numbers(species),
                     {"max_neighbors": max_neighbors})
