"""Checks of jaxinv's batched relaxation against ASE's FIRE + FrechetCellFilter with the
same potential (issue 4): :func:`sample` builds rattled and strained test structures,
:func:`compare` relaxes them with both and reports the differences per structure.

``benchmarks/validate_relax.py`` runs the full-size comparison; ``tests/test_relax_sevennet.py``
a small one. jaxinv stops on ASE's own test (``criterion="ase"``: every row of the
FrechetCellFilter generalized forces below ``fmax``), so both stop at the same point of
the same algorithm.
"""
from __future__ import annotations

import numpy as np

__all__ = ["sample", "ase_relax", "compare"]


def sample(perov_n, carbon_n, rattle, strain, seed=0):
    """Rattled + strained perov_5 structures and small (<= 8 atoms) carbon_24 structures."""
    from jaxinv.data import load_dataset
    from jaxinv.data.perturb import perturb

    perov, carbon = load_dataset("perov_5:test"), load_dataset("carbon_24:test")
    rng = np.random.default_rng(seed)
    structures = perturb(perov.structures(rng.choice(len(perov), perov_n, replace=False)), rattle=rattle,
                         strain=strain, seed=seed + 1)
    small = np.flatnonzero(np.asarray(carbon.n_atoms) <= 8)
    structures += perturb(carbon.structures(rng.choice(small, carbon_n, replace=False)), rattle=rattle,
                          strain=strain, seed=seed + 2)
    return structures


def ase_relax(structure, calc, fmax, steps=1000):
    """ASE FIRE + FrechetCellFilter with ``calc``: (final structure, energy per atom, steps)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calc
    opt = FIRE(FrechetCellFilter(atoms), logfile=None)
    opt.run(fmax=fmax, steps=steps)
    return AseAtomsAdaptor.get_structure(atoms), atoms.get_potential_energy() / len(atoms), opt.nsteps


def compare(structures, potential, fmax, max_steps=1000):
    """Per-structure comparison rows (dicts). jaxinv stops on ASE's own test
    (``criterion='ase'``), so both runs end at the same ``fmax`` on atoms and cell."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from jaxinv.potentials.calculator import JaxinvCalculator
    from jaxinv.relax import energy_per_atom, relax, status_names

    ours = relax(structures, potential, fmax=fmax, criterion="ase", max_steps=max_steps, progress=False)
    calc, matcher, rows = JaxinvCalculator(potential), StructureMatcher(), []
    status, steps, e_ours = status_names(ours), ours.labels["steps"], energy_per_atom(ours)
    for k, (s, r) in enumerate(zip(structures, ours.to_structures())):
        ref, e_ref, n_ref = ase_relax(s, calc, fmax, max_steps)
        rows.append({"formula": s.composition.reduced_formula, "status": status[k], "steps_jaxinv": int(steps[k]),
                     "steps_ase": int(n_ref), "e_jaxinv": float(e_ours[k]), "e_ase": float(e_ref),
                     "de_mev_atom": 1e3 * abs(float(e_ours[k]) - e_ref),
                     "da": float(np.abs(np.sort(r.lattice.abc) - np.sort(ref.lattice.abc)).max()),
                     "match": bool(matcher.fit(r, ref))})
    return rows
