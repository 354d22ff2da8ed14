"""Property statistics: Wasserstein (earth mover's) distances between the
distributions of a property over generated and reference structures.

CDVAE reports them for density (g/cm^3, pymatgen's ``Structure.density``), the
number of distinct elements and a property predicted by a model, computed over
1,000 randomly chosen *valid* samples against the whole reference set. Any
property can be given here as arrays or as a callable ``structures -> values``
(for example the energy per atom of a jaxinv potential, see
:func:`jaxinv.metrics.stability.energy_per_atom_fn`).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = ["density", "n_elements", "wasserstein", "property_statistics", "subsample_valid", "BUILTIN_PROPERTIES"]


def density(structures) -> np.ndarray:
    """Mass density in g/cm^3 (pymatgen's ``Structure.density``); NaN for a bad cell."""
    out = []
    for s in structures:
        try:
            out.append(float(s.density))
        except Exception:  # zero or non-finite volume
            out.append(float("nan"))
    return np.array(out)


def n_elements(structures) -> np.ndarray:
    """Number of distinct elements, CDVAE's ``len(set(structure.species))``."""
    return np.array([len(set(s.species)) for s in structures], np.float64)


BUILTIN_PROPERTIES: dict[str, Callable] = {"density": density, "n_elements": n_elements}


def wasserstein(a, b) -> float:
    """scipy's 1-D Wasserstein distance, ignoring non-finite values."""
    from scipy.stats import wasserstein_distance

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float(wasserstein_distance(a, b))


def subsample_valid(valid: np.ndarray, n_samples: int | None, seed: int = 0) -> np.ndarray:
    """Indices of the valid samples, or ``n_samples`` of them drawn without
    replacement (CDVAE draws 1,000); all of them when there are fewer."""
    idx = np.flatnonzero(np.asarray(valid, bool))
    if n_samples is not None and len(idx) > n_samples:
        idx = np.sort(np.random.default_rng(seed).choice(idx, n_samples, replace=False))
    return idx


def property_statistics(generated: Sequence, reference: Sequence,
                        properties: Mapping[str, Callable | tuple] | Sequence[str] = ("density", "n_elements"),
                        ) -> dict:
    """``{name: {"wdist", "gen_mean", "ref_mean", "n_gen", "n_ref"}}`` per property.

    Each property is a name from :data:`BUILTIN_PROPERTIES`, a callable applied to
    both structure lists, or a tuple ``(generated_values, reference_values)``.
    Pass the structures to compare (e.g. the valid subsample) as ``generated``.
    """
    if not isinstance(properties, Mapping):
        properties = {name: BUILTIN_PROPERTIES[name] for name in properties}
    out = {}
    for name, spec in properties.items():
        if isinstance(spec, str):
            spec = BUILTIN_PROPERTIES[spec]
        if callable(spec):
            g, r = np.asarray(spec(list(generated)), np.float64), np.asarray(spec(list(reference)), np.float64)
        else:
            g, r = (np.asarray(x, np.float64) for x in spec)
        gf, rf = g[np.isfinite(g)], r[np.isfinite(r)]
        out[name] = {"wdist": wasserstein(g, r), "gen_mean": float(gf.mean()) if len(gf) else float("nan"),
                     "ref_mean": float(rf.mean()) if len(rf) else float("nan"), "n_gen": int(len(gf)),
                     "n_ref": int(len(rf))}
    return out
