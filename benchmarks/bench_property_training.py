"""CGCNN training throughput, before/after the flat-minibatch trainer, and trained MAEs.

    export OPENBLAS_NUM_THREADS=1
    taskset -c 0 python benchmarks/bench_property_training.py throughput --data perov_5 --rows 768 --epochs 4
    taskset -c 0 python benchmarks/bench_property_training.py train --data carbon_24 --target energy_per_atom \\
        -- model.cutoff=4.0 train.batch_size=32 ...

``throughput``: one fit of the CGCNN ensemble (``--members``, ``--batch``, model
sizes as the flags say; default the README's 64 features, 3 convolutions, 40
Gaussians, cutoff 5 Å, 5 members, batch 128) on the first ``--rows`` structures of the
train split (the graphs are built on the whole split, so the padded edge capacity
is the real one), ``--epochs`` epochs of one jitted chunk each, timed per chunk
(every chunk ends in a host transfer, so the timing is complete), in wall and in
process CPU seconds (on a shared machine CPU seconds are the steadier measure
of the work per core). The first
chunk includes tracing and compilation (cold); a second fit of the same shapes
in the same process reuses the compiled program (warm). Throughput = minibatch
rows per epoch (steps x batch) / median warm epoch seconds; each row is trained on
by every member. ``--impl before`` runs train.py and models.py of ``--before``
(a git commit) loaded from git, ``after`` the working tree, ``both`` both in one
process, and ``dense_only`` the new CGCNN module (split Dense) under the old trainer
(padded minibatches): the two changes apart.

``train``: ``jaxinv run train_property`` with model.kind=cgcnn and the given
overrides in a subprocess; prints its test MAE and ±1σ/±2σ coverage (raw and
recalibrated on valid) and the wall time, and appends them to
``benchmarks/results/property_training.json``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
ROOT = HERE.parent
BEFORE = "bdefe4ac242ae9eda31e006def7fa1e09d7db2b3"  # the last commit before the flat-minibatch trainer
AFTER = "976c882"  # the flat-minibatch trainer


def _load_version(commit: str, tag: str):
    """train.py and models.py of ``commit`` as modules ``<tag>_train`` (importing
    ``<tag>_models``) and ``<tag>_models``: a fixed version, whatever the working tree holds."""
    tmp = Path(tempfile.mkdtemp(prefix=f"jaxinv_{tag}_"))
    show = lambda path: subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, check=True,
                                       capture_output=True, text=True).stdout
    (tmp / f"{tag}_models.py").write_text(show("jaxinv/screening/models.py"))
    (tmp / f"{tag}_train.py").write_text(show("jaxinv/screening/train.py").replace(
        "from jaxinv.screening.models import", f"from {tag}_models import"))
    sys.path.insert(0, str(tmp))
    return importlib.import_module(f"{tag}_train"), importlib.import_module(f"{tag}_models")


def _timed_fit(train_mod, module, x, y, cfg, val):
    """fit with every jitted chunk timed (blocked on its result)."""
    import jax

    times, cpu = [], []
    orig = train_mod._chunk_fn

    def chunk_fn(*a, **k):
        run, tx, tx_init = orig(*a, **k)

        def timed(carry):
            t0, c0 = time.perf_counter(), time.process_time()
            out = jax.block_until_ready(run(carry))
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            return out

        return timed, tx, tx_init

    train_mod._chunk_fn = chunk_fn
    try:
        t0 = time.perf_counter()
        _, hist = train_mod.fit(module, x, y, cfg, val=val, mesh=None)
        total = time.perf_counter() - t0
    finally:
        train_mod._chunk_fn = orig
    return times, cpu, total, hist


def throughput(args) -> list[dict]:
    import jax

    from jaxinv.data import load_dataset
    after_train, after_models = (None, None) if args.after == "worktree" else _load_version(args.after, "after")
    if after_train is None:
        from jaxinv.screening.train import PropertyModel, capacity_for
    else:
        PropertyModel, capacity_for = after_train.PropertyModel, after_train.capacity_for

    ds = load_dataset(args.data)
    tr, va = ds.subset("train"), ds.subset("valid")
    m = PropertyModel("cgcnn", (args.target,), cutoff=args.cutoff)
    t0 = time.perf_counter()
    raw = m.raw_inputs(tr.crystal())
    raw_v = m.raw_inputs(va.crystal())
    t_inputs = time.perf_counter() - t0
    rows = min(args.rows, len(tr))
    x = {k: v[:rows] for k, v in raw.items()}
    y = np.asarray(tr.labels[args.target][:rows], np.float32)[:, None]
    y = (y - y.mean()) / y.std()
    yv = np.asarray(va.labels[args.target], np.float32)[:, None]
    yv = (yv - y.mean()) / y.std()
    val = (raw_v, yv) if args.val else None
    cfg = dict(n_members=args.members, epochs=args.epochs, batch_size=args.batch, chunk_epochs=1)
    steps = max(1, capacity_for(rows) // args.batch)
    edges = raw["edge_mask"][:rows].sum(1)
    kw = dict(n_targets=1, features=args.features, n_conv=args.n_conv, n_rbf=args.n_rbf, cutoff=args.cutoff)
    impls = ["before", "dense_only", "after"] if args.impl == "both" else [args.impl]
    out = []
    for impl in impls:
        if impl == "after" and after_train is None:
            import jaxinv.screening.models as models_mod
            import jaxinv.screening.train as train_mod
        elif impl == "after":
            train_mod, models_mod = after_train, after_models
        else:
            train_mod, models_mod = _load_version(args.before, "before")
            if impl == "dense_only":
                models_mod = after_models
                if models_mod is None:
                    import jaxinv.screening.models as models_mod
        module = models_mod.CGCNN(**kw)
        runs = [_timed_fit(train_mod, module, x, y, train_mod.TrainConfig(**cfg), val) for _ in range(2)]
        (cold, cold_cpu, total, hist), (warm, warm_cpu, total2, _) = runs
        epoch = float(np.median(cold[1:] + warm[1:]))
        epoch_cpu = float(np.median(cold_cpu[1:] + warm_cpu[1:]))
        res = {"impl": impl, "data": args.data, "rows": rows, "steps_per_epoch": steps, "batch": args.batch,
               "members": args.members, "model": kw, "edges_per_structure": {
                   "mean": float(edges.mean()), "max_padded": int(raw["edge_mask"].shape[1])},
               "graph_edge_capacity": hist.get("graph_edge_capacity"), "validation": bool(args.val),
               "epoch_s_median": epoch, "epoch_s_all": cold + warm, "epoch_cpu_s_median": epoch_cpu,
               "epoch_cpu_s_all": cold_cpu + warm_cpu, "structures_per_cpu_s": steps * args.batch / epoch_cpu,
               "first_chunk_cold_s": cold[0], "first_chunk_warm_s": warm[0],
               "compile_cold_s": cold[0] - epoch, "compile_warm_s": warm[0] - epoch,
               "structures_per_s": steps * args.batch / epoch,
               "member_structures_per_s": steps * args.batch * args.members / epoch,
               "inputs_s": t_inputs, "devices": str(jax.devices()), "affinity": sorted(os.sched_getaffinity(0))}
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()
                          if not k.endswith("_all")}), flush=True)
        out.append(res)
    if len(out) > 1:
        base = out[0]["epoch_s_median"]
        base_cpu = out[0]["epoch_cpu_s_median"]
        print("\n| impl | epoch wall s (median) | epoch CPU s (median) | structures/s (wall) | structures/CPU-s | "
              "speedup wall / CPU | first chunk cold / warm (s) |")
        print("|---|---|---|---|---|---|---|")
        for r in out:
            print(f"| {r['impl']} | {r['epoch_s_median']:.2f} | {r['epoch_cpu_s_median']:.2f} | "
                  f"{r['structures_per_s']:.0f} | {r['structures_per_cpu_s']:.0f} | "
                  f"{base / r['epoch_s_median']:.1f}x / {base_cpu / r['epoch_cpu_s_median']:.1f}x | "
                  f"{r['first_chunk_cold_s']:.1f} / {r['first_chunk_warm_s']:.1f} |")
    return out


def train(args, overrides) -> dict:
    out_dir = Path(tempfile.mkdtemp(prefix="bench_property_training_"))
    cmd = [sys.executable, "-c", "from jaxinv.cli import main; main()", "run", "train_property", f"data={args.data}",
           f"targets=[{args.target}]", "model.kind=cgcnn", "progress=false", "checkpoint=false",
           f"out_dir={out_dir}", *overrides]
    print("jaxinv " + " ".join(cmd[3:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-5000:])
        raise SystemExit(proc.returncode)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    t = metrics["targets"][args.target]
    res = {"data": args.data, "target": args.target, "overrides": overrides, "wall_s": wall,
           "train_s": metrics["seconds"]["train"], "n": metrics["n"], "split_source": metrics.get("split_source"),
           "mae": t["test"]["mae"], "rmse": t["test"]["rmse"],
           "within_1sigma": t["test"]["within_1sigma"], "within_2sigma": t["test"]["within_2sigma"],
           "within_1sigma_recal": t["test_recalibrated"]["within_1sigma"],
           "within_2sigma_recal": t["test_recalibrated"]["within_2sigma"], "sigma_scale": t["sigma_scale"],
           "affinity": sorted(os.sched_getaffinity(0)), "out_dir": str(out_dir)}
    print(json.dumps(res), flush=True)
    path = HERE / "results" / "property_training.json"
    old = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(old + [res], indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("throughput", "train"))
    ap.add_argument("--data", default="perov_5")
    ap.add_argument("--target", default=None)
    ap.add_argument("--rows", type=int, default=768)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--n-conv", type=int, default=3)
    ap.add_argument("--n-rbf", type=int, default=40)
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--val", action="store_true", help="also run the per-epoch validation pass")
    ap.add_argument("--impl", default="both", choices=("before", "after", "dense_only", "both"))
    ap.add_argument("--before", default=BEFORE)
    ap.add_argument("--after", default=AFTER, help="a commit, or 'worktree'")
    ap.add_argument("--json", default=None, help="write the throughput results here")
    args, rest = ap.parse_known_args()
    rest = [r for r in rest if r != "--"]
    if args.target is None:
        args.target = {"perov_5": "heat_ref", "carbon_24": "energy_per_atom"}.get(args.data, "heat_ref")
    if args.mode == "throughput":
        res = throughput(args)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
    else:
        train(args, rest)


if __name__ == "__main__":
    main()
