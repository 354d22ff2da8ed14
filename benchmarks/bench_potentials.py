"""SevenNet-0 energy + forces + stress: jaxinv (JAX) vs sevenn (torch) vs CHGNet 0.4.2 (torch).

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_potentials.py [--repeats 10] [--xla-threads 1] [--torch-threads 1]

Per-structure timings go through each code's ASE calculator, one structure at a
time, so they include building the neighbor graph and moving results to NumPy:
``JaxinvCalculator(load_sevennet())``, sevenn's ``SevenNetCalculator('7net-0')``
and ``CHGNetCalculator``. Structures are rattled (sigma 0.02 Å, so forces are
nonzero) SrTiO3 perovskite cells (cubic, a = 3.905 Å): the 5-atom unit cell and
its 2x2x2 (40 atoms) and 5x2x2 (100 atoms) supercells. Every timing is a median
over ``--repeats`` calls after one warm-up call; jaxinv's first call (tracing and
compilation) is reported separately. jaxinv's jitted function alone (graph
prebuilt, no host conversion) is shown too, with the radial MLPs tabulated (the
default of ``load_sevennet``) and evaluated (``radial_grid=0``).

Batched throughput: 64 five-atom perov_5 validation structures. jaxinv builds
one padded batch and graph and evaluates it in one call; sevenn loops its
calculator; CHGNet uses its own batched ``predict_structure``. The same batch
is then timed with the convolution's edge chunk set to each of ``--edge-chunks``
(speed only; the results are identical).

The script also checks that jaxinv and sevenn agree (energy within 1e-4 eV/atom,
forces within 1e-3 eV/Å, stress within 1e-4 eV/Å^3) on every structure it times.

Threads: one per library by default (``--xla-threads 1 --torch-threads 1``).
Single-threaded XLA is jaxinv's fastest setting at these sizes on a 2-core CPU
(its convolution loops over edge chunks too small to split across threads), and
on a shared machine torch's default of one thread per core degrades badly when
other jobs run (sevenn took seconds per 5-atom cell at load 10). ``0`` keeps a
library's own default.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _set_xla_threads(n: int) -> None:
    """Must run before jax is imported."""
    if n <= 0:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if n == 1:
        flags += " --xla_cpu_multi_thread_eigen=false"
    os.environ["XLA_FLAGS"] = f"{flags} intra_op_parallelism_threads={n}".strip()


def timed(fn, repeats: int):
    """(first-call seconds, median seconds of ``repeats`` later calls)."""
    first, (median,) = interleaved([fn], repeats)
    return first[0], median


def interleaved(fns, repeats: int):
    """First-call seconds and median seconds of each function, calling them in turn
    so that all see the same machine load (other jobs share this CPU)."""
    first, times = [], [[] for _ in fns]
    for fn in fns:
        t0 = time.perf_counter()
        fn()
        first.append(time.perf_counter() - t0)
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return first, [statistics.median(ts) for ts in times]


def srtio3(reps, seed=0):
    import numpy as np
    from ase import Atoms

    cell = Atoms("SrTiO3", scaled_positions=[[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]],
                 cell=np.eye(3) * 3.905, pbc=True)
    atoms = cell * reps
    atoms.rattle(0.02, seed=seed)
    return atoms


def efs(calc, atoms):
    """Energy, forces, stress of ``atoms`` from scratch (no result caching)."""
    from ase.calculators.calculator import all_changes

    calc.calculate(atoms, ["energy", "forces", "stress"], all_changes)
    return calc.results["energy"], calc.results["forces"], calc.results["stress"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--xla-threads", type=int, default=1, help="0: XLA's default (all cores)")
    ap.add_argument("--torch-threads", type=int, default=1, help="0: torch's default (all cores)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--no-chgnet", action="store_true")
    ap.add_argument("--edge-chunks", default="64,128,256",
                    help="convolution chunk sizes (edges per loop step) timed on the batch; '' skips")
    args = ap.parse_args()
    _set_xla_threads(args.xla_threads)

    import numpy as np
    import jax

    from jaxinv.crystal import Crystal
    from jaxinv.data import load_dataset
    from jaxinv.graph import neighbor_graph
    from jaxinv.potentials.calculator import JaxinvCalculator
    from jaxinv.potentials.sevennet import load_sevennet

    import torch
    from sevenn.calculator import SevenNetCalculator

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    chgnet = None
    if not args.no_chgnet:
        try:
            from chgnet.model import CHGNet, CHGNetCalculator

            model = CHGNet.load(verbose=False)
            chgnet = (model, CHGNetCalculator(model, use_device="cpu", on_isolated_atoms="ignore"))
        except ImportError as err:  # not installed: report and go on
            print(f"# CHGNet skipped: {err}")

    pot = load_sevennet("7net-0")  # radial MLPs tabulated (the default)
    exact = load_sevennet("7net-0", radial_grid=0)  # radial MLPs evaluated
    ours = JaxinvCalculator(pot)
    theirs = SevenNetCalculator("7net-0", device="cpu")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
          f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), load average {os.getloadavg()[0]:.1f}")

    rows = []
    for reps in [(1, 1, 1), (2, 2, 2), (5, 2, 2)]:
        atoms = srtio3(reps)
        n = len(atoms)
        crystal = Crystal.from_atoms([atoms])
        graph = neighbor_graph(crystal, pot.cutoff)
        fn, fn_exact = pot.compute_fn(True), exact.compute_fn(True)
        fns = [lambda: efs(ours, atoms), lambda: jax.block_until_ready(fn(pot.params, crystal, graph)),
               lambda: efs(theirs, atoms),
               lambda: jax.block_until_ready(fn_exact(exact.params, crystal, graph))] + (
            [lambda: efs(chgnet[1], atoms)] if chgnet else [])
        first, medians = interleaved(fns, args.repeats)
        compile_s = first[0]
        t_ours, t_jit, t_theirs, t_exact = medians[:4]
        t_chg = medians[4] if chgnet else float("nan")
        # agreement
        e1, f1, s1 = efs(ours, atoms)
        e2, f2, s2 = efs(theirs, atoms)
        err = (abs(e1 - e2) / n, np.abs(f1 - f2).max(), np.abs(s1 - s2).max())
        assert err[0] < 1e-4 and err[1] < 1e-3 and err[2] < 1e-4, f"jaxinv and sevenn disagree on {n} atoms: {err}"
        rows.append((n, t_ours, t_jit, t_exact, compile_s, t_theirs, t_chg, err))
        print(f"# {n} atoms done", file=sys.stderr, flush=True)

    print("\n| atoms | jaxinv calculator (ms) | jaxinv jitted fn (ms) | same, radial MLP not tabulated (ms) "
          "| jaxinv compile (s) | sevenn (ms) | CHGNet (ms) | sevenn / jaxinv | CHGNet / jaxinv "
          "| max dE/atom, dF, dσ vs sevenn |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, t1, tj, tx, tc, t2, t3, err in rows:
        print(f"| {n} | {1e3 * t1:.1f} | {1e3 * tj:.1f} | {1e3 * tx:.1f} | {tc:.1f} | {1e3 * t2:.1f} | "
              f"{1e3 * t3:.1f} | {t2 / t1:.1f}x | {t3 / t1:.1f}x | {err[0]:.1e} eV, {err[1]:.1e} eV/Å, "
              f"{err[2]:.1e} eV/Å³ |")

    # batched throughput on five-atom perov_5 cells
    ds = load_dataset("perov_5")
    species = set(pot.species)
    structures = [s for s in ds.structures(range(4 * args.batch)) if set(s.atomic_numbers) <= species][:args.batch]
    crystal = Crystal.from_structures(structures, labels={})
    atoms_list = crystal.to_atoms()

    def batch(potential):
        graph = neighbor_graph(crystal, potential.cutoff)
        out = potential.compute_fn(True)(potential.params, crystal, graph)
        return jax.tree_util.tree_map(np.asarray, (out.energy, out.forces, out.stress))

    fns = [lambda: batch(pot), lambda: [efs(theirs, a) for a in atoms_list], lambda: batch(exact)]
    if chgnet:
        fns.append(lambda: chgnet[0].predict_structure(structures, task="efs", batch_size=args.batch))
    first, medians = interleaved(fns, 3)
    compile_b, t_b, t_b7, t_bx = first[0], medians[0], medians[1], medians[2]
    t_bc = medians[3] if chgnet else float("nan")
    b = len(structures)
    print(f"\n| {b} five-atom perov_5 cells | structures/s | time (ms) |\n|---|---|---|")
    print(f"| jaxinv, one batch (compile {compile_b:.1f} s) | {b / t_b:.0f} | {1e3 * t_b:.0f} |")
    print(f"| jaxinv, one batch, radial MLP not tabulated | {b / t_bx:.0f} | {1e3 * t_bx:.0f} |")
    print(f"| sevenn, calculator loop | {b / t_b7:.0f} | {1e3 * t_b7:.0f} |")
    if chgnet:
        print(f"| CHGNet, predict_structure(batch_size={b}) | {b / t_bc:.0f} | {1e3 * t_bc:.0f} |")
    chunks = [int(c) for c in args.edge_chunks.split(",") if c.strip()]
    if chunks:  # same batch, the tabulated model, edges per convolution loop step
        variants = [load_sevennet("7net-0", edge_chunk=c) for c in chunks]
        _, medians = interleaved([lambda v=v: batch(v) for v in variants], args.repeats)
        print(f"\n| {b} perov_5 cells, edges per convolution chunk | time (ms) |\n|---|---|")
        for c, t in zip(chunks, medians):
            default = " (default)" if c == pot.metadata["config"].edge_chunk else ""
            print(f"| {c}{default} | {1e3 * t:.0f} |")
    print(f"\n# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
