"""Generalized coordinates for variable-cell relaxation (log-strain cell filter).

The degrees of freedom of one structure are

* ``q``: atomic positions in the *reference* cell, ``q = frac @ L0`` (Å), and
* ``lam``: a log-deformation, with deformation gradient ``F = expm(lam / c)``,

so that the current cell and positions are ``L = L0 F^T`` and ``x = q F^T``.
This is the parametrization of ASE's ``FrechetCellFilter`` (``lam`` is its
``exp_cell_factor * logm(F)`` with ``c = exp_cell_factor``, by default the
number of atoms). ASE derives the cell force through a hand-written Fréchet
derivative of the matrix exponential; here ``jax.grad`` differentiates through
``expm`` directly, which gives the same generalized force exactly.

Cell modes restrict ``lam``:

``"frechet"``  any symmetric deformation (full variable cell);
``"fixed"``    no cell degrees of freedom (positions only);
``"volume"``   traceless ``lam``: det F = exp(tr(lam)/c) = 1, constant volume, shape relaxes;
``"shape"``    isotropic ``lam = s 1``: constant shape, volume relaxes (hydrostatic).
"""
from __future__ import annotations

import jax.numpy as jnp

CELL_MODES = ("frechet", "fixed", "volume", "shape")

__all__ = ["CELL_MODES", "deformation", "expm3", "project_cell_force", "current_cell"]


def expm3(a, squarings: int = 6, order: int = 10):
    """Matrix exponential of a batch of 3x3 matrices by fixed scaling and squaring.

    ``jax.scipy.linalg.expm`` picks its Padé degree with data-dependent branches,
    which costs seconds of compile time inside a relaxation loop. Log-strains are
    small (|a| < 2 before a cell counts as exploded), so a fixed 2^-6 scaling and
    a 10th-order Taylor series are exact to float64 rounding and differentiate cleanly.
    """
    x = a / (2.0**squarings)
    eye = jnp.broadcast_to(jnp.eye(3, dtype=a.dtype), a.shape)
    term, out = eye, eye
    for k in range(1, order + 1):
        term = jnp.einsum("...ij,...jk->...ik", term, x) / k
        out = out + term
    for _ in range(squarings):
        out = jnp.einsum("...ij,...jk->...ik", out, out)
    return out


def deformation(lam, factor):
    """F = expm(lam / c) for a batch, (B, 3, 3)."""
    return expm3(lam / factor[:, None, None])


def current_cell(reference_lattice, q, lam, factor):
    """Current lattice and Cartesian positions from generalized coordinates."""
    f = deformation(lam, factor)
    lattice = jnp.einsum("bij,bkj->bik", reference_lattice, f)  # L0 F^T
    positions = jnp.einsum("bnj,bkj->bnk", q, f)  # q F^T
    return lattice, positions, f


def project_cell_force(force, mode: str):
    """Restrict a generalized cell force (B, 3, 3) to the directions ``mode`` allows.

    The force is symmetrized first: the energy is rotation invariant, so the
    antisymmetric part only carries numerical noise that would rotate the cell.
    """
    if mode not in CELL_MODES:
        raise ValueError(f"cell mode {mode!r}; choose one of {CELL_MODES}")
    sym = 0.5 * (force + jnp.swapaxes(force, -1, -2))
    eye = jnp.eye(3, dtype=force.dtype)
    trace = jnp.trace(sym, axis1=-2, axis2=-1)[:, None, None]
    if mode == "fixed":
        return jnp.zeros_like(sym)
    if mode == "volume":
        return sym - trace / 3.0 * eye
    if mode == "shape":
        return trace / 3.0 * eye
    return sym
