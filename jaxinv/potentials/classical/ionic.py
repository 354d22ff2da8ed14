"""Rigid-ion potentials for oxides: Buckingham short range plus point-charge Coulomb.

V_ij(r) = A exp(-r/rho) - C/r^6 + 4 eps [(sigma/r)^30 - (sigma/r)^6]  +  k q_i q_j / r,

where the optional 30-6 term is a repulsive core that stops the -C/r^6 and
Coulomb attractions from fusing cations and anions at short range (the bare BKS
Si-O pair energy has a barrier of less than 1 eV near r = 1.2 Å, below which it
dives to minus infinity).
The Coulomb part is the damped shifted force sum by default or Ewald on request
(see :mod:`~jaxinv.potentials.classical.coulomb`).

Parameter sets:

* :func:`bks_sio2`: B. W. H. van Beest, G. J. Kramer and R. A. van Santen,
  Phys. Rev. Lett. 64, 1955 (1990), with the 30-6 core of I. Saika-Voivod,
  F. Sciortino, T. Grande and P. H. Poole, Phys. Rev. E 70, 061507 (2004).
* :func:`matsui_akaogi_tio2`: M. Matsui and M. Akaogi, Mol. Simul. 6, 239
  (1991), in the Buckingham form with A, rho, C in eV and Å as commonly
  tabulated (A = f0 (b_i + b_j) exp((a_i + a_j)/(b_i + b_j)), rho = b_i + b_j,
  C = c_i c_j).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

import jax.numpy as jnp

from jaxinv.graph import edge_lengths
from jaxinv.potentials.base import Potential
from jaxinv.potentials.classical._common import (as_float_tree, atomic_numbers, species_lookup,
                                                 tabulated_pair_energy, truncate)
from jaxinv.potentials.classical.coulomb import (DSF_ALPHA, DSF_CUTOFF, dsf_energy, ewald_energy,
                                                 ewald_parameters)

__all__ = ["buckingham_coulomb", "bks_sio2", "matsui_akaogi_tio2", "buckingham_energy"]


def buckingham_energy(r, A, rho, C, core_epsilon, core_sigma):
    """A exp(-r/rho) - C/r^6 + 4 eps_core [(sigma_core/r)^30 - (sigma_core/r)^6], eV."""
    s6 = (core_sigma / r) ** 6
    core = 4.0 * core_epsilon * (s6**5 - s6)
    return A * jnp.exp(-r / rho) - C / r**6 + core


def _pair_tables(species, buckingham: Mapping, core: Mapping | None):
    """Symmetric (S, S) tables from {(el_a, el_b): values}; missing pairs do not interact."""
    index = {z: k for k, z in enumerate(species)}
    n = len(species)
    tables = {"A": np.zeros((n, n)), "rho": np.ones((n, n)), "C": np.zeros((n, n)),
              "core_epsilon": np.zeros((n, n)), "core_sigma": np.ones((n, n))}

    def put(pairs, names):
        for (a, b), values in (pairs or {}).items():
            i, j = (index[z] for z in atomic_numbers([a, b]))
            for name, v in zip(names, values):
                tables[name][i, j] = tables[name][j, i] = float(v)

    put(buckingham, ("A", "rho", "C"))
    put(core, ("core_epsilon", "core_sigma"))
    return tables


def buckingham_coulomb(charges: Mapping, buckingham: Mapping, core: Mapping | None = None,
                       coulomb: str = "dsf", cutoff: float = DSF_CUTOFF, alpha: float | None = None,
                       truncation: str = "switch", r_onset: float | None = None, ewald_tol: float = 1e-8,
                       ewald_kmax: int = 8, name: str = "buckingham-coulomb") -> Potential:
    """Buckingham + Coulomb rigid-ion potential.

    Args:
      charges: {element: charge in e}; defines the species.
      buckingham: {(el_a, el_b): (A [eV], rho [Å], C [eV Å^6])}.
      core: optional {(el_a, el_b): (epsilon [eV], sigma [Å])} of the 30-6 core.
      coulomb: "dsf" (default; alpha defaults to 0.25 1/Å) or "ewald" (real-space
        part on the same graph; alpha and the k-space cutoff from ``ewald_tol``;
        cells longer than 2 pi ewald_kmax / k_cut get NaN energies).
      cutoff: one cutoff (Å) for the short-range and the real-space Coulomb terms.
      truncation, r_onset: how the short-range part vanishes at the cutoff (default:
        C^2 switch from 0.8 cutoff; at 12 Å the Buckingham tail is ~1e-4 eV anyway).
    """
    species = atomic_numbers(list(charges))
    lookup = species_lookup(species)
    if truncation == "switch" and r_onset is None:
        r_onset = 0.8 * cutoff
    short = truncate(buckingham_energy, cutoff, truncation, r_onset)
    params = {"charges": np.array([float(v) for v in charges.values()]), **_pair_tables(species, buckingham, core)}
    if coulomb == "dsf":
        alpha = DSF_ALPHA if alpha is None else float(alpha)

        def coulomb_fn(q, crystal, graph, lengths):
            return dsf_energy(q, lookup, crystal, graph, alpha, cutoff, lengths=lengths)

        meta = {"coulomb": "dsf", "alpha": alpha}
    elif coulomb == "ewald":
        alpha, k_cut = ewald_parameters(cutoff, ewald_tol, alpha)

        def coulomb_fn(q, crystal, graph, lengths):
            return ewald_energy(q, lookup, crystal, graph, alpha, k_cut, ewald_kmax, lengths=lengths)

        meta = {"coulomb": "ewald", "alpha": alpha, "k_cut": k_cut, "kmax": ewald_kmax}
    else:
        raise ValueError(f"coulomb must be 'dsf' or 'ewald', got {coulomb!r}")

    def energy_fn(params, crystal, graph):
        tables = {k: v for k, v in params.items() if k != "charges"}
        r = edge_lengths(crystal, graph)  # once for both terms: the costly part of the gradient
        return tabulated_pair_energy(short, lookup, tables, crystal, graph, lengths=r) + \
            coulomb_fn(params["charges"], crystal, graph, r)

    meta.update(truncation=truncation, r_onset=r_onset)
    return Potential(name, energy_fn, as_float_tree(params), float(cutoff), species, meta)


BKS_CHARGES = {"Si": 2.4, "O": -1.2}
BKS_BUCKINGHAM = {  # (A eV, rho Å, C eV Å^6); van Beest et al. give b = 1/rho in 1/Å
    ("O", "O"): (1388.7730, 1.0 / 2.76000, 175.0000),
    ("Si", "O"): (18003.7572, 1.0 / 4.87318, 133.5381),
}
# Saika-Voivod et al. (2004): eps_SiO = 0.2989065 kJ/mol, eps_OO = 0.101411 kJ/mol
_KJ_PER_MOL = 1.0 / 96.4853321  # eV
BKS_CORE = {
    ("Si", "O"): (0.2989065 * _KJ_PER_MOL, 1.313635),
    ("O", "O"): (0.101411 * _KJ_PER_MOL, 1.779239),
}


def bks_sio2(core: bool = True, **kwargs) -> Potential:
    """BKS silica (van Beest, Kramer, van Santen 1990), q_Si = 2.4, q_O = -1.2.

    With ``core=True`` (default) the 30-6 Lennard-Jones core of Saika-Voivod et
    al. (2004) is added, which changes the crystal energies by a few meV per atom
    but makes the potential repulsive below ~1.2 Å (Si-O) as global optimization
    needs. Keyword arguments go to :func:`buckingham_coulomb` (cutoff 12 Å, DSF).
    """
    return buckingham_coulomb(BKS_CHARGES, BKS_BUCKINGHAM, BKS_CORE if core else None,
                              name="bks-sio2" + ("" if core else "-nocore"), **kwargs)


MA_CHARGES = {"Ti": 2.196, "O": -1.098}
MA_BUCKINGHAM = {  # (A eV, rho Å, C eV Å^6)
    ("Ti", "Ti"): (31120.2, 0.154, 5.25),
    ("Ti", "O"): (16957.53, 0.194, 12.59),
    ("O", "O"): (11782.76, 0.234, 30.22),
}


def matsui_akaogi_tio2(**kwargs) -> Potential:
    """Matsui-Akaogi TiO2 (1991), q_Ti = 2.196, q_O = -1.098, no core term.

    Its Ti-O pair energy (with Coulomb) rises to a barrier of ~450 eV near 0.55 Å
    and only turns over below ~0.45 Å, so no core fix is needed for starting
    structures without nearly coincident atoms. Keyword arguments
    go to :func:`buckingham_coulomb` (cutoff 12 Å, DSF).
    """
    return buckingham_coulomb(MA_CHARGES, MA_BUCKINGHAM, None, name="matsui-akaogi-tio2", **kwargs)
