"""The convex hull of a variable-composition run (``hull.csv``, ``hull.png``)."""
import numpy as np
import pytest
from ase import Atoms
from ase.db import connect

from jaxinv.search.history import above_final_hull, hull_table, plot_hull


def _write(db, symbols, enthalpy, ident, status="converged"):
    n = len(Atoms(symbols))
    atoms = Atoms(symbols, scaled_positions=np.arange(n)[:, None] * np.array([1.0 / n, 0, 0]),
                  cell=np.diag([2.6 * n, 2.6, 2.6]), pbc=True)
    db.write(atoms, key_value_pairs=dict(ident=ident, enthalpy=enthalpy, fitness=0.0, status=status))


def test_hull_table_known_distances(tmp_path):
    """Ti -7, Ga -3 eV/atom; TiGa (best of its cells) -5.6: formation -0.6, on the hull;
    Ti3Ga formation -0.1 where the hull is at -0.3, so 0.2 eV/atom above it; a failed
    TiGa3 with a lower enthalpy is never a phase."""
    path = tmp_path / "history.db"
    db = connect(str(path))
    _write(db, "Ti", -7.0, 0)
    _write(db, "Ga", -3.0, 1)
    _write(db, "TiGa", -5.5, 2)
    _write(db, "Ti2Ga2", -5.6, 3)  # the same reduced composition, lower: the one kept
    _write(db, "Ti3Ga", (3 * -7.0 - 3.0) / 4 - 0.1, 4)
    _write(db, "TiGa3", -50.0, 5, status="failed_collapse")
    _write(db, "TiGa3", -3.5, 6)
    table = {r["formula"]: r for r in hull_table(path)}
    assert set(table) == {"Ti", "Ga", "TiGa", "Ti3Ga", "TiGa3"}
    assert table["TiGa"]["ident"] == 3 and table["TiGa"]["structures"] == 2
    np.testing.assert_allclose(table["TiGa"]["formation_per_atom"], -0.6, atol=1e-9)
    np.testing.assert_allclose(table["Ti3Ga"]["e_above_hull"], 0.2, atol=1e-9)
    # TiGa3: formation -3.5 - (-7/4 - 9/4) = 0.5 above 0; the hull at x = 3/4 is -0.3
    np.testing.assert_allclose(table["TiGa3"]["e_above_hull"], 0.8, atol=1e-9)
    assert table["TiGa3"]["structures"] == 2
    assert [f for f, r in table.items() if r["on_hull"]] == ["Ti", "TiGa", "Ga"]
    assert table["Ti3Ga"]["fraction"] == 0.25  # of Ga, the heavier element
    assert isinstance(table["Ti"]["space_group"], int)
    # one structure's own final distance: the earlier TiGa cell at -5.5 is 0.1 above the hull
    rows = list(table.values())
    np.testing.assert_allclose(above_final_hull(rows, "Ti2Ga2", -5.5), 0.1, atol=1e-9)
    np.testing.assert_allclose(above_final_hull(rows, "Ti3Ga", table["Ti3Ga"]["enthalpy_per_atom"]), 0.2, atol=1e-9)
    assert above_final_hull(rows, "Ti2Ga", -6.0) is None
    png = plot_hull(list(table.values()), tmp_path / "hull.png", "test")
    assert png.stat().st_size > 5000


def test_hull_table_needs_both_elements(tmp_path):
    path = tmp_path / "history.db"
    db = connect(str(path))
    _write(db, "Ti", -7.0, 0)
    _write(db, "TiGa", -5.5, 1)
    _write(db, "Ga", -3.0, 2, status="failed_nan")
    with pytest.raises(ValueError, match="no successful structure of Ga"):
        hull_table(path)


@pytest.mark.slow  # ~1 min: a variable-composition search through the command line
def test_variable_composition_search_writes_the_hull(tmp_path, capsys):
    """Ar-Kr Lennard-Jones with an Ar-Kr well deeper than both (0.02 eV against 0.0104
    and 0.014): mixing lowers the enthalpy, so a compound is on the hull."""
    import csv

    from jaxinv.cli import main

    out = tmp_path / "run"
    rc = main(["run", "search", "composition=Ar,Kr", "min_atoms=1", "max_atoms=4", "potential=lj",
               "potential.options.species=[Ar,Kr]", "potential.options.sigma=[3.4,3.65]",
               "potential.options.epsilon=[[0.0104,0.02],[0.02,0.014]]", "bond_length=3.9",
               "max_relaxations=48", "batch=16", "progress=false", f"out_dir={out}"])
    assert rc in (0, None)
    rows = list(csv.DictReader(open(out / "hull.csv")))
    on_hull = {r["formula"] for r in rows if r["on_hull"] == "True"}
    assert {"Ar", "Kr"} <= on_hull and len(on_hull) > 2
    assert all(float(r["e_above_hull"]) >= 0 for r in rows)
    assert min(float(r["formation_per_atom"]) for r in rows) < 0
    assert (out / "hull.png").stat().st_size > 5000
    # the best's fitness was against the hull of its time; the summary also gives the final distance
    import json

    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    summary = json.loads((out / "summary.json").read_text())
    # the final distance of the best structure itself (not of its composition's best), by pymatgen from hull.csv
    pd = PhaseDiagram([PDEntry(Composition(r["formula"]), float(r["enthalpy_per_atom"]) *
                               Composition(r["formula"]).num_atoms) for r in rows])
    best = Composition(summary["best_formula"])
    expected = pd.get_e_above_hull(PDEntry(best, summary["best_enthalpy_per_atom"] * best.num_atoms),
                                   allow_negative=True)
    row = next(r for r in rows if r["formula"] == best.reduced_formula)
    assert summary["best_e_above_final_hull"] == pytest.approx(expected, abs=1e-5)
    assert summary["best_e_above_final_hull"] >= float(row["e_above_hull"]) - 1e-6
    assert "above the final hull (hull.csv)" in capsys.readouterr().out
