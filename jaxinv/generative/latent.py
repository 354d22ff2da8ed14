"""Latent-space optimization: gradient steps on VAE latent codes through the
property head, toward target properties, with a penalty keeping codes near the
prior (where the decoder has been trained and decodes to sensible crystals).

Objectives are given per property, in physical units::

    {"heat_ref": "min", "dir_gap": [1.5, 3.0]}          # minimize, and a window
    {"heat_ref": {"max": 0.5}, "dir_gap": {"target": 2}}  # a one-sided window, a value

Each term is measured in units of the property's training-set standard
deviation, so weights are comparable across properties:

* ``min`` / ``max``: the normalized prediction itself (minus it for max);
* a window ``[lo, hi]`` (either side may be None): the squared distance to the
  window shrunk by 10% of its width on both sides (0.25 standard deviations for
  a one-sided window), so optimized codes land inside it, not on its edge;
  zero inside;
* ``target``: the squared normalized error.

The total loss per code is ``sum_k weight_k * term_k + prior_weight * |z|^2 / 2``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import optax

import jax
import jax.numpy as jnp

__all__ = ["Objective", "parse_objectives", "optimize_latent", "LatentResult", "objective_satisfied"]


@dataclass(frozen=True)
class Objective:
    """One term of a design target (physical units)."""

    prop: str
    mode: str  # "min" | "max" | "window" | "target"
    low: float | None = None
    high: float | None = None
    value: float | None = None
    weight: float = 1.0
    # for min/max: the value counted as a hit when reporting success rates (None: not scored)
    threshold: float | None = None

    def satisfied(self, y) -> np.ndarray:
        y = np.asarray(y, np.float64)
        if self.mode == "window":
            lo = -np.inf if self.low is None else self.low
            hi = np.inf if self.high is None else self.high
            return (y >= lo) & (y <= hi)
        if self.mode == "target":
            return np.abs(y - self.value) <= (self.threshold if self.threshold is not None else np.inf)
        if self.threshold is None:
            return np.ones(y.shape, bool)
        return y <= self.threshold if self.mode == "min" else y >= self.threshold

    def describe(self) -> str:
        if self.mode == "window":
            return f"{self.low if self.low is not None else '-inf'} <= {self.prop} <= " \
                   f"{self.high if self.high is not None else 'inf'}"
        if self.mode == "target":
            return f"{self.prop} = {self.value}"
        hit = f" (hit: {'<=' if self.mode == 'min' else '>='} {self.threshold})" if self.threshold is not None else ""
        return f"{self.mode} {self.prop}{hit}"


def parse_objectives(spec: Mapping) -> list[Objective]:
    """Objectives from a mapping property -> 'min' | 'max' | [lo, hi] | {min/max/target/
    low/high/weight/threshold: ...} (see the module docstring)."""
    out = []
    for prop, v in spec.items():
        if isinstance(v, str):
            if v not in ("min", "max"):
                raise ValueError(f"objective for {prop!r}: use 'min', 'max', [low, high] or a dict, not {v!r}")
            out.append(Objective(prop, v))
        elif isinstance(v, (list, tuple)):
            if len(v) != 2:
                raise ValueError(f"window for {prop!r} must be [low, high]")
            lo, hi = (None if x is None else float(x) for x in v)
            out.append(Objective(prop, "window", lo, hi))
        elif isinstance(v, Mapping):
            v = dict(v)
            w = float(v.pop("weight", 1.0))
            thr = v.pop("threshold", None)
            thr = None if thr is None else float(thr)
            if "target" in v:
                out.append(Objective(prop, "target", value=float(v["target"]), weight=w, threshold=thr))
            elif "mode" in v and v["mode"] in ("min", "max"):
                out.append(Objective(prop, v["mode"], weight=w, threshold=thr))
            else:
                lo = v.get("low", v.get("min"))
                hi = v.get("high", v.get("max"))
                if lo is None and hi is None:
                    raise ValueError(f"objective for {prop!r} needs target, mode, or low/high bounds: {v}")
                out.append(Objective(prop, "window", None if lo is None else float(lo),
                                     None if hi is None else float(hi), weight=w))
        else:
            raise ValueError(f"cannot read objective {prop!r}: {v!r}")
    return out


def objective_satisfied(objectives, predictions: np.ndarray, properties: list[str]) -> np.ndarray:
    """(n,) whether every objective holds for (n, P) predictions in physical units."""
    ok = np.ones(len(predictions), bool)
    for o in objectives:
        ok &= o.satisfied(predictions[:, properties.index(o.prop)])
    return ok


@dataclass
class LatentResult:
    z: np.ndarray  # (n, latent) optimized codes
    z0: np.ndarray  # starting codes
    predictions: np.ndarray  # (n, P) property predictions at z (physical units)
    predictions0: np.ndarray  # at z0
    loss: np.ndarray  # (steps,) mean loss per step
    satisfied: np.ndarray  # (n,) objectives met by the property head at z


def _loss_terms(model, objectives):
    """A function (normalized predictions (n, P)) -> (n,) objective loss."""
    idx = [model.properties.index(o.prop) for o in objectives]
    mean, std = model.prop_mean, model.prop_std

    def fn(y):
        total = jnp.zeros(y.shape[0])
        for o, k in zip(objectives, idx):
            p = y[:, k]
            if o.mode == "min":
                t = p
            elif o.mode == "max":
                t = -p
            elif o.mode == "target":
                t = (p - (o.value - mean[k]) / std[k]) ** 2
            else:
                lo = -jnp.inf if o.low is None else (o.low - mean[k]) / std[k]
                hi = jnp.inf if o.high is None else (o.high - mean[k]) / std[k]
                # aim inside the window, not at its edge: 10% of its width, or 0.25 std if one-sided
                m = 0.1 * (hi - lo) if (o.low is not None and o.high is not None) else 0.25
                lo, hi = lo + m, hi - m
                t = jax.nn.relu(lo - p) ** 2 + jax.nn.relu(p - hi) ** 2
            total = total + o.weight * t
        return total

    return fn


def optimize_latent(model, params, z0, objectives, steps: int = 200, learning_rate: float = 0.05,
                    prior_weight: float = 0.1, optimizer: optax.GradientTransformation | None = None) -> LatentResult:
    """Move latent codes ``z0`` (n, latent) toward ``objectives`` through the property head.

    Every code is optimized independently (the loss is a sum over codes); the
    whole optimization is one jitted ``lax.scan``. ``optimizer`` defaults to
    Adam at ``learning_rate``.
    """
    if not model.n_props:
        raise TypeError("latent optimization needs a model with a property head (a VAE with property_head=True)")
    unknown = [o.prop for o in objectives if o.prop not in model.properties]
    if unknown:
        raise ValueError(f"the property head predicts {model.properties}; no {unknown}")
    tx = optimizer or optax.adam(learning_rate)
    term = _loss_terms(model, objectives)
    predict = lambda z: model.module.apply(params, z, method="predict")

    def loss_fn(z):
        per = term(predict(z)) + prior_weight * 0.5 * jnp.sum(z * z, -1)
        return jnp.sum(per), jnp.mean(per)

    @jax.jit
    def run(z):
        def body(carry, _):
            z, opt = carry
            (_, mean), g = jax.value_and_grad(loss_fn, has_aux=True)(z)
            u, opt = tx.update(g, opt, z)
            return (optax.apply_updates(z, u), opt), mean

        (z, _), losses = jax.lax.scan(body, (z, tx.init(z)), None, length=steps)
        return z, losses

    z0 = jnp.asarray(z0, jnp.float32)
    z, losses = run(z0)
    pred = model.predict(params, z)
    return LatentResult(np.asarray(z), np.asarray(z0), pred, model.predict(params, z0), np.asarray(losses),
                        objective_satisfied(objectives, pred, model.properties))
