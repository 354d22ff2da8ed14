"""Fit a NequIP-style potential to energies, forces and stresses.

    data = load_extxyz("train.extxyz")            # Crystal with energy/forces/stress labels
    trainer = Trainer(model_config, TrainConfig(epochs=50), train=data, valid=valid)
    potential = trainer.fit(checkpoint_dir="ckpt")  # resumes if ckpt holds a run

Loss (weights in :class:`TrainConfig`), averaged over the batch:

    w_E * rho(dE / n_atoms) + w_F * rho(dF) + w_S * rho(dsigma)

with ``rho`` the Huber or squared error per component. Energies are compared
per atom so that cells of different size weigh alike. Before training, the
per-element energy shift is fitted by least squares (E ~ sum_z n_z mu_z), the
scale is set to the RMS force, and the convolution denominator to the square
root of the mean neighbor count of the training graphs, as NequIP does.

Batches are bucketed by atom count and padded to a fixed batch size, and each
bucket's graphs get one edge capacity, so the train step compiles once per
bucket. With several devices that divide the batch size, every batch is split
over them (:func:`jaxinv.distributed.data_mesh`, all devices of all processes)
and the parameters are replicated: each device computes the loss and gradients
of its structures and XLA sums the gradients. Every epoch ends with validation
metrics (MAE of energy per atom, force components and stress components) and an
orbax checkpoint; a killed run resumes from its last finished epoch.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import jax
import jax.numpy as jnp
import optax

from jaxinv.checkpoint import Checkpointer, fingerprint_arrays, from_json_leaf, json_leaf
from jaxinv.crystal import Crystal, group_by_bucket
from jaxinv.distributed import replicate, shard_rows, to_host, training_mesh
from jaxinv.graph import allocate, neighbor_graph
from jaxinv.potentials.base import Potential, energy_forces_stress
from jaxinv.potentials.nequip import NequIPConfig, init_params, nequip_energy_fn, nequip_potential

__all__ = ["TrainConfig", "Trainer", "load_extxyz", "fit_element_shifts", "save_potential", "load_trained"]

log = logging.getLogger("jaxinv.train")


@dataclass(frozen=True)
class TrainConfig:
    """Training of a NequIP potential (the ``train`` section of ``train_potential``)."""

    energy_weight: float = 1.0  # on energy per atom (eV/atom)
    force_weight: float = 10.0  # on force components (eV/Å)
    stress_weight: float = 10.0  # on stress components (eV/Å^3, which are ~10x smaller)
    loss: str = "huber"  # huber | mse
    huber_delta: float = 0.1  # where the Huber loss turns from quadratic to linear
    learning_rate: float = 5e-3  # Adam learning rate
    final_lr_fraction: float = 0.05  # cosine decay to this fraction of learning_rate
    warmup_epochs: int = 1  # epochs of linear learning-rate warm-up
    batch_size: int = 16  # structures per batch
    epochs: int = 50  # training epochs
    grad_clip: float = 10.0  # global gradient-norm clip
    seed: int = 0  # seeds initialisation and shuffling
    fit_shift_scale: bool = True  # start from per-element energy shifts and a force scale fitted to the data

    def __post_init__(self):
        if self.loss not in ("huber", "mse"):
            raise ValueError(f"loss must be 'huber' or 'mse', not {self.loss!r}")


def load_extxyz(path) -> Crystal:
    """An extxyz file as a :class:`Crystal` with energy, forces and (if present) stress labels."""
    from ase.io import read

    atoms = read(str(path), index=":")
    crystal = Crystal.from_atoms(atoms)
    missing = [k for k in ("energy",) if k not in crystal.labels] + \
              [k for k in ("forces",) if k not in crystal.atom_labels]
    if missing:
        raise ValueError(f"{path}: every structure needs {' and '.join(missing)} (as calculator results)")
    return crystal


def fit_element_shifts(crystal: Crystal, species: tuple[int, ...]) -> np.ndarray:
    """Per-species reference energies mu_z from least squares on total energies."""
    counts = np.stack([(np.asarray(crystal.numbers) == z).sum(-1) for z in species], axis=1).astype(float)
    mu, *_ = np.linalg.lstsq(counts, np.asarray(crystal.labels["energy"]), rcond=None)
    return mu


def _rho(err, cfg: TrainConfig):
    if cfg.loss == "mse":
        return err * err
    return optax.huber_loss(err, delta=cfg.huber_delta) * 2.0  # = err^2 near zero, like mse


def _batch_loss(energy_fn, params, crystal: Crystal, graph, cfg: TrainConfig, use_stress: bool):
    out = energy_forces_stress(energy_fn, params, crystal, graph, compute_stress=use_stress)
    present = crystal.mask.any(-1)
    n = jnp.maximum(crystal.mask.sum(-1), 1)
    n_struct = jnp.maximum(present.sum(), 1)
    e_err = jnp.where(present, (out.energy - crystal.labels["energy"]) / n, 0.0)
    f_err = jnp.where(crystal.mask[..., None], out.forces - crystal.atom_labels["forces"], 0.0)
    n_comp = jnp.maximum(crystal.mask.sum() * 3, 1)
    loss = cfg.energy_weight * jnp.sum(_rho(e_err, cfg)) / n_struct
    loss += cfg.force_weight * jnp.sum(_rho(f_err, cfg)) / n_comp
    metrics = {"energy_mae": jnp.sum(jnp.abs(e_err)) / n_struct, "force_mae": jnp.sum(jnp.abs(f_err)) / n_comp,
               "n": present.sum()}
    if use_stress:
        s_err = jnp.where(present[:, None, None], out.stress - crystal.labels["stress"], 0.0)
        loss += cfg.stress_weight * jnp.sum(_rho(s_err, cfg)) / (9 * n_struct)
        metrics["stress_mae"] = jnp.sum(jnp.abs(s_err)) / (9 * n_struct)
    return loss, metrics


class Trainer:
    """Trains a :class:`~jaxinv.potentials.nequip.NequIPConfig` model on labelled crystals."""

    def __init__(self, model: NequIPConfig, config: TrainConfig, train: Crystal, valid: Crystal | None = None,
                 init_params_from=None, progress: bool = True, mesh="auto"):
        """``mesh``: the devices a batch is split over (data parallelism); by default all
        devices when there are several and they divide ``config.batch_size``, None for one
        device. Every process of a multi-process run passes the same data."""
        if model.radial_grid:
            raise ValueError("model.radial_grid must be 0 for training: radial tables do not follow the "
                             "MLP weights; tabulate the trained model instead (load_trained(radial_grid=...))")
        self.cfg = config
        self.progress = progress
        self.mesh = training_mesh(mesh, config.batch_size)
        self.train, self.valid = train.to_host(), valid.to_host() if valid is not None else None
        self.use_stress = "stress" in self.train.labels and (valid is None or "stress" in self.valid.labels)
        if config.fit_shift_scale and init_params_from is None:
            model = self._fit_normalization(model)
        self.model = model
        self.params = init_params_from if init_params_from is not None else init_params(
            model, jax.random.PRNGKey(config.seed))
        self.train_batches = self._batches(self.train, shuffle_seed=None)
        self.valid_batches = self._batches(self.valid, shuffle_seed=None) if self.valid is not None else []
        self.optimizer, self._train_step, self._eval_step = _compiled_steps(
            model, config, self.use_stress, len(self.train_batches))
        self.history: list[dict] = []

    # ------------------------------------------------------------- preparation
    def _fit_normalization(self, model: NequIPConfig) -> NequIPConfig:
        shifts = fit_element_shifts(self.train, model.species)
        residual = np.asarray(self.train.labels["energy"]) - \
            np.stack([(self.train.numbers == z).sum(-1) for z in model.species], 1) @ shifts
        forces = self.train.atom_labels["forces"][self.train.mask]
        scale = float(np.sqrt(np.mean(forces**2))) if forces.size else float(np.std(residual) + 1e-3)
        graphs = neighbor_graph(self.train, model.cutoff)
        avg_neighbors = float(np.asarray(graphs.n_edges).sum() / max(self.train.mask.sum(), 1))
        log.info("normalization: shifts %s eV, scale %.4f, avg neighbors %.2f", np.round(shifts, 4), scale,
                 avg_neighbors)
        return dataclasses.replace(model, shift=tuple(float(x) for x in shifts), scale=max(scale, 1e-3),
                                   conv_denominator=float(np.sqrt(max(avg_neighbors, 1.0))))

    def _batches(self, data: Crystal, shuffle_seed):
        """Fixed padded batches (one edge capacity per size bucket)."""
        if data is None:
            return []
        out = []
        for n_slot, members in group_by_bucket(data.n_atoms).items():
            capacity = allocate(data[members], self.model.cutoff, headroom=None).capacity  # exact fit
            for start in range(0, len(members), self.cfg.batch_size):
                idx = members[start:start + self.cfg.batch_size]
                c = data[idx].pad(n_max=n_slot, batch_size=self.cfg.batch_size)
                c = c.replace(labels={k: np.nan_to_num(v) for k, v in c.labels.items()})
                batch = (c, neighbor_graph(c, self.model.cutoff, capacity=capacity))
                if self.mesh is not None:
                    batch = shard_rows(jax.tree_util.tree_map(np.asarray, batch), self.mesh)
                out.append(batch)
        return out

    # ------------------------------------------------------------------- loop
    def evaluate(self, params=None, batches=None) -> dict:
        params = self.params if params is None else params
        totals, weight = {}, 0
        for c, g in (self.valid_batches if batches is None else batches):
            _, m = self._eval_step(params, c, g)
            n = float(m.pop("n"))
            for k, v in m.items():
                totals[k] = totals.get(k, 0.0) + float(v) * n
            weight += n
        return {k: v / max(weight, 1) for k, v in totals.items()}

    def evaluate_on(self, data: Crystal, params=None) -> dict:
        """MAEs (energy per atom, force and stress components) on another labelled set."""
        return self.evaluate(params, self._batches(data.to_host(), shuffle_seed=None))

    def fit(self, checkpoint_dir: str | None = None) -> Potential:
        opt_state = self.optimizer.init(self.params)
        start_epoch = 0
        ckpt = None
        if checkpoint_dir:
            key = fingerprint_arrays(self.train.frac, self.train.labels["energy"],
                                     json_leaf(self.model.to_dict()),
                                     np.frombuffer(repr(self.cfg).encode(), np.uint8))
            ckpt = Checkpointer(checkpoint_dir, key, every_seconds=0.0)
            restored = ckpt.restore()
            if restored is not None:
                step, tree = restored
                self.params = jax.tree_util.tree_map(jnp.asarray, tree["params"])
                saved = tree["opt_state"]
                opt_state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(opt_state),
                                                         [jnp.asarray(saved[str(i)]) for i in range(len(saved))])
                self.history = from_json_leaf(tree["history"])
                start_epoch = step
                log.info("resumed training at epoch %d", start_epoch)
        if self.mesh is not None:
            self.params, opt_state = replicate((self.params, opt_state), self.mesh)
        from tqdm import tqdm

        rng = np.random.default_rng(self.cfg.seed)
        orders = [rng.permutation(len(self.train_batches)) for _ in range(self.cfg.epochs)]
        bar = tqdm(range(start_epoch, self.cfg.epochs), desc="train", disable=not self.progress,
                   initial=start_epoch, total=self.cfg.epochs)
        for epoch in bar:
            t0, losses = time.perf_counter(), []
            for k in orders[epoch]:
                c, g = self.train_batches[k]
                self.params, opt_state, loss, _ = self._train_step(self.params, opt_state, c, g)
                losses.append(float(loss))
            record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0}
            record.update({f"valid_{k}": v for k, v in self.evaluate().items()})
            self.history.append(record)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k.startswith("valid_") or k == "loss"})
            log.info("epoch %s", json.dumps(record))
            if ckpt is not None:
                history = json_leaf(self.history)
                leaves = jax.tree_util.tree_leaves(opt_state)
                ckpt.save(epoch + 1, {"params": self.params, "opt_state": {str(i): x for i, x in enumerate(leaves)},
                                      "history": history})
        if ckpt is not None:
            ckpt.close()
        if self.mesh is not None:  # plain arrays on the default device, as after a one-device fit
            self.params = jax.tree_util.tree_map(jnp.asarray, to_host(self.params))
        return nequip_potential(self.model, self.params, name="nequip-trained")


@functools.lru_cache(maxsize=8)
def _compiled_steps(model: NequIPConfig, config: TrainConfig, use_stress: bool, steps_per_epoch: int):
    """Optimizer and jitted train/eval steps, shared by trainers with equal settings
    (a resumed run in the same process does not compile again)."""
    energy_fn = nequip_energy_fn(model)
    total = max(1, steps_per_epoch * config.epochs)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, max(1, steps_per_epoch * config.warmup_epochs), total,
        config.learning_rate * config.final_lr_fraction)
    optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip), optax.adam(schedule))

    def train_step(params, opt_state, crystal, graph):
        (loss, metrics), grads = jax.value_and_grad(_batch_loss, argnums=1, has_aux=True)(
            energy_fn, params, crystal, graph, config, use_stress)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, metrics

    def eval_step(params, crystal, graph):
        return _batch_loss(energy_fn, params, crystal, graph, config, use_stress)

    return optimizer, jax.jit(train_step), jax.jit(eval_step)


def save_potential(potential: Potential, folder) -> Path:
    """Write a trained NequIP potential: ``config.json`` plus ``params.npz``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = potential.metadata["config"]
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    flat, _ = jax.tree_util.tree_flatten_with_path(potential.params)
    np.savez(folder / "params.npz", **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat})
    return folder


def load_trained(path, name: str = "nequip-trained", radial_grid: int = 0) -> Potential:
    """A potential written by :func:`save_potential` (registry name ``trained``).

    ``radial_grid`` > 0 evaluates the radial MLPs from tables (faster inference,
    see :func:`~jaxinv.potentials.nequip.tabulate_radial`)."""
    folder = Path(path)
    config = NequIPConfig.from_dict(json.loads((folder / "config.json").read_text()))
    config = dataclasses.replace(config, radial_grid=0)
    template = init_params(config, jax.random.PRNGKey(0))
    stored = np.load(folder / "params.npz")
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for p, v in flat:
        key = jax.tree_util.keystr(p)
        if key not in stored or stored[key].shape != v.shape:
            raise ValueError(f"{folder}: parameter {key} missing or of the wrong shape")
        leaves.append(jnp.asarray(stored[key]))
    config = dataclasses.replace(config, radial_grid=int(radial_grid))
    return nequip_potential(config, jax.tree_util.tree_unflatten(treedef, leaves), name=name)
