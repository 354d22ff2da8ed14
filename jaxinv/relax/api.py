"""``jaxinv.relax``: relax structures with any jaxinv potential, in batches."""
from __future__ import annotations

import numpy as np

import jax

from jaxinv.crystal import Crystal
from jaxinv.potentials.base import Potential
from jaxinv.relax.fire import CONVERGED, FAILED_NAN, GPA, STATUS_NAMES, FireConfig
from jaxinv.relax.queue import PRECISIONS, RelaxQueue, as_crystal

__all__ = ["relax", "status_names", "converged", "failed", "energy_per_atom"]


def relax(structures, potential: Potential, fmax: float = FireConfig.fmax, stress_tol: float = FireConfig.stress_tol,
          max_steps: int = FireConfig.max_steps, pressure_gpa: float = 0.0, cell: str = FireConfig.cell,
          criterion: str = FireConfig.criterion, min_bond_fraction: float = FireConfig.min_bond_fraction,
          species_limits: bool = FireConfig.species_limits,
          min_formation_energy: float = FireConfig.min_formation_energy,
          electronegativity_floor: tuple | None = FireConfig.electronegativity_floor,
          checkpoint: str | None = None, progress: bool = True, precision: str = PRECISIONS[0],
          distributed: bool = False, **queue_options) -> Crystal:
    """Relax pymatgen structures, ASE atoms or a :class:`~jaxinv.crystal.Crystal`.

    Positions and cell relax together (``cell='frechet'``, as ASE's
    FrechetCellFilter) under an external pressure ``pressure_gpa``; use
    ``cell='fixed'`` for positions only, ``'volume'`` for constant volume or
    ``'shape'`` for constant shape. A structure is converged when ASE's
    FrechetCellFilter test at the same ``fmax`` (eV/Å) passes, both for the
    running filter and for one started at the result, and every stress
    component (plus the pressure) is below ``stress_tol`` (eV/Å^3);
    ``criterion='ase'`` stops exactly where ASE's FIRE + FrechetCellFilter would
    (see :mod:`jaxinv.relax.fire`). A structure with two atoms closer than
    ``min_bond_fraction`` times their covalent-radius sum (stricter limits for two
    atoms of one element and two p-block elements unless ``species_limits=False``) fails
    (``failed_collapse``; see :func:`jaxinv.relax.fire.collapse_limits`), and so does one
    whose formation energy against the potential's elemental references falls below -5
    eV/atom (``min_formation_energy``; ``-inf`` turns it off), far below any known compound,
    or below ``c0 + c1 * dchi`` with ``(c0, c1) = electronegativity_floor`` (-1 - 2 dchi
    eV/atom by default, dchi the largest Pauling electronegativity difference of its
    elements; ``None`` turns it off) (``failed_energy``: a hole with no short pair;
    :mod:`jaxinv.potentials.references`).

    Returns the relaxed structures in input order as a host :class:`Crystal`:
    ``labels`` ``energy`` (eV, no P V term), ``stress`` (3x3, eV/Å^3, ASE sign),
    ``status`` (a code; :func:`status_names` gives ``converged``, ``max_steps``,
    ``failed_nan``, ...) and ``steps``, and ``atom_labels["forces"]`` (eV/Å).
    Failures are flagged in the status, never raised. ``.to_structures()`` or
    ``.to_atoms()`` converts the result (ASE atoms carry energy, forces and
    stress). ``precision='float64'`` (the default) makes each result independent
    of the batch it ran in; ``'float32'`` is about 2.5x faster for SevenNet-0 on a
    CPU but lets float32 rounding, which depends on the batch, steer FIRE (see
    :mod:`jaxinv.relax.queue`). Defaults are :class:`FireConfig`'s.

    ``queue_options`` go to :class:`~jaxinv.relax.queue.RelaxQueue`
    (``max_edges``, ``max_batch``, ``chunk_steps``, ``checkpoint_every``, ...;
    use a queue with ``trajectory=True`` to keep every frame).

    ``distributed=True`` in a multi-process run (after
    :func:`jaxinv.distributed.initialize`; every process passes the same inputs):
    each process relaxes its contiguous share of the inputs
    (:func:`~jaxinv.distributed.process_rows`) on its own devices, and every
    process returns all results, in input order
    (:func:`~jaxinv.distributed.allgather_rows`). In float64 they equal a
    one-process run. ``checkpoint`` (a folder all processes see) then holds
    finished pieces of the inputs (:func:`~jaxinv.distributed.process_map`), and
    the same command run again after a failed node, with any number of processes,
    relaxes only the pieces that were not finished (docs/scale.md). In a single
    process ``distributed`` changes nothing.
    """
    config = FireConfig(fmax=fmax, stress_tol=stress_tol, max_steps=max_steps, pressure=pressure_gpa * GPA,
                        cell=cell, criterion=criterion, min_bond_fraction=min_bond_fraction,
                        species_limits=species_limits, min_formation_energy=min_formation_energy,
                        electronegativity_floor=electronegativity_floor)
    if not (distributed and jax.process_count() > 1):
        return RelaxQueue(potential, config, checkpoint=checkpoint, progress=progress, precision=precision,
                          **queue_options).run(structures)
    # each share saves finished pieces itself (process_map): orbax's checkpoints coordinate all
    # processes of a jax.distributed run, which relax their shares at their own pace
    queue = RelaxQueue(potential, config, progress=progress, precision=precision, **queue_options)
    return _relax_share(queue, structures, checkpoint)


def _relax_share(queue: RelaxQueue, structures, checkpoint) -> Crystal:
    """This process relaxes its share of ``structures``; all processes get every result."""
    from jaxinv.distributed import process_map

    crystal = as_crystal(structures).pad()  # one atom width for every share, so the shares stack
    key = queue._fingerprint(crystal) if checkpoint else ""
    flat = process_map(lambda rows: _flat(queue.run(crystal[rows])), crystal.batch_size, checkpoint, key)
    return Crystal(flat.pop("lattice"), flat.pop("frac"), flat.pop("numbers"), flat.pop("mask"),
                   {k[6:]: v for k, v in flat.items() if k.startswith("label:")},
                   {k[5:]: v for k, v in flat.items() if k.startswith("atom:")})


def _flat(c: Crystal) -> dict:
    return {"lattice": c.lattice, "frac": c.frac, "numbers": c.numbers, "mask": c.mask,
            **{f"label:{k}": v for k, v in c.labels.items()}, **{f"atom:{k}": v for k, v in c.atom_labels.items()}}


def status_names(relaxed: Crystal) -> list[str]:
    """The status of each relaxed structure by name (``converged``, ``max_steps``, ``failed_*``)."""
    return [STATUS_NAMES.get(int(s), "unknown") for s in np.asarray(relaxed.labels["status"])]


def converged(relaxed: Crystal) -> np.ndarray:
    """(B,) bool: the relaxation converged."""
    return np.asarray(relaxed.labels["status"]) == CONVERGED


def failed(relaxed: Crystal) -> np.ndarray:
    """(B,) bool: the relaxation failed (NaN, cell, graph, collapse, isolated atoms or energy floor)."""
    return np.asarray(relaxed.labels["status"]) >= FAILED_NAN


def energy_per_atom(relaxed: Crystal) -> np.ndarray:
    """(B,) eV/atom."""
    return np.asarray(relaxed.labels["energy"]) / np.maximum(relaxed.n_atoms, 1)
