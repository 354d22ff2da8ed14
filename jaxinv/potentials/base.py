"""One interface for every interatomic potential.

A potential is a pure function ``energy_fn(params, crystal, graph) -> (B,)``
that returns one energy (eV) per structure of a padded :class:`Crystal` batch,
using the all-image :class:`Graph` built at ``cutoff``. Forces and stress are
never written by hand: :func:`energy_forces_stress` differentiates the energy
with respect to Cartesian displacements and a symmetric strain,

    F_i = -dE/dx_i,        sigma = (1/V) dE/d(epsilon),

where the strain acts on the cell and the positions together,
``L -> L (1 + eps)`` with fractional coordinates fixed. This is ASE's sign
convention: a compressed cell has negative stress, pressure = -trace(sigma)/3,
in eV/Å^3.

Contract for ``energy_fn`` implementations:

* padded atoms (``mask`` False) and padded edges (``graph.mask`` False)
  contribute nothing, and gradients through them are finite (use
  :func:`safe_norm`; padded edge vectors are zero);
* an atom without neighbors gets a finite energy (its isolated-atom term);
* the graph may have been built with a larger cutoff than the potential's
  (relaxation adds a skin) but is then trimmed with
  :func:`jaxinv.graph.trim_graph`: use your own cutoff, not ``graph.cutoff``,
  for energy shifts;
* the function is batch-polymorphic: it works on any (B, N) and under
  ``jit``/``vmap``/``scan``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from flax import struct

import jax
import jax.numpy as jnp

from jaxinv.crystal import Crystal
from jaxinv.graph import Graph, neighbor_graph

__all__ = ["Potential", "Outputs", "energy_forces_stress", "safe_norm", "UnsupportedElementError",
           "check_species", "pair_energy_sum"]

EnergyFn = Callable[[Any, Crystal, Graph], jax.Array]


class UnsupportedElementError(ValueError):
    pass


@dataclass(frozen=True, eq=False)
class Potential:
    """A named energy function with its parameters and cutoff.

    ``species`` lists the atomic numbers the potential knows (None: any).
    ``energy_fn`` must follow the contract in the module docstring.
    ``metadata["bond_radii"]`` (119 radii in Å, by atomic number) sets the length
    scale of the relaxer's collapse guard for potentials in reduced units; by
    default it is the covalent radii (:attr:`bond_radii` is None).
    ``metadata["element_energies"]`` (119 values in eV/atom, NaN where unknown) are its
    elemental reference energies for the relaxer's energy floor; by default the table
    that ships for its name (:mod:`jaxinv.potentials.references`), else none.
    """

    name: str
    energy_fn: EnergyFn
    params: Any
    cutoff: float
    species: tuple[int, ...] | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def bond_radii(self) -> tuple | None:
        """Per-element bond radii (Å, atomic numbers 0..118) for the collapse guard, or None
        (covalent radii)."""
        radii = self.metadata.get("bond_radii")
        return None if radii is None else tuple(float(r) for r in radii)

    @functools.cached_property
    def element_energies(self) -> tuple | None:
        """Elemental reference energies (eV/atom, atomic numbers 0..118, NaN where none) for the
        relaxer's energy floor, or None (no floor)."""
        from jaxinv.potentials.references import as_array, shipped_element_energies

        table = self.metadata.get("element_energies")
        if table is None:
            return shipped_element_energies(self.name)
        return as_array(table) if isinstance(table, dict) else tuple(float(x) for x in table)

    def __call__(self, crystal: Crystal, graph: Graph | None = None, stress: bool = True) -> "Outputs":
        """Energies, forces and stress of a batch (host convenience; builds the graph)."""
        check_species(self, crystal)
        graph = graph if graph is not None else neighbor_graph(crystal, self.cutoff)
        return self.compute_fn(stress)(self.params, crystal, graph)

    @functools.cache
    def compute_fn(self, stress: bool = True):
        """The jitted ``(params, crystal, graph) -> Outputs`` of this potential."""
        return jax.jit(functools.partial(energy_forces_stress, self.energy_fn, compute_stress=stress))


def check_species(potential: Potential, crystal: Crystal) -> None:
    """Raise :class:`UnsupportedElementError` naming any element the potential lacks."""
    if potential.species is None:
        return
    present = set(np.unique(np.asarray(crystal.numbers)[np.asarray(crystal.mask)]).tolist())
    missing = sorted(present - set(potential.species))
    if missing:
        from pymatgen.core import Element

        names = ", ".join(f"{Element.from_Z(z).symbol} (Z={z})" for z in missing)
        raise UnsupportedElementError(f"potential {potential.name!r} has no parameters for {names}")


@struct.dataclass
class Outputs:
    energy: jax.Array  # (B,) eV
    forces: jax.Array  # (B, N, 3) eV/Å, zero on padded atoms
    stress: jax.Array | None  # (B, 3, 3) eV/Å^3, ASE sign convention


def strained(lattice, strain):
    """``lattice`` (B, 3, 3) under the symmetric part of ``strain``: ``L (1 + sym(strain))``.
    The stress is the derivative of the energy with respect to ``strain`` at 0, over the
    volume; the potentials' ``energy_forces_stress`` and the relaxer both take it this way."""
    sym = 0.5 * (strain + jnp.swapaxes(strain, -1, -2))
    return lattice + jnp.einsum("bij,bjk->bik", lattice, sym)


def energy_forces_stress(energy_fn: EnergyFn, params, crystal: Crystal, graph: Graph,
                         compute_stress: bool = True) -> Outputs:
    """Energy, forces and (optionally) stress of a batch by one reverse-mode pass."""
    b, n = crystal.numbers.shape
    dtype = crystal.lattice.dtype if jnp.issubdtype(crystal.lattice.dtype, jnp.floating) else jnp.float32
    lattice = jnp.asarray(crystal.lattice, dtype)
    inv_lattice = jnp.linalg.inv(lattice)

    def total(displacement, strain):
        frac = crystal.frac + jnp.einsum("bni,bij->bnj", displacement, inv_lattice)
        e = energy_fn(params, crystal.replace(lattice=strained(lattice, strain), frac=frac), graph)
        return e.sum(), e

    zeros_u = jnp.zeros((b, n, 3), dtype)
    zeros_e = jnp.zeros((b, 3, 3), dtype)
    if compute_stress:
        (_, energy), (du, de) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(zeros_u, zeros_e)
        volume = jnp.abs(jnp.linalg.det(lattice))
        stress = de / volume[:, None, None]
    else:
        (_, energy), du = jax.value_and_grad(total, argnums=0, has_aux=True)(zeros_u, zeros_e)
        stress = None
    forces = jnp.where(crystal.mask[..., None], -du, 0.0)
    return Outputs(energy=energy, forces=forces, stress=stress)


def safe_norm(vec, axis: int = -1, eps: float = 1e-12):
    """|vec| with a finite gradient at zero (padded edges have zero vectors)."""
    sq = jnp.sum(vec * vec, axis=axis)
    safe = jnp.where(sq > eps, sq, 1.0)
    return jnp.where(sq > eps, jnp.sqrt(safe), 0.0)


def pair_energy_sum(pair_fn: Callable, crystal: Crystal, graph: Graph, *args, lengths=None):
    """Sum of a pair energy over directed edges, halved (each pair appears twice).

    ``pair_fn(r, z_i, z_j, *args)`` maps distances (B, E) and the species of the
    receiver and sender to energies; padded edges are masked out. ``lengths`` may
    pass ``edge_lengths(crystal, graph)`` computed once for several pair terms, so
    that reverse mode goes through the geometry once, not once per term.
    """
    from jaxinv.graph import edge_lengths

    r = edge_lengths(crystal, graph) if lengths is None else lengths
    take = jax.vmap(lambda z, idx: z[idx])
    zi, zj = take(crystal.numbers, graph.receivers), take(crystal.numbers, graph.senders)
    r_safe = jnp.where(graph.mask, r, graph.cutoff)  # keeps pair_fn away from r = 0
    e = pair_fn(r_safe, zi, zj, *args)
    return 0.5 * jnp.sum(jnp.where(graph.mask, e, 0.0), axis=-1)
