"""The convex hull of a variable-composition run (``hull.csv``, ``hull.png``)."""
import numpy as np
import pytest
from ase import Atoms
from ase.db import connect

from jaxinv.search.history import hull_table, most_stable, plot_hull


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
    # the run's result: the hull's most stable compound, not an element (formation 0)
    rows = list(table.values())
    assert most_stable(rows)["formula"] == "TiGa"
    assert most_stable([table["Ti"], table["Ga"], table["Ti3Ga"], table["TiGa3"]])["formula"] == "Ti3Ga"
    assert most_stable([table["Ti"], table["Ga"]])["formula"] == "Ti"
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
    # the result is the hull's most stable compound, written with every hull phase
    import json

    from pymatgen.core import Structure

    summary = json.loads((out / "summary.json").read_text())
    deepest = min((r for r in rows if r["on_hull"] == "True" and r["formula"] not in ("Ar", "Kr")),
                  key=lambda r: float(r["formation_per_atom"]))
    assert summary["best_formula"] == deepest["formula"] and summary["best_fitness"] == pytest.approx(0, abs=1e-8)
    assert summary["best_formation_per_atom"] == pytest.approx(float(deepest["formation_per_atom"]), abs=1e-6)
    best = Structure.from_file(out / "best.cif")
    assert best.composition.reduced_formula == deepest["formula"]
    assert sorted(p.stem for p in (out / "hull").glob("*.cif")) == sorted(on_hull)
    assert "best: " + deepest["formula"] in capsys.readouterr().out


def test_runs_are_compared_against_the_union_hull(tmp_path):
    """bench_hull --compare: Ti -7 and Ga -3 eV/atom in both runs; run A has TiGa at -5.6
    (formation -0.6), run B only at -5.4, so A's TiGa is on the union hull and lies 0.2
    eV/atom below B's hull (a miss of B); a prototype that failed (energy None) is ignored,
    and a Ti3Ga prototype above the union hull is no phase."""
    import json

    import bench_hull

    def run(name, tiga, protos):
        hull = [{"formula": f, "enthalpy_per_atom": e, "structures": 3} for f, e in
                [("Ti", -7.0), ("TiGa", tiga), ("Ga", -3.0)]]
        return {"run": name, "relaxations": 9, "hull": hull, "prototypes": protos}

    protos = [{"formula": "Ti3Ga", "energy_per_atom": -6.2}, {"formula": "TiGa3", "energy_per_atom": None}]
    (tmp_path / "a.json").write_text(json.dumps(run("A", -5.6, protos)))
    (tmp_path / "b.json").write_text(json.dumps({"system": "Ga-Ti", "runs": [run("B", -5.4, protos)]}))
    rows = {r["run"]: r for r in bench_hull.compare([str(tmp_path / "a.json"), str(tmp_path / "b.json")])}
    # Ti3Ga at -6.2 is above the union hull at x = 1/4 (-6.3, halfway from Ti to A's TiGa)
    assert rows["A"]["misses_mev"] == {}
    assert set(rows["B"]["misses_mev"]) == {"TiGa"}
    assert rows["B"]["misses_mev"]["TiGa"] == pytest.approx(-200.0, abs=1e-6)
    assert rows["B"]["tries"] == {"Ti": 3, "TiGa": 3, "Ga": 3}
