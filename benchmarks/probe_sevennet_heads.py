"""Issue 25 probe: deep-ensemble heads on frozen SevenNet-0 per-atom features (perov_5 heat_ref).

    OPENBLAS_NUM_THREADS=1 python benchmarks/probe_sevennet_heads.py

1. Runs SevenNet-0 (the library's ``NequIP`` module with the converted checkpoint,
   float32, batches of 64 structures, one neighbour graph for the whole dataset so
   that every batch has the same shape) with flax ``capture_intermediates`` on the
   interaction layers and the first readout linear, and pools per-atom invariants
   per structure: the 0e scalars of every layer's output, the norms of its l = 1, 2
   channels, the 64 hidden readout scalars and the per-atom energy.
2. Trains jaxinv's own deep ensemble (``PropertyModel('composition', ...)``, which
   standardizes any feature matrix and fits the ``CompositionMLP`` ensemble with
   ``fit``) on several descriptor variants, selects one by the valid split's MAE,
   and scores the test split once for the selected variant (and for the
   ``magpie_site`` reference trained the same way).

Writes benchmarks/results/sevennet_heads.json. Features are cached in
``$TMPDIR/jaxinv_sevennet_feats.npz`` (not part of the results).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp

from jaxinv.data import load_dataset
from jaxinv.graph import edge_vectors, neighbor_graph
from jaxinv.potentials.nequip import NequIP, _type_table
from jaxinv.potentials.sevennet import load_sevennet
from jaxinv.screening.features import featurize
from jaxinv.screening.train import PropertyModel, TrainConfig
from jaxinv.screening.uncertainty import calibration, fit_sigma_scale

HERE = Path(__file__).parent
TARGET = "heat_ref"


# ------------------------------------------------------------------ features
def sevennet_feature_fn(config):
    """``(params, crystal, graph) -> dict`` of per-atom invariant blocks, each (B, N, F)."""
    model = NequIP(config)
    table = jnp.asarray(_type_table(config.species))
    keep = {f"layer_{t}" for t in range(config.num_layers)} | {"readout_1"}
    capture = lambda mdl, method: method == "__call__" and mdl.name in keep

    @jax.jit
    def fn(params, crystal, graph):
        b, n = crystal.numbers.shape
        offset = (jnp.arange(b, dtype=jnp.int32) * n)[:, None]
        vec = edge_vectors(crystal, graph).reshape(-1, 3).astype(jnp.float32)
        senders = (graph.senders + offset).reshape(-1)
        receivers = (graph.receivers + offset).reshape(-1)
        species = table[crystal.numbers].reshape(-1)
        e, state = model.apply(params, species, vec, senders, receivers, graph.mask.reshape(-1),
                               capture_intermediates=capture, mutable=["intermediates"])
        inter = state["intermediates"]
        out = {"energy": e.reshape(b, n, 1)}
        for t in range(config.num_layers):
            h = inter[f"layer_{t}"]["__call__"][0]
            out[f"s{t}"] = h.filter(keep="0e").array.reshape(b, n, -1)
            vecs = h.filter(drop="0e")
            if vecs.irreps.dim:
                out[f"v{t}"] = e3nn.norm(vecs).array.reshape(b, n, -1)  # one norm per l>0 channel
        out["readout"] = inter["readout_1"]["__call__"][0].array.reshape(b, n, -1)
        return out

    return fn


def extract(ds, batch: int = 64):
    """Per-atom blocks for every structure, (M, N, F) each, plus timings."""
    pot = load_sevennet("7net-0")
    config, params = pot.metadata["config"], jax.tree_util.tree_map(jnp.asarray, pot.params)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                                    params)
    crystal = ds.crystal()
    t0 = time.perf_counter()
    graph = neighbor_graph(crystal, config.cutoff)  # one capacity for all: one compiled program
    t_graph = time.perf_counter() - t0
    assert not bool(np.any(np.asarray(graph.overflow)))
    fn = sevennet_feature_fn(config)
    m = crystal.batch_size
    blocks, t_first, t0 = {}, None, time.perf_counter()
    for start in range(0, m, batch):
        idx = np.arange(start, start + batch)
        idx = np.minimum(idx, m - 1)  # last batch padded with the last structure, dropped below
        c = crystal[idx]
        c = type(c)(jnp.asarray(c.lattice, jnp.float32), jnp.asarray(c.frac, jnp.float32), jnp.asarray(c.numbers),
                    jnp.asarray(c.mask))
        g = jax.tree_util.tree_map(lambda a: a[idx], graph)
        out = jax.tree_util.tree_map(np.asarray, fn(params, c, g))
        k = min(batch, m - start)
        for name, a in out.items():
            blocks.setdefault(name, []).append(a[:k])
        if t_first is None:
            t_first = time.perf_counter() - t0
            t_rest0 = time.perf_counter()
    t_rest = time.perf_counter() - t_rest0
    blocks = {k: np.concatenate(v) for k, v in blocks.items()}
    timing = {"graph_s": t_graph, "first_batch_incl_compile_s": t_first, "rest_s": t_rest,
              "structures_per_s_steady": (m - batch) / t_rest, "structures_per_s_overall": m / (t_first + t_rest),
              "n_edges_capacity": int(graph.capacity), "mean_edges_per_structure": float(np.asarray(graph.n_edges).mean()),
              "batch": batch, "dtype": str(blocks["s0"].dtype)}
    return blocks, np.asarray(crystal.mask), timing


def pool(blocks, mask, names, how):
    """Per-structure vectors from per-atom blocks: masked mean, sum, or mean and std."""
    x = np.concatenate([blocks[k] for k in names], axis=-1).astype(np.float64)
    w = mask[..., None].astype(np.float64)
    n = w.sum(1)
    s = (x * w).sum(1)
    if how == "sum":
        return s.astype(np.float32)
    mean = s / n
    if how == "mean":
        return mean.astype(np.float32)
    var = (((x - mean[:, None]) ** 2) * w).sum(1) / n
    return np.concatenate([mean, np.sqrt(var)], -1).astype(np.float32)


# ------------------------------------------------------------------ heads
def train_head(x, y, split, cfg, hidden):
    model = PropertyModel("composition", (TARGET,), {"hidden": list(hidden)}, features="custom")
    t0 = time.perf_counter()
    model.fit(x[split == "train"], y[split == "train"][:, None], cfg,
              val=(x[split == "valid"], y[split == "valid"][:, None]))
    t_train = time.perf_counter() - t0
    mv, sv = model.predict_inputs(model.scale_inputs(x[split == "valid"]))
    scale = fit_sigma_scale(y[split == "valid"], mv[:, 0], sv[:, 0])
    val = calibration(y[split == "valid"], mv[:, 0], sv[:, 0])
    return model, scale, val, t_train


def score_test(model, scale, x, y, split):
    mt, st = model.predict_inputs(model.scale_inputs(x[split == "test"]))
    return {"test": calibration(y[split == "test"], mt[:, 0], st[:, 0]),
            "test_recalibrated": calibration(y[split == "test"], mt[:, 0], st[:, 0] * scale), "sigma_scale": scale}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64, help="structures per SevenNet-0 feature batch")
    ap.add_argument("--extra-seeds", type=int, default=2,
                    help="after selection, retrain the selected variant and the reference with seeds 1..k")
    ap.add_argument("--out", default=str(HERE / "results" / "sevennet_heads.json"))
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "jaxinv_sevennet_feats.npz"))
    args = ap.parse_args()

    load_start = os.getloadavg()
    ds = load_dataset("perov_5")
    y = np.asarray(ds.labels[TARGET], np.float64)
    split = np.asarray(ds.split)
    cache = Path(args.cache)
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        blocks = {k[2:]: z[k] for k in z.files if k.startswith("b_")}
        mask, timing = z["mask"], json.loads(str(z["timing"]))
        timing["from_cache"] = str(cache)
    else:
        blocks, mask, timing = extract(ds, args.batch)
        np.savez(cache, mask=mask, timing=json.dumps(timing), **{f"b_{k}": v for k, v in blocks.items()})
    print("feature pass:", json.dumps(timing))
    n_atoms = mask.sum(1)
    t0 = time.perf_counter()
    magpie = featurize(ds.crystal(), "magpie_site")
    t_magpie = time.perf_counter() - t0

    L = sum(k.startswith("s") for k in blocks)
    last = [f"s{L - 1}", "readout", "energy"]
    every = [f"s{t}" for t in range(L)] + [f"v{t}" for t in range(L) if f"v{t}" in blocks] + ["readout", "energy"]
    feats = {
        "last_mean": pool(blocks, mask, last, "mean"),
        "all_mean": pool(blocks, mask, every, "mean"),
        "all_meanstd": pool(blocks, mask, every, "meanstd"),
    }
    cfg = TrainConfig(n_members=args.members, epochs=args.epochs, batch_size=128, seed=0)
    hidden = (128, 64)
    variants, models = {}, {}

    def run(name, x):
        model, scale, val, t = train_head(x, y, split, cfg, hidden)
        variants[name] = {"n_features": int(x.shape[1]), "valid": val, "train_s": t}
        models[name] = (model, scale, x)
        print(f"{name:>28s}: {x.shape[1]:5d} features, valid MAE {val['mae']:.4f}, within 1σ "
              f"{val['within_1sigma']:.3f}, train {t:.1f} s", flush=True)

    run("magpie_site (reference)", magpie)
    for name, x in feats.items():
        run(f"7net0:{name}", x)
    sevennet_only = [k for k in variants if k.startswith("7net0:")]
    best_7 = min(sevennet_only, key=lambda k: variants[k]["valid"]["mae"])
    run(f"{best_7}+magpie_site", np.concatenate([models[best_7][2], magpie], 1))
    candidates = [k for k in variants if k != "magpie_site (reference)"]
    best = min(candidates, key=lambda k: variants[k]["valid"]["mae"])
    test = {}
    for name in (best, "magpie_site (reference)"):
        model, scale, x = models[name]
        test[name] = score_test(model, scale, x, y, split)
        r = test[name]
        print(f"TEST {name}: MAE {r['test']['mae']:.4f} eV/cell, within 1σ {r['test']['within_1sigma']:.3f} / 2σ "
              f"{r['test']['within_2sigma']:.3f} (recalibrated x{scale:.2f}: "
              f"{r['test_recalibrated']['within_1sigma']:.3f} / {r['test_recalibrated']['within_2sigma']:.3f})")
    seeds = {}
    for name in (best, "magpie_site (reference)"):
        x = models[name][2]
        for seed in range(1, args.extra_seeds + 1):
            c = TrainConfig(n_members=args.members, epochs=args.epochs, batch_size=128, seed=seed)
            model, scale, val, t = train_head(x, y, split, c, hidden)
            r = score_test(model, scale, x, y, split)
            r["valid"], r["train_s"] = val, t
            seeds.setdefault(name, {})[seed] = r
            print(f"seed {seed} {name}: valid MAE {val['mae']:.4f}, TEST MAE {r['test']['mae']:.4f}, within 1σ "
                  f"{r['test']['within_1sigma']:.3f} (recalibrated {r['test_recalibrated']['within_1sigma']:.3f})",
                  flush=True)
    res = {
        "issue": "25 item 1 (probe)", "dataset": "perov_5", "target": TARGET, "unit": "eV per 5-atom cell",
        "split_source": ds.split_source, "n": {s: int((split == s).sum()) for s in ("train", "valid", "test")},
        "atoms_per_structure": sorted(set(n_atoms.tolist())),
        "backbone": "SevenNet-0 (7net-0, frozen, radial tables as loaded by load_sevennet)",
        "descriptor_blocks": {k: int(v.shape[-1]) for k, v in blocks.items()},
        "variants_definition": {"last_mean": last, "all_mean": every, "all_meanstd": every + ["(std over atoms)"]},
        "head": {"module": "CompositionMLP via PropertyModel('composition')", "hidden": list(hidden),
                 "train": cfg.__dict__},
        "feature_pass": timing, "magpie_site_seconds": t_magpie,
        "variants_valid": variants, "selected_by_valid_mae": best, "test": test,
        "test_other_seeds": seeds, "load_average_start_end": [load_start, os.getloadavg()],
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, jax {jax.__version__} {jax.default_backend()}",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
