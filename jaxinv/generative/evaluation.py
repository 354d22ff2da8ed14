"""Scoring generative models with :mod:`jaxinv.metrics`, as CDVAE's tables do.

* :func:`generation_metrics`: validity, COV-R/COV-P, density / element-count
  Wasserstein distances, uniqueness and novelty of samples against a dataset's
  test (reference) and training splits;
* :func:`reconstruction_metrics`: encode-decode match rate and RMSE of a VAE on
  test crystals (StructureMatcher, stol 0.5, angle_tol 10, ltol 0.3; a
  reconstruction must be valid to count, as in CDVAE / DiffCSP);
* :func:`quick_check`: the cheap version used while training (sample validity,
  reconstruction on a few hundred crystals);
* :func:`relax_crystals`: relax samples with a jaxinv potential before scoring (outside
  CDVAE's protocol, which scores the decoder's output as it is);
* :func:`symmetrize_crystals`: snap samples onto the nearest symmetric structure that
  spglib finds within a tolerance (also outside CDVAE's protocol).

Samples travel as :class:`~jaxinv.crystal.Crystal` batches; pymatgen structures are
made only inside the metrics that need them (StructureMatcher, density).
:func:`relax_samples` and :func:`symmetrize_samples` are the same two steps for
callers that want a list of structures back.
"""
from __future__ import annotations

import time

import numpy as np

import jax

from jaxinv.crystal import Crystal

__all__ = ["generation_metrics", "reconstruction_metrics", "quick_check", "sample_timed", "relax_crystals",
           "relax_samples", "symmetrize_crystals", "symmetrize_samples"]


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

    ds = None
    if reference is None or train is None:
        ds = load_dataset(dataset)
    reference = ds.subset("test").structures() if reference is None else reference
    train = ds.subset("train").structures() if train is None else train
    return score_generation(samples, reference, train, dataset=dataset, n_jobs=n_jobs, progress=progress,
                            metrics=metrics or GENERATION_METRICS, **kwargs)


def reconstruction_metrics(model, params, crystal, n_jobs: int = 2, progress: bool = False) -> dict:
    """Match rate / RMSE of reconstructing ``crystal`` (posterior mean, decoded)."""
    from jaxinv.metrics import score_csp

    recon = model.reconstruct(params, crystal)
    out, _ = score_csp(recon, crystal, k=1, n_jobs=n_jobs, progress=progress)
    return {"match_rate": out["csp"]["match_rate"], "rmse": out["csp"]["rmse"], "validity": out["validity"]}


def quick_check(model, params, key, n_samples: int = 256, recon_crystal=None, targets=None) -> dict:
    """Validity of ``n_samples`` samples and (VAEs) reconstruction of ``recon_crystal``."""
    from jaxinv.metrics import validity

    out = {}
    samples = model.generate(params, key, n_samples, targets, batch_size=n_samples)
    v = validity(samples)["rates"]
    out.update({f"sample/{k}": float(x) for k, x in v.items()})
    out["sample/mean_atoms"] = float(np.mean(samples.n_atoms))
    if model.is_vae and recon_crystal is not None:
        r = reconstruction_metrics(model, params, recon_crystal, n_jobs=1)
        out["recon/match_rate"] = r["match_rate"]
        out["recon/rmse"] = r["rmse"]
    return out


def _as_crystal(samples) -> Crystal:
    """Samples as a label-free host Crystal (a list of structures is converted once)."""
    if isinstance(samples, Crystal):
        return samples.to_host().without_labels()
    structures = list(samples)
    if not structures:
        return Crystal(np.zeros((0, 3, 3)), np.zeros((0, 0, 3)), np.zeros((0, 0), np.int32), np.zeros((0, 0), bool))
    return Crystal.from_structures(structures, labels={})


def _as_given(samples, result: Crystal, changed: np.ndarray) -> list:
    """What :func:`relax_samples` and :func:`symmetrize_samples` return: structures,
    the input objects where ``changed`` is False when the input was a list."""
    from jaxinv.metrics.structure import as_structures

    if isinstance(samples, Crystal):
        return result.to_structures()
    return [s if new is None else new for s, new in zip(samples, as_structures(result, np.flatnonzero(changed)))]


def relax_crystals(samples, potential, pressure_gpa: float = 0.0, max_steps: int = 300,
                   progress: bool = True) -> tuple[Crystal, dict]:
    """Relax every non-empty sample (a Crystal or structures) with a jaxinv potential
    (an object or a registry name): batched FIRE on positions and cell under
    ``pressure_gpa``. Returns (samples as a label-free Crystal, summary). A sample
    whose relaxation fails (NaN, collapse, runaway cell) keeps its decoded geometry;
    one that reaches ``max_steps`` keeps where it got to. The summary counts statuses."""
    return _relax(samples, potential, pressure_gpa, max_steps, progress)[:2]


def _relax(samples, potential, pressure_gpa, max_steps, progress) -> tuple[Crystal, dict, np.ndarray]:
    """:func:`relax_crystals`, and which samples took their relaxed geometry."""
    from jaxinv.potentials.registry import load_potential
    from jaxinv.relax import failed, relax, status_names

    pot = load_potential(potential) if isinstance(potential, str) else potential
    crystal = _as_crystal(samples).pad()  # atoms first in each row, as the relaxation writes them back
    todo = np.flatnonzero(crystal.n_atoms > 0)
    t0 = time.perf_counter()
    statuses: dict = {}
    moved = np.zeros(crystal.batch_size, bool)
    if len(todo):
        relaxed = relax(crystal[todo], pot, pressure_gpa=pressure_gpa, max_steps=max_steps, progress=progress)
        for name in status_names(relaxed):
            statuses[name] = statuses.get(name, 0) + 1
        ok = ~failed(relaxed)
        moved[todo[ok]] = True
        lattice, frac = crystal.lattice.copy(), crystal.frac.copy()
        lattice[todo[ok]], frac[todo[ok]] = relaxed.lattice[ok], relaxed.frac[ok]
        crystal = crystal.replace(lattice=lattice, frac=frac)
    return crystal, {"potential": pot.name, "pressure_gpa": pressure_gpa, "max_steps": max_steps,
                     "relaxed": len(todo), "statuses": statuses, "seconds": time.perf_counter() - t0}, moved


def relax_samples(samples, potential, pressure_gpa: float = 0.0, max_steps: int = 300,
                  progress: bool = True) -> tuple[list, dict]:
    """:func:`relax_crystals`, returning (structures, summary): pymatgen structures,
    for callers that take a list (a list input keeps its objects where nothing moved)."""
    samples = samples if isinstance(samples, Crystal) else list(samples)
    crystal, summary, moved = _relax(samples, potential, pressure_gpa, max_steps, progress)
    return _as_given(samples, crystal, moved), summary


def symmetrize_crystals(samples, symprec: float = 0.1, angle_tolerance: float = 5.0) -> tuple[Crystal, dict]:
    """Replace each sample by its idealised primitive cell under the symmetry spglib
    finds with tolerance ``symprec`` (Å): positions snap onto Wyckoff sites and the
    cell onto its Bravais lattice. Why: a decoder's small coordinate errors turn a
    cubic perovskite into a triclinic cell whose local environments (CrystalNN
    fingerprints) no longer match any reference; snapping removes errors smaller
    than ``symprec`` and keeps larger ones. Samples that are empty or for which spglib
    finds nothing, or whose atom count would change other than by taking a primitive
    cell, are kept as they are. So are structurally invalid samples (atoms closer than
    0.5 Å, cells under 0.1 Å^3): spglib can crash the process on such cells (a 0.075 Å^3
    carbon_24 sample did). Returns (samples as a label-free Crystal, summary with
    space-group counts).
    """
    return _symmetrize(samples, symprec, angle_tolerance)[:2]


def _symmetrize(samples, symprec, angle_tolerance) -> tuple[Crystal, dict, np.ndarray]:
    """:func:`symmetrize_crystals`, and which samples were symmetrized."""
    import spglib

    from jaxinv.metrics.structure import as_arrays, structure_validity

    crystal = _as_crystal(samples)
    t0 = time.perf_counter()
    lattices, fracs, numbers = (list(x) for x in as_arrays(crystal))
    valid = structure_validity(crystal).valid if len(crystal) else np.zeros(0, bool)
    changed, groups = np.zeros(len(lattices), bool), {}
    for k, ok in enumerate(valid):
        if not ok:
            continue
        cell = (lattices[k], fracs[k], numbers[k].tolist())
        try:
            std = spglib.standardize_cell(cell, to_primitive=True, no_idealize=False, symprec=symprec,
                                          angle_tolerance=angle_tolerance)
            data = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance)
        except Exception:  # spglib raises on degenerate cells in some versions
            std, data = None, None
        if std is not None and data is not None and len(numbers[k]) % len(std[2]) == 0:
            lattices[k], fracs[k], numbers[k] = (np.asarray(x) for x in std)
            groups[int(data.number)] = groups.get(int(data.number), 0) + 1
            changed[k] = True
    if changed.any():
        crystal = Crystal.from_arrays(lattices, fracs, numbers, n_max=crystal.n_max)
    n = len(lattices)
    return crystal, {"symprec": symprec, "angle_tolerance": angle_tolerance, "symmetrized": int(changed.sum()),
                     "kept": n - int(changed.sum()), "invalid_kept": int((~valid).sum()),
                     "space_groups": dict(sorted(groups.items())), "seconds": time.perf_counter() - t0}, changed


def symmetrize_samples(samples, symprec: float = 0.1, angle_tolerance: float = 5.0) -> tuple[list, dict]:
    """:func:`symmetrize_crystals`, returning (structures, summary): pymatgen
    structures, for callers that take a list (a list input keeps its objects where
    nothing was symmetrized)."""
    samples = samples if isinstance(samples, Crystal) else list(samples)
    crystal, summary, changed = _symmetrize(samples, symprec, angle_tolerance)
    return _as_given(samples, crystal, changed), summary
