"""A parsed dataset held as ragged arrays, from which padded batches are cut."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np

from jaxinv.crystal import Crystal, bucket_size, group_by_bucket

__all__ = ["Dataset", "SkippedRow"]


@dataclass(frozen=True)
class SkippedRow:
    file: str
    row: int  # 1-based data row (the header is row 0)
    material_id: str
    reason: str

    def __str__(self) -> str:
        mid = f" (material_id={self.material_id})" if self.material_id else ""
        return f"{self.file}: row {self.row}{mid} skipped: {self.reason}"


@dataclass(frozen=True)
class Dataset:
    """Structures stored ragged: atoms of structure k are ``offsets[k]:offsets[k+1]``."""

    name: str
    ids: np.ndarray  # (M,) str
    lattice: np.ndarray  # (M, 3, 3)
    frac: np.ndarray  # (total, 3)
    numbers: np.ndarray  # (total,) int32
    offsets: np.ndarray  # (M + 1,) int64
    labels: dict  # name -> (M,) float64
    split: np.ndarray  # (M,) 'train' | 'valid' | 'test'
    split_source: str = ""
    skipped: tuple = ()
    units: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_atoms(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, which) -> "Dataset":
        """A split by name ('train', 'valid', 'test'), or a subset by index or mask."""
        if isinstance(which, str):
            if which not in ("train", "valid", "test"):
                raise ValueError(f"unknown split {which!r}; use train, valid or test")
            idx = np.flatnonzero(self.split == which)
        else:
            idx = np.asarray(which)
            idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
        starts, sizes = self.offsets[idx], self.n_atoms[idx]
        atom_idx = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, sizes)]) if len(idx) else np.zeros(0, int)
        return replace(
            self, ids=self.ids[idx], lattice=self.lattice[idx], frac=self.frac[atom_idx],
            numbers=self.numbers[atom_idx], offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            labels={k: v[idx] for k, v in self.labels.items()}, split=self.split[idx])

    def _atoms(self, k: int):
        a, b = self.offsets[k], self.offsets[k + 1]
        return self.frac[a:b], self.numbers[a:b]

    def crystal(self, indices: Sequence[int] | None = None, n_max: int | None = None, bucket: bool = True) -> Crystal:
        """A padded batch of the given structures (all by default)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        parts = [self._atoms(int(k)) for k in idx]
        return Crystal.from_arrays(
            self.lattice[idx], [p[0] for p in parts], [p[1] for p in parts],
            labels={k: v[idx] for k, v in self.labels.items()}, n_max=n_max, bucket=bucket)

    def structures(self, indices: Sequence[int] | None = None) -> list:
        """pymatgen ``Structure`` objects, with labels and ``material_id`` in ``properties``."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        out = self.crystal(idx, bucket=False).to_structures()
        for s, k in zip(out, idx):
            s.properties["material_id"] = str(self.ids[k])
        return out

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                bucketed: bool = True) -> Iterator[tuple[np.ndarray, Crystal]]:
        """Yield ``(indices, Crystal)`` batches.

        With ``bucketed`` structures of similar size go together and every batch
        is padded to a size from :func:`~jaxinv.crystal.bucket_size` and to a full
        ``batch_size`` (padding slots are empty), so a jitted consumer compiles
        once per bucket.
        """
        rng = np.random.default_rng(seed)
        groups = group_by_bucket(self.n_atoms) if bucketed else {bucket_size(self.n_atoms.max()): np.arange(len(self))}
        chunks = []
        for size, members in groups.items():
            members = rng.permutation(members) if shuffle else members
            for start in range(0, len(members), batch_size):
                part = members[start:start + batch_size]
                if drop_last and len(part) < batch_size:
                    continue
                chunks.append((size, part))
        if shuffle:
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        for size, part in chunks:
            yield part, self.crystal(part, n_max=size).pad(batch_size=batch_size)

    def summary(self) -> dict:
        """Counts, elements, atoms per cell and property ranges."""
        from pymatgen.core import Element

        z, counts = np.unique(self.numbers, return_counts=True)
        n = self.n_atoms
        out = {
            "name": self.name,
            "structures": int(len(self)),
            "splits": {s: int((self.split == s).sum()) for s in ("train", "valid", "test")},
            "split_source": self.split_source,
            "skipped_rows": len(self.skipped),
            "elements": {Element.from_Z(int(a)).symbol: int(c) for a, c in zip(z, counts)},
            "atoms_per_cell": {"min": int(n.min()), "max": int(n.max()), "mean": float(n.mean()),
                               "histogram": {int(k): int(v) for k, v in zip(*np.unique(n, return_counts=True))}},
            "properties": {},
        }
        for k, v in self.labels.items():
            out["properties"][k] = {"min": float(np.min(v)), "max": float(np.max(v)), "mean": float(np.mean(v)),
                                    "std": float(np.std(v)), "unit": self.units.get(k, "")}
        return out
