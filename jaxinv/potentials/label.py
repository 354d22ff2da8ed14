"""Label structures with a potential: a training set for another model.

    labelled = label_structures(load_potential("sevennet0"), structures)
    ase.io.write("train.extxyz", labelled.to_atoms())   # energy, forces, stress

The structures are evaluated in padded batches grouped by size bucket (one
compile per bucket), and the result is a host :class:`Crystal` whose labels
hold ``energy`` (eV, per structure), ``stress`` (eV/Å^3, Voigt-free 3x3) and
whose atom labels hold ``forces`` (eV/Å): exactly what
:func:`jaxinv.potentials.train.load_extxyz` reads back.

A structure whose energy, forces or stress is not finite is dropped with a
warning naming its index; the others are kept.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from jaxinv.crystal import Crystal, group_by_bucket
from jaxinv.graph import allocate, neighbor_graph
from jaxinv.potentials.base import Potential, check_species

log = logging.getLogger(__name__)


def label_structures(potential: Potential, structures: Sequence | Crystal, batch_size: int = 64,
                     progress: bool = False) -> tuple[Crystal, np.ndarray]:
    """``(labelled crystal, kept input indices)`` for pymatgen structures or a Crystal."""
    from tqdm import tqdm

    crystal = structures.to_host() if isinstance(structures, Crystal) else Crystal.from_structures(structures)
    check_species(potential, crystal)
    n_atoms = np.asarray(crystal.n_atoms)
    energy = np.full(len(crystal), np.nan)
    stress = np.full((len(crystal), 3, 3), np.nan)
    forces: list = [None] * len(crystal)
    chunks = []
    for n_slot, members in group_by_bucket(n_atoms).items():
        # one graph shape per size bucket (edge capacity and images that fit all its members),
        # so the potential compiles once per bucket rather than once per batch
        whole = allocate(crystal[members], potential.cutoff, headroom=None)  # structures stay put: exact fit
        shape = (whole.capacity, whole.images)
        chunks += [(n_slot, shape, members[s:s + batch_size]) for s in range(0, len(members), batch_size)]
    compute = potential.compute_fn(True)
    for n_slot, (capacity, images), idx in tqdm(chunks, desc=f"label ({potential.name})", disable=not progress):
        # full-size batches keep one shape per bucket; the tail is padded with empty cells
        batch = crystal[idx].pad(n_max=n_slot, batch_size=batch_size)
        graph = neighbor_graph(batch, potential.cutoff, capacity=capacity, images=images)
        out = compute(potential.params, batch, graph)
        e, f, s = np.asarray(out.energy), np.asarray(out.forces), np.asarray(out.stress)
        for k, i in enumerate(idx):
            energy[i], stress[i] = e[k], s[k]
            forces[i] = f[k, : n_atoms[i]]
    finite = np.array([np.isfinite(energy[i]) and np.isfinite(stress[i]).all() and np.isfinite(forces[i]).all()
                       for i in range(len(crystal))])
    for i in np.flatnonzero(~finite):
        log.warning("structure %d: non-finite energy, forces or stress from %s; dropped", i, potential.name)
    keep = np.flatnonzero(finite)
    kept = crystal[keep]
    labels = dict(kept.labels, energy=energy[keep], stress=stress[keep])
    n_max = kept.n_max
    per_atom = np.zeros((len(keep), n_max, 3))
    for row, i in enumerate(keep):
        per_atom[row, : n_atoms[i]] = forces[i]
    return kept.replace(labels=labels, atom_labels=dict(kept.atom_labels, forces=per_atom)), keep
