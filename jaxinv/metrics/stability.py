"""Thermodynamic stability: formation energy, energy above the convex hull, and
Matbench Discovery's stability-classification metrics.

Hull: pymatgen ``PhaseDiagram`` of user reference entries (e.g. Materials Project
entries, or structures whose energies a jaxinv potential computed: pass any
``energy_fn(structures) -> total energies in eV``, such as
:func:`potential_energy_fn`). One phase diagram is built per chemical system of
the samples, from the reference entries whose elements lie inside it, and cached.
A sample whose system lacks an elemental reference gets NaN.

Classification (Matbench Discovery ``stable_metrics``, threshold 0 eV/atom):
stable means ``e_above_hull <= threshold``; a NaN prediction counts as "unstable"
(``fillna``); DAF = precision / prevalence; MAE and RMSE over pairs with both values.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

__all__ = ["HullReference", "stable_metrics", "classify_stable", "entries_from_energies", "potential_energy_fn",
           "energy_per_atom_fn", "hull_metrics"]

log = logging.getLogger("jaxinv.metrics")

EnergyFn = Callable[[Sequence], np.ndarray]  # structures -> total energies (eV)


def entries_from_energies(structures: Sequence, energies: Sequence[float], per_atom: bool = False) -> list:
    """``ComputedStructureEntry`` objects (total energy in eV; ``per_atom`` scales by N)."""
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    out = []
    for s, e in zip(structures, energies):
        e = float(e) * (len(s) if per_atom else 1.0)
        out.append(ComputedStructureEntry(s, e))
    return out


class HullReference:
    """Reference entries and the phase diagrams built from them, per chemical system."""

    def __init__(self, entries: Sequence):
        self.entries = list(entries)
        self._by_elements = [frozenset(el.symbol for el in e.composition.elements) for e in self.entries]
        self._diagrams: dict[frozenset, object] = {}

    @classmethod
    def from_structures(cls, structures: Sequence, energy_fn: EnergyFn) -> "HullReference":
        """Reference entries whose energies ``energy_fn`` computes (e.g. a jaxinv
        potential on elemental and competing phases relaxed with it)."""
        return cls(entries_from_energies(structures, np.asarray(energy_fn(list(structures)))))

    def phase_diagram(self, chemsys: frozenset):
        """The phase diagram of a chemical system (cached), None if an element has
        no elemental reference entry."""
        from pymatgen.analysis.phase_diagram import PhaseDiagram

        chemsys = frozenset(chemsys)
        if chemsys in self._diagrams:
            return self._diagrams[chemsys]
        pd = None
        inside = [(e, els) for e, els in zip(self.entries, self._by_elements) if els <= chemsys]
        terminal = {next(iter(els)) for _, els in inside if len(els) == 1}
        if terminal == set(chemsys):
            try:
                pd = PhaseDiagram([e for e, _ in inside])
            except Exception as err:  # degenerate input: no hull, NaN for its samples
                log.warning("no phase diagram for %s: %s", "-".join(sorted(chemsys)), err)
        self._diagrams[chemsys] = pd
        return pd

    def evaluate(self, compositions: Sequence, energies: Sequence[float], per_atom: bool = False) -> dict:
        """Formation energy and energy above hull (eV/atom) of (composition, energy)
        pairs; total energies unless ``per_atom``. Below-hull samples get negative
        ``e_above_hull`` (their distance below the reference hull)."""
        from pymatgen.core import Composition
        from pymatgen.entries.computed_entries import ComputedEntry

        n = len(compositions)
        e_hull = np.full(n, np.nan)
        e_form = np.full(n, np.nan)
        for k, (c, e) in enumerate(zip(compositions, energies)):
            c = c.composition if hasattr(c, "composition") else Composition(c)
            if not np.isfinite(e) or c.num_atoms == 0:
                continue
            pd = self.phase_diagram(frozenset(el.symbol for el in c.elements))
            if pd is None:
                continue
            entry = ComputedEntry(c, float(e) * (c.num_atoms if per_atom else 1.0))
            try:
                _, e_hull[k] = pd.get_decomp_and_e_above_hull(entry, allow_negative=True, check_stable=False)
                e_form[k] = pd.get_form_energy_per_atom(entry)
            except Exception as err:
                log.warning("hull evaluation failed for %s: %s", c.reduced_formula, err)
        return {"e_above_hull": e_hull, "formation_energy_per_atom": e_form}


def classify_stable(e_hull_true, e_hull_pred, threshold: float = 0.0, fillna: bool = True):
    """Boolean arrays (TP, FN, FP, TN): "positive" means ``e_above_hull <= threshold``.

    A NaN prediction is "unstable" when ``fillna``; a NaN true value is neither
    positive nor negative (Matbench Discovery's convention).
    """
    t = np.asarray(e_hull_true, np.float64)
    p = np.asarray(e_hull_pred, np.float64)
    if t.shape != p.shape:
        raise ValueError(f"shapes differ: {t.shape} vs {p.shape}")
    actual_pos, actual_neg = t <= threshold, t > threshold
    model_pos, model_neg = p <= threshold, p > threshold
    if fillna:
        model_neg = model_neg | np.isnan(p)
    return actual_pos & model_pos, actual_pos & model_neg, actual_neg & model_pos, actual_neg & model_neg


def stable_metrics(e_hull_true, e_hull_pred, threshold: float = 0.0, fillna: bool = True) -> dict:
    """Matbench Discovery's classification and regression metrics of predicted vs
    true energies above hull: TP, FP, TN, FN, precision, recall, F1, accuracy,
    TPR, FPR, TNR, FNR, prevalence, DAF (= precision / prevalence), MAE, RMSE, R2."""
    tp, fn, fp, tn = (int(x.sum()) for x in classify_stable(e_hull_true, e_hull_pred, threshold, fillna))
    div = lambda a, b: a / b if b > 0 else float("nan")
    pos, neg = tp + fn, tn + fp
    prevalence = div(pos, pos + neg)
    precision = div(tp, tp + fp)
    recall = div(tp, pos)
    f1 = float("nan") if not (precision + recall > 0) else 2 * precision * recall / (precision + recall)
    t = np.asarray(e_hull_true, np.float64)
    p = np.asarray(e_hull_pred, np.float64)
    both = np.isfinite(t) & np.isfinite(p)
    err = p[both] - t[both]
    ss_tot = float(((t[both] - t[both].mean()) ** 2).sum()) if both.any() else 0.0
    return {
        "TP": tp, "FP": fp, "TN": tn, "FN": fn,
        "precision": precision, "recall": recall, "F1": f1, "accuracy": div(tp + tn, pos + neg),
        "TPR": recall, "FPR": div(fp, neg), "TNR": div(tn, neg), "FNR": div(fn, pos),
        "prevalence": prevalence, "DAF": div(precision, prevalence) if prevalence == prevalence else float("nan"),
        "MAE": float(np.abs(err).mean()) if both.any() else float("nan"),
        "RMSE": float(np.sqrt((err ** 2).mean())) if both.any() else float("nan"),
        "R2": 1.0 - float((err ** 2).sum()) / ss_tot if both.sum() > 1 and ss_tot > 0 else float("nan"),
        "threshold": float(threshold),
    }


def hull_metrics(e_above_hull: np.ndarray, thresholds: Sequence[float] = (0.0, 0.1)) -> dict:
    """Summary of samples' energies above hull: fraction at or below each threshold
    (over all samples; NaN counts as not stable), mean and median of the finite ones."""
    e = np.asarray(e_above_hull, np.float64)
    fin = e[np.isfinite(e)]
    out = {"n": int(len(e)), "n_with_hull": int(len(fin)),
           "mean": float(fin.mean()) if len(fin) else float("nan"),
           "median": float(np.median(fin)) if len(fin) else float("nan")}
    for t in thresholds:
        out[f"frac_below_{t:g}"] = float(np.sum(fin <= t)) / len(e) if len(e) else float("nan")
    return out


def potential_energy_fn(potential, batch_size: int = 256) -> EnergyFn:
    """``structures -> total energies (eV)`` of a :class:`jaxinv.potentials.base.Potential`
    (single points on the given geometries; relax first for hull energies)."""
    import jax

    from jaxinv.crystal import Crystal, group_by_bucket
    from jaxinv.graph import neighbor_graph
    from jaxinv.potentials.base import check_species

    energy = jax.jit(potential.energy_fn)

    def fn(structures: Sequence) -> np.ndarray:
        structures = list(structures)
        out = np.full(len(structures), np.nan)
        for size, members in group_by_bucket([len(s) for s in structures]).items():
            for start in range(0, len(members), batch_size):
                part = members[start:start + batch_size]
                crystal = Crystal.from_structures([structures[i] for i in part], labels={}, n_max=size)
                crystal = crystal.pad(batch_size=batch_size) if len(part) < batch_size else crystal
                check_species(potential, crystal)
                graph = neighbor_graph(crystal, potential.cutoff)
                out[part] = np.asarray(energy(potential.params, crystal, graph))[: len(part)]
        return out

    return fn


def energy_per_atom_fn(energy_fn: EnergyFn) -> EnergyFn:
    """Wrap a total-energy function into energy per atom (a property for Wasserstein distances)."""
    def fn(structures: Sequence) -> np.ndarray:
        structures = list(structures)
        return np.asarray(energy_fn(structures), np.float64) / np.array([len(s) for s in structures])

    return fn
