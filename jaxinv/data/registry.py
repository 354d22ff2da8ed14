"""Known datasets: where they come from and which columns are properties.

All three use CDVAE's CSV layout (one row per structure, a ``cif`` column with a
P1 CIF, a ``material_id`` and numeric property columns), split by CDVAE into
``train.csv``, ``val.csv`` and ``test.csv``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DatasetInfo", "REGISTRY", "UPSTREAM"]

UPSTREAM = "https://raw.githubusercontent.com/txie-93/cdvae/main/data"
SPLIT_FILES = {"train": "train.csv", "valid": "val.csv", "test": "test.csv"}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    properties: tuple[str, ...]  # numeric columns kept as labels
    units: dict = field(default_factory=dict)
    description: str = ""
    max_atoms: int | None = None

    def url(self, split: str) -> str:
        return f"{UPSTREAM}/{self.name}/{SPLIT_FILES[split]}"


REGISTRY: dict[str, DatasetInfo] = {
    "perov_5": DatasetInfo(
        "perov_5",
        properties=("heat_all", "heat_ref", "dir_gap", "ind_gap"),
        units={"heat_all": "eV/cell (5 atoms)", "heat_ref": "eV/cell (5 atoms)", "dir_gap": "eV", "ind_gap": "eV"},
        description="ABX3 cubic perovskites of Castelli et al. (2012), 5 atoms per cell; "
        "heats of formation and GLLB-SC band gaps from DFT",
        max_atoms=5,
    ),
    "carbon_24": DatasetInfo(
        "carbon_24",
        properties=("energy_per_atom",),
        units={"energy_per_atom": "eV/atom"},
        description="carbon allotropes from AIRSS at 10 GPa (Pickard 2020), 6-24 atoms per cell",
        max_atoms=24,
    ),
    "mp_20": DatasetInfo(
        "mp_20",
        properties=("formation_energy_per_atom", "band_gap", "e_above_hull"),
        units={"formation_energy_per_atom": "eV/atom", "band_gap": "eV", "e_above_hull": "eV/atom"},
        description="Materials Project structures with at most 20 atoms per cell (CDVAE's MP-20)",
        max_atoms=20,
    ),
}
