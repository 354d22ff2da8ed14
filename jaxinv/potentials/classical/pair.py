"""Pair potentials: Lennard-Jones and Morse, multi-species, on the all-image graph.

The functional forms are those of ``jax_md.energy.lennard_jones`` and
``jax_md.energy.morse`` (re-written here on distances so that they apply to the
all-image :class:`~jaxinv.graph.Graph` instead of jax-md's minimum-image
displacements; importing jax-md alone costs seconds).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

import jax.numpy as jnp

from jaxinv.crystal import Crystal
from jaxinv.potentials.base import Potential
from jaxinv.potentials.classical._common import (as_float_tree, atomic_numbers, pair_table, species_lookup,
                                                 tabulated_pair_energy, truncate)

__all__ = ["lennard_jones", "morse", "isolated_cluster", "lj_energy", "morse_energy"]


def lj_energy(r, sigma, epsilon):
    """4 epsilon [(sigma/r)^12 - (sigma/r)^6]; minimum -epsilon at r = 2^(1/6) sigma."""
    sr6 = (sigma / r) ** 6
    return 4.0 * epsilon * (sr6 * sr6 - sr6)


def morse_energy(r, r0, epsilon, alpha):
    """epsilon [exp(-2 alpha (r - r0)) - 2 exp(-alpha (r - r0))]; minimum -epsilon at r0.

    Equal to jax-md's epsilon (1 - exp(-alpha (r - sigma)))^2 - epsilon with
    sigma = r0, and to ASE's MorsePotential with rho0 = alpha r0.
    """
    x = jnp.exp(-alpha * (r - r0))
    return epsilon * x * (x - 2.0)


def _pair_potential(name, fn, tables, species, cutoff, truncation, r_onset, metadata):
    species = atomic_numbers(species)
    lookup = species_lookup(species)
    pair = truncate(fn, cutoff, truncation, r_onset)

    def energy_fn(params, crystal, graph):
        return tabulated_pair_energy(pair, lookup, params, crystal, graph)

    meta = {"truncation": truncation, "r_onset": r_onset, **metadata}
    return Potential(name, energy_fn, as_float_tree(tables), float(cutoff), species, meta)


def _default_onset(truncation, cutoff, r_onset):
    return (0.8 * cutoff if r_onset is None else r_onset) if truncation == "switch" else r_onset


def lennard_jones(sigma=1.0, epsilon=1.0, species: Sequence | None = None, cutoff: float | None = None,
                  truncation: str = "switch", r_onset: float | None = None) -> Potential:
    """Lennard-Jones potential, V(r) = 4 eps [(sigma/r)^12 - (sigma/r)^6].

    Args:
      sigma, epsilon: Å and eV (or reduced units with ``species=None``). A scalar,
        one value per species (mixed by the Lorentz-Berthelot rules: arithmetic
        sigma, geometric epsilon) or a symmetric (S, S) table.
      species: element symbols or atomic numbers, in table order; None applies one
        parameter set to every element.
      cutoff: default 3 max(sigma).
      truncation: how V goes to zero at the cutoff (see
        :func:`~jaxinv.potentials.classical._common.truncate`). The default
        "switch" multiplies V by a C^2 quintic between ``r_onset`` (default
        0.8 cutoff = 2.4 sigma) and the cutoff, so forces have no jump;
        "shift" is the energy-shifted form of ASE's ``LennardJones`` (forces jump
        at the cutoff); "none" with a cutoff larger than every distance gives the
        untruncated energy of a cluster (see :func:`isolated_cluster`).
    """
    species_t = atomic_numbers(species)
    n = 1 if species_t is None else len(species_t)
    tables = {"sigma": pair_table(sigma, n, "arithmetic"), "epsilon": pair_table(epsilon, n, "geometric")}
    cutoff = 3.0 * float(tables["sigma"].max()) if cutoff is None else float(cutoff)
    # the strongest attraction of a pair, 24 eps / r [2 (s/r)^12 - (s/r)^6] at r = (26/7)^(1/6) sigma
    scales = _force_scales(2.3964 * tables["epsilon"] / tables["sigma"], tables["sigma"])
    return _pair_potential("lennard-jones", lj_energy, tables, species_t, cutoff, truncation,
                           _default_onset(truncation, cutoff, r_onset),
                           {**_reduced_units(species_t, tables["sigma"]), **scales})


def morse(r0, epsilon, alpha, species: Sequence | None = None, cutoff: float | None = None,
          truncation: str = "switch", r_onset: float | None = None) -> Potential:
    """Morse potential, V(r) = eps [exp(-2 a (r - r0)) - 2 exp(-a (r - r0))].

    Args:
      r0 (Å), epsilon (eV), alpha (1/Å): scalars, per-species vectors (arithmetic
        r0 and alpha, geometric epsilon) or symmetric (S, S) tables. For example
        Girifalco & Weizer, Phys. Rev. 114, 687 (1959), Cu: r0 = 2.866 Å,
        epsilon = 0.3429 eV, alpha = 1.3588 1/Å.
      cutoff: default r0 + 7/alpha (where V has decayed to ~1e-3 epsilon).
      truncation, r_onset: as for :func:`lennard_jones`. ASE's ``MorsePotential``
        is the "switch" form with ``r_onset = rcut1 * r0`` and ``cutoff = rcut2 * r0``.
    """
    species_t = atomic_numbers(species)
    n = 1 if species_t is None else len(species_t)
    tables = {"r0": pair_table(r0, n, "arithmetic"), "epsilon": pair_table(epsilon, n, "geometric"),
              "alpha": pair_table(alpha, n, "arithmetic")}
    if cutoff is None:
        cutoff = float((tables["r0"] + 7.0 / tables["alpha"]).max())
    # the strongest attraction of a pair, eps alpha / 2, where exp(-alpha (r - r0)) = 1/2
    scales = _force_scales(0.5 * tables["epsilon"] * tables["alpha"], tables["r0"])
    return _pair_potential("morse", morse_energy, tables, species_t, float(cutoff), truncation,
                           _default_onset(truncation, cutoff, r_onset),
                           {**_reduced_units(species_t, tables["r0"]), **scales})


def _force_scales(attraction, length) -> dict:
    """``force_scale`` (the strongest pair attraction, eV/Å) and ``stress_scale`` (that force over
    its pair's length squared, eV/Å^3), taken from the weakest pair: a relaxation criterion must
    resolve forces on that scale (:func:`jaxinv.relax.fire.coarse_criteria`)."""
    attraction, length = np.ravel(attraction), np.ravel(length)
    pairs = np.flatnonzero(attraction > 0)  # a zero epsilon is a pair that does not interact
    if len(pairs) == 0:
        return {}
    k = pairs[np.argmin(attraction[pairs])]
    return {"force_scale": float(attraction[k]), "stress_scale": float(attraction[k] / length[k] ** 2)}


def _reduced_units(species, length_table) -> dict:
    """Without species the potential is in its own units (LJ's sigma, Morse's r0), not Å of
    real elements: the relaxer's collapse guard then measures bonds in those units, half the
    length per atom, instead of in covalent radii."""
    if species is not None:
        return {}
    return {"bond_radii": (0.5 * float(np.max(length_table)),) * 119}


def isolated_cluster(positions, numbers, cutoff: float, margin: float = 1.0) -> Crystal:
    """A finite cluster as a one-structure :class:`Crystal` whose images never interact.

    The cubic box is wider than the cluster's extent plus ``cutoff`` plus ``margin``
    (Å), so no periodic image comes within the cutoff of any atom: with a pair
    potential whose cutoff exceeds the cluster's diameter and ``truncation="none"``
    the energy is exactly the non-periodic one. The cluster sits at the box center.
    """
    positions = np.asarray(positions, np.float64)
    extent = float(np.ptp(positions, axis=0).max()) if len(positions) > 1 else 0.0
    box = extent + float(cutoff) + float(margin)
    centered = positions - positions.mean(0) + 0.5 * box
    lattice = box * np.eye(3)
    return Crystal.from_arrays([lattice], [centered / box], [np.broadcast_to(numbers, (len(positions),))])
