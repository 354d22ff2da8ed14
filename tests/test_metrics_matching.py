"""Match rate / RMSE (top-k), uniqueness and novelty with the bucketed matcher."""
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from jaxinv.metrics import reconstruction_metrics, rms_dist, uniqueness_novelty
from jaxinv.metrics.matching import make_matcher
from jaxinv.metrics.suite import score_csp


def _permuted_translated(s, rng):
    order = rng.permutation(len(s))
    t = Structure.from_sites([s[i] for i in order])
    t.translate_sites(list(range(len(t))), rng.uniform(size=3), frac_coords=True, to_unit_cell=True)
    return t


def _rattled(s, sigma, rng):
    t = s.copy()
    t.translate_sites(list(range(len(t))), [0, 0, 0])
    for i in range(len(t)):
        t.translate_sites([i], rng.normal(scale=sigma, size=3), frac_coords=False, to_unit_cell=False)
    return t


@pytest.fixture
def rocksalt():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture
def cscl():
    return Structure(Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_permuted_translated_copy_matches_with_zero_rmse(batio3, rocksalt, rng):
    for s in (batio3, rocksalt):
        r = rms_dist(_permuted_translated(s, rng), s)
        assert r is not None and r < 1e-8
    assert rms_dist(rocksalt, batio3) is None  # different compositions never match


def test_rmse_is_normalized_by_volume_per_atom(batio3, rng):
    t = _rattled(batio3, 0.05, rng)
    r = rms_dist(t, batio3)
    # the matcher removes the mean shift; the normalized RMSE is at most the raw one over (V/N)^(1/3)
    raw = np.sqrt(np.mean(np.sum((t.cart_coords - batio3.cart_coords) ** 2, axis=1)))
    assert 0 < r <= raw / (batio3.volume / len(batio3)) ** (1 / 3) + 1e-9


def test_top_k_match_rate_and_rmse(batio3, rocksalt, cscl, rng):
    targets = [batio3, rocksalt]
    near_b = _rattled(batio3, 0.02, rng)
    far_b = _rattled(batio3, 0.08, rng)
    run0 = [far_b, cscl]  # rocksalt target: wrong composition
    run1 = [near_b, _permuted_translated(rocksalt, rng)]
    one = reconstruction_metrics(run0, targets)
    assert one["match_rate"] == 0.5 and one["k"] == 1
    assert one["rmse"] == pytest.approx(rms_dist(far_b, batio3))
    two = reconstruction_metrics([run0, run1], targets)
    assert two["match_rate"] == 1.0 and two["k"] == 2
    best_b = min(rms_dist(far_b, batio3), rms_dist(near_b, batio3))
    assert two["rms_per_target"][0] == pytest.approx(best_b)
    assert two["rmse"] == pytest.approx(np.mean([best_b, two["rms_per_target"][1]]))
    # an invalid candidate cannot match
    masked = reconstruction_metrics([run0, run1], targets, valid=[[True, True], [True, False]])
    assert masked["match_rate"] == 0.5


def test_score_csp_requires_valid_candidates(batio3, rng):
    crushed = batio3.copy()
    crushed.replace(1, "Ti", [0.02, 0.0, 0.0])  # 0.08 Å from Ba: invalid
    m, per = score_csp([crushed, _permuted_translated(batio3, rng)], [batio3], k=2, n_jobs=1, progress=False)
    assert m["csp"]["match_rate"] == 1.0 and per["valid"].tolist() == [False, True]
    m, _ = score_csp([crushed], [batio3], k=1, n_jobs=1, progress=False)
    assert m["csp"]["match_rate"] == 0.0
    with pytest.raises(ValueError, match="k \\* targets"):
        score_csp([batio3], [batio3, batio3], k=1)


def test_runaway_cells_match_nothing_and_cost_nothing(batio3, rng):
    """A generated cell ~1e9 Å across made StructureMatcher allocate tens of GB; it is
    now refused before pymatgen sees it (as an unmatched candidate), also without
    the validity requirement."""
    runaway = batio3.copy()
    runaway.scale_lattice(batio3.volume * 1e27)
    assert rms_dist(runaway, batio3) is None
    m, _ = score_csp([runaway, _permuted_translated(batio3, rng)], [batio3], k=2, require_valid=False, n_jobs=1,
                     progress=False)
    assert m["csp"]["match_rate"] == 1.0
    un = uniqueness_novelty([runaway, batio3], train=[batio3], n_jobs=1)
    assert un["novel"].tolist() == [True, False]


def test_uniqueness_and_novelty(batio3, rocksalt, cscl, rng):
    a = batio3
    structures = [a, _permuted_translated(a, rng), rocksalt, _rattled(a, 0.01, rng), cscl,
                  _permuted_translated(rocksalt, rng)]
    r = uniqueness_novelty(structures, train=[rocksalt], progress=False)
    assert r["unique"].tolist() == [True, False, True, False, True, False]
    assert r["group"].tolist() == [0, 0, 2, 0, 4, 2]
    assert r["novel"].tolist() == [True, True, False, True, True, False]
    assert r["unique_novel"].tolist() == [True, False, False, False, True, False]
    assert r["unique_rate"] == pytest.approx(3 / 6) and r["novel_rate"] == pytest.approx(4 / 6)
    assert r["n_buckets"] == 3  # BaTiO3, NaCl, CsCl
    # excluded (e.g. invalid) samples are neither unique nor novel, and are not compared
    r = uniqueness_novelty(structures, train=[rocksalt], include=[False, True, True, True, True, True])
    assert r["unique"].tolist() == [False, True, True, False, True, False]
    assert r["group"][0] == -1 and not r["novel"][0]


def test_grouping_agrees_with_pymatgen_group_structures(perov, rng):
    base = perov.structures(np.arange(0, 3787, 400))
    structures = base + [_permuted_translated(s, rng) for s in base[:5]] + [_rattled(s, 0.05, rng) for s in base[3:8]]
    order = rng.permutation(len(structures))
    structures = [structures[i] for i in order]
    ours = uniqueness_novelty(structures)["group"]
    groups = make_matcher().group_structures(structures)
    ids = {id(s): k for k, s in enumerate(structures)}
    theirs = sorted(sorted(ids[id(s)] for s in g) for g in groups)
    mine = sorted(sorted(np.flatnonzero(ours == g).tolist()) for g in np.unique(ours))
    assert mine == theirs
    assert len(theirs) == len(base)


def test_parallel_matching_equals_serial(perov, rng):
    base = perov.structures(np.arange(0, 3787, 500))
    structures = base + [_permuted_translated(s, rng) for s in base]
    serial = uniqueness_novelty(structures, train=base[:3], n_jobs=1)
    parallel = uniqueness_novelty(structures, train=base[:3], n_jobs=2, min_parallel=2)
    assert serial["group"].tolist() == parallel["group"].tolist()
    assert serial["novel"].tolist() == parallel["novel"].tolist()
