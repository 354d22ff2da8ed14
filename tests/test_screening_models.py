"""Property models, features, uncertainty and acquisition: small known-answer checks."""
import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp


@pytest.fixture(scope="module")
def toy_fit(tmp_path_factory):
    """One small ensemble, trained once with checkpoints after each of its two chunks;
    the σ, save/load, resume and active-learning tests share it and, with it, one
    compilation of the training program (the chunk function is cached on its shapes)."""
    from types import SimpleNamespace

    from jaxinv.screening.train import PropertyModel, TrainConfig

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(200, 3)).astype(np.float32)
    y = np.sin(2 * x[:, :1]) + 0.05 * rng.normal(size=(200, 1))
    cfg = TrainConfig(n_members=4, epochs=60, batch_size=32, chunk_epochs=30)
    ckpt = tmp_path_factory.mktemp("toy") / "ck"
    m = PropertyModel("composition", ("y",), {"hidden": [32, 32]})
    hist = m.fit(x, y, cfg, checkpoint=str(ckpt))
    return SimpleNamespace(model=m, x=x, y=y, cfg=cfg, ckpt=ckpt, hist=hist)


def test_magpie_features_match_matminer(batio3):
    from matminer.featurizers.composition import ElementProperty
    from pymatgen.core import Composition

    from jaxinv.crystal import Crystal
    from jaxinv.screening.features import magpie_feature_names, magpie_features

    from pymatgen.core import Lattice, Structure
    other = Structure(Lattice.cubic(5.0), ["Na", "Cl", "Cl", "Cl"], [[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
    c = Crystal.from_structures([batio3, other], labels={}, n_max=6)
    ours = np.asarray(magpie_features(c.numbers, c.mask))
    ep = ElementProperty.from_preset("magpie")
    ref = np.array([ep.featurize(Composition(f)) for f in ("BaTiO3", "NaCl3")])
    assert ep.feature_labels() == magpie_feature_names()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-3)


def test_site_features_distinguish_a_b_swap(batio3):
    """BaTiO3 and its A/B-swapped twin share a composition but not site features."""
    from jaxinv.crystal import Crystal
    from jaxinv.graph import neighbor_graph
    from jaxinv.screening.features import coordination_numbers, magpie_features, site_features

    swapped = batio3.copy()
    swapped.replace(0, "Ti")
    swapped.replace(1, "Ba")
    c = Crystal.from_structures([batio3, swapped], labels={})
    g = neighbor_graph(c, 5.0)
    cn = np.asarray(coordination_numbers(c, g))
    np.testing.assert_array_equal(cn[0], [12, 6, 2, 2, 2])  # A 12-fold, B 6-fold, O linear
    comp = np.asarray(magpie_features(c.numbers, c.mask))
    np.testing.assert_allclose(comp[0], comp[1])
    site = np.asarray(site_features(c, g))
    assert np.abs(site[0] - site[1]).max() > 1.0


def test_ionic_flags_closed_shell():
    from jaxinv.screening.features import _assignment, _ionic_flags

    # BaTiO3: Ba2+ (noble gas) Ti4+ (d0) O2-: balanced and closed-shell
    assert _ionic_flags(((8, 3), (22, 1), (56, 1))) == (1.0, 1.0)
    # LaMnO3: balanced (La3+ Mn3+), but Mn3+ is d4 and no closed-shell assignment balances
    assert _ionic_flags(((8, 3), (25, 1), (57, 1))) == (1.0, 0.0)
    # 5d and 6p cations behind a full 4f shell: Cu+ (d10) Ta5+ (d0); Bi3+ (6s2 lone pair) Ti4+ N3- O2-;
    # Hg2+ (d10) Nb5+ N3- O2-. Magpie's NValence counts the 4f14 electrons; these must still pass.
    assert _ionic_flags(((8, 3), (29, 1), (73, 1))) == (1.0, 1.0)
    assert _ionic_flags(((7, 1), (8, 2), (22, 1), (83, 1))) == (1.0, 1.0)
    assert _ionic_flags(((7, 1), (8, 2), (41, 1), (80, 1))) == (1.0, 1.0)
    # the chosen assignment is the closed-shell one: Cu+ Ta5+, not Cu3+ Ta3+ (also balanced)
    assert _assignment(((8, 3), (29, 1), (73, 1)))[2] == (-2, 1, 5)
    # no balancing assignment at all (Na and Cl3)
    assert _ionic_flags(((11, 1), (17, 3))) == (0.0, 0.0)


def test_oxidation_features_by_hand(batio3):
    """Ideal cubic BaTiO3 (a = 4 Å): Goldschmidt's t and the octahedral factor from
    pymatgen's radii; LaMnO3 in the same cell has an open-shell cation."""
    from pymatgen.core import Species

    from jaxinv.crystal import Crystal
    from jaxinv.graph import neighbor_graph
    from jaxinv.screening.features import OXIDATION_FEATURES, featurize, oxidation_features

    lamno3 = batio3.copy()
    lamno3.replace(0, "La")
    lamno3.replace(1, "Mn")
    c = Crystal.from_structures([batio3, lamno3], labels={})
    f = oxidation_features(c, neighbor_graph(c, 5.0))
    col = {k: j for j, k in enumerate(OXIDATION_FEATURES)}
    r_ba, r_ti, r_o = (float(Species(*a).ionic_radius) for a in (("Ba", 2), ("Ti", 4), ("O", -2)))
    t = (r_ba + r_o) / (np.sqrt(2) * (r_ti + r_o))
    assert f[0, col["log_tolerance"]] == pytest.approx(np.log(t), abs=1e-5)
    assert f[0, col["r_ratio_low_cn"]] == pytest.approx(r_ti / r_o, rel=1e-5)  # octahedral factor
    # (r + r_O) / d: Ti-O at a/2 is slightly compressed, Ba-O at a/sqrt2 slightly stretched
    assert f[0, col["bond_strain_max"]] == pytest.approx((r_ti + r_o) / 2.0, rel=1e-5)
    assert f[0, col["bond_strain_min"]] == pytest.approx((r_ba + r_o) / (2 * np.sqrt(2)), rel=1e-5)
    assert f[0, col["frac_d0"]] == 1.0 and f[0, col["frac_open"]] == 0.0 and f[0, col["closed_shell"]] == 1.0
    assert f[1, col["frac_open"]] == 0.5 and f[1, col["closed_shell"]] == 0.0  # Mn3+ d4, La3+ closed
    assert f[0, col["ie_cation_max"]] == pytest.approx(43.27, abs=0.05)  # Ti's 4th ionization energy
    full = featurize(c, "magpie_site_oxi")
    assert full.shape == (2, 132 + 24 + len(OXIDATION_FEATURES))
    np.testing.assert_allclose(full[:, -len(OXIDATION_FEATURES):], f, rtol=1e-6)


def test_calibration_on_synthetic_gaussian_errors():
    from jaxinv.screening.uncertainty import calibration, expected_coverage, fit_sigma_scale

    rng = np.random.default_rng(0)
    n = 20000
    mu = rng.normal(size=n)
    sigma = rng.uniform(0.5, 2.0, size=n)
    y = mu + sigma * rng.normal(size=n)
    c = calibration(y, mu, sigma)
    assert abs(c["within_1sigma"] - expected_coverage(1)) < 0.01
    assert abs(c["within_2sigma"] - expected_coverage(2)) < 0.01
    assert abs(expected_coverage(1) - 0.6827) < 1e-4
    over = calibration(y, mu, 0.5 * sigma)  # over-confident: too few errors inside
    assert over["within_1sigma"] < 0.45
    assert abs(fit_sigma_scale(y, mu, 0.5 * sigma) - 2.0) < 0.05
    # exact small case: errors 0.5, 1.5, 2.5 with sigma 1 -> 1/3 inside 1 sigma, 2/3 inside 2 sigma
    small = calibration([0.5, 1.5, 2.5], [0, 0, 0], [1, 1, 1])
    assert small["within_1sigma"] == pytest.approx(1 / 3)
    assert small["within_2sigma"] == pytest.approx(2 / 3)
    assert small["mae"] == pytest.approx(1.5)


def test_ensemble_sigma_positive_and_grows_off_data(toy_fit):
    m = toy_fit.model
    assert len(toy_fit.hist["train_loss"]) == 60
    xt = np.array([[0.2, 0.0, 0.0], [6.0, 6.0, 6.0]], np.float32)
    mean, std, members = m.predict_inputs(m.scale_inputs(xt), members=True)
    assert np.all(std > 0)
    assert members.shape == (4, 2, 1)
    assert np.ptp(members[:, 0, 0]) > 0  # members differ
    assert abs(mean[0, 0] - np.sin(0.4)) < 0.25
    assert std[1, 0] > std[0, 0]  # far outside the training data: more uncertain


def test_mixture_moments_by_hand():
    from jaxinv.screening.models import mixture_moments

    mean = jnp.array([[[0.0]], [[2.0]]])  # two members
    var = jnp.array([[[1.0]], [[3.0]]])
    mu, sd = mixture_moments(mean, var)
    assert float(mu[0, 0]) == pytest.approx(1.0)
    assert float(sd[0, 0]) == pytest.approx(math.sqrt(2.0 + 1.0))  # mean var 2 + var of means 1


def test_property_model_save_load_roundtrip(toy_fit, tmp_path):
    import dataclasses

    from jaxinv.screening.train import PropertyModel

    m = dataclasses.replace(toy_fit.model, sigma_scale=np.array([1.5]))
    m.save(tmp_path / "model")
    m2 = PropertyModel.load(tmp_path / "model")
    assert m2.targets == ("y",) and m2.module_kwargs == {"hidden": [32, 32]}
    a = m.predict_inputs(m.scale_inputs(toy_fit.x))
    b = m2.predict_inputs(m2.scale_inputs(toy_fit.x))
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    base = toy_fit.model.predict_inputs(toy_fit.model.scale_inputs(toy_fit.x))
    np.testing.assert_allclose(b[1], 1.5 * base[1], rtol=1e-6)  # the σ scale is saved and applied


def test_training_resumes_from_checkpoint(toy_fit):
    """Kill after the first chunk (drop the last checkpoint): the rerun resumes and
    ends with exactly the parameters of the uninterrupted run."""
    import shutil

    from jaxinv.screening.train import PropertyModel

    steps = sorted(int(p.name) for p in (toy_fit.ckpt / "orbax").iterdir() if p.name.isdigit())
    assert steps == [30, 60]
    shutil.rmtree(toy_fit.ckpt / "orbax" / "60")  # as if killed before the second save
    m = PropertyModel("composition", ("y",), {"hidden": [32, 32]})
    hist = m.fit(toy_fit.x, toy_fit.y, toy_fit.cfg, checkpoint=str(toy_fit.ckpt))
    assert len(hist["train_loss"]) == 30  # only the second chunk ran again
    for a, b in zip(jax.tree_util.tree_leaves(toy_fit.model.params), jax.tree_util.tree_leaves(m.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    # other data in the same directory are refused rather than mixed in
    with pytest.raises(ValueError, match="different run"):
        PropertyModel("composition", ("y",), {"hidden": [32, 32]}).fit(toy_fit.x, 2 * toy_fit.y, toy_fit.cfg,
                                                                       checkpoint=str(toy_fit.ckpt))


def test_a_save_killed_before_its_parameters_leaves_no_model(toy_fit, tmp_path, monkeypatch):
    """model.json marks a complete model (a resumed screen reuses a folder that has one), so it is
    written last: a save that dies while writing the parameters leaves none."""
    from jaxinv import checkpoint
    from jaxinv.screening.train import PropertyModel

    def killed(self, step, tree):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(checkpoint.Checkpointer, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        toy_fit.model.save(tmp_path / "model")
    assert not (tmp_path / "model" / "model.json").exists()
    monkeypatch.undo()
    toy_fit.model.save(tmp_path / "model")
    loaded = PropertyModel.load(tmp_path / "model")
    for a, b in zip(jax.tree_util.tree_leaves(toy_fit.model.params), jax.tree_util.tree_leaves(loaded.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cgcnn_ensemble_runs_on_graph(batio3):
    from jaxinv.crystal import Crystal
    from jaxinv.screening.train import PropertyModel, TrainConfig

    structs = []
    for a in (3.9, 4.0, 4.1, 4.2):
        s = batio3.copy()
        s.scale_lattice(a**3)
        structs.append(s)
    c = Crystal.from_structures(structs, labels={})
    m = PropertyModel("cgcnn", ("e",), {"features": 8, "n_conv": 1, "n_rbf": 8, "cutoff": 4.5}, cutoff=4.5)
    raw = m.raw_inputs(c)
    y = np.array([[0.0], [0.1], [0.2], [0.3]])
    m.fit(raw, y, TrainConfig(n_members=2, epochs=1, batch_size=4, chunk_epochs=1))
    mean, std = m.predict(c)
    assert mean.shape == (4, 1) and np.all(std > 0) and np.all(np.isfinite(mean))


def test_acquisitions_pick_expected_items():
    from jaxinv.screening.acquisition import expected_improvement, probability_of_improvement, select_top, ucb, \
        window_probability

    mean = jnp.array([1.0, 2.0, 0.0, 1.9])
    std = jnp.array([2.0, 0.1, 0.0, 0.1])
    # UCB with beta=1: 3.0, 2.1, 0.0, 2.0 -> item 0 first; with beta=0 the best mean (item 1)
    assert select_top(ucb(mean, std, 1.0), np.zeros(4, bool), 1).tolist() == [0]
    assert select_top(ucb(mean, std, 0.0), np.zeros(4, bool), 2).tolist() == [1, 3]
    # a labelled item is never picked again
    assert select_top(ucb(mean, std, 1.0), np.array([True, False, False, False]), 1).tolist() == [1]
    # EI by hand: mean = best, std = 1 -> phi(0); zero std below best -> 0
    ei = expected_improvement(jnp.array([1.5, 1.0]), jnp.array([1.0, 0.0]), best=1.5)
    assert float(ei[0]) == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-5)
    assert float(ei[1]) == pytest.approx(0.0, abs=1e-6)
    # EI prefers the uncertain item at equal mean, PI the certain one above the incumbent
    ei2 = expected_improvement(jnp.array([1.6, 1.6]), jnp.array([0.01, 1.0]), best=1.5)
    pi2 = probability_of_improvement(jnp.array([1.6, 1.6]), jnp.array([0.01, 1.0]), best=1.5)
    assert float(ei2[1]) > float(ei2[0]) and float(pi2[0]) > float(pi2[1])
    # window probability: N(0, 1) inside [-1, 1] is 68.27%; two targets multiply
    p = window_probability(jnp.array([[0.0, 0.0]]), jnp.array([[1.0, 1.0]]), jnp.array([-1.0, -np.inf]),
                           jnp.array([1.0, 0.0]))
    assert float(p[0]) == pytest.approx(0.6827 * 0.5, rel=1e-3)


def test_active_learning_beats_random_on_a_toy_pool(toy_fit):
    """A pool where hits are y in [0.8, 1] of a smooth function: p_window finds more than random.

    Training settings and input width match ``toy_fit`` (capacity 256, 3 columns, the
    third irrelevant), so the rounds reuse its compiled training program."""
    from jaxinv.screening.active import ActiveConfig, active_learning
    from jaxinv.screening.train import TrainConfig

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(400, 3)).astype(np.float32)
    y = (np.exp(-4 * ((x[:, 0] - 0.5) ** 2 + (x[:, 1] + 0.3) ** 2)))[:, None]
    hits = (y[:, 0] >= 0.8)
    found = {}
    for acq in ("p_window", "random"):
        cfg = ActiveConfig(targets=("y",), windows={"y": (0.8, 1.0)}, acquisition=acq, n_initial=20, batch_size=20,
                           budget=80, seed=0, train=TrainConfig(**{**toy_fit.cfg.__dict__, "min_capacity": 256}),
                           model_kwargs={"hidden": [32, 32]})
        hist = active_learning(x, lambda idx: y[idx], cfg, hits=hits, initial=np.arange(20))
        assert len(hist["order"]) == 80 and len(set(hist["order"].tolist())) == 80
        assert [r["labelled"] for r in hist["rounds"]] == [20, 40, 60, 80]
        found[acq] = hist["rounds"][-1]["hits_found"]
    assert found["p_window"] > found["random"]
    # σ recalibrated on earlier batches (from the 2nd model on: 20 held-out points) and diverse batches
    cfg = ActiveConfig(targets=("y",), windows={"y": (0.8, 1.0)}, acquisition="p_window", n_initial=20,
                       batch_size=20, budget=80, seed=0, train=TrainConfig(**{**toy_fit.cfg.__dict__,
                                                                              "min_capacity": 256}),
                       model_kwargs={"hidden": [32, 32]}, calibrate_sigma=True, calibrate_min=20, diversity=0.5)
    hist = active_learning(x, lambda idx: y[idx], cfg, hits=hits, initial=np.arange(20))
    assert len(hist["sigma_scales"]) == 2 and all(0 < v[0] < np.inf for v in hist["sigma_scales"])
    assert len(set(hist["order"].tolist())) == 80
    assert hist["rounds"][-1]["hits_found"] > found["random"]


def test_diverse_batch_skips_near_copies():
    from jaxinv.screening.acquisition import select_diverse, select_top

    x = np.array([[0.0, 0.0], [0.0, 0.01], [5.0, 5.0], [10.0, 0.0], [0.0, 10.0]])
    scores = np.array([1.0, 0.99, 0.5, 0.1, 0.05])
    assert select_top(scores, np.zeros(5, bool), 2).tolist() == [0, 1]
    assert select_diverse(scores, np.zeros(5, bool), 2, x).tolist() == [0, 2]  # row 1 is a copy of row 0
    assert select_diverse(scores, np.array([True, False, False, False, False]), 2, x).tolist() == [1, 2]
    # shifted scores (negative UCB values) behave the same
    assert select_diverse(scores - 3.0, np.zeros(5, bool), 2, x).tolist() == [0, 2]


def test_castelli_hits_units_and_recall_curve():
    from jaxinv.screening.castelli import castelli_hits, castelli_windows, recall_curve, replay

    labels = {"heat_ref": np.array([1.0, 1.01, 0.2, -0.5, 0.9]), "dir_gap": np.array([1.5, 2.0, 3.0, 3.01, 1.0]),
              "ind_gap": np.array([1.5, 2.0, 1.0, 2.0, 2.0])}
    # 0.2 eV/atom on a 5-atom cell is 1.0 eV per cell; the gap window is closed on both ends
    assert castelli_hits(labels).tolist() == [True, False, True, False, False]
    assert castelli_hits(labels, gap="ind_gap").tolist() == [True, False, False, True, True]
    assert castelli_windows() == {"heat_ref": (None, 1.0), "dir_gap": (1.5, 3.0)}
    hits = np.array([False, True, False, True])
    # labelled in the order 3, 0, 1, 2: recall 1/2 after one call, 1 after three
    np.testing.assert_allclose(recall_curve(np.array([3, 0, 1, 2]), hits, 4, np.array([0, 0.25, 0.5, 0.75, 1.0])),
                               [0, 0.5, 0.5, 1.0, 1.0])
    # replay plumbing with the random baseline (no training): curves per seed, budget respected
    rng = np.random.default_rng(0)
    pool = {"heat_ref": rng.uniform(-1, 3, 500), "dir_gap": rng.uniform(0, 4, 500)}
    res = replay(rng.normal(size=(500, 4)).astype(np.float32), pool, seeds=[0, 1], strategies=("random",),
                 initial_fraction=0.02, batch_fraction=0.02, budget_fraction=0.1, progress=False)
    curves = np.asarray(res["curves"]["random"])
    assert res["n_hits"] == int(castelli_hits(pool).sum()) and curves.shape == (2, 6)
    assert res["config"]["budget"] == 50 and res["config"]["initial"] == 10
    assert np.all(np.diff(curves, axis=1) >= 0) and curves[:, -1].max() <= 1.0


def test_sevennet0_features_are_invariant_and_carry_the_potentials_energy(perov):
    """SevenNet-0's pooled per-atom features (feature kind 'sevennet0'): the energy column's
    mean times the atom count is the potential's own energy; the features do not change
    with atom order, a rigid rotation, extra padding or the batch they are computed in."""
    from pymatgen.core import Lattice, Structure

    from jaxinv.crystal import Crystal
    from jaxinv.potentials import load_potential
    from jaxinv.screening.features import featurize, potential_features

    structures = perov.structures(np.arange(5))
    x = featurize(Crystal.from_structures(structures), "sevennet0")
    f = x.shape[1] // 2
    assert x.shape == (5, 2 * 1089) and np.all(np.isfinite(x))
    pot = load_potential("sevennet0")
    energy = np.asarray(pot(Crystal.from_structures(structures)).energy)
    np.testing.assert_allclose(x[:, f - 1] * 5, energy, rtol=1e-5, atol=1e-4)  # the energy column (mean)
    # a loaded potential object gives the same features as its registry name
    np.testing.assert_allclose(potential_features(Crystal.from_structures(structures[:2]), pot), x[:2], rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="not a NequIP-family"):
        potential_features(Crystal.from_structures(structures[:1]), load_potential("lj"))

    s = structures[2]
    order = [4, 2, 0, 3, 1]
    shuffled = Structure(s.lattice, [s.species[i] for i in order], s.frac_coords[order])
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
        [[1.0, 0.0, 0.0], [0.0, np.cos(0.7), -np.sin(0.7)], [0.0, np.sin(0.7), np.cos(0.7)]])
    rotated = Structure(Lattice(s.lattice.matrix @ rot.T), s.species, s.frac_coords)
    alone = featurize(Crystal.from_structures([shuffled, rotated], n_max=8), "sevennet0")
    np.testing.assert_allclose(alone, np.stack([x[2], x[2]]), rtol=1e-4, atol=2e-4)


def test_hurdle_target_separates_zeros_from_positive_values(tmp_path):
    """A zero-inflated target (a band gap: 0 for most rows): the classifier learns
    P(y > 0) and the Gaussian fits the positive values only, so its mean on gapped
    rows is not dragged toward 0 the way a plain regression's is; save/load keeps it."""
    from jaxinv.screening.train import PropertyModel, TrainConfig

    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(400, 2)).astype(np.float32)
    gap = np.where(x[:, 0] > 0.3, 1.5 + x[:, 1], 0.0)  # 35% gapped, values 0.5-2.5
    y = np.stack([x[:, 1] * 2.0, gap], 1)
    cfg = TrainConfig(n_members=3, epochs=60, batch_size=64, chunk_epochs=60)
    hurdle = PropertyModel("composition", ("a", "gap"), {"hidden": [32, 32]}, hurdle=("gap",))
    hurdle.fit(x[:300], y[:300], cfg, val=(x[300:], y[300:]))
    plain = PropertyModel("composition", ("a", "gap"), {"hidden": [32, 32]})
    plain.fit(x[:300], y[:300], cfg, val=(x[300:], y[300:]))
    test = rng.uniform(-1, 1, size=(300, 2)).astype(np.float32)
    truth = np.where(test[:, 0] > 0.3, 1.5 + test[:, 1], 0.0)
    mu, sd, p = hurdle.predict_inputs(hurdle.scale_inputs(test), positive=True)
    assert p.shape == mu.shape and np.all(p[:, 0] == 1.0)  # an ordinary target is always "positive"
    far = np.abs(test[:, 0] - 0.3) > 0.15
    assert np.mean((p[far, 1] > 0.5) == (truth[far] > 0)) > 0.97
    gapped = truth > 0
    hurdle_mae = np.abs(mu[gapped & far, 1] - truth[gapped & far]).mean()
    plain_mae = np.abs(plain.predict_inputs(plain.scale_inputs(test))[0][gapped & far, 1] - truth[gapped & far]).mean()
    assert hurdle_mae < 0.15 and hurdle_mae < plain_mae, (hurdle_mae, plain_mae)
    # the history names the classifier's column, and a reload predicts the same
    assert hurdle.history["targets"] == ["a", "gap", "P(gap > 0)"]
    hurdle.save(tmp_path / "m")
    again = PropertyModel.load(tmp_path / "m")
    assert again.hurdle == ("gap",)
    np.testing.assert_allclose(again.predict_inputs(again.scale_inputs(test), positive=True)[2], p, rtol=1e-5)
    with pytest.raises(ValueError, match="hurdle targets"):
        PropertyModel("composition", ("a",), {}, hurdle=("b",)).fit(x, y[:, :1], cfg)


def test_roc_auc_matches_sklearn_and_known_values():
    from jaxinv.screening.uncertainty import roc_auc

    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    labels = rng.random(500) < 0.1
    scores = np.round(labels * 0.7 + rng.random(500), 2)  # ties included
    assert roc_auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_platt_scaling_recovers_a_known_overconfidence():
    """Probabilities made 3x too sharp in logit space: Platt scaling finds a = 1/3, b = 0,
    and improves the cross-entropy; a single-class set leaves them unchanged."""
    from jaxinv.screening.uncertainty import apply_platt, fit_platt

    rng = np.random.default_rng(0)
    z = rng.normal(scale=2.0, size=20000) - 2.0
    labels = rng.random(20000) < 1 / (1 + np.exp(-z))
    sharp = 1 / (1 + np.exp(-3 * z))
    a, b = fit_platt(labels, sharp)
    assert a == pytest.approx(1 / 3, abs=0.02) and b == pytest.approx(0.0, abs=0.05)
    ce = lambda p: -np.mean(np.where(labels, np.log(p), np.log1p(-p)))
    assert ce(apply_platt(sharp, a, b)) < ce(np.clip(sharp, 1e-12, 1 - 1e-12))
    assert fit_platt(np.ones(5, bool), np.full(5, 0.3)) == (1.0, 0.0)


def test_recalibrate_fits_sigma_on_positives_and_platt_and_saves_them(tmp_path):
    from jaxinv.screening.train import PropertyModel, TrainConfig

    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(300, 2)).astype(np.float32)
    y = np.stack([x[:, 1], np.where(x[:, 0] > 0.2, 1.0 + x[:, 1], 0.0)], 1)
    m = PropertyModel("composition", ("a", "gap"), {"hidden": [16]}, hurdle=("gap",))
    m.fit(x[:200], y[:200], TrainConfig(n_members=2, epochs=20, batch_size=32))
    raw = m.predict_inputs(m.scale_inputs(x[200:]), positive=True)
    fitted = m.recalibrate(m.scale_inputs(x[200:]), y[200:])
    assert np.asarray(fitted["platt"]).shape == (1, 2) and len(fitted["sigma_scale"]) == 2
    # the gap's σ scale is the one of its positive rows
    from jaxinv.screening.uncertainty import apply_platt, fit_sigma_scale
    pos = y[200:, 1] > 0
    assert fitted["sigma_scale"][1] == pytest.approx(fit_sigma_scale(y[200:][pos, 1], raw[0][pos, 1], raw[1][pos, 1]))
    mu, sd, p = m.predict_inputs(m.scale_inputs(x[200:]), positive=True)
    np.testing.assert_allclose(p[:, 1], apply_platt(raw[2][:, 1], *fitted["platt"][0]), rtol=1e-6)
    np.testing.assert_allclose(sd, raw[1] * np.asarray(fitted["sigma_scale"]), rtol=1e-6)
    m.save(tmp_path / "m")
    np.testing.assert_allclose(PropertyModel.load(tmp_path / "m").predict_inputs(m.scale_inputs(x[200:]),
                                                                                 positive=True)[2], p, rtol=1e-6)
