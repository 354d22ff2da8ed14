"""Coverage (COV-R, COV-P) and average minimum distances (AMSD, AMCD), as CDVAE.

CDVAE's ``compute_cov`` (scripts/eval_utils.py), reproduced here:

* Generated samples enter *whether valid or not*; only those whose fingerprints
  could not be computed are dropped from the distance matrices.
* The structure and composition nearest neighbours are taken *independently*: a
  reference is covered when some sample is within ``struct_cutoff`` in CrystalNN
  space and some (possibly other) sample within ``comp_cutoff`` in Magpie space.
* COV-R = covered references / all references.
* COV-P = generated samples within both cutoffs of the reference set / **all**
  generated samples, counting those dropped for failed fingerprints.
* AMSD/AMCD-R and -P are the means of those nearest distances.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["COV_CUTOFFS", "cov_cutoffs", "nearest_distances", "coverage", "CoverageResult"]

# (structure cutoff, composition cutoff) from CDVAE's compute_metrics.py COV_Cutoffs
COV_CUTOFFS = {"perov_5": (0.2, 4.0), "carbon_24": (0.2, 4.0), "mp_20": (0.4, 10.0)}
_ALIASES = {"perovskite": "perov_5", "perov": "perov_5", "carbon": "carbon_24", "mp20": "mp_20"}


def cov_cutoffs(dataset: str) -> tuple[float, float]:
    """CDVAE's (struct, comp) cutoffs for a dataset name (``perov_5:test`` works too)."""
    name = str(dataset).split(":", 1)[0]
    name = _ALIASES.get(name, name)
    if name not in COV_CUTOFFS:
        raise KeyError(f"no CDVAE coverage cutoffs for {dataset!r}; known: {', '.join(COV_CUTOFFS)} "
                       "(give struct_cutoff and comp_cutoff explicitly)")
    return COV_CUTOFFS[name]


def nearest_distances(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each row of ``a`` to its nearest row of ``b``, and
    from each row of ``b`` to its nearest row of ``a``.

    Nearest neighbours are found with |x|^2 + |y|^2 - 2 x.y in blocks of ``chunk``
    rows of ``a`` (one matrix product per block, so 10,000 x 4,000 fingerprints
    never materialize at once); the distance to each nearest neighbour is then
    recomputed directly, so identical fingerprints give exactly 0.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if len(a) == 0 or len(b) == 0:
        return np.full(len(a), np.inf), np.full(len(b), np.inf)
    a2 = np.einsum("ij,ij->i", a, a)
    b2 = np.einsum("ij,ij->i", b, b)
    a_arg = np.empty(len(a), np.int64)
    b_best = np.full(len(b), np.inf)
    b_arg = np.zeros(len(b), np.int64)
    for start in range(0, len(a), chunk):
        block = a[start:start + chunk]
        d2 = a2[start:start + chunk, None] + b2[None, :] - 2.0 * block @ b.T
        a_arg[start:start + chunk] = d2.argmin(axis=1)
        col = d2.argmin(axis=0)
        col_d2 = d2[col, np.arange(len(b))]
        better = col_d2 < b_best
        b_best[better] = col_d2[better]
        b_arg[better] = col[better] + start
    return np.linalg.norm(a - b[a_arg], axis=1), np.linalg.norm(b - a[b_arg], axis=1)


@dataclass
class CoverageResult:
    cov_recall: float
    cov_precision: float
    amsd_recall: float
    amsd_precision: float
    amcd_recall: float
    amcd_precision: float
    struct_cutoff: float
    comp_cutoff: float
    n_generated: int  # COV-P denominator
    n_generated_used: int  # with fingerprints
    n_reference: int
    n_reference_dropped: int

    def as_dict(self) -> dict:
        return asdict(self)


def coverage(gen_struct_fp, gen_comp_fp, ref_struct_fp, ref_comp_fp, struct_cutoff: float, comp_cutoff: float,
             n_generated: int | None = None) -> CoverageResult:
    """CDVAE's coverage from fingerprints (composition ones already standardized).

    Rows with any NaN are failed fingerprints: dropped from the distances, still
    counted in the COV-P denominator ``n_generated`` (default: all given rows).
    """
    gs, gc = np.asarray(gen_struct_fp, np.float64), np.asarray(gen_comp_fp, np.float64)
    rs, rc = np.asarray(ref_struct_fp, np.float64), np.asarray(ref_comp_fp, np.float64)
    n_generated = len(gs) if n_generated is None else int(n_generated)
    g_ok = ~(np.isnan(gs).any(1) | np.isnan(gc).any(1))
    r_ok = ~(np.isnan(rs).any(1) | np.isnan(rc).any(1))
    gs, gc, rs, rc = gs[g_ok], gc[g_ok], rs[r_ok], rc[r_ok]
    s_prec, s_rec = nearest_distances(gs, rs)
    c_prec, c_rec = nearest_distances(gc, rc)
    nan = float("nan")
    mean = lambda x: float(np.mean(x)) if len(x) else nan
    covered_ref = (s_rec <= struct_cutoff) & (c_rec <= comp_cutoff)
    covered_gen = (s_prec <= struct_cutoff) & (c_prec <= comp_cutoff)
    return CoverageResult(
        cov_recall=mean(covered_ref) if len(gs) else (0.0 if len(rs) else nan),
        cov_precision=float(covered_gen.sum()) / n_generated if n_generated else nan,
        amsd_recall=mean(s_rec) if len(gs) else nan, amsd_precision=mean(s_prec),
        amcd_recall=mean(c_rec) if len(gs) else nan, amcd_precision=mean(c_prec),
        struct_cutoff=float(struct_cutoff), comp_cutoff=float(comp_cutoff),
        n_generated=n_generated, n_generated_used=int(g_ok.sum()), n_reference=int(r_ok.sum()),
        n_reference_dropped=int((~r_ok).sum()))
