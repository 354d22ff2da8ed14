"""Candidate generation by data-mined ionic substitution (Hautier et al., Inorg. Chem.
50, 656 (2011)), vectorized in JAX.

pymatgen's substitution model gives, for two ionic species, a weight λ(s1, s2)
mined from the ICSD (``lambda.json``; λ = α = -5 for pairs never seen). The
probability of putting species ``t`` on a site held by ``s`` in a known
structure is the conditional probability

    P(t | s) = exp λ(t, s) / p(s),       p(s) = Σ_u exp λ(u, s),

(``SubstitutionProbability.cond_prob``), and a substitution of every distinct
species of a prototype scores the product over its site classes. Here the λ
table is a dense (n_species x n_species) matrix. Two ways to enumerate:

* ``method='exhaustive'`` (default): *every* substitution with product >= the
  threshold, charge neutral (the candidate's oxidation states sum to zero) and
  with distinct elements per class, by branch and bound over the classes as
  array ops: partial products are extended one class at a time and a partial
  is dropped as soon as even the best species on every remaining class cannot
  reach the threshold, or the remaining classes cannot cancel its charge. The
  work scales with the number of answers, not with n_species^k (at 1e-5 a
  5-class prototype has up to 10^9 combinations and a few thousand answers).
* ``method='top_k'``: the top ``m = floor(budget^(1/k))`` replacements per
  class combined by broadcasting in JAX (m^k combinations per prototype, many
  prototypes per call), masked the same way, best ``max_per_prototype`` kept
  with ``lax.top_k``; exact only where no class has more than m species above
  the threshold (``stats['not_exhaustive']`` counts the others).

Volumes are scaled with pymatgen's reference lattice scaling (RLS) rule,
V = V_ref (Σ_i r(t_i) n_i^(1/3) / Σ_i r(s_i) n_i^(1/3))^3 with Shannon ionic radii
(atomic radii where pymatgen has no ionic radius), evaluated as array ops;
:func:`dls_volumes` applies pymatgen's bond-length-based DLS predictor to a
shortlist, and relaxation (a funnel stage) refines further.

Duplicates: candidates from different prototypes of one structure family
(prototypes that match each other with all species anonymized) can be the same
crystal. Each site class gets a signature (atoms per cell, coordination number);
when a prototype's signatures are all distinct, a candidate's decoration of
signatures is a canonical key and equal keys are equal structures. Remaining
cases (prototypes with symmetric-looking classes) are settled by pymatgen's
``StructureMatcher``, but only inside buckets of one family and one formula.
"""
from __future__ import annotations

import functools
import logging
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

import jax
import jax.numpy as jnp

from jaxinv.crystal import Crystal
from jaxinv.screening.candidates import Candidates

__all__ = ["SubstitutionTable", "substitution_table", "Prototype", "prepare_prototypes", "enumerate_substitutions",
           "deduplicate", "dls_volumes", "smact_neutral"]

log = logging.getLogger("jaxinv.screening")


@dataclass(frozen=True, eq=False)
class SubstitutionTable:
    species: tuple  # 'Ba2+', 'O2-', ...
    element: np.ndarray  # (n,) atomic numbers
    oxidation: np.ndarray  # (n,) int
    radius: np.ndarray  # (n,) Å, ionic (or atomic) radius
    log_cond: np.ndarray  # (n, n): [new, old] = log P(new | old)
    lam: np.ndarray  # (n, n) λ, symmetric

    @property
    def index(self) -> dict:
        return {s: i for i, s in enumerate(self.species)}


@functools.lru_cache(maxsize=4)
def substitution_table(alpha: float = -5.0) -> SubstitutionTable:
    """pymatgen's λ table as dense arrays (species sorted by name)."""
    import json
    import os

    import pymatgen.core.structure_prediction as sp
    from pymatgen.core import Species

    with open(os.path.join(os.path.dirname(sp.__file__), "data", "lambda.json")) as fh:
        rows = [r for r in json.load(fh) if "D1+" not in r]
    names = sorted({r[0] for r in rows} | {r[1] for r in rows})
    # canonical species strings, so 'O2-' in the table and Species('O', -2) agree
    species = [Species.from_str(s) for s in names]
    names = [str(s) for s in species]
    idx = {s: i for i, s in enumerate(names)}
    n = len(names)
    lam = np.full((n, n), float(alpha))
    for a, b, v in rows:
        i, j = idx[str(Species.from_str(a))], idx[str(Species.from_str(b))]
        lam[i, j] = lam[j, i] = float(v)
    px = np.exp(lam).sum(0)  # p(s) = Σ_u exp λ(u, s), pymatgen's get_px
    log_cond = lam - np.log(px)[None, :]
    radius = np.zeros(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, s in enumerate(species):
            r = None
            try:
                r = s.ionic_radius
            except Exception:
                r = None
            radius[i] = float(r) if r else float(s.element.atomic_radius or 1.5)
    return SubstitutionTable(tuple(names), np.array([s.Z for s in species], np.int32),
                             np.array([int(round(s.oxi_state)) for s in species], np.int32), radius, log_cond, lam)


# ------------------------------------------------------------------ prototypes
@dataclass
class Prototype:
    """A host structure: its site classes (distinct species), their signatures and family."""

    name: str
    structure: object  # pymatgen Structure (oxidation states decorated)
    site_class: np.ndarray  # (n_atoms,) class of every site
    class_species: np.ndarray  # (k,) species index in the table
    class_counts: np.ndarray  # (k,) sites per class
    signature: tuple  # per class (count, coordination number)
    family: int = -1
    canonical: bool = True  # classes sharing a signature are interchangeable by symmetry

    @property
    def n_classes(self) -> int:
        return len(self.class_species)


def _decorate(structure):
    """Oxidation states of a structure's sites: its own, else pymatgen's first composition guess."""
    from pymatgen.core import Species

    if all(hasattr(sp, "oxi_state") and sp.oxi_state is not None for sp in structure.composition):
        return structure
    guesses = structure.composition.oxi_state_guesses(max_sites=-50)
    if not guesses:
        return None
    guess = guesses[0]
    if any(abs(v - round(v)) > 1e-6 for v in guess.values()):
        return None  # mixed valence: the λ table has integer oxidation states only
    s = structure.copy()
    s.replace_species({el: Species(el, int(round(v))) for el, v in guess.items()})
    return s


def prepare_prototypes(structures: Sequence, names: Sequence[str] | None = None, table=None,
                       cutoff: float = 6.0) -> list[Prototype]:
    """Decorate, classify and group prototype structures into families.

    Prototypes whose species are not all in the λ table are skipped (logged)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from jaxinv.graph import neighbor_graph
    from jaxinv.screening.features import coordination_numbers

    table = table or substitution_table()
    index = table.index
    out = []
    skipped = defaultdict(int)
    for k, s in enumerate(structures):
        name = names[k] if names is not None else f"proto-{k}"
        d = _decorate(s)
        if d is None:
            log.debug("prototype %s (%s): no integer oxidation states; skipped", name, s.composition.reduced_formula)
            skipped["no integer oxidation states"] += 1
            continue
        sp = [str(site.specie) for site in d]
        missing = sorted(set(sp) - set(index))
        if missing:
            log.debug("prototype %s: species %s not in the substitution table; skipped", name, missing)
            skipped["species not in the lambda table"] += 1
            continue
        uniq = sorted(set(sp), key=sp.index)
        cls = np.array([uniq.index(x) for x in sp], np.int32)
        out.append(Prototype(name, d, cls, np.array([index[u] for u in uniq], np.int32),
                             np.bincount(cls, minlength=len(uniq)).astype(np.int32), ()))
    if skipped:
        log.warning("prototypes skipped: %s (of %d)", dict(skipped), len(structures))
    if not out:
        return out
    crystal = Crystal.from_structures([p.structure for p in out], labels={})
    cn = np.asarray(coordination_numbers(crystal, neighbor_graph(crystal, cutoff)))
    for k, p in enumerate(out):
        c = cn[k, : len(p.site_class)]
        p.signature = tuple((int(p.class_counts[j]), int(round(float(c[p.site_class == j].mean()))))
                            for j in range(p.n_classes))
    matcher = StructureMatcher()
    for p in out:
        p.canonical = _interchangeable(p, matcher)
    # families: prototypes that match with species anonymized, compared only
    # within a bucket of equal (sorted) class counts
    reps: dict[tuple, list[tuple[int, object]]] = defaultdict(list)
    n_families = 0
    for p in out:
        bucket = (len(p.site_class), tuple(sorted(p.class_counts.tolist())))
        for fam, rep in reps[bucket]:
            if p.signature and sorted(p.signature) == sorted(out[rep].signature) and \
                    matcher.fit_anonymous(p.structure, out[rep].structure):
                p.family = fam
                break
        else:
            p.family = n_families
            reps[bucket].append((n_families, out.index(p)))
            n_families += 1
    return out


def _interchangeable(p: Prototype, matcher) -> bool:
    """Whether every two classes with equal signatures can swap species and give the
    same structure (e.g. the three anion sites of a 5-atom ABXYZ perovskite cell),
    so that sorting elements within a signature group is a canonical key."""
    groups = defaultdict(list)
    for j, sig in enumerate(p.signature):
        groups[sig].append(j)
    for members in groups.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                i, j = members[a], members[b]
                swapped = p.structure.copy()
                sp = [site.specie for site in p.structure]
                si = sp[int(np.flatnonzero(p.site_class == i)[0])]
                sj = sp[int(np.flatnonzero(p.site_class == j)[0])]
                for n in range(len(sp)):
                    if p.site_class[n] == i:
                        swapped.replace(n, sj)
                    elif p.site_class[n] == j:
                        swapped.replace(n, si)
                if not matcher.fit(p.structure, swapped):
                    return False
    return True


def _keys(p: Prototype, elements: np.ndarray, species_names: np.ndarray, symbols: np.ndarray) -> list[str]:
    """Dedup keys of a prototype's candidates: the family and, per signature group
    (classes of equal signature), the sorted elements placed on it; for a
    non-canonical prototype the prototype itself and its species."""
    if not p.canonical:
        return [f"p{p.name}|" + " ".join(row) for row in species_names]
    groups = defaultdict(list)
    for j, sig in enumerate(p.signature):
        groups[f"{sig[0]}x{sig[1]}"].append(j)
    order = sorted(groups)
    out = []
    for row in symbols[elements]:
        out.append(f"f{p.family}|" + "|".join(f"{g}:{','.join(sorted(row[groups[g]]))}" for g in order))
    return out


# ----------------------------------------------------------------- enumeration
@functools.partial(jax.jit, static_argnames=("m", "top"))
def _score(log_cond, ox, elem, orig, counts, log_threshold, m: int, top: int):
    """Best substitutions of P prototypes with k classes each.

    Returns (scores (P, top), species (P, top, k), n_valid (P,), cut (P,)); invalid
    slots score -inf; ``cut`` flags prototypes where m replacements per class were too few."""
    p, k = orig.shape
    cols = jnp.transpose(log_cond[:, orig], (1, 2, 0))  # (P, k, n): log P(new | old class)
    vals, idx = jax.lax.top_k(cols, m)  # (P, k, m)
    total = jnp.zeros((p,) + (m,) * k, vals.dtype)
    for i in range(k):
        shape = [p] + [1] * k
        shape[1 + i] = m
        total = total + vals[:, i].reshape(shape)
    total = total.reshape(p, -1)  # (P, m^k)
    choice = jnp.stack(jnp.unravel_index(jnp.arange(m**k), (m,) * k), -1)  # (m^k, k)
    species = jnp.take_along_axis(idx[:, None, :, :], choice[None, :, :, None], axis=-1)[..., 0]  # (P, m^k, k)
    charge = jnp.sum(counts[:, None, :] * ox[species], axis=-1)
    el = elem[species]
    distinct = jnp.ones(species.shape[:2], bool)
    for i in range(k):
        for j in range(i + 1, k):
            distinct &= el[..., i] != el[..., j]
    ok = (total >= log_threshold) & (charge == 0) & distinct
    scores = jnp.where(ok, total, -jnp.inf)
    best, where = jax.lax.top_k(scores, top)
    # a class whose m-th best replacement still passes the threshold may have more:
    # the enumeration is then not exhaustive for that prototype
    cut = jnp.any(vals[:, :, -1] >= log_threshold, axis=-1)
    return best, jnp.take_along_axis(species, where[..., None], axis=1), ok.sum(-1), cut


def _radius_scale(table, orig, counts, new):
    """RLS volume ratio of substituted over original, vectorized."""
    w = counts.astype(np.float64) ** (1.0 / 3.0)
    num = (table.radius[new] * w[:, None, :]).sum(-1)
    den = (table.radius[orig] * w).sum(-1)
    return (num / den[:, None]) ** 3


def _exhaustive_one(log_cond, oxidation, element, p: Prototype, log_threshold: float):
    """Every valid substitution of one prototype: (species (C, k), log_prob (C,)).

    Classes are extended most-constrained first. Bounds: a partial sum plus the
    best log P of every remaining class must reach the threshold; the partial
    charge must lie within the range the remaining classes can cancel."""
    k = p.n_classes
    cols = log_cond[:, p.class_species]  # (n, k): log P(new | old class i)
    best = cols.max(0)
    lists = []
    for i in range(k):
        # the other classes contribute at most their best: a species below this
        # cannot be part of any product above the threshold
        c = np.flatnonzero(cols[:, i] >= log_threshold - (best.sum() - best[i]))
        lists.append(c[np.argsort(-cols[c, i], kind="stable")])
    if min(len(c) for c in lists) == 0:
        return np.zeros((0, k), np.int64), np.zeros(0)
    order = np.argsort([len(c) for c in lists], kind="stable")
    counts = p.class_counts.astype(np.int64)
    after = lambda v: np.concatenate([np.cumsum(v[::-1])[::-1][1:], [0]])  # sum over later steps
    rest_best = after(best[order])
    rest_qmin = after(np.array([counts[i] * oxidation[lists[i]].min() for i in order]))
    rest_qmax = after(np.array([counts[i] * oxidation[lists[i]].max() for i in order]))
    species = np.zeros((1, 0), np.int64)
    score = np.zeros(1)
    charge = np.zeros(1, np.int64)
    for step, i in enumerate(order):
        cand = lists[i]
        s = score[:, None] + cols[cand, i][None, :]
        q = charge[:, None] + counts[i] * oxidation[cand][None, :]
        ok = (s + rest_best[step] >= log_threshold) & (q + rest_qmin[step] <= 0) & (q + rest_qmax[step] >= 0)
        for j in range(species.shape[1]):
            ok &= element[species[:, j]][:, None] != element[cand][None, :]
        a, b = np.nonzero(ok)
        species = np.concatenate([species[a], cand[b][:, None]], axis=1)
        score, charge = s[a, b], q[a, b]
    out = np.empty_like(species)
    out[:, order] = species
    return out, score


def enumerate_substitutions(prototypes: Sequence[Prototype], threshold: float = 1e-3,
                            max_per_prototype: int | None = 4096, budget: int = 2**16, table=None,
                            include_identity: bool = False, dedup: bool = True,
                            method: str = "exhaustive") -> tuple[Candidates, dict]:
    """All substitutions of the prototypes with probability >= ``threshold``.

    ``method``: ``'exhaustive'`` (every valid substitution) or ``'top_k'``
    (per prototype of k classes the top ``m = floor(budget^(1/k))`` replacements
    per class are combined in JAX; ``stats['not_exhaustive']`` counts prototypes
    where some class had more than m replacements above the threshold). Either
    way at most the best ``max_per_prototype`` per prototype are kept (None: all;
    ``stats['truncated']`` counts prototypes that had more). Returns the
    candidates (volume-scaled, columns: id, prototype, family, formula,
    species, log_prob, volume_scale, dedup_key) and statistics with timings."""
    if method not in ("exhaustive", "top_k"):
        raise ValueError(f"unknown method {method!r}; use 'exhaustive' or 'top_k'")
    table = table or substitution_table()
    t0 = time.perf_counter()
    stats = {"method": method, "prototypes": len(prototypes), "valid": 0, "truncated": 0, "not_exhaustive": 0,
             "kept": 0}
    parts = []

    def add(p, new, logp):
        if not include_identity:
            same = (new == p.class_species[None]).all(-1)
            new, logp = new[~same], logp[~same]
        if len(new):
            parts.append((p, new, logp))

    if method == "exhaustive":
        log_threshold = float(np.log(threshold))
        for p in prototypes:
            new, logp = _exhaustive_one(table.log_cond, table.oxidation, table.element, p, log_threshold)
            stats["valid"] += len(logp)
            if max_per_prototype is not None and len(logp) > max_per_prototype:
                stats["truncated"] += 1
                top = np.argsort(-logp, kind="stable")[:max_per_prototype]
                new, logp = new[top], logp[top]
            add(p, new, logp)
    else:
        by_k = defaultdict(list)
        for p in prototypes:
            by_k[p.n_classes].append(p)
        log_cond, ox, elem = (jnp.asarray(a) for a in (table.log_cond, table.oxidation, table.element))
        for k, group in sorted(by_k.items()):
            m = max(2, int(np.floor(budget ** (1.0 / k) + 1e-9)))
            m = min(m, len(table.species))
            top = m**k if max_per_prototype is None else min(max_per_prototype, m**k)
            orig = np.stack([p.class_species for p in group])
            counts = np.stack([p.class_counts for p in group])
            # prototypes of one k are scored in chunks to bound the (P, m^k) arrays
            chunk = max(1, 2**22 // m**k)
            for s in range(0, len(group), chunk):
                sl = slice(s, s + chunk)
                best, species, n_valid, cut = (np.asarray(a) for a in _score(
                    log_cond, ox, elem, jnp.asarray(orig[sl]), jnp.asarray(counts[sl]), float(np.log(threshold)),
                    m, top))
                stats["valid"] += int(n_valid.sum())
                stats["truncated"] += int((n_valid > top).sum())
                stats["not_exhaustive"] += int(cut.sum())
                for j, p in enumerate(group[sl]):
                    keep = np.isfinite(best[j])
                    add(p, species[j][keep], best[j][keep])
    stats["score_seconds"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    cands = _build(parts, table)
    stats["build_seconds"] = time.perf_counter() - t1
    stats["enumerated"] = len(cands)
    if dedup and len(cands):
        t2 = time.perf_counter()
        keep, n_matched = deduplicate(cands, {p.name: p for p in prototypes})
        cands = cands.select(keep)
        stats["dedup_seconds"] = time.perf_counter() - t2
        stats["duplicates"] = int((~keep).sum())
        stats["matcher_buckets"] = n_matched
    stats["kept"] = len(cands)
    stats["seconds"] = time.perf_counter() - t0
    return cands, stats


def _build(parts, table) -> Candidates:
    """Candidates arrays from (prototype, species (C, k), log_prob (C,)) parts, grouped by atom count."""
    if not parts:
        empty = Crystal(np.zeros((0, 3, 3)), np.zeros((0, 1, 3)), np.zeros((0, 1), np.int32),
                        np.zeros((0, 1), bool), {})
        return Candidates(empty, {"id": np.zeros(0, "<U12")})
    n_max = max(len(p.site_class) for p, _, _ in parts)
    lattices, fracs, numbers, masks = [], [], [], []
    cols = defaultdict(list)
    names = np.array(table.species)
    el_symbols = _symbols()
    for p, new, logp in parts:
        c = len(new)
        n = len(p.site_class)
        scale = _radius_scale(table, p.class_species[None], p.class_counts[None], new[None])[0]
        lat = np.asarray(p.structure.lattice.matrix)
        lattices.append(lat[None] * np.cbrt(scale)[:, None, None])
        f = np.zeros((c, n_max, 3))
        f[:, :n] = p.structure.frac_coords
        fracs.append(f)
        z = np.zeros((c, n_max), np.int32)
        z[:, :n] = table.element[new][:, p.site_class]
        numbers.append(z)
        mk = np.zeros((c, n_max), bool)
        mk[:, :n] = True
        masks.append(mk)
        cols["prototype"].append(np.full(c, p.name))
        cols["family"].append(np.full(c, p.family, np.int32))
        cols["log_prob"].append(logp.astype(np.float64))
        cols["volume_scale"].append(scale)
        cols["species"].append(np.array([" ".join(row) for row in names[new]]))
        cols["formula"].append(_formulas(table.element[new], p.class_counts, el_symbols))
        cols["dedup_key"].append(np.array(_keys(p, table.element[new], names[new], el_symbols)))
        cols["canonical"].append(np.full(c, p.canonical))
    crystal = Crystal(np.concatenate(lattices), np.concatenate(fracs), np.concatenate(numbers),
                      np.concatenate(masks), {})
    table_cols = {k: np.concatenate(v) for k, v in cols.items()}
    table_cols["id"] = np.array([f"sub-{i:07d}" for i in range(crystal.batch_size)])
    return Candidates(crystal, table_cols)


@functools.lru_cache(maxsize=1)
def _symbols() -> np.ndarray:
    from pymatgen.core import Element

    return np.array([""] + [Element.from_Z(z).symbol for z in range(1, 119)])


def _formulas(elements, counts, symbols) -> np.ndarray:
    """Reduced formulas (pymatgen's) of substituted compositions, cached by composition."""
    from pymatgen.core import Composition

    cache = {}
    out = []
    for row in elements:
        key = tuple(row.tolist())
        if key not in cache:
            cache[key] = Composition({symbols[z]: int(c) for z, c in zip(row, counts)}).reduced_formula
        out.append(cache[key])
    return np.array(out)


def deduplicate(cands: Candidates, prototypes: dict | None = None, matcher=None) -> tuple[np.ndarray, int]:
    """Keep-mask of the first of every set of identical candidates.

    Exact keys first (canonical decorations); then, inside each (family, formula)
    bucket that still holds more than one key and a non-canonical one,
    ``StructureMatcher.fit`` between representatives. Returns (keep, buckets matched)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    keys = cands.table["dedup_key"]
    _, first = np.unique(keys, return_index=True)
    keep = np.zeros(len(cands), bool)
    keep[first] = True
    canonical = cands.table.get("canonical", np.ones(len(cands), bool))
    buckets = defaultdict(list)
    for i in np.flatnonzero(keep):
        buckets[(int(cands.table["family"][i]), str(cands.table["formula"][i]))].append(i)
    matcher = matcher or StructureMatcher()
    n_matched = 0
    for members in buckets.values():
        if len(members) < 2 or all(canonical[i] for i in members):
            continue
        n_matched += 1
        structs = cands.select(np.array(members)).structures()
        reps: list[int] = []
        for j, s in enumerate(structs):
            if any(matcher.fit(structs[r], s) for r in reps):
                keep[members[j]] = False
            else:
                reps.append(j)
    return keep, n_matched


def dls_volumes(structures: Sequence, min_scaling: float = 0.5, max_scaling: float = 1.5) -> list:
    """Structures rescaled by pymatgen's DLS volume predictor (bond-length based),
    for a shortlist; those it cannot handle keep their volume."""
    from pymatgen.analysis.structure_prediction.volume_predictor import DLSVolumePredictor

    pred = DLSVolumePredictor(min_scaling=min_scaling, max_scaling=max_scaling)
    out = []
    for s in structures:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append(pred.get_predicted_structure(s))
        except Exception:
            out.append(s)
    return out


@functools.lru_cache(maxsize=100_000)
def _smact_ok(formula: str, oxidation_states_set: str) -> bool:
    from pymatgen.core import Composition
    from smact.screening import smact_validity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(smact_validity(Composition(formula), use_pauling_test=True, include_alloys=False,
                                   oxidation_states_set=oxidation_states_set))


def smact_neutral(formulas: Sequence[str], oxidation_states_set: str = "icsd24") -> np.ndarray:
    """SMACT's charge-neutrality and Pauling electronegativity test per formula (cached)."""
    return np.array([_smact_ok(str(f), oxidation_states_set) for f in formulas], bool)
