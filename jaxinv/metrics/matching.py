"""Structure matching: reconstruction / CSP match rate and RMSE, uniqueness and novelty.

All comparisons use pymatgen's ``StructureMatcher(stol=0.5, angle_tol=10,
ltol=0.3)`` (CDVAE's and DiffCSP's settings). Its RMSE is pymatgen's
``get_rms_dist``: the root-mean-square site displacement normalized by
``(V / N)^(1/3)``.

Match rate (CDVAE ``RecEval``, DiffCSP ``RecEval``/``RecEvalBatch``): a target
counts as matched when a *valid* candidate matches it; with ``k`` candidates per
target (DiffCSP's top-k / multi-eval) any of them may match and the RMSE of the
target is the smallest over its matching candidates. Match rate = matched targets
/ all targets; RMSE = mean over matched targets.

Uniqueness and novelty are bucketed: ``StructureMatcher.fit`` returns False for
structures whose reduced formulas differ (its SpeciesComparator hash) or, without
supercells, whose Niggli+primitive reduced cells have different numbers of sites.
Structures are grouped by both first and only compared within a group, which is
exact and turns 10^8 comparisons into a few thousand. Each structure is reduced
once (what ``fit`` would redo for every pair) and compared with
``fit(..., skip_structure_reduction=True)``, as pymatgen's own
``group_structures`` does.
"""
from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from typing import Sequence

import numpy as np

__all__ = ["MATCHER_KWARGS", "make_matcher", "matchable", "structures_match", "rms_dist", "reconstruction_metrics", "uniqueness_novelty",
           "formula_key"]

log = logging.getLogger("jaxinv.metrics")

MATCHER_KWARGS = {"stol": 0.5, "angle_tol": 10, "ltol": 0.3}


def make_matcher(**kwargs):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(**{**MATCHER_KWARGS, **kwargs})


def formula_key(structure) -> str:
    """The bucket of a structure: its reduced formula, StructureMatcher's own
    pre-check (``SpeciesComparator.get_hash``)."""
    return structure.composition.reduced_formula


def matchable(structure) -> bool:
    """Whether StructureMatcher may be given this structure: a finite cell with
    1e-3 to 1e6 Å^3 per atom. pymatgen's lattice search allocates arrays that grow
    with the cell's size in Å, so a runaway generated cell (lengths ~1e9 Å) makes it
    try to allocate tens of GB; such a structure matches nothing."""
    try:
        m = np.asarray(structure.lattice.matrix, np.float64)
        v = abs(float(np.linalg.det(m))) / max(len(structure), 1)
    except Exception:
        return False
    return bool(np.isfinite(m).all() and 1e-3 <= v <= 1e6)


def rms_dist(pred, target, matcher=None) -> float | None:
    """Normalized RMS displacement of ``pred`` onto ``target``, None when they do
    not match, cannot be matched (:func:`matchable`) or pymatgen raises (CDVAE
    treats these as no match)."""
    if not (matchable(pred) and matchable(target)):
        return None
    matcher = matcher or make_matcher()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = matcher.get_rms_dist(pred, target)
    except Exception:
        return None
    return None if r is None else float(r[0])


# --------------------------------------------------------------- pool helpers
_MATCHER = None


def _init_matcher(kwargs):
    global _MATCHER
    _MATCHER = make_matcher(**kwargs)


def _map(fn, tasks, kwargs, n_jobs: int, progress: bool, desc: str, min_parallel: int):
    from jaxinv.metrics._parallel import parallel_map

    return list(parallel_map(fn, tasks, n_jobs, initializer=_init_matcher, initargs=(kwargs,), progress=progress,
                             desc=desc, min_tasks=min_parallel))


# ----------------------------------------------------------- reconstruction
def _rms_task(task):
    target, candidates = task
    return [None if c is None else rms_dist(c, target, _MATCHER) for c in candidates]


def reconstruction_metrics(predictions: Sequence, targets: Sequence, valid=None, n_jobs: int = 1,
                           progress: bool = False, min_parallel: int = 200, **matcher_kwargs) -> dict:
    """Match rate and mean normalized RMSE of predictions against targets.

    ``predictions``: one structure per target (length n), or k candidates per
    target as a list of k lists of length n (DiffCSP's multi-eval layout: run j,
    target i is ``predictions[j][i]``). ``valid`` (same shape, booleans) marks
    candidates allowed to match; invalid ones count as misses, as in CDVAE/DiffCSP.
    """
    n = len(targets)
    runs = [list(predictions)] if n and len(predictions) == n and not isinstance(predictions[0], (list, tuple)) \
        else [list(r) for r in predictions]
    if any(len(r) != n for r in runs):
        raise ValueError(f"every run of predictions needs {n} structures (one per target)")
    if valid is None:
        valid_runs = [np.ones(n, bool) for _ in runs]
    else:
        valid = np.asarray(valid, bool).reshape(len(runs), n)
        valid_runs = list(valid)
    tasks = [(targets[i], [runs[j][i] if valid_runs[j][i] else None for j in range(len(runs))]) for i in range(n)]
    per_target = _map(_rms_task, tasks, matcher_kwargs, n_jobs, progress, "matching", min_parallel)
    rms = np.array([min((r for r in rs if r is not None), default=np.nan) for rs in per_target])
    matched = np.isfinite(rms)
    return {
        "match_rate": float(matched.mean()) if n else float("nan"),
        "rmse": float(rms[matched].mean()) if matched.any() else float("nan"),
        "n_targets": int(n), "k": len(runs), "n_matched": int(matched.sum()),
        "matcher": {**MATCHER_KWARGS, **matcher_kwargs}, "rms_per_target": rms,
    }


# ---------------------------------------------------- uniqueness and novelty
def _reduce(matcher, s):
    """What ``fit`` does to each structure before comparing (species processing,
    Niggli and primitive reduction), done once."""
    from pymatgen.core import Structure

    if not matchable(s):
        return None
    s = Structure.from_sites(s)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return matcher._get_reduced_structure(s, matcher._primitive_cell, niggli=True)
    except Exception:  # a broken cell (fit() fails on it too), or a pymatgen without these internals
        return None


def _reduce_task(structures):
    return [_reduce(_MATCHER, s) for s in structures]


def structures_match(a, b, matcher=None) -> bool:
    """StructureMatcher.fit with the metrics' settings; False where pymatgen raises or
    a structure cannot be matched (:func:`matchable`)."""
    return _fit(matcher or make_matcher(), a, b, None, None)


def _fit(matcher, a, b, ra, rb) -> bool:
    if not (matchable(a) and matchable(b)):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ra is not None and rb is not None:
                return bool(matcher.fit(ra, rb, skip_structure_reduction=True))
            return bool(matcher.fit(a, b))
    except Exception:
        return False


def _bucket_task(task):
    """Greedy grouping inside one bucket (as ``group_structures``: each ungrouped
    structure becomes a representative and absorbs every later match), then
    novelty of each structure against the training structures of the bucket."""
    gen, rg, train, rt, want_unique = task
    m = _MATCHER
    group = list(range(len(gen)))
    if want_unique:
        unassigned = list(range(len(gen)))
        while unassigned:
            rep = unassigned.pop(0)
            rest = []
            for j in unassigned:
                if _fit(m, gen[rep], gen[j], rg[rep], rg[j]):
                    group[j] = rep
                else:
                    rest.append(j)
            unassigned = rest
    novel = [True] * len(gen)
    if train:
        novel = [not any(_fit(m, g, t, r, q) for t, q in zip(train, rt)) for g, r in zip(gen, rg)]
    return group, novel


def _bucket_key(structure, reduced) -> tuple:
    """(reduced formula, sites in the reduced cell). Both are exact invariants:
    ``fit`` rejects different formulas (SpeciesComparator hash) and, without
    supercells or subsets, reduced cells with different numbers of sites."""
    return formula_key(structure), -1 if reduced is None else len(reduced)


def uniqueness_novelty(structures: Sequence, train: Sequence | None = None, include=None, n_jobs: int = 1,
                       progress: bool = False, unique: bool = True, min_parallel: int = 500,
                       **matcher_kwargs) -> dict:
    """Which structures (pymatgen structures or a Crystal) are unique (first of
    their group) and novel (match no training structure).

    ``include`` masks the structures to consider (e.g. the valid ones); the rest
    get False in both arrays. Returns boolean arrays ``unique``, ``novel``,
    ``unique_novel``, group representatives ``group`` (index of the first member,
    -1 if excluded) and the fractions over the included structures.
    Structures are bucketed by reduced formula and number of sites of the reduced
    cell (both exact: ``fit`` never matches across them). A structure whose
    reduction fails matches nothing (``fit`` would fail on it the same way).
    """
    from jaxinv.metrics.structure import as_structures

    n = len(structures)
    include = np.ones(n, bool) if include is None else np.asarray(include, bool)
    inc = np.flatnonzero(include)
    structures = as_structures(structures, inc)  # a Crystal: only the structures considered
    train = None if train is None else as_structures(train)
    formulas = {formula_key(structures[i]) for i in inc}
    train_in = [t for t in (train or []) if formula_key(t) in formulas]
    # reduce every structure once (in parallel: Niggli + primitive cost ms each)
    todo = [structures[i] for i in inc] + train_in
    chunks = [todo[k:k + 64] for k in range(0, len(todo), 64)]
    reduced = [r for part in _map(_reduce_task, chunks, matcher_kwargs, n_jobs, progress, "reducing cells",
                                  max(2, min_parallel // 64)) for r in part]
    red_gen, red_train = reduced[:len(inc)], reduced[len(inc):]
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for pos, i in enumerate(inc):
        buckets[_bucket_key(structures[i], red_gen[pos])].append(pos)
    train_buckets: dict[tuple, list[int]] = defaultdict(list)
    for pos, t in enumerate(train_in):
        key = _bucket_key(t, red_train[pos])
        if key in buckets:
            train_buckets[key].append(pos)
    keys = sorted(buckets, key=lambda k: -len(buckets[k]))  # big buckets first balances the pool
    tasks = [([structures[inc[p]] for p in buckets[k]], [red_gen[p] for p in buckets[k]],
              [train_in[p] for p in train_buckets.get(k, [])], [red_train[p] for p in train_buckets.get(k, [])],
              unique) for k in keys]
    results = _map(_bucket_task, tasks, matcher_kwargs, n_jobs, progress, "uniqueness/novelty", min_parallel)
    group = np.full(n, -1, np.int64)
    novel = np.zeros(n, bool)
    for k, (g, nv) in zip(keys, results):
        idx = inc[np.array(buckets[k])]
        group[idx] = idx[np.asarray(g)]
        novel[idx] = nv
    is_unique = include & (group == np.arange(n))
    n_inc = int(include.sum())
    frac = lambda x: float(x.sum()) / n_inc if n_inc else float("nan")
    out = {"unique": is_unique, "group": group, "n_considered": n_inc, "n_buckets": len(buckets),
           "unique_rate": frac(is_unique)}
    if train is not None:
        novel &= include
        out.update({"novel": novel, "unique_novel": is_unique & novel, "novel_rate": frac(novel),
                    "unique_novel_rate": frac(is_unique & novel), "n_train": len(train)})
    return out
