"""Generative models: shapes, training, conditioning, latent optimization, resume."""
import itertools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jaxinv.generative.latent import Objective, optimize_latent, parse_objectives
from jaxinv.generative.model import GenerativeModel, ModelConfig, load_model
from jaxinv.generative.steps import hungarian, init_state, make_train_step
from jaxinv.generative.train import Batcher, TrainConfig, train

# tiny networks: these tests check behaviour, not quality, and compile time dominates
TINY = dict(latent=8, hidden=32, enc_hidden=16, critic_hidden=16, width=8, grid=8, kl_warmup=1, encoder="mlp")


@pytest.fixture(scope="module")
def perov_small(perov):
    tr = perov.subset("train")
    return tr.subset(np.arange(96))


def tiny(kind, ds, **kw):
    return GenerativeModel.from_dataset(ModelConfig(kind=kind, **{**TINY, **kw}), ds)


def _mean_loss(step_fn, state, batch, key, n, name="loss"):
    ms = []
    for k in range(n):
        state, m = step_fn(state, batch, jax.random.fold_in(key, k))
        ms.append(float(m[name]))
    return state, ms


def test_hungarian_matches_brute_force(rng):
    cost = rng.normal(size=(6, 4, 4))
    perm = np.asarray(jax.jit(hungarian)(jnp.asarray(cost)))
    for b in range(6):
        best = min(itertools.permutations(range(4)), key=lambda p: sum(cost[b, p[j], j] for j in range(4)))
        np.testing.assert_array_equal(perm[b], best)


@pytest.mark.parametrize("kind", ["coord_vae", "voxel_vae", "coord_gan"])
def test_shapes_and_generation(perov_small, kind):
    model = tiny(kind, perov_small, encoder="set", composition_head=True)
    params = model.init(jax.random.PRNGKey(0))
    z = jnp.zeros((3, model.latent_dim))
    out = model._decode_fn(params, z, jax.random.PRNGKey(1), None)
    if kind == "voxel_vae":
        assert out["image"].shape == (3, 8, 8, 8, 3)
        assert out["composition_logits"].shape == (3, 5, model.vocab.n_classes)  # element multiset
    else:
        key = "probs" if kind == "coord_gan" else "logits"
        assert out[key].shape == (3, 5, model.vocab.n_classes)
        assert out["frac_vec"].shape == (3, 5, 3, 2)
    assert out["lattice"].shape == (3, 6)
    c = model.generate(params, jax.random.PRNGKey(2), 3)  # the batch shape compiled above
    assert c.batch_size == 3 and c.lattice.shape == (3, 3, 3) and np.all(np.isfinite(c.lattice))
    assert c.n_max <= model.n_slots
    if model.is_vae:
        mu, logvar = model.encode(params, perov_small.crystal(np.arange(5), bucket=False))
        assert mu.shape == logvar.shape == (5, model.latent_dim)
        assert model.predict(params, mu).shape == (5, 2)


@pytest.mark.parametrize("kind", ["coord_vae", "voxel_vae"])
def test_vae_loss_decreases(perov_small, kind):
    model = tiny(kind, perov_small, lr=3e-3, beta=1e-3, composition_head=True)
    arrays = model.arrays(perov_small)
    batch = jax.tree_util.tree_map(jnp.asarray, Batcher(arrays, 32, 0)(0))
    step = make_train_step(model)
    state = init_state(model, jax.random.PRNGKey(0))
    state, first = _mean_loss(step, state, batch, jax.random.PRNGKey(1), 5)
    for _ in range(3):
        state, last = _mean_loss(step, state, batch, jax.random.PRNGKey(2), 5)
    assert np.mean(last) < 0.7 * np.mean(first)


def test_gan_critic_learns_to_separate(perov_small):
    model = tiny("coord_gan", perov_small, n_critic=3, lr=0.0)  # generator frozen
    arrays = model.arrays(perov_small)
    batcher = Batcher(arrays, 32, 0, groups=3)
    step = make_train_step(model)
    state = init_state(model, jax.random.PRNGKey(0))
    w = []
    for k in range(15):
        state, m = step(state, jax.tree_util.tree_map(jnp.asarray, batcher(k)), jax.random.PRNGKey(k))
        w.append(float(m["wasserstein"]))
        assert np.isfinite(float(m["gp"])) and np.isfinite(float(m["gen_loss"]))
    assert np.mean(w[-3:]) > np.mean(w[:3]) and np.mean(w[-3:]) > 0


@pytest.mark.parametrize("kind,condition", [("coord_vae", "property"), ("coord_gan", "property"),
                                            ("coord_gan", "composition")])
def test_conditional_sampling_shapes(perov_small, kind, condition):
    model = tiny(kind, perov_small, condition=condition)
    params = model.init(jax.random.PRNGKey(0))
    if condition == "property":
        assert model.cond_dim == 2
        c = model.generate(params, jax.random.PRNGKey(1), 3, targets={"heat_ref": 0.5, "dir_gap": 2.0})
        assert c.batch_size == 3
        cond = model.condition(3, np.array([[0.5, 2.0]] * 3))
        assert cond.shape == (3, 2)
        with pytest.raises(ValueError, match="shape"):
            model.condition(3, np.zeros((3, 3)))
        with pytest.raises(ValueError, match="missing"):
            model.condition(3, {"heat_ref": 0.5})
    else:
        assert model.cond_dim == len(model.vocab)
        cond = model.condition(2, "SrTiO3")
        assert cond.shape == (2, len(model.vocab)) and np.allclose(cond.sum(1), 1)
        model.generate(params, jax.random.PRNGKey(1), 2, targets="SrTiO3")
    pooled = model.condition(4)  # no target: conditions of training crystals
    assert pooled.shape == (4, model.cond_dim)
    # the condition changes what the network emits
    z = jnp.zeros((2, model.latent_dim))
    a = model._decode_fn(params, z, jax.random.PRNGKey(0), jnp.asarray(pooled[:2]))
    b = model._decode_fn(params, z, jax.random.PRNGKey(0), jnp.asarray(pooled[:2] + 1.0))
    assert not np.allclose(np.asarray(a["lattice"]), np.asarray(b["lattice"]))


def test_unconditional_model_rejects_targets(perov_small):
    model = tiny("coord_vae", perov_small)
    with pytest.raises(ValueError, match="unconditional"):
        model.condition(2, {"heat_ref": 1.0})


def test_parse_objectives():
    obj = parse_objectives({"heat_ref": {"max": 1.0}, "dir_gap": [1.5, 3.0], "x": "min", "y": {"target": 2}})
    assert obj[0] == Objective("heat_ref", "window", None, 1.0)
    assert obj[1] == Objective("dir_gap", "window", 1.5, 3.0)
    assert obj[2].mode == "min" and obj[3].mode == "target"
    assert obj[1].satisfied([1.4, 2.0, 3.1]).tolist() == [False, True, False]
    with pytest.raises(ValueError):
        parse_objectives({"a": "lowest"})


def test_latent_optimization_moves_prediction_toward_target(perov_small):
    model = tiny("coord_vae", perov_small, lr=3e-3)
    state, _ = train(model, model.arrays(perov_small), TrainConfig(steps=40, batch_size=32, eval_every=0,
                                                                   progress=False))
    z0 = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (16, model.latent_dim)))
    before = model.predict(state.params, z0)
    target = float(np.max(before[:, 1])) + 1.0  # above every starting prediction of dir_gap
    objectives = parse_objectives({"heat_ref": "min", "dir_gap": {"low": target, "high": None}})
    res = optimize_latent(model, state.params, z0, objectives, steps=100, learning_rate=0.05, prior_weight=0.01)
    assert res.predictions.shape == (16, 2)
    assert np.mean(res.predictions[:, 0]) < np.mean(before[:, 0])
    assert np.mean(res.predictions[:, 1]) > np.mean(before[:, 1])
    assert res.loss[-1] < res.loss[0]


@pytest.mark.parametrize("kind", ["coord_vae", "coord_gan"])
def test_resume_gives_identical_next_steps(perov_small, tmp_path, kind):
    model = tiny(kind, perov_small, n_critic=2)
    arrays = model.arrays(perov_small)
    cfg = lambda steps: TrainConfig(steps=steps, batch_size=16, eval_every=0, progress=False)
    full, _ = train(model, arrays, cfg(6))
    train(model, arrays, cfg(3), checkpoint_dir=tmp_path / "ck")
    resumed, _ = train(model, arrays, cfg(6), checkpoint_dir=tmp_path / "ck")
    assert int(resumed.step) == 6
    for a, b in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the checkpoint folder is a loadable model
    loaded, params = load_model(tmp_path / "ck")
    assert loaded.to_dict() == model.to_dict()
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a different run refuses to resume from it
    other = tiny(kind, perov_small, n_critic=2, hidden=48)
    with pytest.raises(ValueError, match="different run"):
        train(other, arrays, cfg(6), checkpoint_dir=tmp_path / "ck")  # same data, other network


def test_known_structure_lookup(perov):
    from jaxinv.generative.design import known_structure_labels

    test = perov.subset("test")
    structures = test.structures([0, 1])
    structures[1] = structures[1].copy()
    structures[1].replace(0, "U")  # not in perov_5
    labels = known_structure_labels(structures, test, ["heat_ref", "dir_gap"])
    np.testing.assert_allclose(labels[0], [test.labels["heat_ref"][0], test.labels["dir_gap"][0]])
    assert np.isnan(labels[1]).all()


def test_relax_samples_keeps_failures_as_decoded(perov):
    from jaxinv.generative.evaluation import relax_samples
    from jaxinv.potentials import lennard_jones

    good = perov.subset("test").structures()[0]
    # same size, so one compiled batch shape; atoms 80 Å apart have no neighbor: failed_isolated
    # (two atoms 0.1 Å apart no longer fail: a real repulsion pushes them apart, see test_relax_trust)
    broken = good.copy()
    broken.scale_lattice(good.volume * 20.0**3)
    empty = good.copy()
    empty.remove_sites(range(len(empty)))
    pot = lennard_jones(sigma=2.5, epsilon=0.01, species=None, cutoff=6.0)
    out, info = relax_samples([good, broken, empty], pot, max_steps=50, progress=False)
    assert info["relaxed"] == 2 and sum(info["statuses"].values()) == 2
    assert any(s.startswith("failed") for s in info["statuses"])
    assert out[1] == broken and len(out[2]) == 0  # the failure keeps its decoded geometry
    assert out[0].composition == good.composition
    assert np.abs(out[0].frac_coords - good.frac_coords).max() > 1e-4 or out[0].lattice != good.lattice


def test_crystal_samples_relax_and_symmetrize_as_structures_do(perov):
    from jaxinv.crystal import Crystal
    from jaxinv.generative.evaluation import relax_crystals, relax_samples, symmetrize_crystals, symmetrize_samples
    from jaxinv.potentials import lennard_jones

    structures = perov.subset("test").structures([0, 1, 2])
    crystal = Crystal.from_structures(structures, n_max=8)
    pot = lennard_jones(sigma=2.5, epsilon=0.01, species=None, cutoff=6.0)
    for as_crystal, as_list in ((relax_crystals(crystal, pot, max_steps=20, progress=False),
                                 relax_samples(structures, pot, max_steps=20, progress=False)),
                                (symmetrize_crystals(crystal), symmetrize_samples(structures))):
        (out, info), (listed, listed_info) = as_crystal, as_list
        assert isinstance(out, Crystal) and out.n_max == 8 and not out.labels
        info.pop("seconds"), listed_info.pop("seconds")
        assert info == listed_info
        for a, b in zip(out.to_structures(), listed):
            np.testing.assert_array_equal(a.lattice.matrix, b.lattice.matrix)
            np.testing.assert_array_equal(a.frac_coords, b.frac_coords)


def test_symmetrize_samples_snaps_small_errors_only(perov):
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from jaxinv.generative.evaluation import symmetrize_samples

    ideal = next(s for s in perov.subset("test").structures()
                 if SpacegroupAnalyzer(s, symprec=1e-3).get_space_group_number() == 221)
    rng = np.random.default_rng(0)
    noisy = ideal.copy()
    noisy.apply_strain([0.005, -0.0025, 0.0])
    for i, d in enumerate(rng.normal(0, 0.01, (len(noisy), 3))):
        noisy.translate_sites([i], d, frac_coords=False)
    far = ideal.copy()
    for i, d in enumerate(rng.normal(0, 0.4, (len(far), 3))):
        far.translate_sites([i], d, frac_coords=False)
    empty = ideal.copy()
    empty.remove_sites(range(len(empty)))
    assert SpacegroupAnalyzer(noisy, symprec=1e-3).get_space_group_number() == 1
    flat = ideal.copy()  # a near-zero-volume cell like the one that crashed spglib: kept, not passed on
    flat.lattice = type(ideal.lattice)(ideal.lattice.matrix * [[1, 1, 1], [1, 1, 1], [1e-3, 1e-3, 1e-3]])
    out, info = symmetrize_samples([noisy, far, empty, flat], symprec=0.1)
    assert out[3] is flat and info["invalid_kept"] == 2
    assert SpacegroupAnalyzer(out[0], symprec=1e-4).get_space_group_number() == 221
    a, b, c = out[0].lattice.abc
    assert abs(a - b) < 1e-6 and abs(b - c) < 1e-6 and abs(a - np.cbrt(noisy.volume)) < 0.02
    assert StructureMatcher(stol=1e-3, ltol=0.01, angle_tol=0.1, scale=True).fit(out[0], ideal)
    assert SpacegroupAnalyzer(out[1], symprec=1e-3).get_space_group_number() < 10  # beyond symprec: not snapped
    assert out[1].composition == far.composition and len(out[2]) == 0
    assert info["symmetrized"] == 2 and info["kept"] == 2 and info["space_groups"].get(221) == 1
