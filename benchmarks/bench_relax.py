"""Relaxation throughput: jaxinv batched FIRE vs ASE loops, SevenNet-0, 64 rattled perov_5.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_relax.py [--n 64] [--fmax 0.05] [--skip-torch]

Three ways to relax the same structures (rattled by 0.05 Å, strained by up to
2%) to ``fmax``, in one run on one machine:

1. jaxinv: ``jaxinv.relax`` (batched FIRE + log-strain cell, autobatched);
2. ASE FIRE + FrechetCellFilter, one structure at a time, with the jaxinv
   SevenNet-0 ASE calculator;
3. the same ASE loop with sevenn's own torch calculator.

Reported: wall time, structures per second, mean FIRE steps, and the energy
agreement between methods. jaxinv's time is given cold (with compilation) and
warm (a second identical call), with the queue's defaults (on a CPU: batches of
a quarter of the list, refilled, and compacted for the last few structures),
and cold as one 64-slot batch without refill or compaction (the earlier
default; ``--no-one-batch`` skips it). One thread per library (XLA single-threaded,
``torch.set_num_threads(1)``), as in ``bench_potentials.py``. All three stop on the same test: jaxinv runs
with ``criterion="ase"`` (every row of the FrechetCellFilter generalized
forces, atoms and cell, below fmax), so the step counts are comparable.
``--xla-cache DIR`` turns on the persistent compilation cache that ``jaxinv run``
uses; a second run with the same DIR measures a cold process whose compiled
programs come from disk.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()

import numpy as np


def ase_loop(structures, make_calc, fmax, max_steps):
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    energies, steps = [], []
    calc = make_calc()
    t0 = time.perf_counter()
    for s in structures:
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.calc = calc
        opt = FIRE(FrechetCellFilter(atoms), logfile=None)
        opt.run(fmax=fmax, steps=max_steps)
        energies.append(atoms.get_potential_energy() / len(atoms))
        steps.append(opt.nsteps)
    return time.perf_counter() - t0, np.array(energies), np.array(steps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--fmax", type=float, default=0.05)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--no-one-batch", action="store_true", help="skip the single-batch jaxinv row")
    ap.add_argument("--xla-cache", default=None, metavar="DIR",
                    help="persistent XLA compilation cache (what `jaxinv run` uses); run twice with the same DIR: "
                         "the second run's cold row is a new process that loads what the first compiled")
    ap.add_argument("--jaxinv-only", action="store_true", help="only the jaxinv rows (no ASE loops)")
    ap.add_argument("--radial-grid", type=int, default=256,
                    help="SevenNet-0 radial MLP tables (load_sevennet's default); 0 evaluates the MLPs")
    args = ap.parse_args()
    cache_note = ""
    if args.xla_cache:
        from jaxinv.xla_cache import enable_compilation_cache

        had_entries = os.path.isdir(args.xla_cache) and any(os.scandir(args.xla_cache))
        enable_compilation_cache(args.xla_cache)
        cache_note = ", XLA disk cache " + ("warm" if had_entries else "empty")

    from jaxinv.data import load_dataset
    from jaxinv.data.perturb import perturb
    from jaxinv.potentials.calculator import JaxinvCalculator
    from jaxinv.potentials.sevennet import load_sevennet
    from jaxinv.relax import converged, energy_per_atom, relax

    ds = load_dataset("perov_5:test")
    structures = perturb(ds.structures(np.arange(args.n)), rattle=0.05, strain=0.02, seed=0)
    potential = load_sevennet(radial_grid=args.radial_grid)
    rows = []

    t0 = time.perf_counter()
    res = relax(structures, potential, fmax=args.fmax, max_steps=args.max_steps, criterion="ase", progress=False)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = relax(structures, potential, fmax=args.fmax, max_steps=args.max_steps, criterion="ase", progress=False)
    t_warm = time.perf_counter() - t0
    e_jax = energy_per_atom(res)
    steps_jax = res.labels["steps"]
    n_conv = int(converged(res).sum())
    rows.append(("jaxinv batched (warm)", t_warm, steps_jax.mean(), n_conv))
    rows.append((f"jaxinv batched (cold, incl. compile{cache_note})", t_cold, steps_jax.mean(), n_conv))
    if not args.no_one_batch:
        one = dict(fmax=args.fmax, max_steps=args.max_steps, criterion="ase", progress=False,
                   batch_fraction=1.0, compact=False)
        t0 = time.perf_counter()
        res_one = relax(structures, potential, **one)
        t_one = time.perf_counter() - t0
        rows.append((f"jaxinv, one {args.n}-slot batch, no refill or compaction (cold)", t_one,
                     np.mean(res_one.labels["steps"]), int(converged(res_one).sum())))

    if args.jaxinv_only:
        print("| method | wall (s) | structures/s | mean steps | converged |\n|---|---|---|---|---|")
        for name, t, steps, conv in rows:
            print(f"| {name} | {t:.1f} | {args.n / t:.2f} | {steps:.0f} | {conv}/{args.n} |")
        return
    t_ase, e_ase, steps_ase = ase_loop(structures, lambda: JaxinvCalculator(potential), args.fmax, args.max_steps)
    rows.append(("ASE FIRE+Frechet loop, jaxinv calculator", t_ase, steps_ase.mean(), int((steps_ase < args.max_steps).sum())))
    if not args.skip_torch:
        import torch
        from sevenn.calculator import SevenNetCalculator

        torch.set_num_threads(1)

        t_torch, e_torch, steps_torch = ase_loop(structures, lambda: SevenNetCalculator("7net-0", device="cpu"),
                                                 args.fmax, args.max_steps)
        rows.append(("ASE FIRE+Frechet loop, sevenn (torch)", t_torch, steps_torch.mean(),
                     int((steps_torch < args.max_steps).sum())))
    ref = rows[-1][1]
    print(f"# {args.n} rattled perov_5 test structures, SevenNet-0, fmax {args.fmax} eV/Å; "
          f"{platform.machine()}, {os.cpu_count()} cores")
    print("| method | wall (s) | structures/s | mean steps | converged | speed-up vs last row |")
    print("|---|---|---|---|---|---|")
    for name, t, steps, conv in rows:
        print(f"| {name} | {t:.1f} | {args.n / t:.2f} | {steps:.0f} | {conv}/{args.n} | {ref / t:.1f}x |")
    print(f"\nmax |E_jaxinv - E_ASE(jaxinv calc)| = {1e3 * np.abs(e_jax - e_ase).max():.2f} meV/atom; "
          f"median {1e3 * np.median(np.abs(e_jax - e_ase)):.2f} meV/atom")
    if not args.skip_torch:
        print(f"max |E_jaxinv - E_ASE(sevenn)| = {1e3 * np.abs(e_jax - e_torch).max():.2f} meV/atom")


if __name__ == "__main__":
    main()
