"""100 mixed structures, one at a time, through JaxinvCalculator with SevenNet-0 (issue 24).

50 perov_5 and 50 carbon_24 structures (the ``test`` split of jaxinv's seeded split of
CDVAE's val.csv files), shuffled with seed 0, each evaluated alone as an ASE user would:
``atoms.calc = calc; atoms.get_potential_energy(); get_forces(); get_stress()``. Prints
one JSON line: wall time, number of compiled shapes of the energy/forces/stress program
and the padded sizes reached. ``bench_cold.py --workflows calculator100`` runs it cold
and with a warm XLA cache and reads the compile time from JAX's log.

    python benchmarks/calculator_mixed.py [--n 50]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50, help="structures from each data set")
    a = p.parse_args()
    t0 = time.perf_counter()
    from jaxinv.crystal import Crystal
    from jaxinv.data import load_dataset
    from jaxinv.potentials.calculator import JaxinvCalculator
    from jaxinv.potentials.sevennet import load_sevennet

    rng = np.random.default_rng(0)
    structures = []
    for name in ("perov_5", "carbon_24"):
        data = load_dataset(name, split="test")
        structures += data.structures(rng.choice(len(data), a.n, replace=False))
    atoms_list = [Crystal.from_structures([s]).to_atoms()[0] for s in structures]
    order = rng.permutation(len(atoms_list))
    pot = load_sevennet()
    calc = JaxinvCalculator(pot)
    t1 = time.perf_counter()
    energies = []
    for k in order:
        atoms = atoms_list[k]
        atoms.calc = calc
        energies.append(atoms.get_potential_energy() / len(atoms))
        atoms.get_forces()
        atoms.get_stress()
    t2 = time.perf_counter()
    print(json.dumps({"structures": len(order), "setup_s": round(t1 - t0, 2), "evaluate_s": round(t2 - t1, 2),
                      "programs": pot.compute_fn(True)._cache_size(), "atom_slots": calc._slots,
                      "edge_capacity": calc._graph.capacity, "mean_energy_per_atom": float(np.mean(energies))}))


if __name__ == "__main__":
    main()
