"""Pieces shared by the classical potentials: species tables and cutoff treatments.

Per-pair parameters live in (S, S) tables over the potential's species, and an
atom's row is found through a static lookup from atomic number to species index
(a NumPy constant closed over by the energy function, so ``params`` stays a
pytree of floats that can be differentiated, e.g. for fitting).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

import jax
import jax.numpy as jnp

from jaxinv.potentials.base import pair_energy_sum

COULOMB_EV_A = 14.3996454784  # e^2 / (4 pi eps0) in eV Å (CODATA 2018)
TRUNCATIONS = ("none", "shift", "force_shift", "switch")


def atomic_numbers(species: Sequence | None) -> tuple[int, ...] | None:
    """Element symbols or atomic numbers -> a tuple of atomic numbers (None stays None)."""
    if species is None:
        return None
    from pymatgen.core import Element

    return tuple(int(s) if isinstance(s, (int, np.integer)) else Element(s).Z for s in species)


def species_lookup(species: tuple[int, ...] | None) -> np.ndarray:
    """Atomic number -> row of the parameter tables, (119,) int32.

    With ``species=None`` every element maps to row 0 (one-species potentials in
    reduced units). Unknown elements also map to 0; :func:`check_species` is what
    rejects them, on the host, before anything is computed.
    """
    lookup = np.zeros(119, np.int32)
    for k, z in enumerate(species or ()):
        lookup[z] = k
    return lookup


def pair_table(value, n_species: int, mixing: str = "arithmetic") -> np.ndarray:
    """A scalar, a per-species vector (mixed) or an (S, S) matrix -> symmetric (S, S) table.

    ``mixing`` combines per-species values: "arithmetic" ((a+b)/2, Lorentz rule for
    sigma) or "geometric" (sqrt(ab), Berthelot rule for epsilon).
    """
    v = np.asarray(value, np.float64)
    if v.ndim == 0:
        return np.full((n_species, n_species), float(v))
    if v.shape == (n_species,):
        if mixing == "arithmetic":
            return 0.5 * (v[:, None] + v[None, :])
        if mixing == "geometric":
            return np.sqrt(v[:, None] * v[None, :])
        raise ValueError(f"unknown mixing rule {mixing!r}")
    if v.shape == (n_species, n_species):
        if not np.allclose(v, v.T):
            raise ValueError("pair parameter tables must be symmetric")
        return v
    raise ValueError(f"expected a scalar, ({n_species},) or ({n_species}, {n_species}) values, got shape {v.shape}")


def smoothstep(r, r_onset: float, cutoff: float):
    """C^2 switch: 1 below ``r_onset``, 0 above ``cutoff``, 6s^5 - 15s^4 + 10s^3 between.

    s = (cutoff - r) / (cutoff - r_onset). Energy, force and force derivative are
    continuous; the same quintic as ASE's MorsePotential (ported from JuLIP.jl).
    """
    s = jnp.clip((cutoff - r) / (cutoff - r_onset), 0.0, 1.0)
    return s * s * s * (10.0 + s * (-15.0 + 6.0 * s))


def truncate(fn: Callable, cutoff: float, truncation: str, r_onset: float | None = None) -> Callable:
    """Make an elementwise pair energy ``fn(r, **params)`` vanish at ``cutoff``.

    ``truncation``:

    * "none": plain truncation; energy jumps by V(rc). For non-periodic
      evaluations where the cutoff exceeds every distance (clusters).
    * "shift": V(r) - V(rc); energy continuous, forces jump by V'(rc).
    * "force_shift": V(r) - V(rc) - (r - rc) V'(rc); energy and forces
      continuous, but the energy is tilted everywhere by the linear term.
    * "switch": S(r) V(r) with the C^2 :func:`smoothstep` between ``r_onset``
      and ``cutoff``; V is unchanged below ``r_onset``.
    """
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    if truncation == "switch" and not (r_onset is not None and 0 < r_onset < cutoff):
        raise ValueError(f"switching needs 0 < r_onset < cutoff, got r_onset={r_onset}, cutoff={cutoff}")

    def truncated(r, **p):
        rc = jnp.full_like(r, cutoff)
        if truncation == "none":
            e = fn(r, **p)
        elif truncation == "shift":
            e = fn(r, **p) - fn(rc, **p)
        elif truncation == "force_shift":
            # V(rc) and V'(rc) per edge in one forward-mode pass (fn is elementwise)
            vc, dvc = jax.jvp(lambda x: fn(x, **p), (rc,), (jnp.ones_like(rc),))
            e = fn(r, **p) - vc - (r - rc) * dvc
        else:
            e = smoothstep(r, r_onset, cutoff) * fn(r, **p)
        return jnp.where(r < cutoff, e, 0.0)

    return truncated


def tabulated_pair_energy(pair_fn: Callable, lookup: np.ndarray, tables: dict, crystal, graph,
                          lengths=None) -> jax.Array:
    """Sum of ``pair_fn(r, **per_edge_params)`` over the graph, (B,).

    ``tables`` maps names to (S, S) arrays; each edge gets the entries of its
    (receiver species, sender species) pair. ``lengths``: as in :func:`pair_energy_sum`.
    """
    lookup = jnp.asarray(lookup)

    def per_edge(r, zi, zj):
        si, sj = lookup[zi], lookup[zj]
        return pair_fn(r, **{k: jnp.asarray(v)[si, sj] for k, v in tables.items()})

    return pair_energy_sum(per_edge, crystal, graph, lengths=lengths)


def as_float_tree(tree):
    """Parameters stored as float64 NumPy arrays (cast to JAX's float type inside jit)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), tree)
