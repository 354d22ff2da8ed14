"""Fingerprints, coverage (CDVAE's compute_cov conventions) and Wasserstein distances."""
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from scipy.spatial.distance import cdist

from jaxinv.metrics import coverage, nearest_distances, property_statistics, wasserstein
from jaxinv.metrics.coverage import cov_cutoffs
from jaxinv.metrics.fingerprints import (N_COMP_FEATURES, N_STRUCT_FEATURES, composition_fingerprints,
                                         load_magpie_scaler, scale_composition, structure_fingerprints)
from jaxinv.metrics.properties import density, n_elements, subsample_valid


def test_nearest_distances_match_brute_force(rng):
    a = rng.normal(size=(300, 7))
    b = rng.normal(size=(70, 7))
    b[:5] = a[10:15]  # exact duplicates must give exactly 0
    da, db = nearest_distances(a, b, chunk=64)
    d = cdist(a, b)
    np.testing.assert_allclose(da, d.min(1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, d.min(0), rtol=1e-12, atol=1e-12)
    assert (db[:5] == 0).all()


def test_coverage_hand_computed():
    # 1-D "fingerprints" so the nearest distances are easy to read off
    ref_s = np.array([[0.0], [1.0], [5.0]])
    ref_c = np.array([[0.0], [0.0], [0.0]])
    gen_s = np.array([[0.1], [4.0], [np.nan], [0.95]])  # third sample: failed fingerprint
    gen_c = np.array([[0.0], [0.0], [0.0], [3.0]])
    r = coverage(gen_s, gen_c, ref_s, ref_c, struct_cutoff=0.2, comp_cutoff=2.0)
    # references: 0 <- 0.1 (struct 0.1, comp 0) covered; 1 <- 0.95 (0.05) but nearest comp is 0 -> covered;
    # 5 <- 4.0 (1.0) not covered
    assert r.cov_recall == pytest.approx(2 / 3)
    # samples: 0.1 covered; 4.0 not (1.0); 0.95 struct 0.05 but comp 3 > 2 not; the failed one counts in the
    # denominator: 1 / 4
    assert r.cov_precision == pytest.approx(1 / 4)
    assert r.amsd_recall == pytest.approx(np.mean([0.1, 0.05, 1.0]))
    assert r.amsd_precision == pytest.approx(np.mean([0.1, 1.0, 0.05]))
    assert r.amcd_precision == pytest.approx(1.0)
    assert (r.n_generated, r.n_generated_used, r.n_reference) == (4, 3, 3)


def _cdvae_compute_cov(gen_s, gen_c, ref_s, ref_c, sc, cc):
    """CDVAE's compute_cov transcribed with scipy's cdist (failed rows are None there, NaN here)."""
    n_gen = len(gen_s)
    keep = [i for i in range(n_gen) if not (np.isnan(gen_s[i]).any() or np.isnan(gen_c[i]).any())]
    s_pd, c_pd = cdist(gen_s[keep], ref_s), cdist(gen_c[keep], ref_c)
    s_rec, s_prec, c_rec, c_prec = s_pd.min(0), s_pd.min(1), c_pd.min(0), c_pd.min(1)
    return {"cov_recall": np.mean((s_rec <= sc) & (c_rec <= cc)),
            "cov_precision": np.sum((s_prec <= sc) & (c_prec <= cc)) / n_gen,
            "amsd_recall": s_rec.mean(), "amsd_precision": s_prec.mean(),
            "amcd_recall": c_rec.mean(), "amcd_precision": c_prec.mean()}


def test_coverage_equals_a_transcription_of_cdvae(rng):
    ref_s, ref_c = rng.uniform(size=(150, 61)), rng.normal(size=(150, 132))
    gen_s = np.vstack([ref_s[:60] + rng.normal(scale=0.05, size=(60, 61)), rng.uniform(size=(240, 61))])
    gen_c = np.vstack([ref_c[:60] + rng.normal(scale=0.3, size=(60, 132)), rng.normal(size=(240, 132))])
    gen_s[[3, 100]] = np.nan  # failed fingerprints
    ours = coverage(gen_s, gen_c, ref_s, ref_c, struct_cutoff=0.4, comp_cutoff=4.5).as_dict()
    theirs = _cdvae_compute_cov(gen_s, gen_c, ref_s, ref_c, 0.4, 4.5)
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(v, rel=1e-12, abs=1e-12), k
    assert 0 < ours["cov_recall"] < 1 and 0 < ours["cov_precision"] < 1


def test_struct_and_comp_neighbours_are_independent_as_in_cdvae():
    # the reference's structural twin has the wrong composition and vice versa: CDVAE still counts it covered
    ref_s, ref_c = np.array([[0.0]]), np.array([[0.0]])
    gen_s, gen_c = np.array([[0.0], [9.0]]), np.array([[9.0], [0.0]])
    r = coverage(gen_s, gen_c, ref_s, ref_c, struct_cutoff=0.2, comp_cutoff=1.0)
    assert r.cov_recall == 1.0 and r.cov_precision == 0.0


def test_cutoff_presets():
    assert cov_cutoffs("perov_5:test") == (0.2, 4.0)
    assert cov_cutoffs("carbon") == (0.2, 4.0)
    assert cov_cutoffs("mp_20") == (0.4, 10.0)
    with pytest.raises(KeyError, match="no CDVAE coverage cutoffs"):
        cov_cutoffs("qm9")


def test_scaler_is_cdvae_transform(tmp_path, monkeypatch):
    means, stds = load_magpie_scaler()
    assert means.shape == stds.shape == (N_COMP_FEATURES,) and (stds > 0).all()
    x = np.vstack([means + 2 * stds, np.full(N_COMP_FEATURES, np.nan)])
    z = scale_composition(x, (means, stds))
    np.testing.assert_allclose(z[0], 2.0)
    assert (z[1] == 0).all()  # replace_nan_token=0
    monkeypatch.setenv("JAXINV_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="cdvae_magpie_scaler.json"):
        load_magpie_scaler(tmp_path / "missing.json")


def test_fingerprints_match_matminer_and_the_cache(perov, tmp_path):
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    structures = perov.structures(np.arange(0, 3000, 500))
    structures.append(structures[0].copy())  # a duplicate is fingerprinted once
    cache = tmp_path / "fp.sqlite"
    fps = structure_fingerprints(structures, n_jobs=1, cache=cache, progress=False)
    assert fps.shape == (len(structures), N_STRUCT_FEATURES)
    cnn = CrystalNNFingerprint.from_preset("ops")
    for s, row in zip(structures[:2], fps[:2]):
        np.testing.assert_allclose(row, np.mean([cnn.featurize(s, i) for i in range(len(s))], axis=0))
    np.testing.assert_array_equal(fps[0], fps[-1])
    # a second call reads everything back from the cache, in a different order
    again = structure_fingerprints(structures[::-1], n_jobs=1, cache=cache, progress=False)
    np.testing.assert_array_equal(again, fps[::-1])
    comp = composition_fingerprints(structures[:2])
    np.testing.assert_allclose(comp[1], ElementProperty.from_preset("magpie").featurize(structures[1].composition))


def test_fingerprints_of_skewed_and_degenerate_cells(perov):
    """A skewed basis of a real crystal gives its fingerprint (computed in the reduced
    basis); a pancake cell, which would keep pymatgen's image search busy for minutes,
    counts as failed at once."""
    import time

    from jaxinv.metrics.fingerprints import _featurize

    s = perov.structures([0])[0]
    a, b, c = s.lattice.matrix
    skewed = Structure(Lattice([a, b + 20 * a, c - 15 * b]), s.species, s.cart_coords, coords_are_cartesian=True)
    ours = structure_fingerprints([s, skewed], n_jobs=1, cache=False, progress=False)
    np.testing.assert_allclose(ours[1], ours[0], atol=1e-9)
    pancake = (np.diag([0.01, 0.01, 6.0]), np.array([6, 6]), np.array([[0, 0, 0], [0.5, 0.5, 0.5]]))
    t0 = time.perf_counter()
    vec, _ = _featurize(pancake)
    assert vec is None and time.perf_counter() - t0 < 5.0


def test_parallel_fingerprints_equal_serial(perov, tmp_path):
    structures = perov.structures(np.arange(5, 3000, 300))
    serial = structure_fingerprints(structures, n_jobs=1, cache=False, progress=False)
    parallel = structure_fingerprints(structures, n_jobs=2, cache=False, progress=False, min_parallel=2)
    np.testing.assert_array_equal(serial, parallel)


def test_failed_and_skipped_fingerprints_are_nan(batio3):
    broken = batio3.copy()
    broken.lattice = Lattice(np.full((3, 3), np.nan))  # CrystalNN raises on it
    fps = structure_fingerprints([batio3, broken, batio3], n_jobs=1, cache=False, progress=False,
                                 skip=np.array([False, False, True]))
    assert np.isfinite(fps[0]).all()
    assert np.isnan(fps[1]).all() and np.isnan(fps[2]).all()


def test_identical_sets_cover_fully_and_have_zero_distances(perov):
    from jaxinv.metrics import score_generation

    structures = perov.structures(np.flatnonzero(perov.split == "test")[:12])
    m, per = score_generation(structures, structures, dataset="perov_5", n_jobs=1, fingerprint_cache=False,
                              metrics=("validity", "coverage", "properties", "uniqueness"), progress=False)
    assert m["coverage"]["cov_recall"] == 1.0 and m["coverage"]["cov_precision"] == 1.0
    assert m["coverage"]["amsd_recall"] == 0.0 and m["coverage"]["amcd_precision"] == 0.0
    assert m["properties"]["density"]["wdist"] == 0.0 and m["properties"]["n_elements"]["wdist"] == 0.0
    assert m["validity"]["valid"] == 1.0 and m["uniqueness"]["unique_rate"] == 1.0
    assert per["valid"].all()


def test_wasserstein_and_properties(batio3):
    assert wasserstein([1, 2, 3], [1, 2, 3]) == 0.0
    assert wasserstein([1, 2, 3], [3, 4, 5]) == pytest.approx(2.0)
    assert wasserstein([1, np.nan, 3], [1, 3]) == 0.0  # non-finite values are ignored
    big = batio3.copy()
    big.scale_lattice(batio3.volume * 2)
    np.testing.assert_allclose(density([big]) * 2, density([batio3]))
    assert n_elements([batio3]).tolist() == [3.0]
    stats = property_statistics([batio3, big], [batio3], {"volume": lambda ss: [s.volume for s in ss],
                                                          "given": ([1.0, 3.0], [2.0])})
    assert stats["volume"]["wdist"] == pytest.approx(batio3.volume / 2)
    assert stats["given"]["wdist"] == pytest.approx(1.0) and stats["given"]["n_ref"] == 1


def test_subsample_valid_is_seeded_and_only_valid():
    valid = np.arange(50) % 3 == 0
    a = subsample_valid(valid, 5, seed=1)
    assert len(a) == 5 and valid[a].all() and (a == subsample_valid(valid, 5, seed=1)).all()
    assert len(subsample_valid(valid, 1000)) == valid.sum()


def test_coverage_under_both_rules(perov):
    """Six test crystals as drawn, and six more squeezed to 0.2 of their lattice lengths
    (closest pairs below CDVAE's 0.5 Å: structurally invalid). Under CDVAE's rule the
    squeezed ones still count: three of them keep a CrystalNN fingerprint within the
    cutoff of their reference and cover it. Under the valid-only rule only the six valid
    samples count, and each covers exactly its own reference."""
    from jaxinv.metrics import score_generation

    refs = perov.structures(np.flatnonzero(perov.split == "test")[:12])
    squeezed = []
    for s in refs[6:]:
        s = s.copy()
        s.scale_lattice(s.volume * 0.2 ** 3)
        squeezed.append(s)
    m, per = score_generation(refs[:6] + squeezed, refs, dataset="perov_5", n_jobs=1, fingerprint_cache=False,
                              metrics=("validity", "coverage"), progress=False)
    assert per["valid"].tolist() == [True] * 6 + [False] * 6
    every, valid = m["coverage"], m["coverage_valid_only"]
    assert (every["n_generated"], valid["n_generated"]) == (12, 6)
    assert (valid["cov_recall"], valid["cov_precision"]) == (0.5, 1.0)
    # squeezed samples cover three of their references, and two squeezed samples lie within
    # the cutoffs of some reference
    assert every["cov_recall"] == 0.75
    assert every["cov_precision"] == pytest.approx(8 / 12)
