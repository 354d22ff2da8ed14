"""The training loop: deterministic batches, jitted steps, validation, orbax
checkpoints with exact resume, a progress bar.

Determinism: the batch of step ``s`` is drawn by ``np.random.default_rng((seed, s))``
and the step's key is ``fold_in(PRNGKey(seed), s)``, so a run resumed from a
checkpoint at step ``s`` takes exactly the steps the uninterrupted run would
have taken.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from flax import serialization

import jax
import jax.numpy as jnp

from jaxinv.checkpoint import fingerprint_arrays, from_json_leaf, json_leaf
from jaxinv.generative.steps import TrainState, init_state, make_eval_step, make_train_step

__all__ = ["TrainConfig", "Batcher", "train", "restore_state", "fingerprint"]

log = logging.getLogger("jaxinv.generative")


@dataclass
class TrainConfig:
    """Loop settings (the ``train`` section of ``jaxinv/configs/train_generative.yaml``)."""

    steps: int = 5000  # training steps
    batch_size: int = 64  # crystals per batch
    eval_every: int = 500  # steps between evaluations (0: none)
    eval_size: int = 512  # valid-split crystals for the validation losses
    checkpoint_every_s: float = 60.0  # seconds between checkpoints
    time_limit_min: float = 0.0  # stop (and checkpoint) after this many minutes (0: no limit)
    progress: bool = True  # progress bar of the loop


class Batcher:
    """Draws the batch of a given step from host arrays, deterministically.

    Each batch holds ``batch_size`` distinct crystals (``groups`` stacked
    batches for a GAN's critic steps); consecutive batches are independent.
    """

    def __init__(self, arrays: dict, batch_size: int, seed: int = 0, groups: int = 0):
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))
        self.batch_size = min(batch_size, self.n)
        self.seed = seed
        self.groups = groups

    def __call__(self, step: int) -> dict:
        rng = np.random.default_rng((self.seed, int(step)))
        g = max(self.groups, 1)
        idx = np.concatenate([rng.choice(self.n, self.batch_size, replace=False) for _ in range(g)])
        batch = {k: v[idx] for k, v in self.arrays.items()}
        if self.groups:
            batch = {k: v.reshape((g, self.batch_size) + v.shape[1:]) for k, v in batch.items()}
        return batch


def fingerprint(model, arrays: dict, seed: int) -> str:
    """Identifies a training run's inputs (model settings, data, seed)."""
    meta = json.dumps(model.to_dict(), sort_keys=True).encode()
    return fingerprint_arrays(np.frombuffer(meta, np.uint8), arrays["lattice"], arrays["species"], np.array([seed]))


def restore_state(model, tree) -> TrainState:
    template = init_state(model, jax.random.PRNGKey(0))
    return serialization.from_state_dict(template, tree)


def _write_records(path: str | Path, records: list[dict]) -> None:
    """``records`` as JSON lines, replacing ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def _device_batch(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _eval_batches(arrays: dict, size: int, batch_size: int) -> list[dict]:
    n = min(len(arrays["lattice"]), size)
    return [{k: v[s:s + batch_size] for k, v in arrays.items()} for s in range(0, n - batch_size + 1, batch_size)] \
        or [{k: v[:n] for k, v in arrays.items()}]


def train(model, train_arrays: dict, cfg: TrainConfig, seed: int = 0, valid_arrays: dict | None = None,
          checkpoint_dir: str | Path | None = None, validate: Callable | None = None,
          metrics_file: str | Path | None = None) -> tuple[TrainState, list[dict]]:
    """Train ``model`` for ``cfg.steps`` steps (resuming from ``checkpoint_dir`` if it
    holds a checkpoint of the same run). ``validate(params, step) -> dict`` adds
    sample-level metrics (validity, reconstruction) at every evaluation.

    Returns the final state and the list of evaluation records.
    """
    from tqdm import tqdm

    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    step_fn = make_train_step(model)
    eval_fn = make_eval_step(model)
    groups = model.config.n_critic if not model.is_vae else 0
    batcher = Batcher(train_arrays, cfg.batch_size, seed, groups)
    base_key = jax.random.PRNGKey(seed)
    ckpt = None
    if checkpoint_dir is not None:  # the fingerprint check first: a different run fails before any work
        from jaxinv.checkpoint import Checkpointer

        ckpt = Checkpointer(checkpoint_dir, fingerprint(model, train_arrays, seed), every_seconds=cfg.checkpoint_every_s)
    state = init_state(model, jax.random.fold_in(base_key, 10 ** 9))
    history: list[dict] = []
    if ckpt is not None:
        model.save(checkpoint_dir)  # after the fingerprint check: never overwrite another run's model
        restored = ckpt.restore()
        if restored is not None:
            _, tree = restored
            state = restore_state(model, tree["state"])
            history = from_json_leaf(tree["history"]) if "history" in tree else []
            log.info("resumed at step %d", int(state.step))
        if metrics_file is not None:
            # a run killed after an evaluation but before its checkpoint evaluates that step again:
            # the file restarts from the records of the state resumed from, so no record appears twice
            _write_records(metrics_file, history)

    def snapshot():
        return {"state": serialization.to_state_dict(state),
                "history": json_leaf(history)}

    eval_batches = _eval_batches(valid_arrays, cfg.eval_size, cfg.batch_size) if valid_arrays is not None else []

    def evaluate(step: int) -> dict:
        rec: dict = {"step": step}
        if eval_batches:
            key = jax.random.PRNGKey(12345)
            ms = [jax.device_get(eval_fn(state.params, _device_batch(b), key, jnp.float32(step))) for b in eval_batches]
            rec.update({f"valid/{k}": float(np.mean([m[k] for m in ms])) for k in ms[0]})
        if validate is not None:
            rec.update(validate(state.params, step))
        history.append(rec)
        if metrics_file is not None:
            with open(metrics_file, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        log.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in rec.items()
                                                 if k != "step" and isinstance(v, (int, float))))
        return rec

    start = int(state.step)
    t0 = time.monotonic()
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {model.config.kind}", disable=not cfg.progress,
               dynamic_ncols=True)
    running: dict = {}
    step = start
    try:
        for step in range(start, cfg.steps):
            batch = _device_batch(batcher(step))
            state, m = step_fn(state, batch, jax.random.fold_in(base_key, step))
            if (step + 1) % 25 == 0 or step + 1 == cfg.steps:
                m = jax.device_get(m)
                running = {k: float(v) for k, v in m.items()}
                bar.set_postfix({k: f"{running[k]:.3g}" for k in list(running)[:4]})
            bar.update(1)
            done = step + 1
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                evaluate(done)
            if ckpt is not None:
                ckpt.maybe_save(done, snapshot)
            if cfg.time_limit_min and time.monotonic() - t0 > 60 * cfg.time_limit_min:
                log.warning("time limit of %.1f min reached at step %d of %d", cfg.time_limit_min, done, cfg.steps)
                break
    finally:
        bar.close()
    final = int(state.step)
    if not history or history[-1]["step"] != final:
        evaluate(final)
    if ckpt is not None:
        if ckpt.latest_step != final:
            ckpt.save(final, snapshot())
        ckpt.close()
    return state, history
