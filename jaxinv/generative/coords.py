"""The coordinate representation: lattice parameters, fractional coordinates and
element classes in a fixed number of slots.

A crystal of up to ``n_slots`` atoms becomes

* ``lattice`` (6,): a, b, c in Å and alpha, beta, gamma in degrees;
* ``frac`` (n_slots, 3): fractional coordinates wrapped into [0, 1);
* ``species`` (n_slots,): class indices, 0 for an empty slot, ``k + 1`` for
  vocabulary element ``k`` (occupancy is ``species > 0``).

Slots are in a canonical order (occupied first, then by class, then by x, y, z),
so the representation of a crystal does not depend on the order its file listed
the atoms in. The decoded lattice is the canonical lower-triangular matrix of
those parameters (a along x, b in the xy plane), i.e. the input rotated rigidly;
with ``niggli=True`` the cell is Niggli-reduced first (same crystal, another
basis). Both round trips are exact up to floating point.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import jax.numpy as jnp

from jaxinv.crystal import Crystal
from jaxinv.generative.species import Vocabulary

__all__ = ["CoordSpec", "lattice_to_params", "params_to_lattice", "canonical_order", "encode_coords",
           "decode_coords", "LatticeScaler"]


def lattice_to_params(lattice) -> np.ndarray:
    """(..., 3, 3) row-vector lattices -> (..., 6) [a, b, c, alpha, beta, gamma] (Å, degrees)."""
    lat = np.asarray(lattice, np.float64)
    lengths = np.linalg.norm(lat, axis=-1)
    a, b, c = lat[..., 0, :], lat[..., 1, :], lat[..., 2, :]

    def angle(u, v, nu, nv):
        return np.degrees(np.arccos(np.clip((u * v).sum(-1) / (nu * nv), -1.0, 1.0)))

    alpha = angle(b, c, lengths[..., 1], lengths[..., 2])
    beta = angle(a, c, lengths[..., 0], lengths[..., 2])
    gamma = angle(a, b, lengths[..., 0], lengths[..., 1])
    return np.concatenate([lengths, np.stack([alpha, beta, gamma], -1)], -1)


def params_to_lattice(params, xp=None):
    """(..., 6) lattice parameters -> (..., 3, 3) lower-triangular row-vector lattice.

    a = (a, 0, 0), b = (b cos g, b sin g, 0), c completes the cell. Works on NumPy
    and (differentiably) on JAX arrays. Impossible angle triples (the cell would
    have no volume) give a tiny positive ``c_z`` instead of NaN.
    """
    xp = xp or (np if isinstance(params, np.ndarray) else jnp)
    a, b, c = params[..., 0], params[..., 1], params[..., 2]
    al, be, ga = (xp.radians(params[..., i]) for i in (3, 4, 5))
    ca, cb, cg, sg = xp.cos(al), xp.cos(be), xp.cos(ga), xp.sin(ga)
    cx = c * cb
    cy = c * (ca - cb * cg) / sg
    cz = xp.sqrt(xp.maximum(c * c - cx * cx - cy * cy, 1e-6 * c * c))
    zero = xp.zeros_like(a)
    rows = [xp.stack([a, zero, zero], -1), xp.stack([b * cg, b * sg, zero], -1), xp.stack([cx, cy, cz], -1)]
    return xp.stack(rows, -2)


def canonical_order(species: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """(B, N) permutation putting slots in canonical order: occupied first, then by
    class, then by wrapped x, y, z (quantized to 1e-6 so equal values tie stably)."""
    species = np.asarray(species)
    f = np.round(np.mod(np.asarray(frac), 1.0), 6) % 1.0
    key = np.where(species > 0, species, np.iinfo(np.int32).max)
    return np.stack([np.lexsort((f[b, :, 2], f[b, :, 1], f[b, :, 0], key[b])) for b in range(len(species))])


@dataclass(frozen=True)
class CoordSpec:
    """What a coordinate representation holds: slot count, vocabulary, cell choice."""

    n_slots: int
    vocab: Vocabulary
    niggli: bool = False

    def to_dict(self) -> dict:
        return {"n_slots": self.n_slots, "vocab": self.vocab.to_list(), "niggli": self.niggli}

    @classmethod
    def from_dict(cls, d: dict) -> "CoordSpec":
        return cls(int(d["n_slots"]), Vocabulary.from_list(d["vocab"]), bool(d.get("niggli", False)))


def _niggli(crystal: Crystal) -> Crystal:
    """Each host structure in its Niggli-reduced cell (pymatgen's reduction of the
    lattice), atoms wrapped into it; the arithmetic is ``Structure.get_reduced_structure``'s,
    site by site, so the result is bit for bit the same."""
    from pymatgen.core import Lattice

    lattice, frac = crystal.lattice.copy(), crystal.frac.copy()
    for b in range(crystal.batch_size):
        old = Lattice(lattice[b])
        new = old.get_niggli_reduced_lattice()
        if new == old:  # pymatgen keeps the structure as it is (np.allclose)
            continue
        m = crystal.mask[b]
        frac[b][m] = [np.mod(np.dot(np.dot(f, old.matrix), new.inv_matrix), 1) for f in frac[b][m]]
        lattice[b] = new.matrix
    return crystal.replace(lattice=lattice, frac=frac)


def encode_coords(crystal: Crystal, spec: CoordSpec) -> dict:
    """A :class:`Crystal` batch -> ``{'lattice', 'frac', 'species'}`` host arrays."""
    c = crystal.to_host()
    if c.n_atoms.max(initial=0) > spec.n_slots:
        raise ValueError(f"a structure has {int(c.n_atoms.max())} atoms; the representation has {spec.n_slots} slots")
    if spec.niggli:
        c = _niggli(c)
    c = c.pad(spec.n_slots)
    species = np.where(c.mask, spec.vocab.classes(np.where(c.mask, c.numbers, 0)), 0).astype(np.int32)
    frac = np.where(c.mask[..., None], np.mod(c.frac, 1.0), 0.0)
    frac = np.where(frac >= 1.0, 0.0, frac)  # mod can round up to exactly 1.0
    order = canonical_order(species, frac)
    species = np.take_along_axis(species, order, 1)
    frac = np.take_along_axis(frac, order[..., None], 1)
    return {"lattice": lattice_to_params(c.lattice), "frac": frac, "species": species}


def decode_coords(rep: dict, vocab: Vocabulary, labels: dict | None = None) -> Crystal:
    """``{'lattice', 'frac', 'species'}`` (host or device arrays) -> a :class:`Crystal`.

    ``species`` may be class indices (B, N) or class scores (B, N, V + 1), in
    which case the highest-scoring class is taken.
    """
    species = np.asarray(rep["species"])
    if species.ndim == 3:
        species = species.argmax(-1)
    frac = np.mod(np.asarray(rep["frac"], np.float64), 1.0)
    lattice = params_to_lattice(np.asarray(rep["lattice"], np.float64))
    numbers = vocab.atomic_numbers(species)
    mask = species > 0
    # compact occupied slots to the front, keeping their order
    order = np.argsort(~mask, axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order if a.ndim == 2 else order[..., None], 1)
    return Crystal(lattice, np.where(take(mask)[..., None], take(frac), 0.0), np.where(take(mask), take(numbers), 0),
                   take(mask), dict(labels or {}))


@dataclass(frozen=True)
class LatticeScaler:
    """Standardizes lattice parameters for networks: log-lengths and angles (degrees)
    are shifted and scaled by training-set statistics (with a floor on the scale,
    so that perov_5's all-90-degree angles do not divide by zero)."""

    mean: tuple
    scale: tuple

    @classmethod
    def fit(cls, params: np.ndarray, floor_len: float = 0.05, floor_angle: float = 5.0) -> "LatticeScaler":
        x = _to_features(np.asarray(params, np.float64))
        mean, std = x.mean(0), x.std(0)
        std = np.maximum(std, [floor_len] * 3 + [floor_angle] * 3)
        return cls(tuple(mean.tolist()), tuple(std.tolist()))

    def transform(self, params):
        xp = np if isinstance(params, np.ndarray) else jnp
        return (_to_features(params, xp) - xp.asarray(self.mean)) / xp.asarray(self.scale)

    def inverse(self, x):
        xp = np if isinstance(x, np.ndarray) else jnp
        y = x * xp.asarray(self.scale) + xp.asarray(self.mean)
        return xp.concatenate([xp.exp(y[..., :3]), y[..., 3:]], -1)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, d: dict) -> "LatticeScaler":
        return cls(tuple(d["mean"]), tuple(d["scale"]))


def _to_features(params, xp=np):
    return xp.concatenate([xp.log(params[..., :3]), params[..., 3:]], -1)
