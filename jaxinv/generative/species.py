"""Element vocabularies: which elements a generative model can emit, and how.

A model trained on a dataset only ever places elements it has seen, so the
vocabulary is taken from the training split. Index 0 is reserved for "empty
slot" in the coordinate representation; element ``k`` of the vocabulary has
class index ``k + 1``.

The voxel representation does not afford one channel per element (perov_5 has
56 elements; 56 channels on a 32^3 grid is 1.8 M floats per crystal), so each
element is described by two numbers, its period and its periodic-table column,
both scaled to [0, 1]. Chemically similar elements get nearby descriptors, so a
decoder that is slightly off still lands on a plausible element.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = ["Vocabulary", "element_descriptor"]


def element_descriptor(z: int) -> tuple[float, float]:
    """(period, column) of element ``z`` scaled to [0, 1].

    Lanthanides and actinides get fractional columns between 3 and 4 so that
    every element has a distinct descriptor.
    """
    from pymatgen.core import Element

    el = Element.from_Z(int(z))
    row = el.row
    if 57 <= z <= 71:
        row, col = 6, 3.0 + (z - 57) / 15.0
    elif 89 <= z <= 103:
        row, col = 7, 3.0 + (z - 89) / 15.0
    else:
        col = float(el.group)
    return (row - 1) / 6.0, (col - 1) / 17.0


@dataclass(frozen=True)
class Vocabulary:
    """An ordered tuple of atomic numbers a model may emit."""

    numbers: tuple[int, ...]

    def __post_init__(self):
        if len(self.numbers) == 0:
            raise ValueError("a vocabulary needs at least one element")
        if len(set(self.numbers)) != len(self.numbers):
            raise ValueError(f"duplicate elements in vocabulary {self.numbers}")
        d = self.descriptors
        if len(np.unique(np.round(d, 6), axis=0)) != len(d):
            raise ValueError("two vocabulary elements share a descriptor")

    @classmethod
    def from_numbers(cls, numbers: Iterable[int]) -> "Vocabulary":
        return cls(tuple(sorted(int(z) for z in set(int(z) for z in numbers) if z > 0)))

    @classmethod
    def from_dataset(cls, dataset) -> "Vocabulary":
        """All elements present in ``dataset`` (pass its training split)."""
        return cls.from_numbers(np.unique(dataset.numbers))

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def n_classes(self) -> int:
        """Vocabulary size plus the empty class."""
        return len(self.numbers) + 1

    @property
    def symbols(self) -> list[str]:
        from pymatgen.core import Element

        return [Element.from_Z(z).symbol for z in self.numbers]

    @property
    def descriptors(self) -> np.ndarray:
        """(V, 2) element descriptors (see :func:`element_descriptor`)."""
        return np.array([element_descriptor(z) for z in self.numbers], np.float64).reshape(-1, 2)

    def classes(self, numbers: np.ndarray) -> np.ndarray:
        """Atomic numbers -> class indices (0 for Z = 0, i.e. padding). Unknown elements raise."""
        numbers = np.asarray(numbers)
        lut = np.full(max(max(self.numbers), int(numbers.max(initial=0))) + 1, -1, np.int32)
        lut[0] = 0
        lut[list(self.numbers)] = np.arange(1, len(self.numbers) + 1, dtype=np.int32)
        out = lut[numbers]
        if (out < 0).any():
            bad = sorted(set(numbers[out < 0].tolist()))
            raise ValueError(f"elements {bad} are not in the model's vocabulary {self.symbols}")
        return out

    def atomic_numbers(self, classes: np.ndarray) -> np.ndarray:
        """Class indices -> atomic numbers (0 for the empty class)."""
        table = np.array((0,) + self.numbers, np.int32)
        return table[np.asarray(classes)]

    def nearest(self, descriptors: np.ndarray) -> np.ndarray:
        """Atomic numbers of the vocabulary elements nearest to (..., 2) descriptors."""
        d = np.asarray(descriptors, np.float64)
        dist = ((d[..., None, :] - self.descriptors) ** 2).sum(-1)
        return np.array(self.numbers, np.int32)[dist.argmin(-1)]

    def to_list(self) -> list[int]:
        return list(self.numbers)

    @classmethod
    def from_list(cls, numbers: Sequence[int]) -> "Vocabulary":
        return cls(tuple(int(z) for z in numbers))
