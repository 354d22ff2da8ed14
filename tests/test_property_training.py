"""The fast CGCNN trainer (issue 25 item 2): flat minibatches and early stopping."""
import numpy as np
import pytest

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxinv.crystal import Crystal
from jaxinv.screening import models
from jaxinv.screening import train as train_mod
from jaxinv.screening.train import PropertyModel, TrainConfig

KW = dict(features=16, n_conv=2, n_rbf=12, cutoff=4.0)


class ReferenceCGCNN(nn.Module):
    """The padded CGCNN as it was before the flat trainer: per-structure vmapped
    gathers and a Dense on the concatenated edge vector [v_i, v_j, rbf]."""

    n_targets: int
    features: int = 64
    n_conv: int = 3
    n_rbf: int = 40
    cutoff: float = 5.0

    @nn.compact
    def __call__(self, inputs):
        numbers, mask = inputs["numbers"], inputs["mask"]
        s, r, emask, d = inputs["senders"], inputs["receivers"], inputs["edge_mask"], inputs["dist"]
        n = numbers.shape[-1]
        v = nn.Embed(119, self.features)(numbers)
        centers = jnp.linspace(0.0, self.cutoff, self.n_rbf)
        rbf = jnp.exp(-((d[..., None] - centers) ** 2) / (self.cutoff / self.n_rbf) ** 2)
        take = jax.vmap(lambda x, idx: x[idx])
        scatter = jax.vmap(lambda x, idx: jax.ops.segment_sum(x, idx, num_segments=n))
        for _ in range(self.n_conv):
            z = jnp.concatenate([take(v, r), take(v, s), rbf], axis=-1)
            gate, core = jnp.split(nn.Dense(2 * self.features)(z), 2, axis=-1)
            msg = nn.sigmoid(gate) * nn.softplus(core) * emask[..., None]
            v = nn.softplus(v + nn.LayerNorm()(scatter(msg, r))) * mask[..., None]
        pooled = v.sum(-2) / jnp.maximum(mask.sum(-1, keepdims=True), 1)
        return models.GaussianHead(self.n_targets, (self.features,))(pooled)


@pytest.fixture(scope="module")
def carbon_set(carbon):
    """About 20 carbon_24 training structures (6 to 24 atoms) with their graph inputs."""
    tr = carbon.subset("train")
    sizes = np.diff(tr.offsets)
    pick = np.concatenate([np.flatnonzero(sizes == k)[:2] for k in np.unique(sizes)])[:24]
    sub = tr.subset(np.sort(pick))
    m = PropertyModel("cgcnn", ("energy_per_atom",), KW, cutoff=KW["cutoff"])
    return sub, m.raw_inputs(sub.crystal())


def _apply(module, params, x):
    mean, var = module.apply(params, x)
    return np.asarray(mean), np.asarray(var)


def test_flat_cgcnn_matches_padded_reference(carbon_set):
    sub, raw = carbon_set
    assert len(np.unique(raw["mask"].sum(1))) > 5  # really different sizes
    new, ref = models.CGCNN(2, **KW), ReferenceCGCNN(2, **KW)
    params = new.init(jax.random.PRNGKey(1), raw)
    # same parameter tree and initialisation as the old module: old saved models load
    ref_params = ref.init(jax.random.PRNGKey(1), raw)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ref_params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    want = _apply(ref, params, raw)
    assert np.std(want[0][:, 0]) > 1e-3  # the structures are told apart
    for x in (raw, models.flat_graphs(raw)):
        got = _apply(new, params, x)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)
    # a minibatch gathered from the compact store, with repeats, in any order
    store = models.compact_graphs(raw)
    idx = np.array([5, 0, len(sub) - 1, 5, 11, 17])
    cap = models.edge_capacity(store["edge_count"], len(idx))
    x, ok = jax.jit(models.gather_graphs, static_argnums=2)(store, jnp.asarray(idx), cap)
    assert bool(np.all(ok)) and int(np.asarray(x["edge_mask"]).sum()) == int(store["edge_count"][idx].sum())
    got = _apply(new, params, x)
    np.testing.assert_allclose(got[0], want[0][idx], rtol=1e-4, atol=1e-5)


def test_predictions_invariant_to_atom_order_padding_and_batch(carbon_set):
    sub, raw = carbon_set
    new = models.CGCNN(1, **KW)
    params = new.init(jax.random.PRNGKey(2), raw)
    want = _apply(new, params, raw)[0][:, 0]
    m = PropertyModel("cgcnn", ("e",), KW, cutoff=KW["cutoff"])
    # atoms permuted within every structure, structures in reverse order, more atom padding
    rng = np.random.default_rng(0)
    lat, fracs, nums = [], [], []
    for k in reversed(range(len(sub))):
        f, z = sub._atoms(k)
        p = rng.permutation(len(z))
        lat.append(sub.lattice[k])
        fracs.append(f[p])
        nums.append(z[p])
    c = Crystal.from_arrays(lat, fracs, nums, n_max=32, bucket=False)
    got = _apply(new, params, m.raw_inputs(c))[0][::-1, 0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # extra edge slots and padded rows change nothing
    pad = {k: np.concatenate([v, np.zeros((4,) + v.shape[1:], v.dtype)]) for k, v in raw.items()}
    pad = {k: (np.pad(v, [(0, 0), (0, 64)]) if k in ("senders", "receivers", "edge_mask", "dist") else v)
           for k, v in pad.items()}
    np.testing.assert_allclose(_apply(new, params, pad)[0][: len(want), 0], want, rtol=1e-4, atol=1e-5)
    # one structure alone equals it in the batch
    one = m.raw_inputs(Crystal.from_arrays([sub.lattice[3]], [sub._atoms(3)[0]], [sub._atoms(3)[1]]))
    np.testing.assert_allclose(_apply(new, params, one)[0][0, 0], want[3], rtol=1e-4, atol=1e-5)


def test_gather_drops_whole_rows_that_do_not_fit(carbon_set):
    _, raw = carbon_set
    store = models.compact_graphs(raw)
    counts = store["edge_count"]
    idx = np.array([0, 1, 2])
    cap = int(counts[0] + counts[1] + counts[2] // 2)  # the third row only half fits
    x, ok = models.gather_graphs(store, jnp.asarray(idx), cap)
    assert np.asarray(ok).tolist() == [True, True, False]
    em = np.asarray(x["edge_mask"])
    assert em.sum() == counts[0] + counts[1] and not np.asarray(x["mask"])[2].any()
    # the capacity rule: at least one largest row, at most batch x largest, a multiple of 128
    c = models.edge_capacity(counts, 4)
    assert c % 128 == 0 and counts.max() <= c <= -(-4 * counts.max() // 128) * 128


def test_flat_training_equals_padded_training(carbon_set, monkeypatch):
    """The trainer's flat minibatches and flat validation give the same training as
    the padded path: same rows drawn, same losses, same parameters."""
    sub, raw = carbon_set
    y = np.asarray(sub.labels["energy_per_atom"], np.float32)[:, None]
    y = (y - y.mean()) / y.std()
    cfg = TrainConfig(n_members=2, epochs=3, batch_size=8, chunk_epochs=3, warmup=0.34)
    module = models.CGCNN(1, features=8, n_conv=1, n_rbf=8, cutoff=KW["cutoff"])
    val = ({k: v[:10] for k, v in raw.items()}, y[:10])
    p_flat, h_flat = train_mod.fit(module, raw, y, cfg, val=val, mesh=None)
    assert h_flat["graph_edge_capacity"] < 8 * raw["edge_mask"].shape[1]
    monkeypatch.setattr(train_mod, "_is_graph", lambda x: False)
    p_pad, h_pad = train_mod.fit(module, raw, y, cfg, val=val, mesh=None)
    assert h_pad["graph_edge_capacity"] is None
    np.testing.assert_allclose(h_flat["train_loss"], h_pad["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(h_flat["val_nll"], h_pad["val_nll"], rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(p_flat), jax.tree_util.tree_leaves(p_pad)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)


def _stall_data():
    """Training labels a linear function of the inputs; validation labels pure noise,
    so the validation NLL stops improving soon after warmup."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -1.0, 0.5, 0.0], np.float32))[:, None]
    xv = rng.normal(size=(32, 4)).astype(np.float32)
    yv = rng.normal(size=(32, 1)).astype(np.float32) * 3
    return x, y, (xv, yv)


def _last_improvement(val_nll, warm):
    """Host-side rule: the last epoch (from 1) at which some member's validation NLL beat
    its best since the end of warmup (the warmup's last epoch sets the starting best)."""
    v = np.asarray(val_nll)
    best = v[warm - 1].copy()
    last = warm
    for e in range(warm, len(v)):
        if np.any(v[e] < best):
            last = e + 1
        best = np.minimum(best, v[e])
    return last


def test_early_stopping_stops_when_validation_stops_improving():
    x, y, val = _stall_data()
    module = models.CompositionMLP(1, (16,))
    cfg = TrainConfig(n_members=2, epochs=200, batch_size=16, chunk_epochs=1, warmup=0.05, patience=4, lr=1e-2)
    _, hist = train_mod.fit(module, x, y, cfg, val=val, mesh=None)
    stop = hist["stopped_epoch"]
    assert stop is not None and stop < 200 and len(hist["epoch"]) == stop
    assert stop == _last_improvement(hist["val_nll"], hist["warmup_epochs"]) + cfg.patience
    # without patience it runs all epochs
    # (the same compiled chunk: only the host loop differs)
    _, full = train_mod.fit(module, x, y, TrainConfig(**{**cfg.__dict__, "patience": None}), val=val, mesh=None)
    assert full["stopped_epoch"] is None and len(full["epoch"]) == 200
    # a chunk holds at most `patience` epochs, so the stop overshoots by less than a chunk
    _, chunked = train_mod.fit(module, x, y, TrainConfig(**{**cfg.__dict__, "chunk_epochs": 50}), val=val,
                               mesh=None)
    last = _last_improvement(chunked["val_nll"], chunked["warmup_epochs"])
    assert last + cfg.patience <= chunked["stopped_epoch"] < last + 2 * cfg.patience


def test_early_stopping_resumes_from_checkpoint(tmp_path, monkeypatch):
    from jaxinv import checkpoint

    x, y, val = _stall_data()
    module = models.CompositionMLP(1, (16,))
    cfg = TrainConfig(n_members=2, epochs=200, batch_size=16, chunk_epochs=1, warmup=0.05, patience=4, lr=1e-2)
    p_ref, ref = train_mod.fit(module, x, y, cfg, val=val, mesh=None)
    kill_at = ref["stopped_epoch"] - 2  # killed after the last improvement, while counting
    assert kill_at > _last_improvement(ref["val_nll"], ref["warmup_epochs"])
    save = checkpoint.Checkpointer.save

    def killing_save(self, step, tree):
        save(self, step, tree)
        if step == kill_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.Checkpointer, "save", killing_save)
    with pytest.raises(KeyboardInterrupt):
        train_mod.fit(module, x, y, cfg, val=val, mesh=None, checkpoint=str(tmp_path / "ck"))
    monkeypatch.undo()
    p, hist = train_mod.fit(module, x, y, cfg, val=val, mesh=None, checkpoint=str(tmp_path / "ck"))
    assert hist["epoch"][0] == kill_at + 1 and hist["stopped_epoch"] == ref["stopped_epoch"]
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(p_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
