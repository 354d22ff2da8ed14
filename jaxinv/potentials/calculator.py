"""An ASE calculator for any jaxinv :class:`~jaxinv.potentials.Potential`.

    >>> from jaxinv.potentials.sevennet import load_sevennet
    >>> atoms.calc = JaxinvCalculator(load_sevennet())
    >>> atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

Each call rebuilds the neighbor graph on the host and runs the potential's
jitted energy/forces/stress function. Every new shape is a new compilation
(10-25 s for SevenNet-0 on a CPU), so the shapes only ever grow, on jaxinv's one
bucket ladder (:func:`jaxinv.crystal.bucket_size`): the atom slots are the largest
bucket met so far, and the edge capacity is sized with the relaxation headroom
(:class:`jaxinv.graph.StickyGraph`), so an ASE relaxation or MD run, and a loop over
different structures, compile a few times, not once per size. Compiled programs
persist across processes in jaxinv's XLA cache (:mod:`jaxinv.xla_cache`).
"""
from __future__ import annotations

import functools

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

import jax

from jaxinv.crystal import Crystal, bucket_size
from jaxinv.graph import StickyGraph
from jaxinv.potentials.base import Potential, check_species

__all__ = ["JaxinvCalculator"]


class JaxinvCalculator(Calculator):
    """ASE calculator: energy, free_energy, forces, stress (Voigt, eV/Å^3, ASE sign) and,
    for potentials that provide ``metadata['atomic_energy_fn']`` (NequIP/SevenNet),
    per-atom ``energies`` (computed only when asked for).

    Atoms must be periodic in all three directions (jaxinv crystals are).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, potential: Potential, compute_stress: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.potential = potential
        self.compute_stress = compute_stress
        self._slots = 0  # atom slots: grow-only, so shapes repeat across calls
        self._graph = StickyGraph(potential.cutoff)  # edge slots and image box: grow-only too

    @functools.cached_property
    def _atomic_energies(self):
        fn = self.potential.metadata.get("atomic_energy_fn")
        return jax.jit(fn) if fn is not None else None

    def _inputs(self, atoms):
        self._slots = max(self._slots, bucket_size(len(atoms)))
        crystal = Crystal.from_atoms([atoms], n_max=self._slots, labels={})
        check_species(self.potential, crystal)
        return crystal, self._graph(crystal)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if "energies" in properties and self._atomic_energies is None:
            raise NotImplementedError(f"potential {self.potential.name!r} has no per-atom energies")
        n = len(self.atoms)
        crystal, graph = self._inputs(self.atoms)
        out = self.potential.compute_fn(self.compute_stress)(self.potential.params, crystal, graph)
        energy = float(np.asarray(out.energy)[0])
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": np.asarray(out.forces, np.float64)[0, :n]}
        if self.compute_stress:
            s = np.asarray(out.stress, np.float64)[0]
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        if "energies" in properties:
            e = self._atomic_energies(self.potential.params, crystal, graph)
            self.results["energies"] = np.asarray(e, np.float64)[0, :n]
