"""Castelli perovskite replay: recall of the true water-splitting hits vs oracle calls.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_screening_castelli.py --seeds 10

Writes benchmarks/screening_castelli.json, .png and a Markdown table to stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from jaxinv.data import load_dataset
from jaxinv.screening.active import ActiveConfig
from jaxinv.screening.castelli import plot_recall
from jaxinv.screening.castelli import replay
from jaxinv.screening.features import featurize
from jaxinv.screening.train import TrainConfig

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--gap", default="dir_gap")
    ap.add_argument("--features", default="magpie_site_oxi")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--strategies", default="p_window,random")
    ap.add_argument("--initial-fraction", type=float, default=0.02)
    ap.add_argument("--calibrate", action="store_true", help="scale σ on earlier batches' held-out predictions")
    ap.add_argument("--diversity", type=float, default=0.0, help="batch diversity length (0: plain top-k)")
    ap.add_argument("--out", default=str(HERE / "screening_castelli"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ds = load_dataset("perov_5")
    t0 = time.perf_counter()
    x = featurize(ds.crystal(), args.features)
    t_feat = time.perf_counter() - t0
    cfg = ActiveConfig(train=TrainConfig(n_members=args.members, epochs=args.epochs, batch_size=128,
                                         min_capacity=1024), model_kwargs={"hidden": (64, 32)},
                       calibrate_sigma=args.calibrate, diversity=args.diversity)
    out = Path(args.out)
    res = None
    # one seed at a time, saved as it goes: a long run killed early still leaves its seeds
    for seed in range(args.seeds):
        one = replay(x, ds.labels, seeds=[seed], strategies=tuple(args.strategies.split(",")), gap=args.gap,
                     initial_fraction=args.initial_fraction, config=cfg)
        if res is None:
            res = one
        else:
            for k in res["curves"]:
                res["curves"][k] += one["curves"][k]
                res["seconds"][k] += one["seconds"][k]
        res["features"] = args.features
        res["feature_seconds"] = t_feat
        res["seeds_done"] = seed + 1
        out.with_suffix(".json").write_text(json.dumps(res, indent=1))
        plot_recall(res, out.with_suffix(".png"))
    f = np.asarray(res["fractions"])
    cols = [k for k in (2, 5, 10, 15, 20) if np.isclose(f * 100, k).any()]
    print("| strategy | " + " | ".join(f"recall @ {k}%" for k in cols) + " | seconds |")
    print("|---|" + "---|" * (len(cols) + 1))
    for name, curves in res["curves"].items():
        c = np.asarray(curves)
        cells = []
        for k in cols:
            j = int(np.flatnonzero(np.isclose(f * 100, k))[0])
            cells.append(f"{c[:, j].mean():.3f} ± {c[:, j].std():.3f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {res['seconds'][name]:.0f} |")
    for name, curves in res["curves"].items():
        c = np.asarray(curves)
        print(f"{name} per seed, recall at {100 * f[-1]:.0f}%: " + ", ".join(f"{v:.3f}" for v in c[:, -1]))


if __name__ == "__main__":
    main()
