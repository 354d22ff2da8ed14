"""Train a property model (deep ensemble) and report held-out MAE and calibration.

    jaxinv run train_property                                   # Magpie+site MLP on perov_5
    jaxinv run train_property model.kind=cgcnn train.epochs=100
    jaxinv run train_property data=carbon_24 'targets=[energy_per_atom]' model.features=magpie_site

Trains on the train split, selects each member's best epoch and fits a σ scale
on the valid split, and scores the test split: MAE, RMSE, and the fraction of
errors inside ±1σ and ±2σ, with raw and recalibrated σ. The model is saved to
``<run>/model`` (orbax parameters + JSON) for the ``screen`` experiment,
``learning_curve.png`` shows the NLL and every target's MAE per epoch (train and
valid, per member), and ``parity.png`` the test predictions with ±1σ bars.

Targets that are exactly 0 for many structures (band gaps: 96% of perov_5's) are
modelled as a hurdle (``model.hurdle``): P(y > 0) and a Gaussian given y > 0. For
them the report gives the classifier's ROC-AUC and the MAE and coverage on the
test structures with y > 0, beside the MAE of predicting the training median of
those structures; an MAE over all structures would mostly score the zeros.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np

from jaxinv.config import (DataConfig, Rule, RunConfig, at_least, between, checked, constrain, each, non_negative,
                           nonempty, one_of, positive)
from jaxinv.screening.train import TrainConfig


def feature_kinds():
    from jaxinv.screening.features import FEATURE_KINDS

    return FEATURE_KINDS


def _targets_problem(targets, cfg):
    """Each target a property column of a registered dataset (a CSV path is read later)."""
    from jaxinv.data.registry import REGISTRY

    info = REGISTRY.get(str(cfg.data.name))
    unknown = [t for t in targets if info is not None and t not in info.properties]
    if unknown:
        return f"{', '.join(map(repr, unknown))} not among {info.name}'s properties: {', '.join(info.properties)}"
    return None


def _finetune_problem(kind, model):
    from jaxinv.screening.features import POTENTIAL_FEATURES

    if kind == "finetune" and model.features not in POTENTIAL_FEATURES:
        return f"model.kind=finetune fine-tunes a potential: model.features must be one of {POTENTIAL_FEATURES}, " \
               f"not {model.features!r}"
    return None


@dataclass
class ModelConfig:
    kind: str = checked("composition", one_of("composition", "cgcnn", "finetune"),
                        Rule(lambda v, m: _finetune_problem(v, m), "finetune needs features = a potential's"))
    features: str = checked("magpie_site", one_of(feature_kinds))
    hidden: List[int] = checked([128, 64], each(at_least(1)))
    cgcnn_features: int = checked(64, at_least(1))
    n_conv: int = checked(3, at_least(1))
    n_rbf: int = checked(40, at_least(1))
    cutoff: float = checked(5.0, positive)
    backbone_lr: float = checked(0.05, non_negative)
    hurdle: Any = checked("auto", Rule(lambda v, cfg: None if v == "auto" or isinstance(v, (list, tuple)) else
                                       "'auto' or a list of target names", "'auto' or a list of targets"))


# The train section is the library's TrainConfig (castelli's too); its rules are declared here.
constrain(TrainConfig, n_members=at_least(1), epochs=at_least(1), batch_size=at_least(1), lr=positive,
          weight_decay=non_negative, warmup=between(0, 1), chunk_epochs=at_least(1), seed=non_negative,
          min_capacity=non_negative, patience=non_negative, head_epochs=non_negative)


@dataclass
class Config(RunConfig):
    """Fields and their meanings: jaxinv/configs/train_property.yaml (``jaxinv run train_property --help``)."""

    data: DataConfig = field(default_factory=DataConfig)
    targets: List[str] = checked(["heat_ref", "dir_gap", "ind_gap"], nonempty, Rule(_targets_problem,
                                                                                     "properties of the dataset"))
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    recalibrate: bool = True
    checkpoint: bool = True


HURDLE_ZERO_FRACTION = 0.2  # 'auto': a target with no negative label and at least this share of exact zeros


def hurdle_targets(setting, targets, y_train) -> tuple:
    """The targets modelled as a hurdle: the listed ones, or with ``'auto'`` every
    target whose training labels are never negative and at least 20% exactly 0."""
    if setting != "auto":
        unknown = [t for t in setting if t not in targets]
        if unknown:
            raise ValueError(f"model.hurdle: {unknown} are not among the targets {list(targets)}")
        return tuple(setting)
    out = []
    for j, t in enumerate(targets):
        v = np.asarray(y_train[:, j], float)
        v = v[np.isfinite(v)]
        if len(v) and v.min() >= 0 and np.mean(v == 0) >= HURDLE_ZERO_FRACTION:
            out.append(t)
    return tuple(out)


def build_model(cfg, hurdle: tuple = ()):
    from jaxinv.screening.train import PropertyModel

    m = cfg.model
    if m.kind == "cgcnn":
        kw = {"features": m.cgcnn_features, "n_conv": m.n_conv, "n_rbf": m.n_rbf, "cutoff": m.cutoff}
    elif m.kind == "finetune":
        kw = {"hidden": list(m.hidden), "backbone_lr": m.backbone_lr}
    else:
        kw = {"hidden": list(m.hidden)}
    return PropertyModel(m.kind, tuple(cfg.targets), kw, features=m.features, cutoff=m.cutoff, hurdle=tuple(hurdle))


def main(cfg, run):
    from omegaconf import OmegaConf

    from jaxinv.data import load_dataset
    from jaxinv.screening.uncertainty import calibration, roc_auc

    ds = load_dataset(cfg.data.name)
    missing = [t for t in cfg.targets if t not in ds.labels]
    if missing:
        raise ValueError(f"{ds.name} has no {missing}; it has {sorted(ds.labels)}")
    splits = {s: ds.subset(s) for s in ("train", "valid", "test")}
    if cfg.data.limit:
        rng = np.random.default_rng(cfg.seed)
        tr = splits["train"]
        splits["train"] = tr.subset(np.sort(rng.permutation(len(tr))[: cfg.data.limit]))
    y = {s: np.stack([d.labels[t] for t in cfg.targets], 1) for s, d in splits.items()}
    model = build_model(cfg, hurdle_targets(cfg.model.hurdle, cfg.targets, y["train"]))
    t0 = time.perf_counter()
    raw = {s: model.raw_inputs(d.crystal()) for s, d in splits.items()}
    t_inputs = time.perf_counter() - t0
    tc = OmegaConf.to_object(cfg.train)
    t0 = time.perf_counter()
    hist = model.fit(raw["train"], y["train"], tc, val=(raw["valid"], y["valid"]),
                     checkpoint=str(run.out_dir / "train_ckpt") if cfg.checkpoint else None, log_every=True,
                     progress=cfg.progress)
    t_train = time.perf_counter() - t0
    if hist["epoch"]:  # a rerun of a finished run trains nothing and keeps its plot
        from jaxinv.plotting import property_learning_curve

        property_learning_curve(hist, run.path("learning_curve.png"), ds.units,
                                f"{model.kind} ensemble ({tc.n_members} members) on {ds.name}")
    results = {"dataset": ds.name, "split_source": ds.split_source, "n": {s: len(d) for s, d in splits.items()},
               "model": {"kind": model.kind, "features": model.features, **model.module_kwargs},
               "train": tc.__dict__, "seconds": {"inputs": t_inputs, "train": t_train}, "targets": {},
               "hurdle": list(model.hurdle)}
    x_test = model.scale_inputs(raw["test"])
    mean_t, std_t, p_t = model.predict_inputs(x_test, positive=True)
    if cfg.recalibrate:  # σ scales and the classifiers' Platt scaling, fitted on the valid split
        results["recalibration"] = model.recalibrate(model.scale_inputs(raw["valid"]), y["valid"])
        _, _, p_cal = model.predict_inputs(x_test, positive=True)
    else:
        p_cal = p_t
    scale = model.sigma_scale
    parity = []
    for j, t in enumerate(cfg.targets):
        yt = y["test"][:, j].copy()
        r = results["targets"][t] = {"unit": ds.units.get(t, "")}
        if t in model.hurdle:  # the Gaussian describes y given y > 0: score it there
            r["roc_auc"] = roc_auc(yt[np.isfinite(yt)] > 0, p_t[np.isfinite(yt), j])
            r["test_fraction_positive"] = float(np.mean(yt[np.isfinite(yt)] > 0))
            ok = np.isfinite(yt)
            # Brier score of P(y > 0), before and after Platt scaling
            r["brier"] = float(np.mean((p_t[ok, j] - (yt[ok] > 0)) ** 2))
            r["brier_recalibrated"] = float(np.mean((p_cal[ok, j] - (yt[ok] > 0)) ** 2))
            train_pos = y["train"][:, j][y["train"][:, j] > 0]
            r["test_positive_median_mae"] = float(np.mean(np.abs(yt[yt > 0] - np.median(train_pos)))) \
                if len(train_pos) and np.any(yt > 0) else float("nan")
            yt[~(yt > 0)] = np.nan
        r.update({"test": calibration(yt, mean_t[:, j], std_t[:, j]),
                  "test_recalibrated": calibration(yt, mean_t[:, j], std_t[:, j] * scale[j]),
                  "sigma_scale": float(scale[j])})
        parity.append({"y": yt, "mean": mean_t[:, j], "std": std_t[:, j] * scale[j], "name": t,
                       "unit": r["unit"], "note": "test, given > 0" if t in model.hurdle else "test"})
        where = " on y > 0" if t in model.hurdle else ""
        extra = (f"  ROC-AUC(y > 0) {r['roc_auc']:.3f}; median-of-gapped MAE {r['test_positive_median_mae']:.4f}"
                 if t in model.hurdle else "")
        print(f"{t:>16s}: test MAE{where} {r['test']['mae']:.4f}  RMSE {r['test']['rmse']:.4f}  within 1σ "
              f"{r['test']['within_1sigma']:.3f} / 2σ {r['test']['within_2sigma']:.3f}  (recalibrated x{scale[j]:.2f}: "
              f"{r['test_recalibrated']['within_1sigma']:.3f} / {r['test_recalibrated']['within_2sigma']:.3f}){extra}")
    from jaxinv.plotting import parity_plot

    parity_plot(parity, run.path("parity.png"), f"{model.kind} ({model.features}) on {ds.name}: test split, ±1σ "
                + ("recalibrated" if cfg.recalibrate else "raw"))
    model.save(run.out_dir / "model")
    results["model_dir"] = str(run.out_dir / "model")
    results["best_val_nll"] = hist["best_val_nll"]
    run.save_json(results, "metrics.json")
    print(f"model saved to {run.out_dir / 'model'}")
    return results
