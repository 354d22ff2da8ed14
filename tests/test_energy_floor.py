"""The relaxer's energy floor (``failed_energy``) with SevenNet-0's shipped elemental references.

A hole of a learned potential whose pairs stay above the collapse limits shows in its
energy: SevenNet-0's SmFeAsO search reached -14.16 eV/atom, 8.5 eV/atom below the
elements. Real compounds never come near the floor: the most ionic ones, whose standard
enthalpies of formation are the most negative known (CaF2 -4.24, ThO2 -4.24, LiF -3.19,
MgO -3.12 eV/atom), relax normally and their SevenNet-0 formation energies fall within
0.8 eV/atom of those values.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from jaxinv.potentials.references import element_energies, formation_energy, shipped_element_energies
from jaxinv.relax import FireConfig, relax, status_names

HOLE = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cspbench" / "holes" / "mp-20349" / "jaxinv__1.jsonl"
# kJ/mol per formula unit (standard enthalpies of formation, NIST-JANAF), atoms per formula unit
EXPERIMENT = {"CaF2": (-1228.0, 3), "ThO2": (-1226.4, 3), "LiF": (-616.0, 2), "MgO": (-601.6, 2)}
KJ_PER_MOL = 96.485  # per eV


@pytest.fixture(scope="module")
def sevennet():
    from jaxinv.potentials.sevennet import load_sevennet

    return load_sevennet()


def hole_structures():
    """The SmFeAsO search's records: 3 real ones near -6.95 eV/atom, then 8 in the hole."""
    rows = [json.loads(line) for line in HOLE.read_text().splitlines()]
    return [(Structure.from_dict(r["structure"]), r["energy_per_atom"]) for r in rows if "structure" in r]


def test_real_ionic_compounds_stay_far_above_the_floor_and_the_holes_fail(sevennet):
    known = [bulk("CaF2", "fluorite", a=5.46), bulk("ThO2", "fluorite", a=5.60), bulk("LiF", "rocksalt", a=4.03),
             bulk("MgO", "rocksalt", a=4.21)]
    records = hole_structures()
    hole = records[-1][0]  # -14.16 eV/atom, Fe-Fe at 0.68 and As-Fe at 0.69 of their covalent sums
    out = relax(known + [AseAtomsAdaptor.get_atoms(hole)], sevennet, fmax=0.02, progress=False)
    assert status_names(out) == ["converged"] * 4 + ["failed_energy"]
    mu = shipped_element_energies("7net-0")
    formation = formation_energy(np.asarray(out.numbers), np.asarray(out.mask), np.asarray(out.labels["energy"]), mu)
    experiment = np.array([h / KJ_PER_MOL / n for h, n in EXPERIMENT.values()])
    assert np.all(formation[:4] > FireConfig.min_formation_energy + 1.0)
    assert np.all(np.abs(formation[:4] - experiment) < 0.8), formation[:4]
    assert formation[4] < -8.0
    # every hole record is caught by one rule or the other (the CSPBench scorer's, which are the
    # relaxer's), the real ones by neither
    import bench_cspbench as bc

    for structure, energy in records:
        assert bc.untrustworthy(structure, energy) == (energy < -8.0), energy


@pytest.mark.xfail(strict=True, reason="open defect (issue 27): no rule catches this GaP hole yet")
def test_the_gap_sheet_hole_is_untrustworthy():
    """A 10-minute jaxinv_random GaP run (seed 1) relaxed into -6.2477 eV/atom at 543 s, 1.62
    eV/atom below wurtzite (-4.6236; SevenNet-0 formation -2.12 against -0.49, measured -0.46):
    flat P and Ga sheets with P-P and Ga-Ga at 2.178 Å (1.02 and 0.89 of their covalent sums,
    six in-plane neighbours each) and Ga-P at 1.843 Å (0.80). Every pair is above its collapse
    limit and the formation energy is far above the -5 eV/atom floor, so the relaxer calls it
    converged. Strict: this fails, and must be updated, once a rule catches the cell."""
    import bench_cspbench as bc

    path = HOLE.parents[1] / "mp-8882" / "jaxinv_random__1.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    record = [r for r in rows if "structure" in r][-1]
    assert record["energy_per_atom"] < -6.2
    assert bc.untrustworthy(Structure.from_dict(record["structure"]), record["energy_per_atom"])


def test_the_shipped_table_is_what_the_command_computes(sevennet):
    mu = shipped_element_energies("7net-0")
    fresh = element_energies(sevennet, ["Si", "O"])
    assert fresh["Si"]["structure"] == "reference"  # diamond, ASE's reference state
    assert fresh["O"]["structure"] == "dimer"
    assert abs(fresh["Si"]["energy_per_atom"] - mu[14]) < 1e-4 and abs(fresh["O"]["energy_per_atom"] - mu[8]) < 1e-4
    assert np.isnan(mu[0]) and np.sum(np.isfinite(mu)) == 89  # SevenNet-0's 89 elements
