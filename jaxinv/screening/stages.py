"""The funnel's stages. Each function returns a :class:`~jaxinv.screening.funnel.Stage`
whose ``apply(candidates, context) -> Decision`` follows the contract in
:mod:`jaxinv.screening.funnel`; ``build_stage`` makes one from a config dict
(``{type: composition, ...}``), which is how ``jaxinv/configs/screen.yaml`` lists them.

* :func:`composition_filter`: element allow/deny lists, number of elements, SMACT.
* :func:`property_filter`: ensemble predictions; keep while ``mean ± kσ`` can
  still satisfy every window (a candidate is dropped only when it fails even
  at the optimistic end of its interval).
* :func:`relax_stage`: batched relaxation with a jaxinv potential (``jaxinv.relax``),
  checkpointed per chunk with orbax.
* :func:`stability_stage`: energy above the convex hull of reference phases whose
  energies the *same* potential computed (``jaxinv.metrics.HullReference``).
* :func:`rank_stage`: final windows on any columns, sort, keep the top k.
"""
from __future__ import annotations

import importlib
import logging
import math
from typing import Sequence

import numpy as np

from jaxinv.screening.candidates import Candidates
from jaxinv.screening.funnel import Decision, Stage

__all__ = ["composition_filter", "property_filter", "relax_stage", "stability_stage", "rank_stage", "build_stage",
           "window_probability", "resolve_callable", "load_potential_spec"]

log = logging.getLogger("jaxinv.screening")


def _window(bounds) -> tuple[float, float]:
    lo, hi = (list(bounds) + [None, None])[:2]
    return (-math.inf if lo is None else float(lo)), (math.inf if hi is None else float(hi))


# ------------------------------------------------------------------ composition
def composition_filter(allowed: Sequence[str] | None = None, excluded: Sequence[str] = (),
                       max_elements: int | None = None, smact: bool = True,
                       oxidation_states_set: str = "icsd24", chunk_size: int = 20000) -> Stage:
    """Drop candidates with elements outside ``allowed`` or inside ``excluded``,
    with more than ``max_elements`` elements, or (``smact``) failing SMACT's
    charge-neutrality and electronegativity test."""
    from pymatgen.core import Element

    allowed_z = None if allowed is None else {Element(e).Z for e in allowed}
    excluded_z = {Element(e).Z for e in excluded}

    def apply(cands: Candidates, context) -> Decision:
        from jaxinv.screening.substitution import smact_neutral

        c = cands.crystal.to_host()
        n = len(cands)
        keep = np.ones(n, bool)
        reason = np.full(n, "", dtype=object)
        present = [set(z[m].tolist()) for z, m in zip(c.numbers, c.mask)]
        if allowed_z is not None:
            bad = np.array([not s <= allowed_z for s in present])
            reason[keep & bad] = "element not allowed"
            keep &= ~bad
        if excluded_z:
            bad = np.array([bool(s & excluded_z) for s in present])
            reason[keep & bad] = "excluded element"
            keep &= ~bad
        if max_elements is not None:
            bad = np.array([len(s) > max_elements for s in present])
            reason[keep & bad] = f"more than {max_elements} elements"
            keep &= ~bad
        if smact and keep.any():
            formulas = cands.formulas()
            ok = np.ones(n, bool)
            ok[keep] = smact_neutral(formulas[keep], oxidation_states_set)
            reason[keep & ~ok] = "SMACT: not charge neutral / electronegativity"
            keep &= ok
        return Decision(keep, reason.astype(str))

    cfg = {"allowed": None if allowed is None else sorted(allowed), "excluded": sorted(excluded),
           "max_elements": max_elements, "smact": smact, "oxidation_states_set": oxidation_states_set}
    return Stage("composition", apply, cfg, chunk_size)


# --------------------------------------------------------------------- property
def _truncated_mass(mean, std, lo, hi):
    """P(lo <= Y <= hi) for Y ~ N(mean, std) truncated to (0, inf), elementwise (the window
    clipped at 0). Computed with scipy's ``truncnorm``, from the nearer tail, so a mean
    many σ below 0 or far from the window still gives accurate small numbers."""
    from scipy.stats import truncnorm

    a, b = max(lo, 0.0), max(hi, 0.0)
    out = np.zeros(len(mean))
    if b <= a:
        return out
    alpha = -mean / std
    below = mean < a  # the window lies in the upper tail: use survival functions
    kw = dict(a=alpha, b=np.inf, loc=mean, scale=std)
    up = truncnorm.sf(a, **kw) - (truncnorm.sf(b, **kw) if np.isfinite(b) else 0.0)
    down = (truncnorm.cdf(b, **kw) if np.isfinite(b) else 1.0) - truncnorm.cdf(a, **kw)
    out = np.where(below, up, down)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)


def window_probability(mean, std, windows: dict, targets: Sequence[str], p_positive=None,
                       hurdle: Sequence[str] | None = None) -> np.ndarray:
    """P(every target inside its window) under independent per-target distributions, (N,).

    An ordinary target is Gaussian, N(mean, std). A hurdle target ("0 or positive", e.g. a
    band gap; ``PropertyModel(hurdle=...)``) is a mixture: with probability ``1 - p`` it is
    exactly 0, with probability ``p = p_positive[:, j]`` it is positive and distributed as
    N(mean, std) *truncated to (0, inf)*: the regressor of a hurdle model is trained on the
    positive labels only, so its Gaussian describes y given y > 0, and the mass it puts
    below 0 is renormalized away rather than counted as a zero. So

        P(lo <= y <= hi) = p * P(max(lo, 0) <= Y <= hi | Y > 0) + (1 - p) * [lo <= 0 <= hi].

    ``p_positive`` (N, T) is what ``model.predict(..., positive=True)`` returns; ``hurdle``
    names the hurdle targets (default: those whose ``p_positive`` column is not all 1)."""
    from scipy.stats import norm

    targets = list(targets)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    if p_positive is not None:
        p_positive = np.asarray(p_positive, np.float64)
        if hurdle is None:
            hurdle = [t for j, t in enumerate(targets) if not np.all(p_positive[:, j] == 1.0)]
    hurdle = set(hurdle or ()) if p_positive is not None else set()
    p = np.ones(len(mean))
    for t, bounds in windows.items():
        j = targets.index(t)
        lo, hi = _window(bounds)
        s = np.maximum(std[:, j], 1e-12)
        if t in hurdle:
            pos = np.clip(p_positive[:, j], 0.0, 1.0)
            p *= pos * _truncated_mass(mean[:, j], s, lo, hi) + (1.0 - pos) * float(lo <= 0.0 <= hi)
        else:
            p *= norm.cdf((hi - mean[:, j]) / s) - norm.cdf((lo - mean[:, j]) / s)
    return p


def _hurdle_of(model) -> tuple:
    return tuple(getattr(model, "hurdle", None) or ())


def _predict(model, crystal=None, inputs=None):
    """(mean, std, p_positive or None) of a PropertyModel, from a Crystal batch or scaled inputs."""
    if _hurdle_of(model):
        if inputs is not None:
            return model.predict_inputs(inputs, positive=True)
        return model.predict(crystal, positive=True)
    mean, std = model.predict(crystal) if inputs is None else model.predict_inputs(inputs)
    return mean, std, None


def window_decision(model, mean, std, p_positive, windows: dict, k: float | None, p_min: float | None = None):
    """The kσ rule and the prediction columns of :func:`property_filter` for predictions
    already made: (keep (N,), reason (N,), columns). ``k=None`` keeps every row.

    Ordinary target: dropped when ``[mean - kσ, mean + kσ]`` misses its window. Hurdle
    target (see :func:`window_probability`): kept while either of its parts can still
    reach the window at the optimistic end, with ``Φ(-k)`` (the one-sided tail of kσ,
    0.023 for k = 2) as the smallest probability that counts as possible:

    * the positive part, when ``p_positive >= Φ(-k)`` and its interval clipped at 0,
      ``[max(mean - kσ, 0), max(mean + kσ, 0)]``, overlaps the window's positive part;
    * the zero, when the window contains 0 and ``1 - p_positive >= Φ(-k)``.

    For a window that excludes 0 (a gap of 1.5-3 eV) this drops a candidate when
    ``p_positive < Φ(-k)`` or when the positive part's kσ interval misses the window.
    ``p_min`` replaces Φ(-k) as that smallest probability (a classifier's small
    probabilities can be overconfident: on perov_5 held out, structures given P(gap > 0)
    ~ 0.005 had a gap 1.5% of the time; benchmarks/RESULTS.md, issue 25 held-out screening)."""
    from scipy.stats import norm

    targets = list(model.targets)
    hurdle = set(_hurdle_of(model)) if p_positive is not None else set()
    n = len(mean)
    keep = np.ones(n, bool)
    reason = np.full(n, "", dtype=object)
    if k is not None:
        tail = float(norm.sf(k)) if p_min is None else float(p_min)
        for t, bounds in windows.items():
            j = targets.index(t)
            lo, hi = _window(bounds)
            up, down = mean[:, j] + k * std[:, j], mean[:, j] - k * std[:, j]
            if t in hurdle:
                pos = p_positive[:, j]
                reach = (np.maximum(up, 0.0) >= lo) & (np.maximum(down, 0.0) <= hi) & (hi > 0)
                zero_in = lo <= 0.0 <= hi
                ok = ((pos >= tail) & reach) | (zero_in & (1.0 - pos >= tail))
                unlikely = (pos < tail) & (not zero_in)
                reason[keep & ~ok & unlikely] = (f"P({t} > 0) < {tail:.3g} (the {k:g}-sigma tail)" if p_min is None
                                                 else f"P({t} > 0) < {tail:.3g}")
                reason[keep & ~ok & ~unlikely] = f"{t} outside [{lo:g}, {hi:g}] at {k:g} sigma"
                keep &= ok
            else:
                fail = (up < lo) | (down > hi)
                reason[keep & fail] = f"{t} outside [{lo:g}, {hi:g}] at {k:g} sigma"
                keep &= ~fail
    cols = {f"pred_{t}": mean[:, j] for j, t in enumerate(targets)}
    cols.update({f"sigma_{t}": std[:, j] for j, t in enumerate(targets)})
    if hurdle:
        cols.update({f"p_positive_{t}": p_positive[:, j] for j, t in enumerate(targets) if t in hurdle})
    cols["p_window"] = window_probability(mean, std, windows, targets, p_positive,
                                          hurdle=sorted(hurdle) if p_positive is not None else None)
    return keep, reason.astype(str), cols


def _load_model(model):
    from jaxinv.screening.train import PropertyModel

    if isinstance(model, PropertyModel):
        return model, None
    return PropertyModel.load(str(model)), str(model)


def _model_tag(model, path):
    tag = path or f"in-memory:{model.kind}:{list(model.targets)}"
    return tag + (f":hurdle={list(_hurdle_of(model))}" if _hurdle_of(model) and not path else "")


def property_filter(model, windows: dict, k: float = 2.0, chunk_size: int = 8192, name: str = "property",
                    p_min: float | None = None) -> Stage:
    """Predict with an ensemble :class:`~jaxinv.screening.train.PropertyModel` (or
    the path of a saved one) and keep candidates that can still satisfy every window
    (``{target: [lo, hi]}``, None = open) at the optimistic end of their kσ interval
    (:func:`window_decision`; hurdle targets such as band gaps by their two parts; ``p_min``:
    the smallest P(t > 0) that keeps a hurdle target's positive part possible, default Φ(-k)).
    Adds ``pred_<t>``, ``sigma_<t>`` (for a hurdle target: given that it is > 0),
    ``p_positive_<t>`` (hurdle targets: P(t > 0)) and ``p_window`` columns."""
    model, path = _load_model(model)
    missing = sorted(set(windows) - set(model.targets))
    if missing:
        raise ValueError(f"windows on {missing}, but the model predicts {list(model.targets)}")

    def apply(cands: Candidates, context) -> Decision:
        mean, std, p_pos = _predict(model, cands.crystal)
        keep, reason, cols = window_decision(model, mean, std, p_pos, windows, k, p_min)
        return Decision(keep, reason, cols)

    cfg = {"model": _model_tag(model, path), "windows": {t: list(_window(b)) for t, b in windows.items()}, "k": k}
    if p_min is not None:  # (absent when unset: runs started before p_min existed still resume)
        cfg["p_min"] = p_min
    return Stage(name, apply, cfg, chunk_size)


# ------------------------------------------------------------------- relaxation
def resolve_callable(spec: str):
    """``'package.module:function'`` -> the function (e.g. a potential loader)."""
    if ":" not in spec:
        raise ValueError(f"expected 'module:function', got {spec!r}")
    mod, fn = spec.split(":", 1)
    return getattr(importlib.import_module(mod), fn)


def load_potential_spec(spec: str):
    """A potential from a registry name (``'sevennet0'``, ``'sw_si'``; see
    ``jaxinv.potentials.registry``) or a ``'module:factory'`` string."""
    if ":" in spec:
        return resolve_callable(spec)()
    from jaxinv.potentials.registry import load_potential

    return load_potential(spec)


def _potential(potential):
    if isinstance(potential, str):
        return load_potential_spec(potential)
    return potential


def _same_potential(kind: str, potential) -> bool:
    """Whether the feature kind ``kind`` names the loaded ``potential`` (a NequIP-family
    model registered under that name), so its parameters can give the features."""
    from jaxinv.potentials.registry import factory_of

    factory = factory_of(kind)
    meta = getattr(potential, "metadata", None) or {}
    return factory is not None and "config" in meta and factory[2].get("name") == getattr(potential, "name", None)


def _model_inputs(model, crystal, potential):
    """Scaled inputs of ``model`` for ``crystal``; a frozen potential's features come
    from the relaxing ``potential``'s own parameters when it is that potential, so a
    stage that relaxes and predicts loads it once."""
    from jaxinv.screening.features import POTENTIAL_FEATURES, potential_features

    if model.kind == "composition" and model.features in POTENTIAL_FEATURES and _same_potential(model.features,
                                                                                                 potential):
        return model.scale_inputs(potential_features(crystal, potential))
    return model.inputs(crystal)


def relax_stage(potential, fmax: float = 0.05, max_steps: int = 300, cell: str = "frechet",
                keep_unconverged: bool = True, chunk_size: int = 512, model=None, windows: dict | None = None,
                k: float | None = None, p_min: float | None = None) -> Stage:
    """Relax with a :class:`~jaxinv.potentials.Potential` (or a registry name / ``'module:loader'``).

    Failed relaxations (NaN, collapsed cell, broken graph) are dropped; those out
    of steps are kept (flagged in ``relax_status``) unless ``keep_unconverged`` is
    False. Adds ``energy`` (eV), ``energy_per_atom`` and ``relax_steps``. The
    relaxation queue checkpoints with orbax into the chunk's work directory, so a
    killed chunk resumes mid-relaxation.

    Predict and relax in one pass: with ``model`` (a :class:`~jaxinv.screening.train.PropertyModel`
    or the path of a saved one) every chunk is predicted right after its relaxation, on
    the relaxed geometry, in the same process and on the same devices as the potential,
    adding the columns of :func:`property_filter` (``pred_<t>``, ``sigma_<t>``,
    ``p_positive_<t>``, and ``p_window`` when ``windows`` are given); with ``k`` too,
    candidates that cannot reach the windows at kσ are dropped (:func:`window_decision`).
    A model on ``sevennet0`` features takes them from the relaxing potential's own
    parameters when that potential is SevenNet-0 (no second load)."""
    spec = potential if isinstance(potential, str) else getattr(potential, "name", "potential")
    state = {}
    path = None
    if model is not None:
        model, path = _load_model(model)
        missing = sorted(set(windows or {}) - set(model.targets))
        if missing:
            raise ValueError(f"windows on {missing}, but the model predicts {list(model.targets)}")
    elif windows or k is not None:
        raise ValueError("relax_stage: windows and k need a model")

    def apply(cands: Candidates, context) -> Decision:
        from jaxinv.relax import converged, energy_per_atom, failed, relax, status_names

        if "potential" not in state:
            state["potential"] = _potential(potential)
        ckpt = None
        if context.get("workdir") is not None:
            ckpt = str(context["workdir"] / f"relax_ckpt_{context.get('chunk', 0):05d}")
        relaxed = relax(cands.crystal, state["potential"], fmax=fmax, max_steps=max_steps, cell=cell,
                        checkpoint=ckpt, progress=False)
        status = np.array(status_names(relaxed))
        keep = ~failed(relaxed)
        if not keep_unconverged:
            keep &= converged(relaxed)
        reason = np.where(keep, "", np.char.add("relaxation ", status.astype(str))).astype(object)
        energy = np.asarray(relaxed.labels["energy"], np.float64)
        columns = {"energy": energy, "energy_per_atom": energy_per_atom(relaxed), "relax_status": status,
                   "relax_steps": np.asarray(relaxed.labels["steps"])}
        geometry = relaxed.without_labels()
        if model is not None:
            cols = _predict_relaxed(model, geometry, keep, state)
            ok, why, pred_cols = window_decision(model, *cols, windows or {}, k, p_min)
            if not windows:
                pred_cols.pop("p_window", None)
            reason[keep & ~ok] = why[keep & ~ok]
            keep &= ok
            columns.update(pred_cols)
        return Decision(keep, reason.astype(str), columns, crystal=geometry)

    cfg = {"potential": spec, "fmax": fmax, "max_steps": max_steps, "cell": cell, "keep_unconverged": keep_unconverged}
    if model is not None:
        cfg.update(model=_model_tag(model, path), windows={t: list(_window(b)) for t, b in (windows or {}).items()},
                   k=k, p_min=p_min)
    return Stage("relax", apply, cfg, chunk_size)


def _predict_relaxed(model, crystal, ok, state):
    """(mean, std, p_positive) of every row; rows whose relaxation failed (``~ok``: NaN or
    broken geometry) are not featurized and get NaN."""
    n = len(ok)
    t = len(model.targets)
    mean, std = np.full((n, t), np.nan), np.full((n, t), np.nan)
    p_pos = np.full((n, t), np.nan) if _hurdle_of(model) else None
    rows = np.flatnonzero(ok)
    if len(rows):
        part = crystal if len(rows) == n else crystal[rows]
        m, s, p = _predict(model, inputs=_model_inputs(model, part, state["potential"]))
        mean[rows], std[rows] = m, s
        if p_pos is not None:
            p_pos[rows] = p
    return mean, std, p_pos


# -------------------------------------------------------------------- stability
def stability_stage(reference, max_e_above_hull: float = 0.1, chunk_size: int = 4096) -> Stage:
    """Energy above the hull of ``reference`` (a ``jaxinv.metrics.HullReference``
    whose entries were computed with the same potential as the candidates'
    ``energy`` column). Drops candidates above ``max_e_above_hull`` (eV/atom)
    and those whose chemical system the reference does not cover."""

    def apply(cands: Candidates, context) -> Decision:
        if "energy" not in cands.table:
            raise ValueError("the stability stage needs an 'energy' column: put a relax stage before it")
        res = reference.evaluate(_compositions(cands), cands.table["energy"])
        e_hull = np.asarray(res["e_above_hull"], np.float64)
        keep = np.isfinite(e_hull) & (e_hull <= max_e_above_hull)
        reason = np.where(np.isfinite(e_hull), f"e_above_hull > {max_e_above_hull:g} eV/atom",
                          "no reference hull for its chemical system")
        return Decision(keep, reason, {"e_above_hull": e_hull,
                                       "formation_energy_per_atom": np.asarray(res["formation_energy_per_atom"])})

    return Stage("stability", apply, {"max_e_above_hull": max_e_above_hull,
                                      "reference": f"{len(getattr(reference, 'entries', []))} entries"}, chunk_size)


def _compositions(cands: Candidates) -> list:
    """Full (unreduced) compositions of the cells: hull energies are totals per cell."""
    from pymatgen.core import Composition, Element

    c = cands.crystal.to_host()
    out = []
    for z, m in zip(c.numbers, c.mask):
        u, n = np.unique(z[m], return_counts=True)
        out.append(Composition({Element.from_Z(int(a)): int(b) for a, b in zip(u, n)}))
    return out


# ---------------------------------------------------------------------- ranking
def rank_stage(by: str, ascending: bool = False, top_k: int | None = None, windows: dict | None = None) -> Stage:
    """Final filter and ranking: keep rows with every column of ``windows`` inside
    its window, sort by ``by`` and keep the first ``top_k``. Adds ``rank`` (1 = best)."""
    windows = dict(windows or {})

    def apply(cands: Candidates, context) -> Decision:
        n = len(cands)
        keep = np.ones(n, bool)
        reason = np.full(n, "", dtype=object)
        for col, bounds in windows.items():
            if col not in cands.table:
                raise ValueError(f"rank window on unknown column {col!r}; columns: {sorted(cands.table)}")
            lo, hi = _window(bounds)
            v = np.asarray(cands.table[col], np.float64)
            bad = ~((v >= lo) & (v <= hi))
            reason[keep & bad] = f"{col} outside [{lo:g}, {hi:g}]"
            keep &= ~bad
        if by not in cands.table:
            raise ValueError(f"cannot rank by unknown column {by!r}; columns: {sorted(cands.table)}")
        v = np.asarray(cands.table[by], np.float64)
        key = np.where(keep, v if ascending else -v, np.inf)
        key = np.where(np.isnan(key), np.inf, key)
        order = np.argsort(key, kind="stable")
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(1, n + 1)
        if top_k is not None:
            cut = keep & (rank > top_k)
            reason[cut] = f"below the top {top_k}"
            keep &= ~cut
        return Decision(keep, reason.astype(str), {"rank": rank}, order=order)

    return Stage("rank", apply, {"by": by, "ascending": ascending, "top_k": top_k,
                                 "windows": {k: list(_window(v)) for k, v in windows.items()}}, None)


# ----------------------------------------------------------------------- config
def build_stage(spec: dict, context: dict | None = None) -> Stage:
    """A stage from a config mapping: ``type`` is composition | property | relax |
    stability | rank; the other keys are the stage function's arguments.
    ``context`` supplies objects a config cannot hold (a potential, a hull reference)."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    context = context or {}
    if kind == "composition":
        return composition_filter(**spec)
    if kind == "property":
        return property_filter(spec.pop("model", None) or context["model"], **spec)
    if kind == "relax":
        return relax_stage(spec.pop("potential", None) or context["potential"], **spec)
    if kind == "stability":
        return stability_stage(context["hull_reference"], **spec)
    if kind == "rank":
        return rank_stage(**spec)
    raise ValueError(f"unknown stage type {kind!r}; use composition, property, relax, stability or rank")
