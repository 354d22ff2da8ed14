"""Scoring generative models with :mod:`jaxinv.metrics`, as CDVAE's tables do.

* :func:`generation_metrics`: validity, COV-R/COV-P, density / element-count
  Wasserstein distances, uniqueness and novelty of samples against a dataset's
  test (reference) and training splits;
* :func:`reconstruction_metrics`: encode-decode match rate and RMSE of a VAE on
  test crystals (StructureMatcher, stol 0.5, angle_tol 10, ltol 0.3; a
  reconstruction must be valid to count, as in CDVAE / DiffCSP);
* :func:`quick_check`: the cheap version used while training (sample validity,
  reconstruction on a few hundred crystals);
* :func:`relax_samples`: relax samples with a jaxinv potential before scoring (outside
  CDVAE's protocol, which scores the decoder's output as it is);
* :func:`symmetrize_samples`: snap samples onto the nearest symmetric structure that
  spglib finds within a tolerance (also outside CDVAE's protocol).
"""
from __future__ import annotations

import time

import numpy as np

import jax

__all__ = ["generation_metrics", "reconstruction_metrics", "quick_check", "sample_timed", "relax_samples",
           "symmetrize_samples"]


def sample_timed(model, params, key, n: int, targets=None, batch_size: int = 1024) -> tuple:
    """(crystals, seconds, crystals per second) of generating ``n`` samples; the
    first call (compilation) is done on a small batch beforehand and not timed."""
    model.generate(params, jax.random.fold_in(key, 99), min(n, batch_size), targets, batch_size)
    t0 = time.perf_counter()
    crystals = model.generate(params, key, n, targets, batch_size)
    dt = time.perf_counter() - t0
    return crystals, dt, n / dt


def generation_metrics(samples, dataset: str, reference=None, train=None, n_jobs: int = 2, progress: bool = True,
                       metrics=None, **kwargs) -> tuple[dict, dict]:
    """CDVAE generation metrics of ``samples`` (Crystal or structures) against
    ``dataset``'s test split (reference) and training split (novelty)."""
    from jaxinv.data import load_dataset
    from jaxinv.metrics import score_generation
    from jaxinv.metrics.suite import GENERATION_METRICS

    structures = samples.to_structures() if hasattr(samples, "to_structures") else list(samples)
    ds = None
    if reference is None or train is None:
        ds = load_dataset(dataset)
    reference = ds.subset("test").structures() if reference is None else reference
    train = ds.subset("train").structures() if train is None else train
    return score_generation(structures, reference, train, dataset=dataset, n_jobs=n_jobs, progress=progress,
                            metrics=metrics or GENERATION_METRICS, **kwargs)


def reconstruction_metrics(model, params, crystal, n_jobs: int = 2, progress: bool = False) -> dict:
    """Match rate / RMSE of reconstructing ``crystal`` (posterior mean, decoded)."""
    from jaxinv.metrics import score_csp

    recon = model.reconstruct(params, crystal)
    out, _ = score_csp(recon.to_structures(), crystal.to_structures(), k=1, n_jobs=n_jobs, progress=progress)
    return {"match_rate": out["csp"]["match_rate"], "rmse": out["csp"]["rmse"], "validity": out["validity"]}


def quick_check(model, params, key, n_samples: int = 256, recon_crystal=None, targets=None) -> dict:
    """Validity of ``n_samples`` samples and (VAEs) reconstruction of ``recon_crystal``."""
    from jaxinv.metrics import validity

    out = {}
    samples = model.generate(params, key, n_samples, targets, batch_size=n_samples)
    v = validity(samples.to_structures())["rates"]
    out.update({f"sample/{k}": float(x) for k, x in v.items()})
    out["sample/mean_atoms"] = float(np.mean(samples.n_atoms))
    if model.is_vae and recon_crystal is not None:
        r = reconstruction_metrics(model, params, recon_crystal, n_jobs=1)
        out["recon/match_rate"] = r["match_rate"]
        out["recon/rmse"] = r["rmse"]
    return out


def relax_samples(samples, potential, pressure_gpa: float = 0.0, max_steps: int = 300,
                  progress: bool = True) -> tuple[list, dict]:
    """Relax every non-empty sample (a Crystal or structures) with a jaxinv potential
    (an object or a registry name): batched FIRE on positions and cell under
    ``pressure_gpa``. Returns (structures, summary). A sample whose relaxation fails
    (NaN, collapse, runaway cell) keeps its decoded geometry; one that reaches
    ``max_steps`` keeps where it got to. The summary counts statuses."""
    from jaxinv.potentials.registry import load_potential
    from jaxinv.relax import relax

    pot = load_potential(potential) if isinstance(potential, str) else potential
    structures = samples.to_structures() if hasattr(samples, "to_structures") else list(samples)
    todo = [k for k, s in enumerate(structures) if len(s)]
    t0 = time.perf_counter()
    results = relax([structures[k] for k in todo], pot, pressure_gpa=pressure_gpa, max_steps=max_steps,
                    progress=progress) if todo else []
    statuses: dict = {}
    for k, r in zip(todo, results):
        statuses[r.status] = statuses.get(r.status, 0) + 1
        if not r.status.startswith("failed"):
            structures[k] = r.structure
    return structures, {"potential": pot.name, "pressure_gpa": pressure_gpa, "max_steps": max_steps,
                        "relaxed": len(todo), "statuses": statuses, "seconds": time.perf_counter() - t0}


def symmetrize_samples(samples, symprec: float = 0.1, angle_tolerance: float = 5.0) -> tuple[list, dict]:
    """Replace each sample by its idealised primitive cell under the symmetry spglib
    finds with tolerance ``symprec`` (Å): positions snap onto Wyckoff sites and the
    cell onto its Bravais lattice. Why: a decoder's small coordinate errors turn a
    cubic perovskite into a triclinic cell whose local environments (CrystalNN
    fingerprints) no longer match any reference; snapping removes errors smaller
    than ``symprec`` and keeps larger ones. Samples that are empty or for which spglib
    finds nothing, or whose atom count would change other than by taking a primitive
    cell, are kept as they are. So are structurally invalid samples (atoms closer than
    0.5 Å, cells under 0.1 Å^3): spglib can crash the process on such cells (a 0.075 Å^3
    carbon_24 sample did). Returns (structures, summary with space-group counts).
    """
    import spglib
    from pymatgen.core import Lattice, Structure

    from jaxinv.metrics.structure import structure_validity

    structures = samples.to_structures() if hasattr(samples, "to_structures") else list(samples)
    t0 = time.perf_counter()
    valid = structure_validity(structures).valid if structures else np.zeros(0, bool)
    out, changed, groups = [], 0, {}
    for s, ok in zip(structures, valid):
        new = None
        if ok:
            cell = (s.lattice.matrix, s.frac_coords, [site.specie.Z for site in s])
            try:
                std = spglib.standardize_cell(cell, to_primitive=True, no_idealize=False, symprec=symprec,
                                              angle_tolerance=angle_tolerance)
                data = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance)
            except Exception:  # spglib raises on degenerate cells in some versions
                std, data = None, None
            if std is not None and data is not None and len(s) % len(std[2]) == 0:
                lattice, frac, numbers = std
                new = Structure(Lattice(lattice), list(numbers), frac)
                groups[int(data.number)] = groups.get(int(data.number), 0) + 1
                changed += 1
        out.append(new if new is not None else s)
    return out, {"symprec": symprec, "angle_tolerance": angle_tolerance, "symmetrized": changed,
                 "kept": len(structures) - changed, "invalid_kept": int((~valid).sum()),
                 "space_groups": dict(sorted(groups.items())), "seconds": time.perf_counter() - t0}
