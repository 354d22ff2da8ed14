"""Pure training steps, optax style: ``train_step(state, batch, key) -> (state, metrics)``.

A batch is a dict of device arrays, one row per crystal, as produced by
:meth:`GenerativeModel.arrays` (raw lattice parameters, canonical slots or voxel
images, automorphism tables, normalized properties, conditions). Augmentation
and normalization happen inside the jitted step, so a batch can be reused
and the step is a pure function of (state, batch, key).

GAN batches hold ``n_critic`` real batches stacked on a leading axis: the
critic takes ``n_critic`` steps (``lax.scan``) and the generator one.

With several devices (all devices of all processes) that divide the batch size,
the train step is data-parallel: the crystals of a batch are split over a
:func:`jaxinv.distributed.batch_mesh` and the state is replicated, so each device
computes the loss of its crystals and XLA sums the gradients. Random draws do not
depend on the split (JAX's partitionable threefry), so training follows the
one-device run up to the order of float32 sums.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np

import optax
from flax import struct

import jax
import jax.numpy as jnp

from jaxinv.distributed import replicate, shard_rows, training_mesh
from jaxinv.generative.models import frac_to_vec
from jaxinv.generative.symmetry import augment_frac, augment_voxels, sort_slots

__all__ = ["TrainState", "make_optimizer", "init_state", "make_train_step", "make_eval_step", "vae_loss", "LossLog",
           "record_losses", "read_loss_log"]


@struct.dataclass
class TrainState:
    """Step counter, parameters and optimizer state (GAN: dicts with 'gen' and 'critic')."""

    step: jax.Array
    params: Any
    opt_state: Any


def make_optimizer(model) -> Any:
    """Adam with gradient clipping; for a GAN a dict of generator and critic optimizers
    (Adam with beta1 = 0.5, beta2 = 0.9 as in WGAN-GP)."""
    c = model.config
    if model.is_vae:
        return optax.chain(optax.clip_by_global_norm(c.grad_clip), optax.adam(c.lr))
    return {"gen": optax.adam(c.lr, b1=0.5, b2=0.9), "critic": optax.adam(c.lr_critic, b1=0.5, b2=0.9)}


def init_state(model, key) -> TrainState:
    params = model.init(key)
    tx = make_optimizer(model)
    opt = {k: tx[k].init(params[k]) for k in tx} if isinstance(tx, dict) else tx.init(params)
    return TrainState(jnp.zeros((), jnp.int32), params, opt)


# ------------------------------------------------------------------ inputs
def _coord_inputs(model, batch, key, train: bool):
    """Augmented, canonically re-sorted and normalized coordinate inputs."""
    c = model.config
    frac, species = batch["frac"], batch["species"]
    if train and (c.augment_ops or c.augment_shift):
        frac = augment_frac(key, frac, batch["ops"], batch["n_ops"], shift=c.augment_shift, rotate=c.augment_ops)
        if model.is_vae and (c.encoder == "mlp" or not c.matching):
            # an MLP encoder reads, and an unmatched decoder must emit, slots in canonical order
            species, frac = sort_slots(species, frac)
    lat = model.lattice_scaler.transform(batch["lattice"])
    cond = batch.get("cond") if model.cond_dim else None
    return lat, frac, species, cond


def _voxel_inputs(model, batch, key, train: bool):
    c = model.config
    image = batch["image"].astype(jnp.float32)
    if train and (c.augment_ops or c.augment_shift):
        image = augment_voxels(key, image, batch["ops"], batch["n_ops"], shift=c.augment_shift, rotate=c.augment_ops)
    lat = model.lattice_scaler.transform(batch["lattice"])
    cond = batch.get("cond") if model.cond_dim else None
    return image, lat, cond


# ------------------------------------------------------------------- VAEs
def _assign(cost):
    from scipy.optimize import linear_sum_assignment

    cost = np.asarray(cost, np.float64)
    out = np.zeros(cost.shape[::2], np.int32)
    for b in range(len(cost)):
        rows, cols = linear_sum_assignment(cost[b])
        out[b, cols] = rows
    return out


def hungarian(cost):
    """Optimal one-to-one assignment per batch row: (B, N_pred, N_true) costs ->
    (B, N_true) index of the predicted slot matched to each target slot.

    Runs scipy's ``linear_sum_assignment`` on the host through ``pure_callback``
    (a few microseconds per crystal); the assignment is a constant for autodiff.
    """
    shape = jax.ShapeDtypeStruct((cost.shape[0], cost.shape[2]), jnp.int32)
    return jax.pure_callback(_assign, shape, cost, vmap_method="sequential")


def _kl(mu, logvar):
    return 0.5 * jnp.sum(mu ** 2 + jnp.exp(logvar) - 1.0 - logvar, -1)


def vae_loss(model, params, batch, key, step, train: bool = True):
    """(total loss, metrics) of a VAE batch; the KL weight ramps up over ``kl_warmup`` steps."""
    c = model.config
    k_aug, k_z = jax.random.split(key)
    m = {}
    if c.kind == "coord_vae":
        lat, frac, species, cond = _coord_inputs(model, batch, k_aug, train)
        out = model.module.apply(params, lat, frac, species, k_z, cond)
        occ = (species > 0).astype(jnp.float32)  # (B, N) target slots
        u_hat = out["frac_vec"] / jnp.sqrt((out["frac_vec"] ** 2).sum(-1, keepdims=True) + 1e-8)
        u = frac_to_vec(frac)
        logp = jax.nn.log_softmax(out["logits"])  # (B, N_pred, K)
        # costs of predicted slot i for target slot j: (B, N_pred, N_true)
        pos_cost = occ[:, None, :] * jnp.sum(1.0 - jnp.einsum("biac,bjac->bija", u_hat, u), -1)
        sp_cost = -jnp.take_along_axis(logp, jnp.broadcast_to(species[:, None, :], logp.shape[:2] + species.shape[1:]),
                                       2)
        if c.matching:  # the loss does not care which slot emits which atom
            perm = hungarian(jax.lax.stop_gradient(c.w_frac * pos_cost + c.w_species * sp_cost))
        else:  # slot j must emit target j (canonical order)
            perm = jnp.broadcast_to(jnp.arange(species.shape[1]), species.shape)
        pick = lambda cost: jnp.take_along_axis(cost, perm[:, None, :], 1)[:, 0]  # (B, N_true)
        m["frac"] = jnp.mean(jnp.sum(pick(pos_cost), -1))
        m["species"] = jnp.mean(jnp.sum(pick(sp_cost), -1))
        pred = jnp.take_along_axis(out["logits"].argmax(-1), perm, 1)
        m["species_acc"] = jnp.mean(jnp.all(pred == species, -1))
        n_atoms = (species > 0).sum(-1)
        m["count"] = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out["count_logits"],
                                                                               jnp.maximum(n_atoms - 1, 0)))
        m["count_acc"] = jnp.mean(out["count_logits"].argmax(-1) == n_atoms - 1)
        recon = c.w_frac * m["frac"] + c.w_species * (m["species"] + m["count"])
    else:
        image, lat, cond = _voxel_inputs(model, batch, k_aug, train)
        out = model.module.apply(params, image, lat, k_z, cond)
        m["image"] = jnp.mean(jnp.sum((out["image"] - image) ** 2, (1, 2, 3, 4)))
        recon = c.w_image * m["image"]
        if "composition_logits" in out:
            # the element multiset in a canonical order: atoms by class, then empty slots
            sp = batch["species"]
            target = jnp.sort(jnp.where(sp > 0, sp, jnp.iinfo(sp.dtype).max), -1)
            target = jnp.where(target == jnp.iinfo(sp.dtype).max, 0, target)
            ce = optax.softmax_cross_entropy_with_integer_labels(out["composition_logits"], target)
            m["composition"] = jnp.mean(jnp.sum(ce, -1))
            m["composition_acc"] = jnp.mean(jnp.all(out["composition_logits"].argmax(-1) == target, -1))
            recon = recon + c.w_species * m["composition"]
    m["lattice"] = jnp.mean(jnp.sum((out["lattice"] - lat) ** 2, -1))
    m["kl"] = jnp.mean(_kl(out["mu"], out["logvar"]))
    beta = c.beta * jnp.minimum(1.0, (step + 1.0) / max(c.kl_warmup, 1))
    loss = recon + c.w_lattice * m["lattice"] + beta * m["kl"]
    if model.n_props:
        y = batch["props"]
        ok = jnp.isfinite(y)
        err = jnp.where(ok, out["props"] - jnp.where(ok, y, 0.0), 0.0)
        m["property"] = jnp.sum(err ** 2) / jnp.maximum(ok.sum(), 1)
        m["property_mae"] = jnp.sum(jnp.abs(err)) / jnp.maximum(ok.sum(), 1)
        loss = loss + c.w_property * m["property"] * y.shape[-1]
    m["loss"] = loss
    m["beta"] = beta
    return loss, m


# -------------------------------------------------------------------- GAN
def _real_sample(model, batch, key):
    lat, frac, species, cond = _coord_inputs(model, batch, key, True)
    return {"lattice": lat, "frac_vec": frac_to_vec(frac),
            "probs": jax.nn.one_hot(species, model.vocab.n_classes)}, cond


def _critic(model, params, x, cond):
    return model.critic.apply(params, x["lattice"], x["frac_vec"], x["probs"], cond)


def _fake_sample(model, gen_params, key, n, cond):
    k_z, k_g = jax.random.split(key)
    out = model.module.apply(gen_params, jax.random.normal(k_z, (n, model.latent_dim)), k_g, cond)
    return {k: out[k] for k in ("lattice", "frac_vec", "probs")}


def critic_loss(model, critic_params, gen_params, batch, key):
    """WGAN-GP critic loss: E[D(fake)] - E[D(real)] + lambda E[(|grad D(x_hat)| - 1)^2]
    (+ a small drift term keeping D(real) near 0)."""
    k_real, k_fake, k_eps = jax.random.split(key, 3)
    real, cond = _real_sample(model, batch, k_real)
    n = real["lattice"].shape[0]
    fake = jax.lax.stop_gradient(_fake_sample(model, gen_params, k_fake, n, cond))
    eps = jax.random.uniform(k_eps, (n,))
    mix = jax.tree_util.tree_map(lambda r, f: eps.reshape((n,) + (1,) * (r.ndim - 1)) * r
                                 + (1 - eps.reshape((n,) + (1,) * (r.ndim - 1))) * f, real, fake)

    def d_sum(x):
        return jnp.sum(_critic(model, critic_params, x, cond))

    g = jax.grad(d_sum)(mix)
    norm = jnp.sqrt(sum(jnp.sum(v.reshape(n, -1) ** 2, -1) for v in jax.tree_util.tree_leaves(g)) + 1e-12)
    gp = jnp.mean((norm - 1.0) ** 2)
    d_real = _critic(model, critic_params, real, cond)
    d_fake = _critic(model, critic_params, fake, cond)
    wdist = jnp.mean(d_real) - jnp.mean(d_fake)
    loss = -wdist + model.config.gp_weight * gp + 1e-3 * jnp.mean(d_real ** 2)
    return loss, {"critic_loss": loss, "wasserstein": wdist, "gp": gp}


def generator_loss(model, gen_params, critic_params, batch, key):
    k_real, k_fake = jax.random.split(key)
    _, cond = _real_sample(model, batch, k_real)
    n = batch["lattice"].shape[0]
    fake = _fake_sample(model, gen_params, k_fake, n, cond)
    loss = -jnp.mean(_critic(model, critic_params, fake, cond))
    return loss, {"gen_loss": loss}


# ---------------------------------------------------------------- factories
def make_train_step(model, mesh="auto"):
    """The jitted ``train_step(state, batch, key) -> (state, metrics)`` of a model
    (built once per model object, so repeated training calls compile once). Inside
    :func:`record_losses` the step also hands its metrics to the model's :class:`LossLog`.

    ``mesh``: the devices a batch's crystals are split over (data parallelism); by
    default all devices when there are several, None for one device. A batch whose
    size they do not divide runs unsplit. Every process of a multi-process run passes
    the same batch and key."""
    if "train_step" not in model.jit_cache:
        model.jit_cache["train_step"] = _build_train_step(model)
    fn = model.jit_cache["train_step"]
    mesh = training_mesh(mesh)
    if mesh is not None:
        fn = _data_parallel(fn, mesh, 0 if model.is_vae else 1)
    loss_log = model.jit_cache.get("loss_log")
    if loss_log is None:
        return fn

    def recorded_step(state, batch, key):
        new, m = fn(state, batch, key)
        loss_log.add(state.step, m)
        return new, m

    return recorded_step


def _data_parallel(fn, mesh, axis: int):
    """``fn(state, batch, key)`` with the batch's crystals (axis ``axis``: 1 for a GAN's
    stacked critic batches) split over ``mesh`` and the state and key replicated."""
    def step(state, batch, key):
        rows = jax.tree_util.tree_leaves(batch)[0].shape[axis]
        if rows % mesh.devices.size:
            return fn(state, batch, key)
        state, key = replicate((state, key), mesh)
        return fn(state, shard_rows(batch, mesh, axis), key)

    return step


# ------------------------------------------------------------- loss history
class LossLog:
    """Training metrics of every step, kept as means over blocks of ``every`` steps.

    Steps hand over device values; they are fetched once per block, so recording
    adds no synchronization beyond one transfer every ``every`` steps. Each block
    becomes ``{"step": steps done at its end, "n": steps in it, <metric>: mean}``
    in :attr:`records`, and a line of ``path`` (JSON lines) when given, so a killed
    run keeps what it recorded (see :func:`read_loss_log`)."""

    def __init__(self, every: int = 25, path: str | Path | None = None):
        self.every = max(int(every), 1)
        self.path = None if path is None else Path(path)
        self.records: list[dict] = []
        self._pending: list = []

    def add(self, step, metrics: dict) -> None:
        """Metrics of the step that started at ``step`` (device values are fine)."""
        self._pending.append((step, metrics))
        if len(self._pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        got = jax.device_get(self._pending)
        self._pending = []
        rec = {"step": int(got[-1][0]) + 1, "n": len(got)}
        for k in got[0][1]:
            v = np.asarray([np.mean(m[k]) for _, m in got], np.float64)
            rec[k] = float(np.mean(v))
        self.records.append(rec)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")


@contextlib.contextmanager
def record_losses(model, every: int = 25, path: str | Path | None = None):
    """``with record_losses(model) as log: train(model, ...)``: the training steps
    made by :func:`make_train_step` inside the block record their metrics in ``log``
    (a :class:`LossLog`, flushed on exit)."""
    log = LossLog(every, path)
    model.jit_cache["loss_log"] = log
    try:
        yield log
    finally:
        model.jit_cache.pop("loss_log", None)
        log.flush()


def read_loss_log(path: str | Path) -> list[dict]:
    """The records of a :class:`LossLog` file in step order. Records of a run that
    was killed and resumed from an earlier checkpoint are replaced by the resumed
    run's: a record drops the earlier ones that end at or after its step."""
    path = Path(path)
    out: list[dict] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        while out and out[-1]["step"] >= rec["step"]:
            out.pop()
        out.append(rec)
    return out


def _build_train_step(model):
    tx = make_optimizer(model)

    if model.is_vae:
        def train_step(state: TrainState, batch, key):
            (_, m), grads = jax.value_and_grad(
                lambda p: vae_loss(model, p, batch, key, state.step.astype(jnp.float32)), has_aux=True)(state.params)
            updates, opt = tx.update(grads, state.opt_state, state.params)
            m["grad_norm"] = optax.global_norm(grads)
            return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                 opt_state=opt), m

        return jax.jit(train_step)

    def train_step(state: TrainState, batch, key):
        k_critic, k_gen = jax.random.split(key)
        params, opt = state.params, state.opt_state

        def critic_update(carry, inputs):
            cp, co = carry
            real, k = inputs
            (_, m), g = jax.value_and_grad(lambda p: critic_loss(model, p, params["gen"], real, k),
                                           has_aux=True)(cp)
            u, co = tx["critic"].update(g, co, cp)
            return (optax.apply_updates(cp, u), co), m

        n_critic = jax.tree_util.tree_leaves(batch)[0].shape[0]
        keys = jax.random.split(k_critic, n_critic)
        (cp, co), cm = jax.lax.scan(critic_update, (params["critic"], opt["critic"]), (batch, keys))
        last = jax.tree_util.tree_map(lambda x: x[-1], batch)
        (_, gm), g = jax.value_and_grad(lambda p: generator_loss(model, p, cp, last, k_gen), has_aux=True)(
            params["gen"])
        u, go = tx["gen"].update(g, opt["gen"], params["gen"])
        m = {k: v[-1] for k, v in cm.items()}
        m.update(gm)
        new = {"gen": optax.apply_updates(params["gen"], u), "critic": cp}
        return state.replace(step=state.step + 1, params=new, opt_state={"gen": go, "critic": co}), m

    return jax.jit(train_step)


def make_eval_step(model):
    """Jitted ``eval_step(params, batch, key, step) -> metrics`` (no augmentation for VAEs)."""
    if "eval_step" in model.jit_cache:
        return model.jit_cache["eval_step"]
    if model.is_vae:
        fn = jax.jit(lambda params, batch, key, step: vae_loss(model, params, batch, key, step, train=False)[1])
    else:
        fn = jax.jit(lambda params, batch, key, step: critic_loss(model, params["critic"], params["gen"], batch,
                                                                  key)[1])
    model.jit_cache["eval_step"] = fn
    return fn
