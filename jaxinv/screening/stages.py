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
def window_probability(mean, std, windows: dict, targets: Sequence[str]) -> np.ndarray:
    """P(every target inside its window) under independent Gaussians, (N,)."""
    from scipy.stats import norm

    p = np.ones(len(mean))
    for t, bounds in windows.items():
        j = list(targets).index(t)
        lo, hi = _window(bounds)
        s = np.maximum(std[:, j], 1e-12)
        p *= norm.cdf((hi - mean[:, j]) / s) - norm.cdf((lo - mean[:, j]) / s)
    return p


def property_filter(model, windows: dict, k: float = 2.0, chunk_size: int = 8192, name: str = "property") -> Stage:
    """Predict with an ensemble :class:`~jaxinv.screening.train.PropertyModel` (or
    the path of a saved one) and keep candidates whose interval ``[mean - kσ,
    mean + kσ]`` overlaps every window (``{target: [lo, hi]}``, None = open).
    Adds ``pred_<t>``, ``sigma_<t>`` and ``p_window`` columns."""
    from jaxinv.screening.train import PropertyModel

    path = None
    if not isinstance(model, PropertyModel):
        path = str(model)
        model = PropertyModel.load(path)
    missing = sorted(set(windows) - set(model.targets))
    if missing:
        raise ValueError(f"windows on {missing}, but the model predicts {list(model.targets)}")

    def apply(cands: Candidates, context) -> Decision:
        mean, std = model.predict(cands.crystal)
        keep = np.ones(len(cands), bool)
        reason = np.full(len(cands), "", dtype=object)
        for t, bounds in windows.items():
            j = model.targets.index(t)
            lo, hi = _window(bounds)
            fail = (mean[:, j] + k * std[:, j] < lo) | (mean[:, j] - k * std[:, j] > hi)
            reason[keep & fail] = f"{t} outside [{lo:g}, {hi:g}] at {k:g} sigma"
            keep &= ~fail
        cols = {f"pred_{t}": mean[:, j] for j, t in enumerate(model.targets)}
        cols.update({f"sigma_{t}": std[:, j] for j, t in enumerate(model.targets)})
        cols["p_window"] = window_probability(mean, std, windows, model.targets)
        return Decision(keep, reason.astype(str), cols)

    cfg = {"model": path or f"in-memory:{model.kind}:{list(model.targets)}", "windows": {t: list(_window(b)) for t, b in
                                                                                        windows.items()}, "k": k}
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


def relax_stage(potential, fmax: float = 0.05, max_steps: int = 300, cell: str = "frechet",
                keep_unconverged: bool = True, chunk_size: int = 512) -> Stage:
    """Relax with a :class:`~jaxinv.potentials.Potential` (or a registry name / ``'module:loader'``).

    Failed relaxations (NaN, collapsed cell, broken graph) are dropped; those out
    of steps are kept (flagged in ``relax_status``) unless ``keep_unconverged`` is
    False. Adds ``energy`` (eV), ``energy_per_atom`` and ``relax_steps``. The
    relaxation queue checkpoints with orbax into the chunk's work directory, so a
    killed chunk resumes mid-relaxation."""
    spec = potential if isinstance(potential, str) else getattr(potential, "name", "potential")
    state = {}

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
        reason = np.where(keep, "", np.char.add("relaxation ", status.astype(str)))
        energy = np.asarray(relaxed.labels["energy"], np.float64)
        columns = {"energy": energy, "energy_per_atom": energy_per_atom(relaxed), "relax_status": status,
                   "relax_steps": np.asarray(relaxed.labels["steps"])}
        return Decision(keep, reason, columns, crystal=relaxed.without_labels())

    return Stage("relax", apply, {"potential": spec, "fmax": fmax, "max_steps": max_steps, "cell": cell,
                                  "keep_unconverged": keep_unconverged}, chunk_size)


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
