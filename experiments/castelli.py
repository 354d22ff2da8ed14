"""Castelli perovskite replay: active learning vs random selection, recall vs oracle calls.

    jaxinv run castelli                          # 10 seeds, p_window vs random
    jaxinv run castelli seeds=3 'strategies=[p_window,ucb,random]' gap=ind_gap

See :mod:`jaxinv.screening.castelli` for the criteria and their units.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List

import numpy as np

from jaxinv.config import RunConfig


@dataclass
class Config(RunConfig):
    seeds: int = 10
    strategies: List[str] = field(default_factory=lambda: ["p_window", "random"])
    gap: str = "dir_gap"
    features: str = "magpie_site_oxi"
    initial_fraction: float = 0.02
    batch_fraction: float = 0.01
    budget_fraction: float = 0.2
    members: int = 4
    epochs: int = 40
    hidden: List[int] = field(default_factory=lambda: [64, 32])
    calibrate_sigma: bool = False  # scale σ on earlier batches' held-out predictions (hurt here: see RESULTS.md)
    diversity: float = 0.0  # batch diversity length; 0 = plain top-k


def main(cfg, run):
    from jaxinv.data import load_dataset
    from jaxinv.screening.active import ActiveConfig
    from jaxinv.screening.castelli import replay
    from jaxinv.screening.features import featurize
    from jaxinv.screening.train import TrainConfig

    ds = load_dataset("perov_5")
    t0 = time.perf_counter()
    x = featurize(ds.crystal(), cfg.features)
    print(f"features ({cfg.features}, {x.shape[1]} columns) in {time.perf_counter() - t0:.1f} s")
    ac = ActiveConfig(train=TrainConfig(n_members=cfg.members, epochs=cfg.epochs, batch_size=128, min_capacity=1024),
                      model_kwargs={"hidden": list(cfg.hidden)}, calibrate_sigma=cfg.calibrate_sigma,
                      diversity=cfg.diversity)
    res = replay(x, ds.labels, seeds=range(cfg.seeds), strategies=tuple(cfg.strategies), gap=cfg.gap,
                 initial_fraction=cfg.initial_fraction, batch_fraction=cfg.batch_fraction,
                 budget_fraction=cfg.budget_fraction, config=ac, progress=cfg.progress)
    for name, curves in res["curves"].items():
        c = np.asarray(curves)
        print(f"{name:>10s}: recall at {100 * cfg.budget_fraction:.0f}% of oracle calls = "
              f"{c[:, -1].mean():.3f} ± {c[:, -1].std():.3f} ({len(c)} seeds)")
    import importlib.util
    from jaxinv.config import repo_root

    spec = importlib.util.spec_from_file_location("bench_castelli", repo_root() / "benchmarks" /
                                                  "bench_screening_castelli.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.plot(res, run.path("recall.png"))
    run.save_json(res, "castelli.json")
    return res
