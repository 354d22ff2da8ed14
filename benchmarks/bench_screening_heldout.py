"""Held-out screening: do the true Castelli hits survive the funnel's property filter?

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_screening_heldout.py            # every setting
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_screening_heldout.py --settings quick,oxi_hurdle

Protocol: all 3,787 perov_5 structures (jaxinv's copy of CDVAE's ``val.csv``; jaxinv's own
train/valid/test split is ignored) are cut into ``--folds`` folds by a permutation drawn
from ``default_rng(--seed)``. For each fold, the other folds are the training pool: a
further ``default_rng(--seed + 1 + fold)`` permutation puts 10% of it aside as a valid part
(each member keeps its best epoch on it, then ``PropertyModel.recalibrate`` fits on it the
σ scale per target (on the positive labels only for a hurdle target) and Platt scaling of
each hurdle target's P(y > 0)), the rest trains. The fold itself is predicted, before and
after recalibration, so every structure gets one out-of-fold prediction of each kind.

Then the funnel's property stage is replayed on the 3,787 out-of-fold predictions
(``jaxinv.screening.stages.window_decision``: the kσ rule, hurdle-aware) with the
Castelli window heat_ref <= 1 eV/cell, 1.5 <= dir_gap <= 3 eV, and the survivors are
ranked by ``p_window`` as the rank stage does. Reported per setting, with raw σ and P,
valid-recalibrated σ and raw P, and (hurdle settings) recalibrated σ and Platt-scaled P:
true hits, hits surviving the k = 2 filter, survivors, hits in the top 100 (precision) and
top 200 of the survivors, training seconds per fold; Platt's (a, b) per fold, the
out-of-fold calibration of P(dir_gap > 0) by bin, and floors ``p_min`` other than Φ(-k).

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
    """Out-of-fold predictions (a dict of (N, T) arrays: mean, std (raw), std_cal (σ scale
    fitted on valid), p_pos (raw P(y > 0)), p_platt (Platt-scaled on valid), p_max) and
    per-fold records (seconds, σ scales, Platt (a, b), valid-part diagnostics).

    Recalibration is ``PropertyModel.recalibrate`` on the fold's valid part, the library
    method the screen's quick model calls: σ scales (a hurdle target's on its positive
    labels) and Platt scaling of each hurdle target's P(y > 0). The scored fold never
    enters it."""
    from jaxinv.screening.castelli import castelli_windows
    from jaxinv.screening.train import PropertyModel, TrainConfig, _predict_fn

    n, t = y.shape
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, folds)
    out = {k: np.full((n, t), np.nan) for k in ("mean", "std", "std_cal", "p_pos", "p_platt", "p_max")}
    rec = {"fold_seconds": [], "sigma_scales": [], "platt_ab": [], "valid": []}
    lo, hi = castelli_windows("dir_gap")["dir_gap"]
    for k, test in enumerate(parts):
        pool = np.concatenate([p for j, p in enumerate(parts) if j != k])
        pool = pool[np.random.default_rng(seed + 1 + k).permutation(len(pool))]
        n_val = len(pool) // 10
        val, tr = pool[:n_val], pool[n_val:]
        model = PropertyModel("composition", tuple(targets), {"hidden": list(hidden)}, hurdle=tuple(hurdle))
        t0 = time.perf_counter()
        model.fit(x[tr], y[tr], TrainConfig(n_members=members, epochs=epochs, batch_size=128, seed=k),
                  val=(x[val], y[val]))
        rec["fold_seconds"].append(time.perf_counter() - t0)
        xs_test, xs_val = model.scale_inputs(x[test]), model.scale_inputs(x[val])
        _, s_raw, p_raw = model.predict_inputs(xs_test, positive=True)  # before recalibration
        _, _, pv_raw = model.predict_inputs(xs_val, positive=True)
        fitted = model.recalibrate(xs_val, y[val])  # σ scales + Platt, on the valid part only
        m, s, p = model.predict_inputs(xs_test, positive=True)
        _, _, pv = model.predict_inputs(xs_val, positive=True)
        out["mean"][test], out["std"][test], out["std_cal"][test] = m, s_raw, s
        out["p_pos"][test], out["p_platt"][test] = p_raw, p
        rec["sigma_scales"].append(fitted["sigma_scale"])
        rec["platt_ab"].append(fitted["platt"])
        v = {"n": int(len(val))}
        for i, name in enumerate(hurdle):
            j = targets.index(name)
            yv = y[val, j]
            inwin = (yv >= lo) & (yv <= hi) if name == "dir_gap" else yv > 0
            # the largest floor that keeps every valid-part structure whose gap is in the window
            v[name] = {"positives": int((yv > 0).sum()), "in_window": int(inwin.sum()),
                       "min_p_in_window_raw": float(pv_raw[inwin, j].min()) if inwin.any() else None,
                       "min_p_in_window_platt": float(pv[inwin, j].min()) if inwin.any() else None}
        rec["valid"].append(v)
        if hurdle:  # diagnostic: the most optimistic member's raw P(y > 0)
            logits = np.asarray(_predict_fn(model.module)(model.params, xs_test)[2])[:, :, t:]
            for i, name in enumerate(hurdle):
                out["p_max"][test, targets.index(name)] = (1.0 / (1.0 + np.exp(-logits[:, :, i]))).max(0)
        log.info("fold %d: %d train, %d valid, %d test, %.1f s, recalibration %s, valid %s", k, len(tr), len(val),
                 len(test), rec["fold_seconds"][-1], fitted, v)
    return out, rec


def calibration_bins(labels, p, edges=(0, 0.001, 0.003, 0.01, 0.023, 0.1, 0.5, 1.0001)):
    """Per bin of predicted P(y > 0): count, mean predicted, observed fraction positive."""
    rows = []
    for a, b in zip(edges[:-1], edges[1:]):
        m = (p >= a) & (p < b)
        rows.append({"bin": [a, min(b, 1.0)], "n": int(m.sum()), "predicted": float(p[m].mean()) if m.any() else None,
                     "observed": float(labels[m].mean()) if m.any() else None})
    return rows


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
        z = np.load(cached) if args.rescore and cached.exists() and name in res["settings"] else None
        if z is not None and "p_platt" in z.files:
            o = {k: z[k] for k in ("mean", "std", "std_cal", "p_pos", "p_platt", "p_max")}
            rec = {k: res["settings"][name][k] for k in ("fold_seconds", "sigma_scales", "platt_ab", "valid")}
        else:
            o, rec = out_of_fold(x, y, targets, hurdle, hidden, epochs, args.folds, args.seed, members, log)
        np.savez(cached, **o, targets=np.array(targets))
        mean, std, std_cal, p_pos, p_platt = (o[k] for k in ("mean", "std", "std_cal", "p_pos", "p_platt"))
        like = SimpleNamespace(targets=tuple(targets), hurdle=tuple(hurdle))
        entry = {"features": feat, "n_features": int(x.shape[1]), "hurdle": list(hurdle), "targets": list(targets),
                 "hidden": list(hidden), "epochs": epochs, "members": members, "feature_seconds": t_feat, **rec,
                 "raw": screen_scores(like, mean, std, p_pos, windows, hits, args.k),
                 "recalibrated": screen_scores(like, mean, std_cal, p_pos, windows, hits, args.k)}
        if hurdle:  # the floor on P(gap > 0) below which the positive part counts as impossible
            entry["p_min"] = {f"{q:g}": screen_scores(like, mean, std_cal, p_pos, windows, hits, args.k, p_min=q)
                              for q in (0.01, 0.005, 0.003)}
            # σ scales and Platt scaling both from recalibrate() on the valid part; default floor Φ(-k)
            entry["platt"] = screen_scores(like, mean, std_cal, p_platt, windows, hits, args.k)
            entry["platt_p_min"] = {f"{q:g}": screen_scores(like, mean, std_cal, p_platt, windows, hits, args.k, p_min=q)
                                    for q in (0.01, 0.005, 0.003)}
            g = targets.index("dir_gap")
            miss = entry["platt"]["missed"]
            entry["platt_missed_p"] = {"raw": p_pos[miss, g].tolist(), "platt": p_platt[miss, g].tolist()}
            gapped = y[:, g] > 0
            entry["calibration"] = {"raw": calibration_bins(gapped, p_pos[:, g]),
                                    "platt": calibration_bins(gapped, p_platt[:, g])}
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
        for key, label in (("p_min", "recalibrated σ, raw P"), ("platt_p_min", "recalibrated σ, Platt P")):
            for q, r in e.get(key, {}).items():
                print(f"{name}, {label}, p_min {q}: {r['hits_kept']} hits kept, {r['kept']:,} survivors, "
                      f"{r['hits_top100']} in the top 100, {r['hits_top200']} in the top 200")
        if e.get("platt_ab") and e["platt_ab"][0] is not None:
            print(f"{name}: Platt (a, b) of P(dir_gap > 0) per fold {np.round(np.reshape(e['platt_ab'], (-1, 2)), 3).tolist()}; "
                  f"hits lost with Platt at Φ(-k) {e['platt']['missed']}, their P raw / Platt "
                  f"{np.round(e['platt_missed_p']['raw'], 4).tolist()} / {np.round(e['platt_missed_p']['platt'], 4).tolist()}")
    print(f"| setting | σ | hits kept at {args.k:g}σ (of {int(hits.sum())}) | survivors | hits in top 100 | "
          "top 200 | s per fold (first / median) |")
    print("|---|---|---|---|---|---|---|")
    for name, e in res["settings"].items():
        for kind in ("raw", "recalibrated", "platt"):
            if not isinstance(e.get(kind), dict):
                continue
            r = e[kind]
            fs = e["fold_seconds"]
            print(f"| {name} | {kind} | {r['hits_kept']} ({r['hits_kept'] / r['hits']:.0%}) | {r['kept']:,} | "
                  f"{r['hits_top100']} | {r['hits_top200']} | {fs[0]:.1f} / {np.median(fs):.1f} |")


if __name__ == "__main__":
    main()
