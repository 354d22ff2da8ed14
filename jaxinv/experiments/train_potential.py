"""Train a NequIP-style potential on extxyz data (energy, forces, stress).

    jaxinv run label data=perov_5                       # SevenNet-0 labels -> outputs/label/<time>/
    jaxinv run train_potential data_dir=outputs/label/<time> train.epochs=30
    jaxinv run train_potential train_file=a.extxyz valid_file=b.extxyz test_file=c.extxyz

With ``data_dir`` the files are ``train.extxyz``, ``valid.extxyz`` and
``test.extxyz`` there. Writes the model (``model/``: ``config.json`` +
``params.npz``, loadable with ``load_potential("trained", path=...)``),
``metrics.json`` with the held-out MAEs beside a per-element-shift baseline
(what a model that knows only the composition would score), and
``learning_curve.png``. Rerunning with ``out_dir=<the same folder>`` resumes
from the last finished epoch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import jax
import numpy as np
from omegaconf import OmegaConf

from jaxinv.config import (ConfigError, Rule, RunConfig, at_least, checked, constrain, each, existing_path, fraction,
                           non_negative, one_of, positive)
from jaxinv.crystal import Crystal
from jaxinv.potentials.nequip import NequIPConfig
from jaxinv.potentials.train import Trainer, TrainConfig, fit_element_shifts, load_extxyz, save_potential

log = logging.getLogger("jaxinv.train_potential")


def _data_dir_problem(data_dir, cfg):
    if data_dir is None:
        return None if cfg.train_file else "give data_dir (with train.extxyz) or train_file"
    why = existing_path("dir").test(data_dir, cfg)
    if why is None and not cfg.train_file and not (Path(data_dir) / "train.extxyz").is_file():
        why = f"{data_dir} has no train.extxyz (or give train_file)"
    return why


# The train section is the library's TrainConfig; its rules are declared here.
constrain(TrainConfig, energy_weight=non_negative, force_weight=non_negative, stress_weight=non_negative,
          loss=one_of("huber", "mse"), huber_delta=positive, learning_rate=positive, final_lr_fraction=fraction,
          warmup_epochs=non_negative, batch_size=at_least(1), epochs=at_least(1), grad_clip=positive,
          seed=non_negative)


# NequIPConfig is not the section: its species and irreps follow from the data and these
# arguments of NequIPConfig.simple, and its shift / scale (a float or a tuple) have no OmegaConf type.
@dataclass
class ModelSpec:
    channels: int = checked(16, at_least(1))
    lmax: int = checked(1, non_negative)
    num_layers: int = checked(3, at_least(1))
    cutoff: float = checked(5.0, positive)
    num_basis: int = checked(8, at_least(1))
    radial_hidden: List[int] = checked([32], each(at_least(1)))


@dataclass
class Config(RunConfig):
    """Fields and their meanings: jaxinv/configs/train_potential.yaml (``jaxinv run train_potential --help``)."""

    data_dir: Optional[str] = checked(None, Rule(_data_dir_problem, "a folder with train.extxyz (or train_file)",
                                                 check_none=True))
    train_file: Optional[str] = checked(None, existing_path("file"))
    valid_file: Optional[str] = checked(None, existing_path("file"))
    test_file: Optional[str] = checked(None, existing_path("file"))
    limit: Optional[int] = checked(None, at_least(1))
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)


def _files(cfg) -> dict[str, Optional[Path]]:
    files = {}
    for split in ("train", "valid", "test"):
        explicit = getattr(cfg, f"{split}_file")
        path = Path(explicit) if explicit else (Path(cfg.data_dir) / f"{split}.extxyz" if cfg.data_dir else None)
        if path is not None and not path.exists():
            if explicit or split == "train":
                raise ConfigError(f"{split}_file" if explicit else "data_dir", f"{path} does not exist")
            path = None
        files[split] = path
    if files["train"] is None:
        raise ConfigError("data_dir", "give data_dir (with train.extxyz) or train_file")
    return files


def shift_baseline(train: Crystal, test: Crystal, species) -> float:
    """Energy MAE (eV/atom) of E = sum_z n_z mu_z with mu fitted on the training set."""
    mu = fit_element_shifts(train, species)
    counts = np.stack([(np.asarray(test.numbers) == z).sum(-1) for z in species], 1)
    return float(np.mean(np.abs(counts @ mu - test.labels["energy"]) / test.n_atoms))


def main(cfg, run):
    files = _files(cfg)
    data = {k: load_extxyz(p) for k, p in files.items() if p is not None}
    train = data["train"]
    if cfg.limit is not None and cfg.limit < len(train):
        train = train[np.sort(np.random.default_rng(cfg.seed).permutation(len(train))[: cfg.limit])]
    species = tuple(sorted(set(np.unique(np.concatenate([np.asarray(c.numbers)[np.asarray(c.mask)]
                                                         for c in data.values()])).tolist())))
    m = cfg.model
    model = NequIPConfig.simple(species=species, channels=m.channels, lmax=m.lmax, num_layers=m.num_layers,
                                cutoff=m.cutoff, num_basis=m.num_basis, radial_hidden=tuple(m.radial_hidden))
    tcfg = OmegaConf.to_object(cfg.train)
    print(f"training on {len(train)} structures ({len(species)} elements), "
          f"valid {len(data['valid']) if 'valid' in data else 0}, test {len(data['test']) if 'test' in data else 0}")
    trainer = Trainer(model, tcfg, train, data.get("valid"), progress=cfg.progress)
    potential = trainer.fit(checkpoint_dir=str(run.out_dir / "checkpoint"))
    save_potential(potential, run.out_dir / "model")
    n_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(potential.params)))
    results = {"n_train": len(train), "n_params": n_params, "species": list(species), "history": trainer.history,
               "seconds": float(sum(h["seconds"] for h in trainer.history))}
    for split in ("valid", "test"):
        if split in data:
            mae = trainer.evaluate_on(data[split])
            mae["shift_baseline_energy_mae"] = shift_baseline(train, data[split], species)
            results[split] = mae
            print(f"{split}: energy {1e3 * mae['energy_mae']:.1f} meV/atom (shift-only baseline "
                  f"{1e3 * mae['shift_baseline_energy_mae']:.1f}), forces {1e3 * mae['force_mae']:.1f} meV/Å"
                  + (f", stress {1e3 * mae['stress_mae']:.2f} meV/Å^3" if "stress_mae" in mae else ""))
    _plot(trainer.history, run.path("learning_curve.png"))
    run.save_json(results, "metrics.json")
    return results


def _plot(history, path):
    """Training loss and validation MAEs per epoch, axes scaled by jaxinv.plotting (linear
    with plain labels over less than a decade, readable log ticks over more)."""
    from jaxinv.plotting import Curve, Panel, learning_curve

    epochs = [h["epoch"] for h in history]
    units = {"valid_energy_mae": "eV/atom", "valid_force_mae": "eV/Å", "valid_stress_mae": "eV/Å³"}
    keys = [k for k in units if history and k in history[0]]
    panels = [Panel("training loss", [Curve(epochs, [h["loss"] for h in history])])]
    panels += [Panel(f"{k.replace('valid_', 'valid ')} ({units[k]})", [Curve(epochs, [h[k] for h in history])])
               for k in keys]
    learning_curve(panels, path)
