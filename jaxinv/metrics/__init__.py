"""Metrics for generated, optimized and screened crystals, computed as the field does.

* :mod:`.structure` and :mod:`.composition`: CDVAE validity (all-image 0.5 Å
  distances and 0.1 Å^3 volume; SMACT charge neutrality and Pauling test).
* :mod:`.fingerprints` and :mod:`.coverage`: CrystalNN / Magpie fingerprints,
  COV-R, COV-P, AMSD, AMCD.
* :mod:`.properties`: Wasserstein distances of density, element count, any property.
* :mod:`.matching`: match rate and RMSE (top-k), uniqueness and novelty.
* :mod:`.stability`: formation energy, energy above hull, Matbench Discovery metrics.
* :mod:`.suite`: everything at once, and Markdown reports.

Deviations from CDVAE's code are listed in benchmarks/RESULTS.md ("Metrics (issue 5)").
"""
from jaxinv.metrics.composition import composition_validity, get_rules, smact_valid
from jaxinv.metrics.coverage import COV_CUTOFFS, CoverageResult, cov_cutoffs, coverage, nearest_distances
from jaxinv.metrics.fingerprints import composition_fingerprints, load_magpie_scaler, scale_composition, \
    structure_fingerprints
from jaxinv.metrics.matching import reconstruction_metrics, rms_dist, uniqueness_novelty
from jaxinv.metrics.properties import density, n_elements, property_statistics, wasserstein
from jaxinv.metrics.stability import HullReference, classify_stable, energy_per_atom_fn, entries_from_energies, \
    potential_energy_fn, stable_metrics
from jaxinv.metrics.structure import min_distances, structure_validity
from jaxinv.metrics.suite import format_report, score_csp, score_generation, score_stability, validity

__all__ = [
    "composition_validity", "get_rules", "smact_valid", "COV_CUTOFFS", "CoverageResult", "cov_cutoffs", "coverage",
    "nearest_distances", "composition_fingerprints", "load_magpie_scaler", "scale_composition",
    "structure_fingerprints", "reconstruction_metrics", "rms_dist", "uniqueness_novelty", "density", "n_elements",
    "property_statistics", "wasserstein", "HullReference", "classify_stable", "energy_per_atom_fn",
    "entries_from_energies", "potential_energy_fn", "stable_metrics", "min_distances", "structure_validity",
    "format_report", "score_csp", "score_generation", "score_stability", "validity",
]
