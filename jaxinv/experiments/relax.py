"""Relax a dataset split or user structures with any jaxinv potential.

    jaxinv run relax data=perov_5 data.split=test data.limit=64 potential=sevennet0
    jaxinv run relax structures=path/to/cifs potential=sw_si fmax=0.01

Writes ``relaxed.csv`` (index, id, formula, energy, energy per atom, steps,
status, max force, max stress, volume, and, for a potential with elemental references,
the formation energy per atom and the floor below which a structure is ``failed_energy``),
relaxed CIFs, ``relaxed.extxyz`` and a summary.
Rerunning with ``out_dir=<the same folder>`` resumes from the checkpoint.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from jaxinv.config import (DataConfig, PotentialConfig, RunConfig, at_least, between, checked, existing_path,
                           load_configured_potential, non_negative, one_of, positive)
from jaxinv.data import load_from_config
from jaxinv.data.perturb import perturb
from jaxinv.io import read_structures_named, write_cifs, write_extxyz, write_skipped
from jaxinv.relax import GPA, FireConfig, energy_per_atom, status_names
from jaxinv.relax.queue import MAX_EDGES, PRECISIONS, RelaxQueue

log = logging.getLogger("jaxinv.relax")


@dataclass
class RelaxSettings:
    """The relaxation settings a workflow exposes (the relax and search experiments): the
    fields of :class:`~jaxinv.relax.FireConfig` a user sets, with its defaults, and the
    pressure in GPa. :func:`fire_config` builds the library config from them."""

    fmax: float = checked(FireConfig.fmax, positive)  # eV/Å
    stress_tol: float = checked(FireConfig.stress_tol, positive)  # eV/Å^3 (0.005 ≈ 0.8 GPa)
    max_steps: int = checked(FireConfig.max_steps, at_least(1))  # FIRE steps at most
    pressure_gpa: float = 0.0  # GPa, external pressure (the enthalpy is minimised)


def fire_config(cfg, **fields) -> FireConfig:
    """The library config of a workflow config with the :class:`RelaxSettings` fields."""
    return FireConfig(fmax=cfg.fmax, stress_tol=cfg.stress_tol, max_steps=cfg.max_steps,
                      pressure=cfg.pressure_gpa * GPA, **fields)


@dataclass
class Config(RunConfig, RelaxSettings):
    """Fields and their meanings: jaxinv/configs/relax.yaml and the comments here
    (``jaxinv run relax --help``)."""

    data: DataConfig = field(default_factory=DataConfig)
    potential: PotentialConfig = field(default_factory=PotentialConfig)
    structures: Optional[str] = checked(None, existing_path())
    rattle: float = checked(0.0, non_negative)
    strain: float = checked(0.0, between(0, 1, hi_open=True))
    cell: str = checked(FireConfig.cell, one_of("frechet", "fixed", "volume", "shape"))  # what relaxes with the atoms
    criterion: str = checked(FireConfig.criterion, one_of("stress", "ase"))  # ase: exactly ASE's test
    max_edges: int = checked(MAX_EDGES, at_least(1))  # edge budget per batch (the memory knob)
    max_batch: Optional[int] = checked(None, at_least(1))  # structures per batch at most (None: 128 on a CPU, device memory decides on an accelerator)
    precision: str = checked(PRECISIONS[0], one_of(*PRECISIONS))  # float64: batch-independent | float32: faster
    checkpoint: bool = True
    write_cifs: bool = True


def _number(x) -> str:
    return f"{x:.6f}" if np.isfinite(x) else ""


def _inputs(cfg):
    """Structures, their ids (file stems, ``<stem>_<index>`` for multi-structure files,
    or dataset material ids) and the skipped files (None for a dataset)."""
    if cfg.structures:
        structures, names, skipped = read_structures_named(cfg.structures)
        if skipped:
            print(f"skipped {len(skipped)} unreadable file(s)/entries of {cfg.structures}; see skipped.csv")
        return structures, names, skipped
    ds = load_from_config(cfg.data, cfg.seed)
    return ds.structures(), [str(i) for i in ds.ids], None


def main(cfg, run):
    structures, ids, skipped = _inputs(cfg)
    if skipped is not None:
        write_skipped(run.path("skipped.csv"), skipped)
    structures = perturb(structures, rattle=cfg.rattle, strain=cfg.strain, seed=cfg.seed)
    potential = load_configured_potential(cfg.potential)
    print(f"relaxing {len(structures)} structures with {potential.name} (fmax {cfg.fmax} eV/Å, "
          f"stress_tol {cfg.stress_tol} eV/Å^3, cell {cfg.cell}, P = {cfg.pressure_gpa} GPa)")
    config = fire_config(cfg, cell=cfg.cell, criterion=cfg.criterion)
    queue = RelaxQueue(potential, config, max_edges=cfg.max_edges, max_batch=cfg.max_batch, progress=cfg.progress,
                       checkpoint=str(run.out_dir / "checkpoint") if cfg.checkpoint else None,
                       precision=cfg.precision)
    results = queue.run(structures)
    names, energy = status_names(results), results.labels["energy"]
    per_atom, steps = energy_per_atom(results), results.labels["steps"]
    max_force = np.linalg.norm(results.atom_labels["forces"], axis=-1).max(-1)
    max_stress = np.abs(results.labels["stress"]).max((-1, -2))
    # what a user needs to see why a structure is failed_energy, or how near it came
    formation, floor = config.for_potential(potential).formation_and_floor(
        np.asarray(results.numbers), np.asarray(results.mask), np.asarray(results.labels["energy"]))
    with open(run.path("relaxed.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "id", "formula", "energy_eV", "energy_per_atom_eV", "steps", "status",
                    "max_force_eV_A", "max_stress_eV_A3", "volume_A3", "formation_eV_atom", "floor_eV_atom"])
        for k, (i, formula) in enumerate(zip(ids, results.formulas())):
            w.writerow([k, i, formula, f"{energy[k]:.6f}", f"{per_atom[k]:.6f}", steps[k], names[k],
                        f"{max_force[k]:.5f}", f"{max_stress[k]:.6f}", f"{results.volume[k]:.4f}",
                        _number(formation[k]), _number(floor[k])])
    if cfg.write_cifs:  # user files keep their names (unique); dataset rows are numbered in order
        cif_names = list(ids) if cfg.structures else [f"{k:05d}_{i}" for k, i in enumerate(ids)]
        write_cifs(results, run.out_dir / "cif", names=cif_names)
    # extxyz: energy, forces and stress as ASE calculator results; status and name in atoms.info
    write_extxyz(results, run.path("relaxed.extxyz"), extra_info={"status": names, "name": [str(i) for i in ids]})
    statuses = {}
    for name in names:
        statuses[name] = statuses.get(name, 0) + 1
    summary = {"structures": results.batch_size, "statuses": statuses, "mean_steps": float(steps.mean()),
               "potential": potential.name}
    if skipped is not None:
        summary["skipped"] = len(skipped)
    print("statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) +
          f"; mean steps {steps.mean():.1f}")
    run.save_json(summary, "summary.json")
    return summary
