"""Tersoff bond-order potential, multi-component, on the all-image graph.

J. Tersoff, Phys. Rev. B 39, 5566 (1989) (and Phys. Rev. B 38, 9902 (1988) for Si):

    E = 1/2 sum_i sum_{j != i} f_c(r_ij) [A_ij exp(-lambda_ij r_ij) - b_ij B_ij exp(-mu_ij r_ij)]
    b_ij = (1 + (beta_i zeta_ij)^n_i)^(-1/(2 n_i))
    zeta_ij = sum_{k != i, j} f_c(r_ik) g_i(theta_ijk) exp((lambda3_i (r_ij - r_ik))^3)
    g_i(theta) = gamma_i (1 + c_i^2/d_i^2 - c_i^2 / (d_i^2 + (h_i - cos theta)^2))
    f_c(r) = 1/2 + 1/2 cos(pi (r - R_ij) / (S_ij - R_ij)) between R_ij and S_ij,

with the mixing rules lambda_ij, mu_ij arithmetic, A_ij, B_ij, R_ij, S_ij
geometric, and B_ij scaled by chi_ij. This is also what LAMMPS' ``pair_style
tersoff`` computes with the SiC.tersoff / SiCGe.tersoff files (lambda3 = 0,
m = 3, gamma = 1; LAMMPS rounds the mixed R, D of the Si-C cutoff), and what
ASE's ``Tersoff`` calculator computes from the same parameters.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

import jax
import jax.numpy as jnp

from jaxinv.potentials.base import Potential, safe_norm
from jaxinv.potentials.classical._common import as_float_tree, atomic_numbers, species_lookup
from jaxinv.potentials.classical.triplets import neighbor_slots

__all__ = ["tersoff", "TERSOFF_1989", "tersoff_tables"]

# Tersoff, Phys. Rev. B 39, 5566 (1989), Table I. Silicon is the "Si(C)" = T3 set of
# Phys. Rev. B 38, 9902 (1988); carbon is that of Phys. Rev. Lett. 61, 2879 (1988)
# with B = 346.7 eV as in the 1989 table. Units: eV, Å.
TERSOFF_1989 = {
    "Si": {"A": 1830.8, "B": 471.18, "lambda": 2.4799, "mu": 1.7322, "beta": 1.1e-6, "n": 0.78734,
           "c": 1.0039e5, "d": 16.217, "h": -0.59825, "R": 2.7, "S": 3.0},
    "C": {"A": 1393.6, "B": 346.7, "lambda": 3.4879, "mu": 2.2119, "beta": 1.5724e-7, "n": 0.72751,
          "c": 3.8049e4, "d": 4.3484, "h": -0.57058, "R": 1.8, "S": 2.1},
    "Ge": {"A": 1769.0, "B": 419.23, "lambda": 2.4451, "mu": 1.7047, "beta": 9.0166e-7, "n": 0.75627,
           "c": 1.0643e5, "d": 15.652, "h": -0.43884, "R": 2.8, "S": 3.1},
}
TERSOFF_1989_CHI = {("Si", "C"): 0.9776, ("Si", "Ge"): 1.00061}


def tersoff_tables(elements: Sequence[str], table: dict = TERSOFF_1989, chi: dict = TERSOFF_1989_CHI) -> dict:
    """Pair tables (S, S) and per-species vectors (S,) from per-element parameters."""
    rows = [table[e] for e in elements]
    v = lambda key: np.array([r[key] for r in rows], np.float64)
    geo = lambda key: np.sqrt(v(key)[:, None] * v(key)[None, :])
    ari = lambda key: 0.5 * (v(key)[:, None] + v(key)[None, :])
    x = np.ones((len(elements), len(elements)))
    for a, ea in enumerate(elements):
        for b, eb in enumerate(elements):
            if a != b:
                x[a, b] = chi.get((ea, eb), chi.get((eb, ea), 1.0))
    return {
        "A": geo("A"), "B": x * geo("B"), "lambda": ari("lambda"), "mu": ari("mu"), "R": geo("R"), "S": geo("S"),
        "beta": v("beta"), "n": v("n"), "c": v("c"), "d": v("d"), "h": v("h"),
        "gamma": np.ones(len(elements)), "lambda3": np.zeros(len(elements)),
    }


def _cutoff_fn(r, R, S):
    """1 below R, 0 above S, 1/2 + 1/2 cos(pi (r - R)/(S - R)) between."""
    x = jnp.clip((r - R) / (S - R), 0.0, 1.0)
    return 0.5 + 0.5 * jnp.cos(jnp.pi * x)


def _safe_pow(x, n, tiny=1e-30):
    """x^n for x >= 0 with a finite gradient at x = 0 (n < 1 would give an infinite one)."""
    pos = x > tiny
    return jnp.where(pos, jnp.where(pos, x, 1.0) ** n, 0.0)


def _tersoff_one(p, lookup, numbers, vec, neighbor, valid):
    """Energy of one structure from its (N, D) neighbor slots."""
    si = lookup[numbers]  # (N,)
    sj = si[neighbor]  # (N, D)
    pair = lambda key: p[key][si[:, None], sj]  # (N, D) pair-table entries of each slot
    atom = lambda key: p[key][si][:, None, None]  # (N, 1, 1) three-body parameters of the center

    r = safe_norm(vec)
    fc = jnp.where(valid, _cutoff_fn(r, pair("R"), pair("S")), 0.0)
    unit = vec / jnp.where(valid, r, 1.0)[..., None]
    cos = jnp.einsum("njx,nkx->njk", unit, unit)  # cos theta_jik, j = bond slot, k = other slot
    c2, d2 = atom("c") ** 2, atom("d") ** 2
    g = atom("gamma") * (1.0 + c2 / d2 - c2 / (d2 + (atom("h") - cos) ** 2))
    expo = jnp.exp((atom("lambda3") * (r[:, :, None] - r[:, None, :])) ** 3)
    d = vec.shape[-2]
    others = ~jnp.eye(d, dtype=bool)  # k != j (distinct edges; may be images of the same atom)
    zeta = jnp.sum(jnp.where(others, fc[:, None, :] * g * expo, 0.0), axis=-1)  # (N, D)

    beta, n = p["beta"][si][:, None], p["n"][si][:, None]
    bond_order = (1.0 + _safe_pow(beta * zeta, n)) ** (-0.5 / n)
    repulsive = pair("A") * jnp.exp(-pair("lambda") * r)
    attractive = pair("B") * jnp.exp(-pair("mu") * r)
    return 0.5 * jnp.sum(jnp.where(valid, fc * (repulsive - bond_order * attractive), 0.0))


def tersoff(elements: Sequence[str] = ("Si",), params: dict | None = None, max_neighbors: int = 32) -> Potential:
    """Tersoff potential for any mix of Si, C, Ge (Tersoff 1989 parameters and mixing rules).

    Known values (tests): diamond Si -4.63 eV/atom at a = 5.432 Å, diamond C
    -7.37 eV/atom at a = 3.566 Å.

    Args:
      elements: element symbols, e.g. ("Si",), ("C",) or ("Si", "C").
      params: tables as returned by :func:`tersoff_tables` (overrides the 1989 set).
      max_neighbors: static size of the per-atom neighbor table; structures with an
        atom of more neighbors inside the cutoff get NaN energy.
    """
    elements = tuple(elements)
    p0 = as_float_tree(tersoff_tables(elements) if params is None else params)
    species = atomic_numbers(elements)
    lookup = species_lookup(species)
    cutoff = float(np.max(p0["S"]))

    def energy_fn(p, crystal, graph):
        p = jax.tree_util.tree_map(jnp.asarray, p)  # NumPy tables cannot be indexed by tracers
        vec, neighbor, valid, overflow = neighbor_slots(crystal, graph, max_neighbors)
        one = lambda z, v, nb, ok: _tersoff_one(p, jnp.asarray(lookup), z, v, nb, ok)
        e = jax.vmap(one)(crystal.numbers, vec, neighbor, valid)
        return jnp.where(overflow, jnp.nan, e)

    return Potential("tersoff-" + "".join(elements), energy_fn, p0, cutoff, species,
                     {"elements": elements, "max_neighbors": max_neighbors})
