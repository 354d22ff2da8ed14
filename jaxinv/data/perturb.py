"""Reproducible rattling and straining of structures (test sets, labelling, benchmarks).

pymatgen's ``Structure.perturb`` draws from NumPy's global generator, so runs are
not reproducible across processes; this module takes an explicit seed.
"""
from __future__ import annotations

import numpy as np

__all__ = ["perturb"]


def perturb(structures, rattle: float = 0.0, strain: float = 0.0, seed: int = 0) -> list:
    """Copies with Gaussian displacements (std ``rattle`` Å per component) and a random
    diagonal strain with components uniform in [-strain, strain]; fractional
    coordinates are not wrapped."""
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    out = []
    for s in structures:
        eps = np.diag(1.0 + rng.uniform(-strain, strain, 3)) if strain else np.eye(3)
        lattice = s.lattice.matrix @ eps
        cart = s.frac_coords @ lattice + (rng.normal(0.0, rattle, (len(s), 3)) if rattle else 0.0)
        new = Structure(Lattice(lattice), s.species, cart, coords_are_cartesian=True,
                        properties=dict(getattr(s, "properties", {}) or {}))
        out.append(new)
    return out
