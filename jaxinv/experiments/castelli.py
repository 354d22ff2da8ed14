"""Castelli perovskite replay: active learning vs random selection, recall vs oracle calls.

    jaxinv run castelli                          # 10 seeds, p_window vs random
    jaxinv run castelli seeds=3 'strategies=[p_window,ucb,random]' gap=ind_gap train.n_members=2

See :mod:`jaxinv.screening.castelli` for the criteria and their units.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List

import numpy as np

from jaxinv.config import Rule, RunConfig, at_least, checked, each, fraction, non_negative, nonempty, one_of
from jaxinv.experiments.train_property import TrainConfig, feature_kinds  # TrainConfig with its rules


def _acquisitions():
    from jaxinv.screening.acquisition import ACQUISITIONS

    return ACQUISITIONS


@dataclass
class Config(RunConfig):
    """Fields and their meanings: jaxinv/configs/castelli.yaml (``jaxinv run castelli --help``)."""

    seeds: int = checked(10, at_least(1))
    strategies: List[str] = checked(["p_window", "random"], nonempty, each(one_of(_acquisitions)))
    gap: str = checked("dir_gap", one_of("dir_gap", "ind_gap"))
    features: str = checked("magpie_site_oxi", one_of(feature_kinds))
    initial_fraction: float = checked(0.02, fraction)
    batch_fraction: float = checked(0.01, fraction)
    budget_fraction: float = checked(0.2, fraction, Rule(
        lambda v, c: None if v >= c.initial_fraction else f"must be >= initial_fraction ({c.initial_fraction})",
        ">= initial_fraction"))
    train: TrainConfig = field(default_factory=TrainConfig)
    hidden: List[int] = checked([64, 32], each(at_least(1)))
    calibrate_sigma: bool = False  # (hurt here: see RESULTS.md)
    diversity: float = checked(0.0, non_negative)


def main(cfg, run):
    from omegaconf import OmegaConf

    from jaxinv.data import load_dataset
    from jaxinv.screening.active import ActiveConfig
    from jaxinv.screening.castelli import plot_recall, replay
    from jaxinv.screening.features import featurize

    ds = load_dataset("perov_5")
    t0 = time.perf_counter()
    x = featurize(ds.crystal(), cfg.features)
    print(f"features ({cfg.features}, {x.shape[1]} columns) in {time.perf_counter() - t0:.1f} s")
    ac = ActiveConfig(train=OmegaConf.to_object(cfg.train), model_kwargs={"hidden": list(cfg.hidden)},
                      calibrate_sigma=cfg.calibrate_sigma, diversity=cfg.diversity)
    res = replay(x, ds.labels, seeds=range(cfg.seeds), strategies=tuple(cfg.strategies), gap=cfg.gap,
                 initial_fraction=cfg.initial_fraction, batch_fraction=cfg.batch_fraction,
                 budget_fraction=cfg.budget_fraction, config=ac, progress=cfg.progress)
    for name, curves in res["curves"].items():
        c = np.asarray(curves)
        print(f"{name:>10s}: recall at {100 * cfg.budget_fraction:.0f}% of oracle calls = "
              f"{c[:, -1].mean():.3f} ± {c[:, -1].std():.3f} ({len(c)} seeds)")
    plot_recall(res, run.path("recall.png"))
    run.save_json(res, "castelli.json")
    return res
