"""Active learning / batch Bayesian optimization with a limited oracle budget.

    history = active_learning(pool_x, oracle, ActiveConfig(...), objective=...)

Each round: fit a deep ensemble on the labelled rows, predict mean and σ on the
whole pool, score the unlabelled rows with an acquisition function, send the
best ``batch_size`` to the oracle, repeat until ``budget`` labels are spent. The
oracle is any ``indices -> (k, T) labels`` function: DFT in production, a
table lookup in the Castelli replay.

Acquisitions: ``'p_window'`` (probability that every target lies in its
window), ``'ucb'`` and ``'ei'`` on a scalar objective ``f(mean, std) -> (mean,
std)`` (by default the first target, maximized), and ``'random'`` as the
baseline. The ensemble is retrained from scratch each round (small data, the
composition model trains in seconds) so that rounds are independent of the
order labels arrived in.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from jaxinv.screening.acquisition import expected_improvement, select_diverse, select_top, ucb, window_probability
from jaxinv.screening.train import PropertyModel, TrainConfig
from jaxinv.screening.uncertainty import fit_sigma_scale

__all__ = ["ActiveConfig", "active_learning", "acquisition_scores"]

log = logging.getLogger("jaxinv.screening")


@dataclass
class ActiveConfig:
    targets: tuple = ("heat_ref", "dir_gap")
    windows: dict = field(default_factory=dict)  # target -> (lo, hi), for p_window and hit counting
    acquisition: str = "p_window"
    n_initial: int = 76
    batch_size: int = 38
    budget: int = 757  # total oracle calls, initial set included
    beta: float = 2.0  # UCB
    xi: float = 0.0  # EI
    seed: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(n_members=5, epochs=150, batch_size=64))
    model_kind: str = "composition"
    model_kwargs: dict = field(default_factory=dict)
    # scale σ per target by fit_sigma_scale on every earlier batch's predictions made
    # before its labels came (honest held-out points); needs this many of them
    calibrate_sigma: bool = False
    calibrate_min: int = 30
    # batch diversity: greedily damp the score of rows near (in standardized feature
    # space) rows already picked this round, by 1 - exp(-d^2 / (2 l^2)) with l this
    # fraction of the median nearest-neighbour distance over the pool; 0 = plain top-k
    diversity: float = 0.0


def _bounds(windows: dict, targets: Sequence[str]):
    lo = np.full(len(targets), -np.inf)
    hi = np.full(len(targets), np.inf)
    for t, (a, b) in windows.items():
        j = list(targets).index(t)
        lo[j] = -np.inf if a is None else a
        hi[j] = np.inf if b is None else b
    return lo, hi


def acquisition_scores(kind: str, mean, std, cfg: ActiveConfig, best: float | None = None,
                       objective: Callable | None = None, rng=None) -> np.ndarray:
    """Scores (N,) of one acquisition function from ensemble predictions (N, T)."""
    if kind == "random":
        return (rng or np.random.default_rng()).random(len(mean))
    if kind == "p_window":
        lo, hi = _bounds(cfg.windows, cfg.targets)
        return np.asarray(window_probability(mean, std, lo, hi))
    m, s = objective(mean, std) if objective is not None else (mean[:, 0], std[:, 0])
    if kind == "ucb":
        return np.asarray(ucb(m, s, cfg.beta))
    if kind == "ei":
        return np.asarray(expected_improvement(m, s, -np.inf if best is None else best, cfg.xi))
    raise ValueError(f"unknown acquisition {kind!r}")


def active_learning(pool_x: np.ndarray, oracle: Callable[[np.ndarray], np.ndarray], cfg: ActiveConfig,
                    objective: Callable | None = None, hits: np.ndarray | None = None,
                    initial: np.ndarray | None = None) -> dict:
    """Run the loop on a pool of precomputed raw inputs (features), return the history.

    ``hits`` (optional boolean array over the pool, the true answer) is used only
    to record recall after every round. History: ``order`` (indices in the order
    labelled), ``rounds`` (labelled count, hits found, seconds per round)."""
    n = len(pool_x)
    rng = np.random.default_rng(cfg.seed)
    labelled = np.zeros(n, bool)
    y = np.full((n, len(cfg.targets)), np.nan)
    first = np.asarray(initial) if initial is not None else rng.choice(n, min(cfg.n_initial, n), replace=False)
    order = list(first.tolist())
    labelled[first] = True
    y[first] = oracle(first)
    rounds = []
    budget = min(cfg.budget, n)

    def record(t0):
        found = int(hits[labelled].sum()) if hits is not None else None
        rounds.append({"labelled": int(labelled.sum()), "hits_found": found, "seconds": time.perf_counter() - t0})

    record(time.perf_counter())
    # predictions each labelled row had when it was picked (NaN for the random start)
    pred_mean = np.full_like(y, np.nan)
    pred_std = np.full_like(y, np.nan)
    scales = []
    scaled_x = None
    r = 0
    while labelled.sum() < budget:
        t0 = time.perf_counter()
        k = min(cfg.batch_size, budget - int(labelled.sum()))
        if cfg.acquisition == "random":
            scores = rng.random(n)
        else:
            model = PropertyModel(cfg.model_kind, tuple(cfg.targets), dict(cfg.model_kwargs))
            train = TrainConfig(**{**cfg.train.__dict__, "seed": cfg.seed * 1000 + r})
            model.fit(pool_x[labelled], y[labelled], train)
            mean, std = model.predict_inputs(model.scale_inputs(pool_x))
            held = labelled & np.isfinite(pred_std).all(-1)
            if cfg.calibrate_sigma and held.sum() >= cfg.calibrate_min:
                s = np.array([fit_sigma_scale(y[held, j], pred_mean[held, j], pred_std[held, j])
                              for j in range(y.shape[1])])
                std = std * s
                scales.append(s.tolist())
            best = None
            if cfg.acquisition == "ei":
                ym = objective(y[labelled], np.zeros_like(y[labelled]))[0] if objective else y[labelled][:, 0]
                best = float(np.nanmax(ym))
            scores = acquisition_scores(cfg.acquisition, mean, std, cfg, best, objective, rng)
        if cfg.diversity > 0 and cfg.acquisition != "random":
            if scaled_x is None:
                mu, sd = pool_x.mean(0), pool_x.std(0)
                scaled_x = ((pool_x - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)
            pick = select_diverse(scores, labelled, k, scaled_x, cfg.diversity)
        else:
            pick = select_top(scores, labelled, k)
        if cfg.acquisition != "random":
            pred_mean[pick], pred_std[pick] = mean[pick], std[pick]
        labelled[pick] = True
        y[pick] = oracle(pick)
        order.extend(pick.tolist())
        record(t0)
        r += 1
    return {"order": np.asarray(order), "rounds": rounds, "labels": y, "sigma_scales": scales}
