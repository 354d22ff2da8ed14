"""The relaxer's energy floor (``failed_energy``) with SevenNet-0's shipped elemental references.

A hole of a learned potential whose pairs stay above the collapse limits shows in its
energy: SevenNet-0's SmFeAsO search reached -14.16 eV/atom, 8.5 eV/atom below the
elements. Real compounds never come near the floor: the most ionic ones, whose standard
enthalpies of formation are the most negative known (CaF2 -4.24, ThO2 -4.24, LiF -3.19,
MgO -3.12 eV/atom), relax normally and their SevenNet-0 formation energies fall within
0.8 eV/atom of those values. A hole of a weakly ionic composition can sit far above -5:
a SevenNet-0 GaP cell at -2.05 eV/atom (wurtzite -0.42), which the electronegativity floor
(-1 - 2 dchi, -1.76 for GaP) catches, while the real compounds closest to their floors stay
0.41 eV/atom or more above them.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from jaxinv.potentials.references import (electronegativity_floor, element_energies, formation_energy, formation_floor,
                                          shipped_element_energies)
from jaxinv.relax import FireConfig, relax, status_names

HOLE = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cspbench" / "holes" / "mp-20349" / "jaxinv__1.jsonl"
# kJ/mol per formula unit (standard enthalpies of formation, NIST-JANAF), atoms per formula unit
EXPERIMENT = {"CaF2": (-1228.0, 3), "ThO2": (-1226.4, 3), "LiF": (-616.0, 2), "MgO": (-601.6, 2)}
KJ_PER_MOL = 96.485  # per eV


@pytest.fixture(scope="module")
def sevennet():
    from jaxinv.potentials.sevennet import load_sevennet

    return load_sevennet()


def hole_structures(path=HOLE):
    """The records of a search that fell into a hole: SmFeAsO's (by default) are 3 real ones
    near -6.95 eV/atom, then 8 in the hole."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(Structure.from_dict(r["structure"]), r["energy_per_atom"]) for r in rows if "structure" in r]


def gap_hole():
    """The last record of a 10-minute jaxinv_random GaP run (seed 1): -6.2477 eV/atom at 543 s,
    1.62 eV/atom below wurtzite (-4.6236). Flat P and Ga sheets with P-P and Ga-Ga at 2.178 Å
    (1.02 and 0.89 of their covalent sums, six in-plane neighbours each) and Ga-P at 1.843 Å
    (0.80): every pair is above its collapse limit, and the formation energy, -2.05 eV/atom
    (wurtzite -0.42, measured -0.46), is far above the -5 eV/atom floor."""
    return hole_structures(HOLE.parents[1] / "mp-8882" / "jaxinv_random__1.jsonl")[-1]


def low_difference_compounds():
    """The four real compounds closest to their electronegativity floor among the 85 of
    ``benchmarks/energy_floor.py``, from experimental lattice parameters: CoSi (B20, dchi
    0.02), MoP (WC type, 0.03), PtP2 (pyrite, 0.09) and WS2 (2H, 0.22)."""
    import energy_floor

    known = energy_floor.compounds()
    return [known[name] for name in ("CoSi", "MoP", "PtP2", "WS2")]


def test_real_compounds_stay_above_their_floors_and_the_holes_fail(sevennet):
    """Both ends of ionicity in one batch: the most ionic compounds against the absolute
    floor, the least ionic against the electronegativity floor, and the two holes."""
    import bench_cspbench as bc

    ionic = [bulk("CaF2", "fluorite", a=5.46), bulk("ThO2", "fluorite", a=5.60), bulk("LiF", "rocksalt", a=4.03),
             bulk("MgO", "rocksalt", a=4.21)]
    records = hole_structures()
    hole = records[-1][0]  # -14.16 eV/atom, Fe-Fe at 0.68 and As-Fe at 0.69 of their covalent sums
    gap, gap_energy = gap_hole()
    assert gap_energy < -6.2 and not bc.collapsed(gap)  # no pair limit catches it
    holes = [AseAtomsAdaptor.get_atoms(hole), AseAtomsAdaptor.get_atoms(gap)]
    out = relax(ionic + low_difference_compounds() + holes, sevennet, fmax=0.02, progress=False)
    assert status_names(out) == ["converged"] * 8 + ["failed_energy"] * 2
    numbers, mask = np.asarray(out.numbers), np.asarray(out.mask)
    formation = formation_energy(numbers, mask, np.asarray(out.labels["energy"]), shipped_element_energies("7net-0"))
    margin = formation - formation_floor(numbers, mask, FireConfig.min_formation_energy,
                                         FireConfig.electronegativity_floor)
    experiment = np.array([h / KJ_PER_MOL / n for h, n in EXPERIMENT.values()])
    assert np.all(formation[:4] > FireConfig.min_formation_energy + 1.0)
    assert np.all(np.abs(formation[:4] - experiment) < 0.8), formation[:4]
    assert np.all(margin[:8] > 0.3), margin  # 0.41 and more in energy_floor.py
    assert formation[8] < -8.0 and margin[9] < -0.2, (formation, margin)
    # what the relaxer and `jaxinv run relax` (relaxed.csv) compute for these: the same formation energies and floors
    written, floor = FireConfig().for_potential(sevennet).formation_and_floor(numbers, mask,
                                                                             np.asarray(out.labels["energy"]))
    assert np.allclose(written, formation) and np.allclose(written - floor, margin)
    assert floor[4] == pytest.approx(-1.0 - 2.0 * (1.90 - 1.88))  # CoSi
    # the CSPBench scorer applies the relaxer's rules: every hole record is caught, the real
    # structures are not
    per_atom = np.asarray(out.labels["energy"]) / mask.sum(-1)
    assert not any(bc.untrustworthy(s, e) for s, e in zip(out.to_structures()[:8], per_atom[:8]))
    assert bc.untrustworthy(gap, gap_energy)
    for structure, energy in records:
        assert bc.untrustworthy(structure, energy) == (energy < -8.0), energy


def test_the_electronegativity_floor_by_hand():
    z = np.array([[31, 15, 0, 0], [6, 6, 6, 0], [2, 8, 0, 0], [55, 9, 0, 0]])  # GaP, C3, HeO, CsF
    mask = z > 0
    floor = electronegativity_floor(z, mask, (-1.0, -2.0))
    assert floor[0] == pytest.approx(-1.0 - 2.0 * (2.19 - 1.81))  # Pauling: P 2.19, Ga 1.81
    assert floor[1] == -1.0  # one element
    assert np.isnan(floor[2])  # He has no electronegativity ...
    combined = formation_floor(z, mask, -5.0, (-1.0, -2.0))
    assert combined[2] == -5.0  # ... so only the absolute floor applies
    assert combined[3] == -5.0  # CsF: -1 - 2 * 3.19 is below it
    assert np.all(formation_floor(z, mask, -5.0, None) == -5.0)
    with pytest.raises(ValueError, match="electronegativity_floor"):
        FireConfig(electronegativity_floor=(-1.0,))


def test_the_shipped_table_is_what_the_command_computes(sevennet):
    mu = shipped_element_energies("7net-0")
    fresh = element_energies(sevennet, ["Si", "S"])
    assert fresh["Si"]["structure"] == "reference"  # diamond, ASE's reference state
    assert fresh["S"]["structure"] == "ring"  # S8: the isolated S2 collapses under SevenNet-0
    assert abs(fresh["Si"]["energy_per_atom"] - mu[14]) < 1e-4 and abs(fresh["S"]["energy_per_atom"] - mu[16]) < 1e-4
    assert np.isnan(mu[0]) and np.sum(np.isfinite(mu)) == 89  # SevenNet-0's 89 elements
