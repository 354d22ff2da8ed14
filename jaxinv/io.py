"""Read and write crystals: CIF files, extxyz (labels in ``info``) and pymatgen JSON.

Every writer takes a :class:`~jaxinv.crystal.Crystal` batch (or a list of pymatgen
structures) and names files by index, with an optional per-structure name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxinv.crystal import Crystal

__all__ = ["write_cifs", "write_extxyz", "write_json", "read_structures", "write_all"]


def _structures(crystals) -> list:
    if isinstance(crystals, Crystal):
        return crystals.to_structures()
    return list(crystals)


def write_cifs(crystals, folder: str | os.PathLike, names: Sequence[str] | None = None,
               symprec: float | None = None) -> list[Path]:
    """One CIF per structure in ``folder``: ``{index:05d}_{formula}.cif`` unless named.

    With ``symprec`` the CIF is symmetrized (space group found by spglib);
    otherwise it is written in P1, exactly as stored.
    """
    from pymatgen.io.cif import CifWriter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, s in enumerate(_structures(crystals)):
        name = names[k] if names is not None else f"{k:05d}_{s.composition.reduced_formula}"
        path = folder / f"{name}.cif"
        CifWriter(s, symprec=symprec).write_file(str(path))
        paths.append(path)
    return paths


def write_extxyz(crystals, path: str | os.PathLike, extra_info: dict | None = None) -> Path:
    """All structures in one extended-XYZ file; labels (and ``extra_info`` lists) go to ``atoms.info``."""
    from ase.io import write

    atoms = crystals.to_atoms() if isinstance(crystals, Crystal) else Crystal.from_structures(crystals).to_atoms()
    for k, a in enumerate(atoms):
        for key, values in (extra_info or {}).items():
            a.info[key] = values[k]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(str(path), atoms, format="extxyz")
    return path


def write_json(crystals, path: str | os.PathLike) -> Path:
    """A JSON list of pymatgen ``Structure.as_dict()`` (labels in ``properties``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        json.dump([s.as_dict() for s in _structures(crystals)], fh, default=_np_default)
    return path


def write_all(crystals, folder: str | os.PathLike, stem: str = "structures", names=None) -> dict:
    """CIFs, extxyz and JSON together; returns the paths written."""
    folder = Path(folder)
    structures = _structures(crystals)
    return {
        "cif": write_cifs(structures, folder / "cif", names=names),
        "extxyz": write_extxyz(structures, folder / f"{stem}.extxyz"),
        "json": write_json(structures, folder / f"{stem}.json"),
    }


def _np_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot serialize {type(o).__name__}")


def read_structures(source: str | os.PathLike) -> list:
    """pymatgen structures from a folder of CIFs, a CIF, an extxyz/xyz/traj file,
    a JSON list of ``Structure`` dicts, or a CDVAE CSV."""
    from pymatgen.core import Structure

    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".cif", ".vasp", ".json", ".extxyz"))
        out = []
        for f in files:
            out.extend(read_structures(f))
        return out
    suffix = source.suffix.lower()
    if suffix == ".json":
        data = json.loads(source.read_text())
        data = data if isinstance(data, list) else [data]
        return [Structure.from_dict(d) for d in data]
    if suffix == ".csv":
        from jaxinv.data import load_dataset

        return load_dataset(str(source)).structures()
    if suffix in (".extxyz", ".xyz", ".traj"):
        from ase.io import read

        return Crystal.from_atoms(read(str(source), index=":")).to_structures()
    return [Structure.from_file(str(source))]
