"""Inverse design with a trained VAE: optimize latents toward target properties,
decode, and check the candidates every way available offline.

For each candidate, and for the unoptimized starting codes as a baseline:

* ``head``: the property head at the optimized latent meets every objective;
* ``valid``: CDVAE structural and compositional (SMACT) validity of the decoded crystal;
* ``reencoded``: decoding then encoding again, the head still meets the objectives
  (the decoder did not lose what the optimizer found);
* ``oracle``: an independent property model (a ``train_property`` run: an
  ensemble on composition and coordination features) meets the objectives on
  the decoded crystal;
* ``known``: the decoded crystal matches a dataset entry (same reduced formula,
  StructureMatcher); then its DFT labels say whether it truly meets them;
* optionally, relaxation with a jaxinv potential (energies, validity after relaxation).
"""
from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

import jax

from jaxinv.generative.latent import objective_satisfied, optimize_latent

__all__ = ["starting_latents", "design", "known_structure_labels"]

log = logging.getLogger("jaxinv.generative")


def starting_latents(model, params, n: int, start: str = "prior", dataset=None, seed: int = 0) -> np.ndarray:
    """(n, latent) starting codes: ``prior`` draws N(0, I); ``data`` encodes n random
    crystals of ``dataset`` (posterior means)."""
    if start == "prior":
        return np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (n, model.latent_dim)))
    if start == "data":
        if dataset is None:
            raise ValueError("start='data' needs a dataset to encode")
        idx = np.random.default_rng(seed).choice(len(dataset), n, replace=n > len(dataset))
        mu, _ = model.encode(params, dataset.crystal(idx, bucket=False))
        return mu
    raise ValueError(f"start must be 'prior' or 'data', not {start!r}")


def known_structure_labels(structures: Sequence, dataset, properties: Sequence[str]) -> np.ndarray:
    """(n, P) labels of the dataset entry each structure (or row of a Crystal)
    matches (NaN where none does).

    Candidates are compared only with entries of the same reduced formula
    (StructureMatcher with CDVAE's tolerances); only those become pymatgen structures.
    """
    from jaxinv.metrics.composition import compositions_of
    from jaxinv.metrics.matching import make_matcher
    from jaxinv.metrics.structure import as_structures

    out = np.full((len(structures), len(properties)), np.nan)
    formulas = np.array(dataset.crystal(bucket=False).formulas())
    by_formula: dict = {}
    for k, f in enumerate(formulas):
        by_formula.setdefault(f, []).append(k)
    own = [c.reduced_formula for c in compositions_of(structures)]
    structures = as_structures(structures, [i for i, f in enumerate(own) if f in by_formula])
    matcher = make_matcher()
    cache: dict = {}
    for i, s in enumerate(structures):
        idx = by_formula.get(own[i], [])
        for k in idx:
            if k not in cache:
                cache[k] = dataset.structures([k])[0]
            try:
                ok = matcher.fit(s, cache[k])
            except Exception:
                ok = False
            if ok:
                out[i] = [dataset.labels[p][k] for p in properties]
                break
    return out


def _summarize(objectives, props, head_pred, crystals, model, params, dataset, oracle) -> tuple[dict, dict]:
    from jaxinv.metrics import validity
    from jaxinv.metrics.composition import compositions_of

    v = validity(crystals)
    per = {"head": objective_satisfied(objectives, head_pred, props), "valid": v["valid"],
           "struct_valid": v["struct_valid"], "comp_valid": v["comp_valid"]}
    mu, _ = model.encode(params, crystals)
    re_pred = model.predict(params, mu)
    per["reencoded"] = objective_satisfied(objectives, re_pred, props)
    per["reencoded_pred"] = re_pred
    if oracle is not None:
        missing = [p for p in props if p not in oracle.targets]
        if missing:
            raise ValueError(f"the oracle predicts {oracle.targets}, not {missing}")
        pred, _ = oracle.predict(crystals)
        pred = pred[:, [list(oracle.targets).index(p) for p in props]]
        per["oracle"] = objective_satisfied(objectives, pred, props)
        per["oracle_pred"] = pred
    if dataset is not None:
        labels = known_structure_labels(crystals, dataset, props)
        known = np.isfinite(labels).all(1)
        per["known"] = known
        per["known_hit"] = known & objective_satisfied(objectives, np.nan_to_num(labels, nan=np.inf), props)
        per["known_labels"] = labels
    n = len(crystals)
    rate = lambda x: float(np.mean(x)) if n else float("nan")
    valid = per["valid"]
    summary = {"n": n, "head_hit": rate(per["head"]), "valid": rate(valid),
               "struct_valid": rate(per["struct_valid"]), "comp_valid": rate(per["comp_valid"]),
               "valid_and_head_hit": rate(valid & per["head"]),
               "valid_and_reencoded_hit": rate(valid & per["reencoded"])}
    hits = valid & per["reencoded"]
    formulas = np.array([c.reduced_formula for c in compositions_of(crystals)])
    summary["distinct_formulas_valid_reencoded_hit"] = int(len(set(formulas[hits])))
    if "oracle" in per:
        summary["valid_and_oracle_hit"] = rate(valid & per["oracle"])
        summary["valid_and_reencoded_and_oracle_hit"] = rate(hits & per["oracle"])
    if "known" in per:
        summary["known"] = rate(per["known"])
        summary["known_dft_hit"] = rate(per["known_hit"])
        summary["known_dft_hit_of_known"] = float(per["known_hit"].sum() / max(per["known"].sum(), 1))
        train_formulas = set(np.array(dataset.subset("train").crystal(bucket=False).formulas()))
        summary["distinct_new_formulas_valid_reencoded_hit"] = int(len(set(formulas[hits]) - train_formulas))
    return summary, per


def design(model, params, objectives, n: int = 256, start: str = "prior", steps: int = 300,
           learning_rate: float = 0.05, prior_weight: float = 0.1, dataset=None, oracle=None, seed: int = 0,
           potential=None, relax_steps: int = 300) -> dict:
    """Latent optimization toward ``objectives`` from ``n`` starts, with every check
    of the module docstring, for the optimized and the starting codes.

    ``dataset``: the full dataset (all splits) for starts, lookup and novelty;
    ``oracle``: a :class:`jaxinv.screening.train.PropertyModel`; ``potential``: a
    :class:`jaxinv.potentials.Potential` to relax valid candidates with.
    Returns ``{'summary', 'baseline', 'candidates' (Crystal), 'per_candidate', 'result'}``.
    """
    props = model.properties
    z0 = starting_latents(model, params, n, start, dataset.subset("train") if dataset is not None else None, seed)
    t0 = time.perf_counter()
    res = optimize_latent(model, params, z0, objectives, steps, learning_rate, prior_weight)
    t_opt = time.perf_counter() - t0
    t0 = time.perf_counter()
    cands = model.decode(params, res.z)
    start_crystals = model.decode(params, res.z0)
    t_dec = time.perf_counter() - t0
    summary, per = _summarize(objectives, props, res.predictions, cands, model, params, dataset, oracle)
    baseline, _ = _summarize(objectives, props, res.predictions0, start_crystals, model, params, dataset, oracle)
    summary.update({"optimize_seconds": t_opt, "decode_seconds": t_dec, "start": start, "steps": steps,
                    "learning_rate": learning_rate, "prior_weight": prior_weight,
                    "mean_abs_z_start": float(np.abs(res.z0).mean()), "mean_abs_z": float(np.abs(res.z).mean()),
                    "objectives": [o.describe() for o in objectives]})
    if potential is not None:
        summary["relaxation"], per["relaxed"] = _relax(cands, per["valid"], potential, relax_steps)
    return {"summary": summary, "baseline": baseline, "candidates": cands, "per_candidate": per, "result": res}


def _relax(crystals, valid, potential, steps: int):
    """Relax the valid candidates; energies per atom and validity after relaxation.
    Returns (summary, [(candidate index, relaxed structure, eV/atom)])."""
    from jaxinv.metrics import validity
    from jaxinv.relax import converged, energy_per_atom, failed, relax

    crystals = crystals.without_labels().pad()  # on the host, atoms first in each row (as relax writes them back)
    idx = np.flatnonzero(valid)
    if potential.species is not None:
        allowed = set(potential.species)
        idx = np.array([i for i in idx if set(crystals.numbers[i][crystals.mask[i]].tolist()) <= allowed], np.int64)
    if not len(idx):
        return {"n": 0}, []
    inputs = crystals[idx]
    t0 = time.perf_counter()
    results = relax(inputs, potential, max_steps=steps, progress=False)
    dt = time.perf_counter() - t0
    # a failed relaxation (e.g. collapsed into the potential's short-range hole) has no trustworthy
    # energy or geometry: it keeps its input structure and counts with a NaN energy
    bad = failed(results)
    keep = lambda a, b: np.where(bad.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
    relaxed = inputs.replace(lattice=keep(inputs.lattice, results.lattice), frac=keep(inputs.frac, results.frac))
    e = np.where(bad, np.nan, energy_per_atom(results))
    v = validity(relaxed)
    finite = e[np.isfinite(e)]
    out = {"n": len(idx), "seconds": dt, "converged": float(converged(results).mean()), "failed": float(bad.mean()),
           "energy_per_atom_mean": float(np.mean(finite)) if finite.size else float("nan"),
           "energy_per_atom_median": float(np.median(finite)) if finite.size else float("nan"),
           "valid_after_relaxation": float(v["valid"].mean()), "potential": potential.name}
    return out, list(zip(idx.tolist(), relaxed.to_structures(), e.tolist()))
