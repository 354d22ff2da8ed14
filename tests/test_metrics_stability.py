"""Hull energies on a made-up binary system, and Matbench Discovery classification metrics."""
import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry

from jaxinv.metrics import HullReference, classify_stable, score_stability, stable_metrics
from jaxinv.metrics.stability import energy_per_atom_fn, hull_metrics, potential_energy_fn

E_LI, E_O = -2.0, -5.0  # eV/atom of the elemental references


def _entry(formula, e_form_per_atom):
    """Entry with a given formation energy relative to the elemental references."""
    c = Composition(formula)
    ref = c["Li"] * E_LI + c["O"] * E_O
    return ComputedEntry(c, ref + e_form_per_atom * c.num_atoms)


@pytest.fixture
def hull():
    return HullReference([_entry("Li", 0.0), _entry("O2", 0.0), _entry("Li2O", -2.0), _entry("LiO", -1.0)])


def test_energy_above_hull_of_a_made_up_binary(hull):
    # hull vertices: Li (x_O=0, 0), Li2O (1/3, -2), O (1, 0); LiO (1/2, -1) lies above the Li2O-O line at
    # -2 * (1 - 1/2) / (2/3) = -1.5, so it is 0.5 eV/atom above the hull
    comps = ["LiO", "Li3O", "Li2O", "Li2O", "LiO2", "NaO"]
    e_form = np.array([-1.0, -1.0, -2.2, -1.9, -0.2, -1.0])
    energies = [_entry(c, f).energy for c, f in zip(comps, e_form)]
    res = hull.evaluate(comps, energies)
    # Li3O: x_O = 1/4, hull between Li and Li2O: -2 * (1/4) / (1/3) = -1.5 -> +0.5
    # LiO2: x_O = 2/3, hull -2 * (1/3) / (2/3) = -1.0 -> +0.8
    expected = [0.5, 0.5, -0.2, 0.1, 0.8, np.nan]  # Na has no reference: NaN
    np.testing.assert_allclose(res["e_above_hull"], expected, atol=1e-9)
    np.testing.assert_allclose(res["formation_energy_per_atom"][:5], e_form[:5], atol=1e-9)
    assert np.isnan(res["formation_energy_per_atom"][5])
    # per-atom energies give the same answer
    per_atom = [e / Composition(c).num_atoms for c, e in zip(comps, energies)]
    np.testing.assert_allclose(hull.evaluate(comps, per_atom, per_atom=True)["e_above_hull"], expected, atol=1e-9)


def test_hull_from_an_energy_callable():
    li = Structure(Lattice.cubic(3.4), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    o = Structure(Lattice.cubic(4.0), ["O", "O"], [[0, 0, 0], [0.1, 0.1, 0.1]])
    li2o = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.6), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])

    def energy_fn(structures):  # a stand-in potential: fixed energies per element plus a Li-O bonus
        return np.array([sum(E_LI if sp.symbol == "Li" else E_O for sp in s.species)
                         - (2.0 * len(s) if len(s.composition) == 2 else 0.0) for s in structures])

    hull = HullReference.from_structures([li, o, li2o], energy_fn)
    sample = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.7), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    m, res = score_stability([sample], energy_fn([sample]) + 0.3 * len(sample), hull)
    assert res["e_above_hull"][0] == pytest.approx(0.3)
    assert m["hull"]["frac_below_0"] == 0.0 and m["hull"]["frac_below_0.1"] == 0.0


def test_stable_metrics_on_a_hand_computed_confusion_matrix():
    true = np.array([-0.1, 0.0, 0.02, 0.3, -0.05, 0.2, 0.1, -0.2, 0.5, np.nan])
    pred = np.array([-0.2, 0.1, -0.01, 0.4, np.nan, -0.1, 0.2, -0.3, 0.6, 0.0])
    # positives (true <= 0): idx 0, 1, 4, 7; predicted positive: 0, 2, 5, 7 (idx 4 NaN -> negative)
    # TP = {0, 7} = 2, FN = {1, 4} = 2, FP = {2, 5} = 2, TN = {3, 6, 8} = 3; idx 9 (true NaN) counts nowhere
    tp, fn, fp, tn = classify_stable(true, pred)
    assert (tp.sum(), fn.sum(), fp.sum(), tn.sum()) == (2, 2, 2, 3)
    m = stable_metrics(true, pred)
    assert (m["TP"], m["FN"], m["FP"], m["TN"]) == (2, 2, 2, 3)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["F1"] == pytest.approx(0.5) and m["accuracy"] == pytest.approx(5 / 9)
    assert m["prevalence"] == pytest.approx(4 / 9) and m["DAF"] == pytest.approx(0.5 / (4 / 9))
    assert m["FPR"] == pytest.approx(2 / 5) and m["TNR"] == pytest.approx(3 / 5)
    both = ~np.isnan(true) & ~np.isnan(pred)
    err = pred[both] - true[both]
    assert m["MAE"] == pytest.approx(np.abs(err).mean()) and m["RMSE"] == pytest.approx(np.sqrt((err ** 2).mean()))
    # threshold 0.1: positives 0, 1, 2, 4, 6, 7; predicted positive 0, 1, 2, 5, 7
    # TP = {0, 1, 2, 7}, FN = {4, 6}, FP = {5}, TN = {3, 8}
    m = stable_metrics(true, pred, threshold=0.1)
    assert (m["TP"], m["FN"], m["FP"], m["TN"]) == (4, 2, 1, 2)


def test_hull_metrics_summary():
    h = hull_metrics(np.array([-0.1, 0.0, 0.05, 0.5, np.nan]))
    assert h["frac_below_0"] == pytest.approx(2 / 5) and h["frac_below_0.1"] == pytest.approx(3 / 5)
    assert h["n_with_hull"] == 4 and h["mean"] == pytest.approx(0.1125)


def test_potential_energy_fn_matches_the_potential(perov):
    import jax.numpy as jnp

    from jaxinv.potentials.base import Potential, pair_energy_sum

    def energy_fn(params, crystal, graph):
        pair = lambda r, zi, zj: params["eps"] * jnp.exp(-r)
        return pair_energy_sum(pair, crystal, graph) + params["e0"] * crystal.mask.sum(-1)

    pot = Potential("toy", energy_fn, {"eps": 1.0, "e0": -1.0}, cutoff=4.0)
    structures = perov.structures(np.arange(0, 50, 7)) + [perov.structures([3])[0] * (1, 1, 2)]
    got = potential_energy_fn(pot, batch_size=4)(structures)
    from jaxinv.crystal import Crystal

    for s, e in zip(structures, got):
        assert e == pytest.approx(float(pot(Crystal.from_structures([s], labels={})).energy[0]), rel=1e-5)
    per_atom = energy_per_atom_fn(potential_energy_fn(pot))(structures[:2])
    np.testing.assert_allclose(per_atom, got[:2] / [len(s) for s in structures[:2]], rtol=1e-6)
