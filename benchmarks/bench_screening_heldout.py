"""Held-out screening: do the true Castelli hits survive the funnel's property filter?

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_screening_heldout.py            # every setting
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_screening_heldout.py --settings quick,oxi_hurdle

Protocol: all 3,787 perov_5 structures (jaxinv's copy of CDVAE's ``val.csv``; jaxinv's own
train/valid/test split is ignored) are cut into ``--folds`` folds by a permutation drawn
from ``default_rng(--seed)``. For each fold, the other folds are the training pool: a
further ``default_rng(--seed + 1 + fold)`` permutation puts 10% of it aside as a valid part
(each member keeps its best epoch on it; the σ scale per target is fitted on it with
``fit_sigma_scale``, on the positive labels only for a hurdle target), the rest trains.
The fold itself is predicted, so every structure gets one out-of-fold prediction.

Then the funnel's property stage is replayed on the 3,787 out-of-fold predictions
(``jaxinv.screening.stages.window_decision``: the kσ rule, hurdle-aware) with the
Castelli window heat_ref <= 1 eV/cell, 1.5 <= dir_gap <= 3 eV, and the survivors are
ranked by ``p_window`` as the rank stage does. Reported per setting, with raw and with
valid-recalibrated σ: true hits, hits surviving the k = 2 filter, survivors, hits in the
top 100 (precision) and top 200 of the survivors, and training seconds per fold.

Features are cached under ``--cache`` (default /tmp/jaxinv_heldout). Writes
``benchmarks/results/screening_heldout.json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent

# name -> (features, hurdle targets, targets, hidden, epochs[, members (default --members)])
SETTINGS = {
    # today's quick model of `jaxinv run screen` / quickstart (experiments/screen.py:_quick_model):
    # the windowed targets only, magpie_site, MLP 128-64, 5 members, quick_model_epochs = 100, no σ scale
    "quick": ("magpie_site", (), ("dir_gap", "heat_ref"), (128, 64), 100),
    "quick_hurdle": ("magpie_site", ("dir_gap",), ("dir_gap", "heat_ref"), (128, 64), 100),
    "oxi": ("magpie_site_oxi", (), ("dir_gap", "heat_ref"), (128, 64), 100),
    "oxi_hurdle": ("magpie_site_oxi", ("dir_gap",), ("dir_gap", "heat_ref"), (128, 64), 100),
    # the gaps both as hurdles (ind_gap an auxiliary target), and longer training
    "oxi_hurdle3": ("magpie_site_oxi", ("dir_gap", "ind_gap"), ("dir_gap", "heat_ref", "ind_gap"), (128, 64), 100),
    "oxi_hurdle_e200": ("magpie_site_oxi", ("dir_gap",), ("dir_gap", "heat_ref"), (128, 64), 200),
    "oxi_hurdle_m10": ("magpie_site_oxi", ("dir_gap",), ("dir_gap", "heat_ref"), (128, 64), 100, 10),
    "sevennet0_hurdle": ("sevennet0", ("dir_gap",), ("dir_gap", "heat_ref"), (128, 64), 100),
}


def features(ds, kind: str, cache: Path) -> tuple[np.ndarray, float]:
    from jaxinv.screening.features import featurize

    path = cache / f"perov5_{kind}.npz"
    if path.exists():
        z = np.load(path)
        if len(z["x"]) == len(ds):
            return z["x"], float(z["seconds"])
    t0 = time.perf_counter()
    x = featurize(ds.crystal(), kind)
    sec = time.perf_counter() - t0
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, seconds=sec)
    return x, sec


def out_of_fold(x, y, targets, hurdle, hidden, epochs, folds, seed, members, log):
    """Out-of-fold (mean, std raw, std recalibrated, p_positive) and seconds per fold."""
    from jaxinv.screening.train import PropertyModel, TrainConfig
    from jaxinv.screening.uncertainty import fit_sigma_scale

    n, t = y.shape
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, folds)
    mean, std, std_cal, p_pos, p_max = (np.full((n, t), np.nan) for _ in range(5))
    seconds, scales = [], []
    for k, test in enumerate(parts):
        pool = np.concatenate([p for j, p in enumerate(parts) if j != k])
        pool = pool[np.random.default_rng(seed + 1 + k).permutation(len(pool))]
        n_val = len(pool) // 10
        val, tr = pool[:n_val], pool[n_val:]
        model = PropertyModel("composition", tuple(targets), {"hidden": list(hidden)}, hurdle=tuple(hurdle))
        t0 = time.perf_counter()
        model.fit(x[tr], y[tr], TrainConfig(n_members=members, epochs=epochs, batch_size=128, seed=k),
                  val=(x[val], y[val]))
        seconds.append(time.perf_counter() - t0)
        mv, sv, _ = model.predict_inputs(model.scale_inputs(x[val]), positive=True)
        scale = np.ones(t)
        for j, name in enumerate(targets):
            rows = y[val, j] > 0 if name in hurdle else np.isfinite(y[val, j])
            scale[j] = fit_sigma_scale(y[val, j][rows], mv[rows, j], sv[rows, j])
        scales.append(scale.tolist())
        m, s, p = model.predict_inputs(model.scale_inputs(x[test]), positive=True)
        mean[test], std[test], std_cal[test], p_pos[test] = m, s, s * scale, p
        if hurdle:  # diagnostic: the most optimistic member's P(y > 0)
            from jaxinv.screening.train import _predict_fn

            logits = np.asarray(_predict_fn(model.module)(model.params, model.scale_inputs(x[test]))[2])[:, :, t:]
            for i, name in enumerate(hurdle):
                p_max[test, targets.index(name)] = (1.0 / (1.0 + np.exp(-logits[:, :, i]))).max(0)
        log.info("fold %d: %d train, %d valid, %d test, %.1f s, sigma scale %s", k, len(tr), len(val), len(test),
                 seconds[-1], np.round(scale, 3).tolist())
    return mean, std, std_cal, p_pos, p_max, seconds, scales


def screen_scores(model_like, mean, std, p_pos, windows, hits, k=2.0, tops=(100, 200), p_min=None):
    from jaxinv.screening.stages import window_decision

    keep, _, cols = window_decision(model_like, mean, std, p_pos if model_like.hurdle else None, windows, k, p_min)
    p = cols["p_window"]
    surv = np.flatnonzero(keep)
    ranked = surv[np.argsort(-p[surv], kind="stable")]
    out = {"hits": int(hits.sum()), "hits_kept": int(hits[keep].sum()), "kept": int(keep.sum()),
           "missed": np.flatnonzero(hits & ~keep).tolist()}
    for top in tops:
        out[f"hits_top{top}"] = int(hits[ranked[:top]].sum())
    # ranking every structure (no filter): the precision p_window alone gives
    out["hits_top100_unfiltered"] = int(hits[np.argsort(-p, kind="stable")[:100]].sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--k", type=float, default=2.0)
    ap.add_argument("--cache", default="/tmp/jaxinv_heldout")
    ap.add_argument("--rescore", action="store_true",
                    help="score the out-of-fold predictions cached by an earlier run again (no training)")
    ap.add_argument("--out", default=str(HERE / "results" / "screening_heldout.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("bench")
    from types import SimpleNamespace

    from jaxinv.data import load_dataset
    from jaxinv.screening.castelli import castelli_hits, castelli_windows

    ds = load_dataset("perov_5")
    hits = castelli_hits(ds.labels)
    windows = castelli_windows("dir_gap")
    out_path = Path(args.out)
    res = json.loads(out_path.read_text()) if out_path.exists() else {}
    res["protocol"] = {"n": len(ds), "folds": args.folds, "seed": args.seed, "members": args.members, "k": args.k,
                       "windows": {t: list(w) for t, w in windows.items()}, "hits": int(hits.sum())}
    res.setdefault("settings", {})
    for name in args.settings.split(","):
        feat, hurdle, targets, hidden, epochs = SETTINGS[name][:5]
        members = SETTINGS[name][5] if len(SETTINGS[name]) > 5 else args.members
        x, t_feat = features(ds, feat, Path(args.cache))
        y = np.stack([ds.labels[t] for t in targets], 1)
        cached = Path(args.cache) / f"oof_{name}.npz"
        if args.rescore and cached.exists() and name in res["settings"]:
            z = np.load(cached)
            mean, std, std_cal, p_pos = (z[k] for k in ("mean", "std", "std_cal", "p_pos"))
            p_max = z["p_max"] if "p_max" in z.files else np.full_like(mean, np.nan)
            secs, scales = res["settings"][name]["fold_seconds"], res["settings"][name]["sigma_scales"]
        else:
            mean, std, std_cal, p_pos, p_max, secs, scales = out_of_fold(x, y, targets, hurdle, hidden, epochs,
                                                                         args.folds, args.seed, members, log)
        np.savez(Path(args.cache) / f"oof_{name}.npz", mean=mean, std=std, std_cal=std_cal, p_pos=p_pos, p_max=p_max,
                 targets=np.array(targets))
        like = SimpleNamespace(targets=tuple(targets), hurdle=tuple(hurdle))
        entry = {"features": feat, "n_features": int(x.shape[1]), "hurdle": list(hurdle), "targets": list(targets),
                 "hidden": list(hidden), "epochs": epochs, "members": members, "feature_seconds": t_feat, "fold_seconds": secs,
                 "sigma_scales": scales,
                 "raw": screen_scores(like, mean, std, p_pos, windows, hits, args.k),
                 "recalibrated": screen_scores(like, mean, std_cal, p_pos, windows, hits, args.k)}
        if hurdle:  # the floor on P(gap > 0) below which the positive part counts as impossible
            entry["p_min"] = {f"{q:g}": screen_scores(like, mean, std_cal, p_pos, windows, hits, args.k, p_min=q)
                              for q in (0.01, 0.005, 0.003)}
        j = targets.index("heat_ref")
        entry["heat_ref_mae"] = float(np.nanmean(np.abs(mean[:, j] - y[:, j])))
        g = targets.index("dir_gap")
        gapped = y[:, g] > 0
        if hurdle:
            from sklearn.metrics import roc_auc_score

            entry["p_positive_auc"] = float(roc_auc_score(gapped, p_pos[:, g]))
            entry["gapped_dir_gap_mae"] = float(np.mean(np.abs(mean[gapped, g] - y[gapped, g])))
        else:
            entry["gapped_dir_gap_mae"] = float(np.mean(np.abs(mean[gapped, g] - y[gapped, g])))
        res["settings"][name] = entry
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(res, indent=1))
        log.info("%s: %s", name, {k: v for k, v in entry.items() if k in ("raw", "recalibrated")})
    for name, e in res["settings"].items():
        for q, r in e.get("p_min", {}).items():
            print(f"{name}, recalibrated, p_min {q}: {r['hits_kept']} hits kept, {r['kept']:,} survivors, "
                  f"{r['hits_top100']} in the top 100, {r['hits_top200']} in the top 200")
    print(f"| setting | σ | hits kept at {args.k:g}σ (of {int(hits.sum())}) | survivors | hits in top 100 | "
          "top 200 | s per fold (first / median) |")
    print("|---|---|---|---|---|---|---|")
    for name, e in res["settings"].items():
        for kind in ("raw", "recalibrated"):
            r = e[kind]
            fs = e["fold_seconds"]
            print(f"| {name} | {kind} | {r['hits_kept']} ({r['hits_kept'] / r['hits']:.0%}) | {r['kept']:,} | "
                  f"{r['hits_top100']} | {r['hits_top200']} | {fs[0]:.1f} / {np.median(fs):.1f} |")


if __name__ == "__main__":
    main()
