"""The table that flows through a screening funnel.

:class:`Candidates` is a host-side :class:`~jaxinv.crystal.Crystal` (the geometry)
plus a column table (``dict`` of 1-D NumPy arrays of equal length: ids, formulas,
predictions, energies, ...). It is saved as one ``.npz`` written atomically, so a
funnel's stage outputs survive a kill mid-write.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxinv.crystal import Crystal

__all__ = ["Candidates"]


@dataclass
class Candidates:
    crystal: Crystal
    table: dict = field(default_factory=dict)

    def __post_init__(self):
        n = self.crystal.batch_size
        if "id" not in self.table:
            self.table["id"] = np.array([f"cand-{i:07d}" for i in range(n)])
        for k, v in self.table.items():
            if len(v) != n:
                raise ValueError(f"column {k!r} has {len(v)} rows, the crystal batch {n}")

    def __len__(self) -> int:
        return self.crystal.batch_size

    @property
    def ids(self) -> np.ndarray:
        return self.table["id"]

    @classmethod
    def from_structures(cls, structures, ids=None, **columns) -> "Candidates":
        structures = list(structures)
        c = Crystal.from_structures(structures, labels={})
        table = {"id": np.asarray(ids if ids is not None else [f"cand-{i:07d}" for i in range(len(structures))])}
        table.update({k: np.asarray(v) for k, v in columns.items()})
        return cls(c, table)

    @classmethod
    def empty_like(cls, other: "Candidates") -> "Candidates":
        return other.select(np.zeros(len(other), bool))

    def select(self, which) -> "Candidates":
        """Rows by boolean mask or index array (the crystal keeps its atom padding)."""
        idx = np.asarray(which)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
        c = self.crystal.to_host()
        crystal = Crystal(c.lattice[idx], c.frac[idx], c.numbers[idx], c.mask[idx],
                          {k: v[idx] for k, v in c.labels.items()})
        return Candidates(crystal, {k: v[idx] for k, v in self.table.items()})

    def with_columns(self, **columns) -> "Candidates":
        table = dict(self.table)
        table.update({k: np.asarray(v) for k, v in columns.items()})
        return Candidates(self.crystal, table)

    @staticmethod
    def concatenate(parts: list["Candidates"]) -> "Candidates":
        parts = [p for p in parts if len(p)] or parts[:1]
        crystal = Crystal.concatenate([p.crystal for p in parts])
        keys = set(parts[0].table)
        for p in parts[1:]:
            keys &= set(p.table)
        return Candidates(crystal, {k: np.concatenate([p.table[k] for p in parts]) for k in parts[0].table if k in keys})

    def formulas(self) -> np.ndarray:
        if "formula" in self.table:
            return self.table["formula"]
        return np.asarray(self.crystal.formulas())

    def structures(self) -> list:
        return self.crystal.to_structures()

    # ---------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        c = self.crystal.to_host()
        arrays = {"_lattice": c.lattice, "_frac": c.frac, "_numbers": c.numbers, "_mask": c.mask}
        arrays.update({f"col:{k}": v for k, v in self.table.items()})
        tmp = path.with_name(path.name + ".tmp.npz")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Candidates":
        z = np.load(path, allow_pickle=False)
        crystal = Crystal(z["_lattice"], z["_frac"], z["_numbers"], z["_mask"], {})
        table = {k[4:]: z[k] for k in z.files if k.startswith("col:")}
        return cls(crystal, table)
