"""Electrostatics of point charges: damped shifted force (default) and Ewald.

* :func:`dsf_energy` is the damped shifted force (DSF) real-space sum of
  C. J. Fennell and J. D. Gezelter, J. Chem. Phys. 124, 234104 (2006), eq. 19,
  with its self term. It is a pair sum on the neighbor graph (linear cost, no
  k-space, smooth energy and forces at the cutoff), so it is the default for
  relaxations and searches. Its error against the exact lattice sum falls with
  the cutoff; the tests bound it on rocksalt and rutile.
* :func:`ewald_energy` is the classic Ewald sum (real space on the graph, a
  static grid of reciprocal vectors, self term and neutralizing background), for
  verification and for production use where exactness matters. It reproduces
  pymatgen's ``EwaldSummation``.

Energies are in eV with charges in units of e (k_e = 14.3996 eV Å).
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Mapping

import numpy as np

import jax
import jax.numpy as jnp
from jax.scipy.special import erfc

from jaxinv.potentials.base import Potential, pair_energy_sum
from jaxinv.potentials.classical._common import COULOMB_EV_A, as_float_tree, atomic_numbers, species_lookup

__all__ = ["dsf_energy", "ewald_energy", "ewald_parameters", "point_charges", "DSF_ALPHA", "DSF_CUTOFF"]

# Default DSF damping and cutoff. Fennell & Gezelter suggest alpha ~ 0.2 1/Å at
# 12 Å from liquid-state forces; for crystal energies 0.25 1/Å is better: the
# rocksalt and rutile Madelung energies come out within 4e-5 (relative) of Ewald,
# against 9e-4 at 0.2 1/Å (tests/test_classical.py). A larger alpha would leave
# out the reciprocal-space part of the lattice sum, a smaller one needs a longer cutoff.
DSF_ALPHA = 0.25  # 1/Å
DSF_CUTOFF = 12.0  # Å


def _edge_charge_products(charges, lookup):
    """pair_fn helper: q_i q_j of an edge from the receiver/sender atomic numbers."""
    charges, lookup = jnp.asarray(charges), jnp.asarray(lookup)
    return lambda zi, zj: charges[lookup[zi]] * charges[lookup[zj]]


def _charge_sums(charges, lookup, crystal):
    q = jnp.where(crystal.mask, jnp.asarray(charges)[jnp.asarray(lookup)[crystal.numbers]], 0.0)
    return q, jnp.sum(q * q, -1), jnp.sum(q, -1)


def dsf_energy(charges, lookup, crystal, graph, alpha: float = DSF_ALPHA, cutoff: float | None = None,
               lengths=None) -> jax.Array:
    """Damped shifted force Coulomb energy, (B,) eV, truncated at ``cutoff`` (default ``graph.cutoff``).

    V(r) = k q_i q_j [erfc(a r)/r - erfc(a Rc)/Rc + (erfc(a Rc)/Rc^2 + 2a/sqrt(pi)
    exp(-a^2 Rc^2)/Rc)(r - Rc)] for r < Rc, plus the self energy
    -k (erfc(a Rc)/(2 Rc) + a/sqrt(pi)) sum_i q_i^2. ``charges`` is per species,
    ``lookup`` maps atomic numbers to species rows; ``lengths`` as in :func:`pair_energy_sum`.
    """
    rc = graph.cutoff if cutoff is None else float(cutoff)
    if rc > graph.cutoff:
        raise ValueError(f"the DSF cutoff {rc} exceeds the graph's {graph.cutoff}")
    erfc_rc = math.erfc(alpha * rc)
    slope = erfc_rc / rc**2 + 2.0 * alpha / math.sqrt(math.pi) * math.exp(-(alpha * rc) ** 2) / rc
    qq = _edge_charge_products(charges, lookup)

    def pair(r, zi, zj):
        v = erfc(alpha * r) / r - erfc_rc / rc + slope * (r - rc)
        return COULOMB_EV_A * qq(zi, zj) * jnp.where(r < rc, v, 0.0)

    _, q2, _ = _charge_sums(charges, lookup, crystal)
    self_energy = -COULOMB_EV_A * (erfc_rc / (2.0 * rc) + alpha / math.sqrt(math.pi)) * q2
    return pair_energy_sum(pair, crystal, graph, lengths=lengths) + self_energy


def ewald_parameters(cutoff: float, tol: float = 1e-8, alpha: float | None = None) -> tuple[float, float]:
    """Splitting ``alpha`` (1/Å) and reciprocal cutoff ``k_cut`` (1/Å) for a real-space cutoff.

    Both Gaussian tails are cut where they reach ``tol``: erfc(alpha rc) ~
    exp(-(alpha rc)^2) = tol and exp(-k^2 / (4 alpha^2)) = tol. A given ``alpha``
    is kept (then only k_cut follows from ``tol``).
    """
    s = math.sqrt(-math.log(tol))
    alpha = s / cutoff if alpha is None else float(alpha)
    return alpha, 2.0 * alpha * s


@functools.cache
def _half_grid(kmax: int) -> np.ndarray:
    """Integer vectors m in [-kmax, kmax]^3 with first nonzero component > 0 (one of each +-m pair)."""
    rng = range(-kmax, kmax + 1)
    m = np.array([v for v in itertools.product(rng, rng, rng) if v > (0, 0, 0)], np.float64)
    return m


def ewald_energy(charges, lookup, crystal, graph, alpha: float, k_cut: float, kmax: int, lengths=None) -> jax.Array:
    """Ewald energy of point charges, (B,) eV.

    E = k [ 1/2 sum' q_i q_j erfc(alpha r)/r  +  (2 pi / V) sum_{k != 0} exp(-k^2/4alpha^2)/k^2 |S(k)|^2
          - alpha/sqrt(pi) sum q_i^2  -  pi Q^2 / (2 V alpha^2) ],   S(k) = sum_j q_j exp(i k.r_j).

    The real-space sum runs over the graph, so ``graph.cutoff`` must make
    erfc(alpha rc) negligible (see :func:`ewald_parameters`). The k-space sum
    covers the static box |m_a| <= ``kmax`` of reciprocal lattice vectors k = m B,
    which includes the sphere |k| <= ``k_cut`` if kmax >= k_cut |a_a| / 2 pi for
    every lattice vector a_a. A structure whose cell needs more gets energy NaN
    rather than a silently truncated sum. Summing the whole box (not just the
    sphere) keeps the energy smooth under strain.
    """
    qq = _edge_charge_products(charges, lookup)

    def pair(r, zi, zj):
        return COULOMB_EV_A * qq(zi, zj) * erfc(alpha * r) / r

    real = pair_energy_sum(pair, crystal, graph, lengths=lengths)
    q, q2, qsum = _charge_sums(charges, lookup, crystal)
    m = jnp.asarray(_half_grid(int(kmax)), crystal.lattice.dtype)

    def reciprocal(lattice, frac, q):
        volume = jnp.abs(jnp.linalg.det(lattice))
        k = m @ (2.0 * jnp.pi * jnp.linalg.inv(lattice).T)  # rows of B are reciprocal vectors
        k2 = jnp.sum(k * k, -1)
        phase = (frac @ lattice) @ k.T  # (N, K)
        s2 = jnp.sum(q[:, None] * jnp.cos(phase), 0) ** 2 + jnp.sum(q[:, None] * jnp.sin(phase), 0) ** 2
        # factor 2: each +-m pair appears once in the half grid
        e = 2.0 * (2.0 * jnp.pi / volume) * jnp.sum(jnp.exp(-k2 / (4 * alpha**2)) / k2 * s2)
        need = jnp.ceil(k_cut * jnp.linalg.norm(lattice, axis=-1) / (2.0 * jnp.pi))
        return e, volume, jnp.any(need > kmax)

    recip, volume, overflow = jax.vmap(reciprocal)(crystal.lattice, crystal.frac, q)
    e = real + COULOMB_EV_A * (recip - alpha / math.sqrt(math.pi) * q2
                               - jnp.pi * qsum**2 / (2.0 * volume * alpha**2))
    return jnp.where(overflow & crystal.present, jnp.nan, e)


def point_charges(charges: Mapping, method: str = "dsf", cutoff: float | None = None,
                  alpha: float | None = None, tol: float = 1e-8, kmax: int = 8) -> Potential:
    """Coulomb energy of fixed point charges, e.g. ``{"Na": 1, "Cl": -1}``.

    ``method="dsf"`` (default): damped shifted force with ``alpha`` (default
    0.25 1/Å) and ``cutoff`` (default 12 Å). ``method="ewald"``: Ewald with the
    real-space ``cutoff`` (default 10 Å), alpha and k_cut from ``tol`` (see
    :func:`ewald_parameters`) unless ``alpha`` is given, and a static k box of
    ``kmax`` per axis (cells longer than 2 pi kmax / k_cut give NaN).
    """
    species = atomic_numbers(list(charges))
    values = np.array([float(v) for v in charges.values()])
    lookup = species_lookup(species)
    if method == "dsf":
        cutoff = DSF_CUTOFF if cutoff is None else float(cutoff)
        alpha = DSF_ALPHA if alpha is None else float(alpha)

        def energy_fn(params, crystal, graph):
            return dsf_energy(params["charges"], lookup, crystal, graph, alpha, cutoff)

        meta = {"method": "dsf", "alpha": alpha}
    elif method == "ewald":
        cutoff = 10.0 if cutoff is None else float(cutoff)
        alpha, k_cut = ewald_parameters(cutoff, tol, alpha)

        def energy_fn(params, crystal, graph):
            return ewald_energy(params["charges"], lookup, crystal, graph, alpha, k_cut, kmax)

        meta = {"method": "ewald", "alpha": alpha, "k_cut": k_cut, "kmax": kmax}
    else:
        raise ValueError(f"method must be 'dsf' or 'ewald', got {method!r}")
    return Potential(f"coulomb-{method}", energy_fn, as_float_tree({"charges": values}), cutoff, species, meta)
