"""Label a dataset with a potential (default SevenNet-0): training data for a new one.

    jaxinv run label data=perov_5 copies=3 rattle=0.05 strain=0.03
    jaxinv run label data=carbon_24 data.limit=500 potential=tersoff_c

Each split of the dataset (``splits``) gives ``<split>.extxyz`` with energy,
forces and stress per structure: the relaxed dataset structure itself (when
``include_original``) plus ``copies`` rattled and strained copies of it, so the
labels cover the forces and stresses a relaxation meets. Copies of one
structure stay in its split, so held-out errors are not flattered by near
duplicates in training.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import List

import numpy as np

from jaxinv.config import (DataConfig, PotentialConfig, Rule, RunConfig, at_least, between, checked, each,
                           load_configured_potential, non_negative, nonempty, one_of)
from jaxinv.data import load_from_config
from jaxinv.data.perturb import perturb
from jaxinv.potentials.label import label_structures

log = logging.getLogger("jaxinv.label")


@dataclass
class Config(RunConfig):
    """Fields and their meanings: jaxinv/configs/label.yaml (``jaxinv run label --help``)."""

    data: DataConfig = field(default_factory=DataConfig)
    potential: PotentialConfig = field(default_factory=PotentialConfig)
    splits: List[str] = checked(["train", "valid", "test"], nonempty, each(one_of("train", "valid", "test")))
    copies: int = checked(2, non_negative, Rule(
        lambda v, c: None if v or c.include_original else "must be >= 1 when include_original=false (nothing to label)",
        ">= 1 without include_original"))
    include_original: bool = True
    rattle: float = checked(0.05, non_negative)
    strain: float = checked(0.03, between(0, 1, hi_open=True))
    batch_size: int = checked(64, at_least(1))


def label_split(cfg, potential, split: str, seed: int):
    """Labelled Crystal for one split, and the time spent evaluating."""
    from omegaconf import OmegaConf

    ds = load_from_config(OmegaConf.merge(cfg.data, {"split": split}), seed)
    base = ds.structures()
    structures = list(base) if cfg.include_original else []
    for copy in range(cfg.copies):
        structures += perturb(base, rattle=cfg.rattle, strain=cfg.strain, seed=seed * 1000 + copy + 1)
    t0 = time.perf_counter()
    labelled, _ = label_structures(potential, structures, batch_size=cfg.batch_size, progress=cfg.progress)
    return labelled, len(structures), time.perf_counter() - t0


def main(cfg, run):
    from ase.io import write

    potential = load_configured_potential(cfg.potential)
    summary = {"potential": potential.name, "dataset": cfg.data.name, "rattle": cfg.rattle, "strain": cfg.strain,
               "copies": cfg.copies, "splits": {}}
    for k, split in enumerate(cfg.splits):
        labelled, n_in, seconds = label_split(cfg, potential, split, cfg.seed + k)
        path = run.path(f"{split}.extxyz")
        write(path, labelled.to_atoms())
        forces = labelled.atom_labels["forces"][labelled.mask]
        stats = {"structures": len(labelled), "dropped": n_in - len(labelled), "seconds": seconds,
                 "structures_per_second": len(labelled) / seconds,
                 "energy_per_atom_range": [float(x) for x in np.percentile(
                     labelled.labels["energy"] / labelled.n_atoms, [0, 100])],
                 "force_rms": float(np.sqrt(np.mean(forces**2))),
                 "stress_rms": float(np.sqrt(np.mean(labelled.labels["stress"]**2)))}
        summary["splits"][split] = stats
        print(f"{split}: {stats['structures']} structures labelled in {seconds:.1f} s "
              f"({stats['structures_per_second']:.1f}/s), force RMS {stats['force_rms']:.3f} eV/Å, "
              f"stress RMS {stats['stress_rms']:.4f} eV/Å^3 -> {path}")
    run.save_json(summary, "summary.json")
    return summary
