"""Substitution enumeration, the funnel's stages, resumability and shard files
(sharding over devices and processes: tests/test_distributed.py)."""
import json

import numpy as np
import pytest

from jaxinv.screening.candidates import Candidates
from jaxinv.screening.funnel import Decision, Stage, chain


@pytest.fixture(scope="module")
def rocksalt():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4,
                     [[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5], [.5, .5, .5]])


def test_lambda_matrix_matches_pymatgen():
    from pymatgen.core.structure_prediction.substitution_probability import SubstitutionProbability

    from jaxinv.screening.substitution import substitution_table

    t = substitution_table()
    sp = SubstitutionProbability()
    i = t.index
    rng = np.random.default_rng(0)
    for a, b in [("Ba2+", "Sr2+"), ("O2-", "S2-"), ("Ti4+", "Zr4+")] + \
            [tuple(rng.choice(t.species, 2, replace=False)) for _ in range(5)]:
        assert np.exp(t.log_cond[i[a], i[b]]) == pytest.approx(sp.cond_prob(a, b), rel=1e-9)


def test_enumeration_count_on_rocksalt_matches_brute_force(rocksalt):
    """NaCl has two site classes: enumerate by brute force with pymatgen's own
    probabilities and compare the set of substitutions."""
    from pymatgen.core import Species
    from pymatgen.core.structure_prediction.substitution_probability import SubstitutionProbability

    from jaxinv.screening.substitution import enumerate_substitutions, prepare_prototypes, substitution_table

    threshold = 1e-3
    protos = prepare_prototypes([rocksalt], ["NaCl"])
    assert len(protos) == 1 and protos[0].signature == ((4, 6), (4, 6))
    cands, stats = enumerate_substitutions(protos, threshold=threshold, dedup=False)
    dense, st = enumerate_substitutions(protos, threshold=threshold, dedup=False, method="top_k")
    assert st["not_exhaustive"] == 0  # k = 2: m = 256 covers all species, so both methods are exact
    assert sorted(dense.table["species"]) == sorted(cands.table["species"])
    t = substitution_table()
    sp = SubstitutionProbability()
    expected = set()
    for a in t.species:
        pa = sp.cond_prob(a, "Na+")
        if pa < threshold:
            continue
        for b in t.species:
            p = pa * sp.cond_prob(b, "Cl-")
            sa, sb = Species.from_str(a), Species.from_str(b)
            if p >= threshold and sa.oxi_state + sb.oxi_state == 0 and sa.symbol != sb.symbol \
                    and (a, b) != ("Na+", "Cl-"):
                expected.add(f"{a} {b}")
    assert len(expected) > 20
    assert set(cands.table["species"].tolist()) == expected
    assert len(cands) == len(expected)
    # KCl: the RLS volume uses Shannon radii; the lattice keeps the prototype's shape
    k = int(np.flatnonzero(cands.table["species"] == "K+ Cl-")[0])
    ratio = ((Species("K", 1).ionic_radius + Species("Cl", -1).ionic_radius)
             / (Species("Na", 1).ionic_radius + Species("Cl", -1).ionic_radius)) ** 3
    assert cands.table["volume_scale"][k] == pytest.approx(ratio, rel=1e-6)
    assert cands.crystal.volume[k] == pytest.approx(rocksalt.volume * ratio, rel=1e-6)


def test_exhaustive_enumeration_matches_brute_force_on_batio3(batio3):
    """Three site classes (Ba2+, Ti4+, O2- x3): branch and bound returns exactly the
    substitutions a full loop over all n^3 species triples finds; the JAX top-k path
    returns a subset of them, the most probable ones."""
    from jaxinv.screening.substitution import enumerate_substitutions, prepare_prototypes, substitution_table

    threshold = 1e-4
    t = substitution_table()
    protos = prepare_prototypes([batio3], ["BaTiO3"])
    p = protos[0]
    cands, stats = enumerate_substitutions(protos, threshold=threshold, dedup=False, max_per_prototype=None)
    assert stats["not_exhaustive"] == 0 and stats["truncated"] == 0
    cols = t.log_cond[:, p.class_species]
    q = t.oxidation[:, None] * p.class_counts[None, :]
    expected = {}
    for a in range(len(t.species)):  # brute force, one species of the first class at a time
        s = cols[a, 0] + cols[:, 1][:, None] + cols[:, 2][None, :]
        ok = (s >= np.log(threshold)) & (q[a, 0] + q[:, 1][:, None] + q[:, 2][None, :] == 0)
        ok &= (t.element[:, None] != t.element[None, :]) & (t.element[a] != t.element[:, None]) \
            & (t.element[a] != t.element[None, :])
        for b, c in zip(*np.nonzero(ok)):
            if (a, b, c) != tuple(p.class_species):
                expected[" ".join(t.species[i] for i in (a, b, c))] = s[b, c]
    assert len(expected) > 100
    got = dict(zip(cands.table["species"].tolist(), cands.table["log_prob"].tolist()))
    assert set(got) == set(expected)
    assert all(got[k] == pytest.approx(v, rel=1e-12) for k, v in expected.items())
    top, st = enumerate_substitutions(protos, threshold=threshold, dedup=False, method="top_k", budget=20**3)
    assert st["not_exhaustive"] == 1  # 20 species per class are too few at this threshold
    assert 0 < len(top) < len(cands) and set(top.table["species"]) <= set(got)
    # what top_k misses is less probable than what it found
    missed = [v for k, v in got.items() if k not in set(top.table["species"])]
    assert max(missed) <= top.table["log_prob"].max()
    # a cap keeps the most probable
    capped, st = enumerate_substitutions(protos, threshold=threshold, dedup=False, max_per_prototype=50)
    assert len(capped) <= 50 and st["truncated"] == 1
    assert capped.table["log_prob"].min() >= np.sort(list(got.values()))[-51] - 1e-12


def test_dedup_across_prototypes(rocksalt, batio3):
    """Two copies of one prototype (shifted origin) give identical candidates: all but one set removed."""
    from jaxinv.screening.substitution import enumerate_substitutions, prepare_prototypes

    shifted = batio3.copy()
    shifted.translate_sites(list(range(len(shifted))), [0.5, 0.5, 0.5])  # A on 1b, B on 1a
    protos = prepare_prototypes([batio3, shifted], ["a", "b"])
    assert protos[0].family == protos[1].family
    one, _ = enumerate_substitutions(protos[:1], threshold=1e-3)
    both, stats = enumerate_substitutions(protos, threshold=1e-3)
    assert stats["enumerated"] == 2 * len(one)
    assert len(both) == len(one)
    assert sorted(both.table["formula"]) == sorted(one.table["formula"])


def test_charge_neutrality_filter():
    from pymatgen.core import Lattice, Structure

    from jaxinv.screening.stages import composition_filter

    s = lambda species: Structure(Lattice.cubic(4.0), species, [[0, 0, 0], [.5, .5, .5], [.5, 0, 0]][: len(species)])
    cands = Candidates.from_structures([s(["Na", "Cl"]), s(["Na", "Cl", "Cl"]), s(["Mg", "O"]), s(["Ba", "U", "O"])])
    kept, records = chain(composition_filter(smact=True, excluded=["U"]))(cands)
    assert kept.formulas().tolist() == ["NaCl", "MgO"]
    assert records[0].dropped == {"SMACT: not charge neutral / electronegativity": 1, "excluded element": 1}


class _FakeModel:
    """A PropertyModel stand-in with fixed predictions (the stage's logic, not a model, is tested)."""


def test_property_filter_keeps_what_could_pass():
    from jaxinv.screening.stages import property_filter
    from jaxinv.screening.train import PropertyModel

    class Fixed(PropertyModel):
        def predict(self, crystal, batch_size=4096):
            mean = np.array([[0.5, 2.0], [2.0, 2.0], [1.3, 2.0], [0.5, 3.5]])
            std = np.array([[0.1, 0.1], [0.1, 0.1], [0.2, 0.1], [0.1, 0.2]])
            return mean, std

    from pymatgen.core import Lattice, Structure
    st = [Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]])] * 4
    cands = Candidates.from_structures(st)
    stage = property_filter(Fixed("composition", ("heat", "gap")), {"heat": [None, 1.0], "gap": [1.5, 3.0]}, k=2.0)
    kept, rec = chain(stage)(cands)
    # row 0 inside; row 1 heat 2.0 - 0.2 > 1; row 2 heat 1.3 - 0.4 <= 1 could pass; row 3 gap 3.5 - 0.4 > 3
    assert kept.ids.tolist() == [cands.ids[0], cands.ids[2]]
    assert kept.table["p_window"][0] > 0.9 and kept.table["p_window"][1] < 0.1


def test_window_probability_hurdle_against_scipy():
    """A hurdle target: p * (truncated-normal mass of the window's positive part) + (1 - p) * [0 in window]."""
    from scipy.stats import norm

    from jaxinv.screening.stages import window_probability

    mean = np.array([[0.5, 2.0], [0.5, 2.0], [0.5, -1.0], [0.5, 2.0]])
    std = np.array([[0.2, 0.5], [0.2, 0.5], [0.2, 1.0], [0.2, 0.5]])
    p_pos = np.array([[1.0, 0.8], [1.0, 0.0], [1.0, 0.5], [1.0, 1.0]])
    windows = {"heat": [None, 1.0], "gap": [1.5, 3.0]}
    got = window_probability(mean, std, windows, ("heat", "gap"), p_pos, hurdle=("gap",))
    p_heat = norm.cdf((1.0 - 0.5) / 0.2)
    # row 0: N(2, .5) truncated at 0; the truncation removes Phi(-4) of the mass
    in_gap = (norm.cdf(2.0) - norm.cdf(-1.0)) / norm.sf(-4.0)
    assert got[0] == pytest.approx(p_heat * 0.8 * in_gap, rel=1e-9)
    assert got[1] == 0.0  # surely 0, and 0 is outside the gap window
    # row 2: a mean below 0 truncated at 0 -> mass in [1.5, 3] relative to the mass above 0
    tail = (norm.sf(2.5) - norm.sf(4.0)) / norm.sf(1.0)
    assert got[2] == pytest.approx(p_heat * 0.5 * tail, rel=1e-9)
    assert got[3] == pytest.approx(p_heat * in_gap, rel=1e-9)
    # a window that contains 0 gains the zero mass; without p_positive: the plain Gaussian
    w0 = {"gap": [None, 1.0]}
    z = window_probability(mean, std, w0, ("heat", "gap"), p_pos, hurdle=("gap",))
    assert z[1] == pytest.approx(1.0)
    assert z[0] == pytest.approx(0.2 + 0.8 * (norm.cdf(-2.0) - norm.cdf(-4.0)) / norm.sf(-4.0), rel=1e-9)
    plain = window_probability(mean, std, windows, ("heat", "gap"))
    assert plain[0] == pytest.approx(p_heat * (norm.cdf(2.0) - norm.cdf(-1.0)), rel=1e-9)
    # default hurdle: the targets whose p_positive is not all 1
    np.testing.assert_allclose(window_probability(mean, std, windows, ("heat", "gap"), p_pos), got)
    # far tails stay finite and small, not 0/0
    far = window_probability(np.array([[-40.0]]), np.array([[1.0]]), {"g": [1.5, 3.0]}, ("g",), np.array([[1.0]]),
                             hurdle=("g",))
    assert 0.0 < far[0] < 1e-15


def _hurdle_stub(mean, std, p_pos, targets=("heat", "gap"), hurdle=("gap",)):
    """A PropertyModel with fixed predictions and the hurdle interface (predict(..., positive=True))."""
    from jaxinv.screening.train import PropertyModel

    class Fixed(PropertyModel):
        def predict(self, crystal, batch_size=4096, positive=False):
            n = crystal.batch_size
            return (mean[:n], std[:n], p_pos[:n]) if positive else (mean[:n], std[:n])

    m = Fixed("composition", tuple(targets))
    m.hurdle = tuple(hurdle)
    return m


def test_property_filter_hurdle_rule():
    """Gap window [1.5, 3] excludes 0: drop when P(gap > 0) < Phi(-2) = 0.0228 or the positive
    part's 2-sigma interval misses the window; a window containing 0 keeps a likely zero."""
    from pymatgen.core import Lattice, Structure

    from jaxinv.screening.stages import property_filter

    mean = np.array([[0.5, 2.0], [0.5, 2.0], [0.5, 0.5], [0.5, 5.0], [0.5, 0.8], [0.5, 2.0]])
    std = np.full((6, 2), 0.1)
    std[4, 1] = 0.4  # 0.8 + 2 * 0.4 = 1.6 reaches 1.5
    p_pos = np.array([[1, 0.5], [1, 0.02], [1, 0.9], [1, 0.9], [1, 0.9], [1, 0.03]])
    st = [Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]])] * 6
    cands = Candidates.from_structures(st)
    model = _hurdle_stub(mean, std, p_pos)
    kept, rec = chain(property_filter(model, {"heat": [None, 1.0], "gap": [1.5, 3.0]}, k=2.0))(cands)
    assert kept.ids.tolist() == [cands.ids[i] for i in (0, 4, 5)]
    assert rec[0].dropped == {"P(gap > 0) < 0.0228 (the 2-sigma tail)": 1, "gap outside [1.5, 3] at 2 sigma": 2}
    np.testing.assert_allclose(kept.table["p_positive_gap"], [0.5, 0.9, 0.03])
    assert "p_positive_heat" not in kept.table
    assert kept.table["p_window"][0] > kept.table["p_window"][2] > 0
    # gap <= 1 contains 0: row 1 (surely 0) and row 3 (positive part at 5 eV, but 10% zero) stay
    kept0, _ = chain(property_filter(model, {"gap": [None, 1.0]}, k=2.0))(cands)
    assert set(kept0.ids.tolist()) == {cands.ids[i] for i in (0, 1, 2, 3, 4, 5)}
    p_all = _hurdle_stub(mean, std, np.where(np.arange(2) == 1, 0.999, 1.0) * np.ones((6, 2)))
    kept1, _ = chain(property_filter(p_all, {"gap": [None, 1.0]}, k=2.0))(cands)
    # now almost surely positive: only rows whose positive part reaches <= 1 (0.5; 0.8 - 0.8) stay
    assert kept1.ids.tolist() == [cands.ids[i] for i in (2, 4)]


class _VolumeModel:
    """A PropertyModel stand-in whose prediction is the volume per atom of the geometry it is
    given (so the test sees which geometry was predicted), with a hurdle 'gap'."""
    kind, features, targets, hurdle = "composition", "toy", ("vol", "gap"), ("gap",)

    def __init__(self):
        self.calls = 0

    def inputs(self, crystal):
        c = crystal.to_host()
        return (c.volume / c.mask.sum(-1))[:, None]

    def predict_inputs(self, x, batch_size=4096, positive=False):
        self.calls += 1
        v = np.asarray(x)[:, 0]
        mean = np.stack([v, np.full_like(v, 2.0)], 1)
        std = np.full_like(mean, 0.1)
        p = np.stack([np.ones_like(v), np.where(v > 0, 0.7, 0.0)], 1)
        return (mean, std, p) if positive else (mean, std)


def test_relax_stage_predicts_the_relaxed_geometry(tmp_path, monkeypatch):
    """relax_stage(model=...) predicts each chunk right after relaxing it, on the relaxed cells;
    with windows and k it also filters by them."""
    import jaxinv.screening.stages as stages
    from pymatgen.core import Lattice, Structure
    from toy_potentials import LJ

    monkeypatch.setattr(stages, "_load_model", lambda m: (m, None))  # the stand-in is not a PropertyModel
    st = [Structure(Lattice.cubic(a), ["Si", "Si"], [[0, 0, 0], [.5, .5, .5]]) for a in (2.6, 2.9, 2.75)]
    cands = Candidates.from_structures(st)
    v0 = np.asarray(cands.crystal.to_host().volume) / 2
    model = _VolumeModel()
    stage = stages.relax_stage(LJ, fmax=0.05, max_steps=200, chunk_size=2, model=model,
                               windows={"gap": [1.5, 3.0]})
    out, rec = chain(stage).run(cands, tmp_path / "w")
    assert len(out) == 3 and model.calls == 2  # one prediction per relaxed chunk (2 + 1 rows)
    v = np.asarray(out.crystal.to_host().volume) / 2
    np.testing.assert_allclose(out.table["pred_vol"], v, rtol=1e-6)  # the relaxed volumes ...
    assert np.all(np.abs(v - v0) > 0.05 * v0.min())  # ... which differ from the inputs'
    np.testing.assert_allclose(out.table["p_positive_gap"], 0.7)
    np.testing.assert_allclose(out.table["p_window"], 0.7 * stages.window_probability(
        np.array([[2.0]]), np.array([[0.1]]), {"g": [1.5, 3.0]}, ("g",), np.array([[1.0]]), hurdle=("g",))[0])
    # a window on the predicted volume that only some relaxed cells reach, at 2 sigma
    cut = float(np.median(v))
    stage = stages.relax_stage(LJ, fmax=0.05, max_steps=200, model=model, windows={"vol": [None, cut]}, k=0.0)
    out2, rec2 = chain(stage)(cands)
    assert np.all(out2.table["pred_vol"] <= cut) and rec2[0].n_out < 3
    assert list(rec2[0].dropped) == [f"vol outside [-inf, {cut:g}] at 0 sigma"]


def _toy_candidates(n=23):
    from pymatgen.core import Lattice, Structure

    st = [Structure(Lattice.cubic(4.0 + 0.01 * i), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]]) for i in range(n)]
    return Candidates.from_structures(st, score=np.arange(n, dtype=float) % 7)


def _counting_stage(calls: list, fail_on_chunk: int | None = None):
    def apply(cands, ctx):
        calls.append(str(cands.ids[0]))
        if fail_on_chunk is not None and ctx.get("chunk") == fail_on_chunk:
            raise KeyboardInterrupt("simulated kill")
        v = cands.table["score"]
        return Decision(v % 2 == 0, "odd score", {"double": 2 * v})
    return Stage("even", apply, {"rule": "even"}, chunk_size=5)


def test_funnel_resumes_after_kill_with_nothing_lost(tmp_path):
    from jaxinv.screening.stages import rank_stage

    cands = _toy_candidates()
    ref_calls = []
    reference, ref_records = chain(_counting_stage(ref_calls), rank_stage("double", top_k=6))(cands)
    calls = []
    funnel = chain(_counting_stage(calls, fail_on_chunk=3), rank_stage("double", top_k=6))
    with pytest.raises(KeyboardInterrupt):
        funnel.run(cands, tmp_path / "work")
    manifest = json.loads((tmp_path / "work" / "manifest.json").read_text())
    assert sorted(manifest["stages"][0]["chunks"]) == ["0", "1", "2"]  # three chunks finished before the kill
    calls_after_kill = []
    out, records = chain(_counting_stage(calls_after_kill), rank_stage("double", top_k=6)).run(cands, tmp_path / "work")
    assert len(calls_after_kill) == 2  # only chunks 3 and 4 ran again
    assert out.ids.tolist() == reference.ids.tolist()
    np.testing.assert_array_equal(out.table["double"], reference.table["double"])
    assert [r.n_out for r in records] == [r.n_out for r in ref_records]
    assert records[0].n_in == 23 and records[0].dropped == ref_records[0].dropped
    assert np.all(np.diff(out.table["double"]) <= 0) and out.table["rank"].tolist() == list(range(1, 7))
    # a third run finds everything done and calls nothing
    calls_third = []
    again, _ = chain(_counting_stage(calls_third), rank_stage("double", top_k=6)).run(cands, tmp_path / "work")
    assert calls_third == [] and again.ids.tolist() == reference.ids.tolist()
    # other settings in the same directory are refused
    with pytest.raises(ValueError, match="other inputs or stages"):
        chain(_counting_stage([]), rank_stage("double", top_k=5)).run(cands, tmp_path / "work")


def test_stability_stage_with_a_reference():
    from jaxinv.screening.stages import stability_stage

    class Ref:
        entries = []

        def evaluate(self, compositions, energies):
            e = np.asarray(energies, float) / np.array([c.num_atoms for c in compositions])
            return {"e_above_hull": np.where(e < 0, e + 0.5, np.nan), "formation_energy_per_atom": e}

    cands = _toy_candidates(3).with_columns(energy=np.array([-1.2, -0.6, 1.0]))  # per atom -0.6, -0.3, 0.5
    kept, rec = chain(stability_stage(Ref(), max_e_above_hull=0.1))(cands)
    assert kept.ids.tolist() == [cands.ids[0]]
    assert rec[0].dropped == {"e_above_hull > 0.1 eV/atom": 1, "no reference hull for its chemical system": 1}


def test_relax_stage_with_lj(tmp_path):
    from pymatgen.core import Lattice, Structure

    from jaxinv.screening.stages import relax_stage
    from toy_potentials import LJ

    st = [Structure(Lattice.cubic(a), ["Si", "Si"], [[0, 0, 0], [.5, .5, .5]]) for a in (2.6, 2.9)]
    cands = Candidates.from_structures(st)
    out, rec = chain(relax_stage(LJ, fmax=0.05, max_steps=200, cell="frechet")).run(cands, tmp_path / "w")
    assert len(out) == 2 and set(out.table["relax_status"]) == {"converged"}
    assert np.all(out.table["energy"] < 0)
    v = out.crystal.volume
    assert abs(v[0] - v[1]) / v[0] < 0.01  # both relax to the same LJ bcc minimum


def test_shard_manifest_and_merge(tmp_path):
    from jaxinv.screening.sharding import merge_shards, save_shard, shard_for_process

    cands = _toy_candidates(10)
    covered = []
    for i in range(3):
        shard = shard_for_process(10, i, 3)
        covered += shard.indices.tolist()
        if i != 1:
            save_shard(tmp_path, shard, cands.select(shard.indices))
    assert covered == list(range(10))
    with pytest.raises(FileNotFoundError, match="1 of 3 shards missing"):
        merge_shards(tmp_path)
    save_shard(tmp_path, shard_for_process(10, 1, 3), cands.select(shard_for_process(10, 1, 3).indices))
    assert merge_shards(tmp_path).ids.tolist() == cands.ids.tolist()


def test_relax_stage_takes_frozen_features_from_the_relaxing_potential(perov, monkeypatch):
    """A model on 'sevennet0' features, predicted in a SevenNet-0 relax stage, is fed by the
    stage's own loaded potential (no second load) and gets the same inputs as on its own."""
    import jaxinv.screening.features as features
    from jaxinv.crystal import Crystal
    from jaxinv.potentials import load_potential
    from jaxinv.screening.stages import _model_inputs, _same_potential
    from jaxinv.screening.train import PropertyModel, TrainConfig

    crystal = Crystal.from_structures(perov.structures(np.arange(6)))
    pot = load_potential("sevennet0")
    x = features.potential_features(crystal, pot)
    model = PropertyModel("composition", ("heat_ref",), {"hidden": [8]}, features="sevennet0")
    model.fit(x, np.asarray(perov.labels["heat_ref"][:6])[:, None], TrainConfig(n_members=2, epochs=2, batch_size=4))
    assert _same_potential("sevennet0", pot) and not _same_potential("sevennet_l3i5", pot)
    assert not _same_potential("sevennet0", load_potential("lj"))
    monkeypatch.setattr(features, "_registered", lambda name: pytest.fail(f"loaded {name} a second time"))
    np.testing.assert_allclose(_model_inputs(model, crystal, pot), model.scale_inputs(x), rtol=1e-6)
