"""Training deep ensembles with optax, checkpointed with orbax; :class:`PropertyModel`.

Training is a pure function of (data, seed): all M members step together under
``jax.vmap``, and a chunk of epochs is one jitted ``lax.scan``. Each step draws
every member its own minibatch *with replacement* from the valid rows, which is
both SGD and a bootstrap (a source of ensemble diversity beyond the random
initializations). Data are padded to a capacity from a coarse ladder with the
number of valid rows traced, so an active-learning loop whose training set grows
every round recompiles only when the capacity bucket changes.

Loss: the Gaussian negative log-likelihood of standardized targets; during the
first ``warmup`` fraction of epochs the mean is fitted by squared error and the
variance by NLL on the detached mean (NLL from the start lets a member explain
its errors away with a large variance before it has learnt anything). Labels that
are NaN are masked, so one model can learn several targets with gaps.

Each member keeps the parameters of its best epoch on the validation set (by NLL).

Zero-inflated ("hurdle") targets, such as band gaps that are exactly 0 for most
structures, get two outputs: a Gaussian for the value given that it is positive
(trained on the positive labels only) and a logit for P(y > 0) (trained by binary
cross-entropy on all labels; its variance output is unused). A regression to the
mean of such a target would blur the zeros and the gapped structures together.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import optax

import jax
import jax.numpy as jnp

from jaxinv.distributed import AXIS, data_mesh, replicate, shard_rows, to_host, training_mesh
from jaxinv.screening.finetune import PotentialHead, backbone, feature_statistics, head_inputs
from jaxinv.screening.uncertainty import apply_platt, fit_platt, fit_sigma_scale
from jaxinv.screening.models import CGCNN, CompositionMLP, compact_graphs, edge_capacity, ensemble_apply, \
    ensemble_init, flat_graphs, gather_graphs, graph_inputs, mixture_moments

__all__ = ["TrainConfig", "PropertyModel", "fit", "capacity_for"]

log = logging.getLogger("jaxinv.screening")


@dataclass(frozen=True)
class TrainConfig:
    """Training of a property ensemble (the ``train`` section of ``train_property`` and ``castelli``)."""

    n_members: int = 5  # ensemble members (σ from their spread)
    epochs: int = 300  # training epochs
    batch_size: int = 64  # structures per batch
    lr: float = 2e-3  # learning rate (AdamW)
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup: float = 0.3  # fraction of epochs with the MSE mean loss
    chunk_epochs: int = 50  # at most this many epochs per jitted call (and between checkpoints)
    seed: int = 0  # seeds initialisation and batches
    min_capacity: int = 0  # pad rows to at least this: a growing training set then compiles once
    head_epochs: int = 100  # finetune: epochs of the head alone on the frozen features first (its warm start)
    patience: int | None = None  # stop after this many epochs past warmup without any member's best
    # validation NLL improving (checked between jitted chunks, which then hold at most this many epochs); 0/None: off


def capacity_for(n: int) -> int:
    """Padded row count: the next of 2^k and 1.5 * 2^k (at least 64)."""
    n = max(int(n), 64)
    p = 2 ** math.floor(math.log2(n))
    return p if p >= n else (3 * p) // 2 if (3 * p) // 2 >= n else 2 * p


def _pad_rows(tree, cap: int):
    def pad(a):
        a = np.asarray(a)
        extra = cap - a.shape[0]
        if extra <= 0:
            return a
        fill = np.nan if np.issubdtype(a.dtype, np.floating) else 0
        out = np.concatenate([a, np.full((extra,) + a.shape[1:], fill, a.dtype)])
        # padded inputs must be harmless: zeros for features, edge masks off
        if np.issubdtype(a.dtype, np.floating):
            out[a.shape[0]:] = 0.0
        return out
    return jax.tree_util.tree_map(pad, tree)


def _terms(mean, var, y0, binary):
    """Per-entry NLL, and the absolute error used for the learning curve: Gaussian
    for ordinary outputs, Bernoulli (``mean`` is the logit, labels 0/1) for binary ones."""
    gauss = 0.5 * jnp.log(var) + 0.5 * (y0 - mean) ** 2 / var
    bce = optax.sigmoid_binary_cross_entropy(mean, y0)
    err = jnp.where(binary, jnp.abs(y0 - jax.nn.sigmoid(mean)), jnp.abs(y0 - mean))
    return jnp.where(binary, bce, gauss), err


def _loss(module, binary, params, x, y, warm):
    mean, var = module.apply(params, x)
    valid = jnp.isfinite(y)
    y0 = jnp.where(valid, y, 0.0)
    binary = jnp.asarray(binary, bool)
    nll, err = _terms(mean, var, y0, binary)
    nll_fixed_mean, _ = _terms(jax.lax.stop_gradient(mean), var, y0, binary)
    per = jnp.where(warm & ~binary, (y0 - mean) ** 2 + nll_fixed_mean, nll)
    n = jnp.maximum(valid.sum(), 1)
    # for the learning curve: the batch's NLL (comparable with the validation NLL
    # also during warmup) and its MAE per target (standardized units)
    mae = jnp.sum(jnp.where(valid, err, 0.0), 0) / jnp.maximum(valid.sum(0), 1)
    return jnp.sum(jnp.where(valid, per, 0.0)) / n, (jnp.sum(jnp.where(valid, nll, 0.0)) / n, mae)


def _val_metrics(module, binary, params, x, y):
    """Per member: validation NLL (M,) and MAE per target (M, T), standardized units."""
    mean, var = ensemble_apply(module, params, x)  # (M, B, T)
    valid = jnp.isfinite(y)[None]
    y0 = jnp.where(valid, y[None], 0.0)
    nll, err = _terms(mean, var, y0, jnp.asarray(binary, bool))
    mae = jnp.sum(jnp.where(valid, err, 0.0), 1) / jnp.maximum(valid.sum(1), 1)
    return jnp.sum(jnp.where(valid, nll, 0.0), axis=(1, 2)) / jnp.maximum(valid.sum((1, 2)), 1), mae


GRAPH_KEYS = frozenset({"numbers", "mask", "senders", "receivers", "edge_mask", "dist"})


def _is_graph(x) -> bool:
    """Padded per-structure graph inputs (:func:`~jaxinv.screening.models.graph_inputs`)."""
    return isinstance(x, dict) and GRAPH_KEYS <= set(x) and np.ndim(x["senders"]) == np.ndim(x["numbers"])


def _optimizer(lr: float, weight_decay: float, total_steps: int):
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(100, total_steps // 10 + 1), total_steps, lr * 0.02)
    return optax.chain(optax.clip_by_global_norm(5.0), optax.adamw(schedule, weight_decay=weight_decay))


@functools.lru_cache(maxsize=16)
def _chunk_fn(module, steps: int, batch_size: int, n_epochs: int, has_val: bool, lr: float, weight_decay: float,
              total_steps: int, mesh=None, binary: tuple = (), graph_capacity: int | None = None):
    """The jitted chunk of epochs and its optimizer, cached on everything that shapes the
    program, so repeated fits (active learning rounds, seeds) reuse one compilation.

    With a ``mesh`` every minibatch is split over its devices along the batch axis
    (the data and parameters are replicated): each device computes the gradients
    of its rows and XLA sums them across devices.

    With ``graph_capacity`` the data ``x`` is a :func:`compact_graphs` store and
    every minibatch one flat graph of that many edge slots (:func:`gather_graphs`);
    a row whose edges do not fit (rare by construction of the capacity) loses its
    label for that step."""
    tx = _optimizer(lr, weight_decay, total_steps)
    if mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec

        rows = NamedSharding(mesh, PartitionSpec(None, AXIS))  # (members, minibatch rows, ...)
        split = lambda a: jax.lax.with_sharding_constraint(a, rows)
    else:
        split = lambda a: a
    binary = binary or (False,)  # () = no binary outputs; a scalar False broadcasts
    loss_grad = jax.vmap(jax.value_and_grad(functools.partial(_loss, module, binary), has_aux=True),
                         in_axes=(0, 0, 0, None))

    def one_epoch(carry, _):
        params, opt_state, best, best_val, key, epoch, last_improve, n_valid, x, y, xv, yv, warm_epochs = carry

        def step(c, k):
            p, s = c
            m = jax.tree_util.tree_leaves(p)[0].shape[0]
            idx = jax.random.randint(k, (m, batch_size), 0, n_valid)
            if graph_capacity:
                bx, ok = jax.vmap(lambda i: gather_graphs(x, i, graph_capacity))(idx)
                bx = jax.tree_util.tree_map(split, bx)
                by = split(jnp.where(ok[..., None], y[idx], jnp.nan))
            else:
                bx = jax.tree_util.tree_map(lambda a: split(a[idx]), x)
                by = split(y[idx])
            (loss, aux), g = loss_grad(p, bx, by, epoch < warm_epochs)
            upd, s = jax.vmap(tx.update)(g, s, p)
            return (optax.apply_updates(p, upd), s), (loss, aux)

        key, sub = jax.random.split(key)
        (params, opt_state), (losses, (nll, mae)) = jax.lax.scan(step, (params, opt_state),
                                                                 jax.random.split(sub, steps))
        if has_val:
            val, val_mae = _val_metrics(module, binary, params, xv, yv)
        else:
            val, val_mae = jnp.full(best_val.shape, losses[-1].mean()), jnp.full(mae.shape[1:], jnp.nan)
        # during warmup the variance is not trained on its own mean yet: keep the latest
        better = (val < best_val) | (epoch < warm_epochs)
        # for early stopping: the last epoch (counted from 1) at which some member improved, or warmup ran
        last_improve = jnp.where((epoch < warm_epochs) | jnp.any(val < best_val), epoch + 1, last_improve)
        sel = lambda a, b: jnp.where(better.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
        best = jax.tree_util.tree_map(sel, params, best)
        best_val = jnp.where(better, val, best_val)
        # the epoch's record: step means of the training metrics, per member
        record = {"train_loss": losses.mean(0), "train_nll": nll.mean(0), "train_mae": mae.mean(0),
                  "val_nll": val if has_val else jnp.full(val.shape, jnp.nan), "val_mae": val_mae}
        return (params, opt_state, best, best_val, key, epoch + 1, last_improve, n_valid, x, y, xv, yv,
                warm_epochs), record

    @jax.jit
    def run(carry):
        return jax.lax.scan(one_epoch, carry, None, length=n_epochs)

    return run, tx, jax.jit(jax.vmap(tx.init))


def fit(module, x, y, cfg: TrainConfig = TrainConfig(), val: tuple | None = None, checkpoint: str | None = None,
        init_example=None, log_every: bool = False, mesh="auto", binary: Sequence[bool] = (), init_params=None,
        progress: bool = False):
    """Train an ensemble of ``module`` on inputs ``x`` (a pytree with N rows) and
    standardized targets ``y`` (N, T). Returns (stacked best params, history).

    The history has, per epoch run in this call (``epoch``, counted from 1):
    ``train_loss`` (the objective, member mean) and per member
    ``train_loss_members`` (E, M), ``train_nll`` (E, M) and ``train_mae`` (E, M, T)
    (means over the epoch's minibatches), ``val_nll`` (E, M) and ``val_mae`` (E, M, T)
    (NaN without ``val``), all on standardized targets; also ``warmup_epochs`` and
    ``best_val_nll`` (M,).

    ``binary``: per column of ``y``, whether it is a 0/1 label learnt as a logit
    (the model's mean output) by cross-entropy; () = none. ``init_params``: the
    members' starting parameters (stacked), instead of a random initialization.
    ``progress``: a progress bar over epochs, advanced after every jitted chunk.

    ``val``: optional (x_val, y_val) for per-member model selection. With
    ``checkpoint`` (a directory) training state is saved with orbax after every
    chunk of epochs, and a restarted call with the same inputs resumes.

    ``mesh``: data parallelism over a :func:`jaxinv.distributed.batch_mesh`; by
    default every device of every process when there are several and they divide
    ``cfg.batch_size`` (None: one device). Every process passes the same data. The
    same seed gives the same training as on one device, up to the order of float32
    sums across devices.

    Graph inputs (the padded dict of :func:`~jaxinv.screening.models.graph_inputs`)
    train on flat minibatches: the valid edges of all rows are stored once
    (:func:`~jaxinv.screening.models.compact_graphs`) and each step gathers its
    rows' edges into one disjoint graph with a fixed edge capacity
    (:func:`~jaxinv.screening.models.edge_capacity`), so the cost follows the real
    edge count, not ``batch * max edges``; validation runs on one flat graph of
    exactly its edges. The history's ``graph_edge_capacity`` records the capacity.

    ``cfg.patience``: stop once that many epochs after warmup passed without any
    member's best validation NLL improving (training loss without ``val``),
    checked between chunks (a chunk then holds at most ``patience`` epochs);
    ``history['stopped_epoch']`` is the epoch it stopped at (None if it ran to
    ``cfg.epochs``). A resumed run continues the count from the checkpoint."""
    from jaxinv.checkpoint import Checkpointer, fingerprint_arrays

    n = int(np.asarray(y).shape[0])
    cap = capacity_for(max(n, cfg.min_capacity))
    xp, yp = _pad_rows(x, cap), _pad_rows(np.asarray(y, np.float32), cap)
    yp[n:] = np.nan
    graph = _is_graph(x)
    if val is not None:
        capv = capacity_for(len(val[1]))
        xv, yv = _pad_rows(val[0], capv), _pad_rows(np.asarray(val[1], np.float32), capv)
        yv[len(val[1]):] = np.nan
        if graph:
            xv = flat_graphs(xv)
    else:
        xv, yv = jax.tree_util.tree_map(lambda a: a[:1], xp), np.full((1,) + yp.shape[1:], np.nan, np.float32)
    steps = max(1, cap // cfg.batch_size)
    total_steps = steps * cfg.epochs
    patience = int(cfg.patience or 0)
    # a divisor of the epochs: every chunk is one compiled call of the same length, and
    # a last partial chunk would otherwise run past ``epochs``
    most = min(cfg.chunk_epochs, cfg.epochs, patience or cfg.epochs)
    chunk = max(d for d in range(1, max(1, most) + 1) if cfg.epochs % d == 0)
    mesh = training_mesh(mesh, cfg.batch_size)
    example = jax.tree_util.tree_map(lambda a: jnp.asarray(a[:2]), xp) if init_example is None else init_example
    graph_cap = None
    if graph:
        # the store holds the edges of the valid rows only (padded rows are never drawn)
        xp = compact_graphs(jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], x))
        for k in ("numbers", "mask", "edge_start", "edge_count"):
            xp[k] = _pad_rows(xp[k], cap)
        graph_cap = edge_capacity(xp["edge_count"][:n], cfg.batch_size)
    run, tx, tx_init = _chunk_fn(module, steps, cfg.batch_size, chunk, val is not None, float(cfg.lr),
                                 float(cfg.weight_decay), total_steps, mesh, tuple(bool(b) for b in binary),
                                 graph_cap)
    key = jax.random.PRNGKey(cfg.seed)
    k_init, k_train = jax.random.split(key)
    params = ensemble_init(module, k_init, cfg.n_members, example) if init_params is None else init_params
    opt_state = tx_init(params)
    best_val = jnp.full((cfg.n_members,), jnp.inf)
    warm_epochs = int(cfg.warmup * cfg.epochs)
    carry = (params, opt_state, params, best_val, k_train, jnp.asarray(0), jnp.asarray(0), jnp.asarray(n), xp, yp,
             xv, yv, jnp.asarray(warm_epochs))
    ckpt, start = None, 0
    if checkpoint:
        leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves((x, y))]
        fp = fingerprint_arrays(*leaves, np.frombuffer(repr((cfg, module)).encode(), np.uint8))
        ckpt = Checkpointer(checkpoint, fp, every_seconds=0.0)
        # restore into the live structure: optax states are NamedTuples, which a
        # target-less restore would return as plain containers
        restored = ckpt.restore(target=carry[:7])
        if restored is not None:
            start, state = int(restored[0]), restored[1]
            carry = tuple(jax.tree_util.tree_map(jnp.asarray, state)) + carry[7:]
            log.info("training resumed at epoch %d", start)
    if mesh is not None:
        carry = replicate(carry, mesh)
    records = []
    epoch, stopped = start, None
    from tqdm import tqdm

    bar = tqdm(total=cfg.epochs, initial=start, desc=f"train {type(module).__name__} x{cfg.n_members}", unit="epoch",
               disable=not progress, mininterval=1.0)
    while epoch < cfg.epochs:
        if patience and epoch >= warm_epochs and epoch - int(carry[6]) >= patience:
            stopped = epoch
            log.info("early stop at epoch %d: no member's validation NLL improved since epoch %d", epoch,
                     int(carry[6]))
            break
        carry, rec = run(carry)
        epoch += chunk
        records.append(to_host(rec))
        bar.update(min(chunk, cfg.epochs - bar.n))
        bar.set_postfix(best_val_nll=f"{float(np.mean(np.asarray(carry[3]))):.3f}")
        if log_every and not progress:  # the bar shows the same; a log line would break it
            log.info("epoch %d: train loss %.4f, best val NLL %s", epoch, float(rec["train_loss"][-1].mean()),
                     np.round(np.asarray(carry[3]), 3).tolist())
        if ckpt is not None:
            ckpt.save(epoch, carry[:7])
    bar.close()
    if ckpt is not None:
        ckpt.close()
    cat = {k: np.concatenate([r[k] for r in records])[: cfg.epochs - start] for k in records[0]} if records else {}
    n_run = len(cat["train_loss"]) if cat else 0
    history = {"train_loss": cat["train_loss"].mean(1).tolist() if cat else [],
               "epoch": list(range(start + 1, start + n_run + 1)), "warmup_epochs": warm_epochs,
               "best_val_nll": np.asarray(carry[3]).tolist(), "stopped_epoch": stopped,
               "graph_edge_capacity": graph_cap}
    if cat:
        history["train_loss_members"] = cat["train_loss"].tolist()
        history.update({k: cat[k].tolist() for k in ("train_nll", "train_mae", "val_nll", "val_mae")})
    if mesh is not None:  # hand back plain arrays on the default device, as a one-device fit does
        return jax.tree_util.tree_map(jnp.asarray, to_host(carry[2])), history
    return carry[2], history


# ----------------------------------------------------------------- the model
MODULES = {"composition": CompositionMLP, "cgcnn": CGCNN, "finetune": PotentialHead}
# rows per compiled prediction call: a fine-tuned head runs the whole potential
PREDICT_ROWS = {"finetune": 64}


@dataclass
class PropertyModel:
    """A trained ensemble with its input pipeline and target scaling.

    ``kind``: ``'composition'`` (an MLP on precomputed features, ``features`` = a
    kind of :func:`~jaxinv.screening.features.featurize`: Magpie variants or a frozen
    potential's learned features), ``'cgcnn'``, or ``'finetune'`` (a head on the
    potential named by ``features``, fine-tuned end to end:
    :class:`~jaxinv.screening.finetune.PotentialHead`). Predictions are in the targets'
    own units; ``sigma_scale`` (per target, fitted on validation data with
    :func:`~jaxinv.screening.uncertainty.fit_sigma_scale`) multiplies σ."""

    kind: str
    targets: tuple
    module_kwargs: dict = field(default_factory=dict)
    features: str = "magpie"
    cutoff: float = 5.0
    x_mean: np.ndarray | None = None
    x_std: np.ndarray | None = None
    y_mean: np.ndarray | None = None
    y_std: np.ndarray | None = None
    sigma_scale: np.ndarray | None = None
    hurdle: tuple = ()  # targets that are 0 or positive (band gaps): P(y > 0) plus a Gaussian given y > 0
    platt: np.ndarray | None = None  # (H, 2): Platt scaling (a, b) of each hurdle target's P(y > 0), from recalibrate()
    params: Any = None
    history: dict | None = field(default=None, repr=False, compare=False)  # of the last fit (not saved)

    @property
    def module(self):
        kw = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in self.module_kwargs.items()}
        return _module(self.kind, len(self.targets) + len(self.hurdle), tuple(sorted(kw.items())))

    def _check_hurdle(self):
        unknown = [t for t in self.hurdle if t not in self.targets]
        if unknown:
            raise ValueError(f"hurdle targets {unknown} are not among the targets {list(self.targets)}")

    def _columns(self, y):
        """Training columns of labels (N, T): the targets, with a hurdle target's zeros
        masked (its Gaussian is fitted to positive values only), then one 0/1 column
        per hurdle target for P(y > 0); NaN labels stay NaN."""
        y = np.array(y, np.float64)
        flags = []
        for t in self.hurdle:
            j = self.targets.index(t)
            flags.append(np.where(np.isfinite(y[:, j]), (y[:, j] > 0).astype(np.float64), np.nan))
            y[:, j] = np.where(y[:, j] > 0, y[:, j], np.nan)
        return y, (np.stack(flags, 1) if flags else np.zeros((len(y), 0)))

    # -------------------------------------------------------------- inputs
    def raw_inputs(self, crystal):
        """Unscaled inputs of a Crystal batch (features, or a graph input dict)."""
        from jaxinv.graph import neighbor_graph
        from jaxinv.screening.features import featurize

        if self.kind == "composition":
            return featurize(crystal, self.features, cutoff=self.cutoff)
        if self.kind == "finetune":
            return head_inputs(crystal, self.features)
        c = crystal.to_host()
        g = neighbor_graph(c, self.cutoff)
        return jax.tree_util.tree_map(np.asarray, graph_inputs(c, g))

    def scale_inputs(self, raw):
        if self.kind == "composition":
            # clipped: a candidate far outside the training range should look "far", not infinite
            return np.clip((np.asarray(raw, np.float32) - self.x_mean) / self.x_std, -8.0, 8.0).astype(np.float32)
        return raw

    def inputs(self, crystal):
        return self.scale_inputs(self.raw_inputs(crystal))

    # ------------------------------------------------------------- training
    def fit(self, raw_x, y, cfg: TrainConfig = TrainConfig(), val: tuple | None = None,
            checkpoint: str | None = None, log_every: bool = False, progress: bool = False) -> dict:
        """Set the scalers from the training data and train the ensemble (y: (N, T) in target units).

        Returns the history of :func:`fit` (also kept as ``self.history``), with
        ``train_mae`` and ``val_mae`` in the targets' units and ``targets`` added."""
        self._check_hurdle()
        labels = np.asarray(y, np.float64).reshape(len(y), -1)
        y, flags = self._columns(labels)
        init_params = None
        if self.kind == "finetune":
            init_params, cfg = self._frozen_head(raw_x, labels, cfg, val, progress)
        if self.kind == "composition":
            raw_x = np.asarray(raw_x, np.float32)
            self.x_mean = raw_x.mean(0).astype(np.float32)
            std = raw_x.std(0)
            # a column (nearly) constant in training carries no information; scaling it
            # by its tiny spread would blow up candidates where it differs
            self.x_std = np.where(std > 1e-3 * np.maximum(np.abs(self.x_mean), 1.0), std, np.inf).astype(np.float32)
        self.y_mean = np.nanmean(y, 0)
        self.y_std = np.nanstd(y, 0) + 1e-9
        self.sigma_scale, self.platt = np.ones(len(self.targets)), None
        ys = np.concatenate([(y - self.y_mean) / self.y_std, flags], 1).astype(np.float32)
        v = None
        if val is not None:
            yv, fv = self._columns(np.asarray(val[1], np.float64).reshape(len(val[1]), -1))
            v = (self.scale_inputs(val[0]), np.concatenate([(yv - self.y_mean) / self.y_std, fv], 1).astype(np.float32))
        binary = (False,) * len(self.targets) + (True,) * len(self.hurdle)
        self.params, hist = fit(self.module, self.scale_inputs(raw_x), ys, cfg, val=v, checkpoint=checkpoint,
                                log_every=log_every, binary=binary if self.hurdle else (), init_params=init_params,
                                progress=progress)
        # MAEs in the targets' units; a hurdle's column is the mean |label - P(y > 0)|
        units = np.concatenate([self.y_std, np.ones(len(self.hurdle))])
        for k in ("train_mae", "val_mae"):
            if k in hist:
                hist[k] = (np.asarray(hist[k]) * units).tolist()
        hist["targets"] = list(self.targets) + [f"P({t} > 0)" for t in self.hurdle]
        self.history = hist
        return hist

    def _frozen_head(self, raw_x, labels, cfg: TrainConfig, val, progress: bool = False):
        """A fine-tuned model's first stage: set the head's input standardization from
        the frozen potential's features on the training set, train the head alone on
        them for ``cfg.head_epochs`` (cheap: the features are computed once), and
        return its members with the potential's offsets at 0 as the starting point of
        the end-to-end stage, whose config then has no MSE warm-up (the head's
        variance has already been fitted)."""
        from jaxinv.screening.features import potential_features

        pot = backbone(self.features)
        frozen = potential_features(raw_x["crystal"], pot)
        mean, std = feature_statistics(frozen)
        self.module_kwargs.update(potential=self.features, feature_mean=mean, feature_std=std)
        if not cfg.head_epochs:
            return None, cfg
        head = PropertyModel("composition", self.targets, {"hidden": list(self.module_kwargs.get("hidden", (128, 64)))},
                             hurdle=self.hurdle)
        head_val = None if val is None else (potential_features(val[0]["crystal"], pot), val[1])
        head_cfg = dataclasses.replace(cfg, epochs=cfg.head_epochs, head_epochs=0, chunk_epochs=max(cfg.chunk_epochs, 50))
        head.fit(frozen.astype(np.float32), labels, head_cfg, val=head_val, progress=progress)
        # the same layers and names as CompositionMLP; its scalers are this model's
        head_params = head.params["params"]
        m = jax.tree_util.tree_leaves(head_params)[0].shape[0]
        delta = jax.tree_util.tree_map(lambda p: jnp.zeros((m,) + np.shape(p), jnp.float32), pot.params)
        return {"params": {**head_params, "backbone_delta": delta}}, dataclasses.replace(cfg, warmup=0.0)

    def recalibrate(self, x, y) -> dict:
        """Fit the uncertainty to held-out data (scaled inputs ``x``, labels ``y`` (N, T)):
        a σ scale per target (:func:`~jaxinv.screening.uncertainty.fit_sigma_scale`; for
        a hurdle target on its positive labels, where its Gaussian applies) and Platt
        scaling of each hurdle target's P(y > 0). Returns the fitted values."""
        self.sigma_scale, self.platt = np.ones(len(self.targets)), None
        mean, std, p = self.predict_inputs(x, positive=True)
        y = np.asarray(y, np.float64).reshape(len(mean), -1)
        scale = np.ones(len(self.targets))
        for j, t in enumerate(self.targets):
            rows = y[:, j] > 0 if t in self.hurdle else np.isfinite(y[:, j])
            scale[j] = fit_sigma_scale(y[rows, j], mean[rows, j], std[rows, j])
        platt = [fit_platt(y[np.isfinite(y[:, j]), j] > 0, p[np.isfinite(y[:, j]), j])
                 for j in (self.targets.index(t) for t in self.hurdle)]
        self.sigma_scale = scale
        self.platt = np.asarray(platt, np.float64).reshape(len(self.hurdle), 2) if self.hurdle else None
        return {"sigma_scale": scale.tolist(), "platt": None if self.platt is None else self.platt.tolist()}

    # ----------------------------------------------------------- prediction
    def predict_inputs(self, x, batch_size: int = 4096, members: bool = False, mesh=None, positive: bool = False):
        """(mean, std) in target units, each (N, T), from scaled inputs; with
        ``positive`` also P(y > 0) (N, T) (the members' mean probability for a hurdle
        target, whose mean and σ are then those given y > 0; 1 for other targets); with
        ``members`` last the per-member means (M, N, T).

        Rows are laid over ``mesh`` (parameters replicated), by default over this
        process's devices when it has several (:func:`jaxinv.distributed.data_mesh`);
        pass :func:`jaxinv.distributed.batch_mesh` to spread them over every process's
        devices (then every process passes the same ``x`` and gets all rows back)."""
        mesh = data_mesh(devices=jax.local_devices()) if mesh is None else mesh
        d = 1 if mesh is None else mesh.devices.size
        batch_size = min(batch_size, PREDICT_ROWS.get(self.kind, batch_size))
        n = int(jax.tree_util.tree_leaves(x)[0].shape[0])
        step = max(d, (batch_size // d) * d)
        out_m, out_s, out_all = [], [], []
        fn = _predict_fn(self.module)
        params = self.params if mesh is None else replicate(self.params, mesh)
        for start in range(0, n, step):
            part = jax.tree_util.tree_map(lambda a: a[start:start + step], x)
            k = int(jax.tree_util.tree_leaves(part)[0].shape[0])
            # one shape for every full chunk, and rows a multiple of the devices
            padded = _pad_rows(part, step if n > step else -(-k // d) * d)
            if mesh is not None:
                padded = shard_rows(padded, mesh)
            mu, sd, mm = to_host(fn(params, padded))
            out_m.append(mu[:k])
            out_s.append(sd[:k])
            out_all.append(mm[:, :k])
        t = len(self.targets)
        mu = np.concatenate(out_m)[:, :t] * self.y_std + self.y_mean
        sd = np.concatenate(out_s)[:, :t] * self.y_std * self.sigma_scale
        member_means = np.concatenate(out_all, axis=1)
        out = (mu, sd)
        if positive:
            p = np.ones_like(mu)
            for i, name in enumerate(self.hurdle):
                raw = (1.0 / (1.0 + np.exp(-member_means[:, :, t + i]))).mean(0)
                p[:, self.targets.index(name)] = raw if self.platt is None else apply_platt(raw, *self.platt[i])
            out += (p,)
        if members:
            out += (member_means[:, :, :t] * self.y_std + self.y_mean,)
        return out

    def predict(self, crystal, batch_size: int = 4096, positive: bool = False):
        """(mean, std), each (N, T), of a Crystal batch; with ``positive`` also P(y > 0)
        (see :meth:`predict_inputs`)."""
        return self.predict_inputs(self.inputs(crystal), batch_size, positive=positive)

    # ---------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Parameters with orbax (``params/``), everything else as JSON."""
        from jaxinv.checkpoint import Checkpointer

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "targets": list(self.targets), "module_kwargs": self.module_kwargs,
                "features": self.features, "cutoff": self.cutoff, "hurdle": list(self.hurdle)}
        for k in ("x_mean", "x_std", "y_mean", "y_std", "sigma_scale", "platt"):
            v = getattr(self, k)
            meta[k] = None if v is None else np.asarray(v).tolist()
        ck = Checkpointer(directory / "params", max_to_keep=1)
        ck.save(0, self.params)
        ck.close()
        # model.json last, and atomically: a run killed while saving leaves no model that looks complete
        tmp = directory / "model.json.tmp"
        tmp.write_text(json.dumps(meta))
        tmp.replace(directory / "model.json")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "PropertyModel":
        from jaxinv.checkpoint import Checkpointer

        directory = Path(directory)
        meta = json.loads((directory / "model.json").read_text())
        arrays = {k: (None if meta[k] is None else np.asarray(meta[k], np.float32 if k.startswith("x") else np.float64))
                  for k in ("x_mean", "x_std", "y_mean", "y_std", "sigma_scale")}
        arrays["platt"] = None if meta.get("platt") is None else np.asarray(meta["platt"], np.float64)
        model = cls(meta["kind"], tuple(meta["targets"]), meta["module_kwargs"], meta["features"], meta["cutoff"],
                    hurdle=tuple(meta.get("hurdle", ())), **arrays)
        ck = Checkpointer(directory / "params", max_to_keep=1)
        restored = ck.restore()
        ck.close()
        if restored is None:
            raise FileNotFoundError(f"no parameters in {directory / 'params'}")
        model.params = jax.tree_util.tree_map(jnp.asarray, restored[1])
        return model


@functools.lru_cache(maxsize=32)
def _module(kind: str, n_targets: int, kwargs: tuple):
    if kind not in MODULES:
        raise ValueError(f"unknown model kind {kind!r}; use one of {sorted(MODULES)}")
    kw = dict(kwargs)
    if "hidden" in kw:
        kw["hidden"] = tuple(kw["hidden"])
    return MODULES[kind](n_targets=n_targets, **kw)


@functools.lru_cache(maxsize=32)
def _predict_fn(module):
    @jax.jit
    def fn(params, x):
        mean, var = ensemble_apply(module, params, x)
        mu, sd = mixture_moments(mean, var)
        return mu, sd, mean
    return fn
