"""Heads on SevenNet-0 fine-tuned end to end (issue 25 item 1): the pooled features match
the frozen feature kind, predictions are invariant, gradients reach the potential only
through its step scale, and a few training steps run, save and load."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp


@pytest.fixture(scope="module")
def small(perov):
    from jaxinv.crystal import Crystal

    sub = perov.subset("train")
    idx = np.arange(24)
    return Crystal.from_structures(sub.structures(idx)), np.asarray(sub.labels["heat_ref"])[idx]


def test_pooled_features_equal_the_frozen_kind_and_are_invariant(perov, small):
    from pymatgen.core import Lattice, Structure

    from jaxinv.crystal import Crystal
    from jaxinv.screening.features import potential_features
    from jaxinv.screening.finetune import PotentialHead, backbone, feature_statistics, head_inputs

    crystal, _ = small
    mean, std = feature_statistics(potential_features(crystal, backbone("sevennet0")))
    frozen = potential_features(crystal[np.arange(4)], backbone("sevennet0"))
    head = PotentialHead(1, tuple(mean), tuple(std), hidden=(8,))
    x = head_inputs(crystal[np.arange(4)])
    params = jax.jit(head.init)(jax.random.PRNGKey(0), x)
    # with the potential untouched (delta = 0) the head sees the frozen features, standardized
    apply = jax.jit(lambda p, x: head.apply(p, x, capture_intermediates=lambda m, name: name == "__call__",
                                            mutable=["intermediates"]))
    (batch, _), state = apply(params, x)
    first_dense = state["intermediates"]["Dense_0"]["__call__"][0]
    w = params["params"]["Dense_0"]
    expect = np.clip((frozen - np.asarray(mean)) / np.asarray(std), -8, 8) @ np.asarray(w["kernel"]) + np.asarray(w["bias"])
    np.testing.assert_allclose(np.asarray(first_dense), expect, rtol=1e-3, atol=1e-3)

    s = perov.subset("train").structures([2])[0]
    order = [4, 2, 0, 3, 1]
    shuffled = Structure(s.lattice, [s.species[i] for i in order], s.frac_coords[order])
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    rotated = Structure(Lattice(s.lattice.matrix @ rot.T), s.species, s.frac_coords)
    (alone, _), _ = apply(params, head_inputs(Crystal.from_structures([shuffled, rotated], n_max=8)))
    np.testing.assert_allclose(np.asarray(alone), np.repeat(np.asarray(batch)[2:3], 2, 0), rtol=1e-4, atol=1e-4)


# slow (31 s): the training test below already shows the potential moving
@pytest.mark.slow
def test_gradient_reaches_the_potential_through_its_step_scale(small):
    from jaxinv.screening.features import potential_features
    from jaxinv.screening.finetune import PotentialHead, backbone, feature_statistics, head_inputs

    crystal, _ = small
    mean, std = feature_statistics(potential_features(crystal[np.arange(4)], backbone("sevennet0")))
    x = head_inputs(crystal[np.arange(4)])

    def grad_norms(backbone_lr):
        head = PotentialHead(1, tuple(mean), tuple(std), hidden=(8,), backbone_lr=backbone_lr)
        params = jax.jit(head.init)(jax.random.PRNGKey(0), x)
        g = jax.jit(jax.grad(lambda p: head.apply(p, x)[0].sum()))(params)["params"]
        norm = lambda t: float(jnp.sqrt(sum(jnp.sum(a ** 2) for a in jax.tree_util.tree_leaves(t))))
        return norm(g["backbone_delta"]), norm({k: v for k, v in g.items() if k != "backbone_delta"})

    frozen, head_g = grad_norms(0.0)
    assert frozen == 0.0 and head_g > 0
    tuned, head_g2 = grad_norms(0.05)
    assert tuned > 0 and head_g2 == pytest.approx(head_g, rel=1e-5)  # at delta = 0 the head sees the same features


def test_finetune_property_model_trains_saves_and_loads(small, tmp_path):
    """First the head alone on the frozen features, then end to end: the second stage
    starts exactly at the first stage's ensemble (same layers, same standardization),
    the potential moves, and a saved model predicts the same after loading."""
    from jaxinv.screening.features import potential_features
    from jaxinv.screening.finetune import backbone
    from jaxinv.screening.models import ensemble_apply
    from jaxinv.screening.train import PropertyModel, TrainConfig

    crystal, y = small
    cfg = TrainConfig(n_members=2, epochs=2, batch_size=8, chunk_epochs=2, head_epochs=4)
    m = PropertyModel("finetune", ("heat_ref",), {"hidden": [16]}, features="sevennet0")
    raw = m.raw_inputs(crystal)
    train, val = _rows(raw, slice(0, 16)), (_rows(raw, slice(16, 24)), y[16:, None])
    start, tuned_cfg = m._frozen_head(train, y[:16, None], cfg, val)
    assert tuned_cfg.warmup == 0.0 and tuned_cfg.epochs == 2
    frozen = PropertyModel("composition", ("heat_ref",), {"hidden": [16]})
    feats = potential_features(crystal, backbone("sevennet0"))
    frozen.fit(feats[:16], y[:16, None], TrainConfig(n_members=2, epochs=4, batch_size=8, chunk_epochs=50),
               val=(feats[16:], y[16:, None]))
    expect = frozen.predict_inputs(frozen.scale_inputs(feats))[0]
    m.y_mean, m.y_std, m.sigma_scale = frozen.y_mean, frozen.y_std, np.ones(1)
    warm = jax.jit(lambda p, x: ensemble_apply(m.module, p, x))(start, raw)[0]  # (M, B, 1) standardized means
    np.testing.assert_allclose(np.asarray(warm).mean(0) * frozen.y_std + frozen.y_mean, expect, rtol=1e-3, atol=2e-3)

    hist = m.fit(train, y[:16, None], cfg, val=val)
    assert np.all(np.isfinite(hist["train_loss"])) and len(hist["epoch"]) == 2
    delta = m.params["params"]["backbone_delta"]
    moved = max(float(jnp.abs(a).max()) for a in jax.tree_util.tree_leaves(delta))
    assert moved > 0  # the potential itself was trained
    mu, sd = m.predict(crystal)
    assert mu.shape == sd.shape == (24, 1) and np.all(sd > 0) and np.all(np.isfinite(mu))
    m.save(tmp_path / "m")
    again = PropertyModel.load(tmp_path / "m")
    np.testing.assert_allclose(again.predict(crystal)[0], mu, rtol=1e-5, atol=1e-5)


def _rows(tree, sl):
    return jax.tree_util.tree_map(lambda a: a[sl], tree)
