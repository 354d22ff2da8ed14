"""Read and write crystals: CIF files, extxyz (labels in ``info``) and pymatgen JSON.

Every writer takes a :class:`~jaxinv.crystal.Crystal` batch (or a list of pymatgen
structures) and names files by index, with an optional per-structure name.
:func:`read_structures_named` reads user files (CIF, POSCAR, extxyz, JSON, ...)
with their names, skipping and naming each file or entry it cannot use.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxinv.crystal import Crystal

__all__ = ["write_cifs", "write_extxyz", "write_json", "read_structures", "read_structures_named", "write_all",
           "write_skipped", "check_structure", "check_cell", "Skipped", "StructureSet", "NoStructuresError"]

log = logging.getLogger("jaxinv.io")


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


# ------------------------------------------------------------------ reading
#
# Every workflow that reads user structures goes through read_structures_named:
# one bad file (or one bad frame of a multi-structure file) is skipped with its
# name and a reason instead of stopping the run, and every structure that is
# returned has passed check_structure, so a Crystal can be built from it.

MIN_VOLUME_PER_ATOM = 1e-3
"""Å^3: a cell with less volume per atom than this is a degenerate cell, not a
crystal (the densest real solids have ~5 Å^3 per atom). The bound is deliberately
far below physical volumes: squeezed but well-defined cells (e.g. a generative
model's bad samples) still load, and are judged by the validity metrics."""

MIN_CELL_SHAPE = 1e-6
"""|det L| / (|a| |b| |c|), the volume relative to a cube of the same edge
lengths: below this the lattice vectors are (numerically) coplanar."""

STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".json", ".extxyz", ".xyz", ".traj")
VASP_PREFIXES = ("POSCAR", "CONTCAR")


class NoStructuresError(FileNotFoundError):
    """A file or folder yielded no readable structure (the message names it and why)."""


@dataclass(frozen=True)
class Skipped:
    """A file (or an entry of a multi-structure file) that could not be read, and why."""

    file: str
    reason: str


@dataclass
class StructureSet:
    """What :func:`read_structures_named` read: structures with unique names, in
    reading order, and what it skipped. Unpacks as ``structures, names, skipped``."""

    structures: list
    names: list
    skipped: list = field(default_factory=list)
    source: str = ""

    def __iter__(self):
        return iter((self.structures, self.names, self.skipped))

    def __len__(self) -> int:
        return len(self.structures)


def check_cell(lattice, coords, numbers) -> str | None:
    """Why these arrays are not a usable periodic structure, or None when they are.

    ``lattice`` (3, 3) rows are lattice vectors; ``coords`` (n, 3) are fractional or
    Cartesian positions (only finiteness is checked); ``numbers`` atomic numbers.
    Checks: at least one atom, known elements (Z in 1..118), a finite lattice
    whose volume does not overflow, a volume of at least :data:`MIN_VOLUME_PER_ATOM` per atom, lattice vectors that
    are not (nearly) coplanar (:data:`MIN_CELL_SHAPE`), finite coordinates. A
    cell of well-separated atoms (vacuum) or of overlapping atoms is *not*
    rejected: it is readable, and judged later (validity, relaxation).
    """
    numbers = np.asarray(numbers)
    n = len(numbers)
    if n == 0:
        return "no atoms"
    bad = sorted({int(z) for z in numbers.ravel() if not 1 <= int(z) <= 118})
    if bad:
        return f"unknown element(s): atomic number(s) {bad}"
    try:
        lattice = np.asarray(lattice, np.float64).reshape(3, 3)
    except (TypeError, ValueError):
        return "lattice is not a 3x3 matrix"
    if not np.isfinite(lattice).all():
        return "non-finite lattice (NaN or inf)"
    volume = abs(float(np.linalg.det(lattice)))
    lengths = np.linalg.norm(lattice, axis=1)
    if not (np.isfinite(volume) and np.isfinite(np.prod(lengths))):
        return "cell too large: its volume overflows"
    if not volume >= MIN_VOLUME_PER_ATOM * n:
        return (f"zero or near-zero cell volume ({volume:.3g} Å^3 for {n} atoms; "
                f"minimum {MIN_VOLUME_PER_ATOM:g} per atom)")
    if not volume >= MIN_CELL_SHAPE * float(np.prod(lengths)):
        return "degenerate cell: the lattice vectors are (nearly) coplanar"
    coords = np.asarray(coords, np.float64)
    if coords.shape != (n, 3):
        return f"coordinates of shape {coords.shape} for {n} atoms"
    if not np.isfinite(coords).all():
        return "non-finite atomic coordinates (NaN or inf)"
    return None


def check_structure(structure) -> str | None:
    """Why a pymatgen ``Structure`` cannot be used by jaxinv, or None when it can:
    ordered sites (occupancy 1, one species per site), real elements (no dummy
    species), and :func:`check_cell`."""
    from pymatgen.core.periodic_table import DummySpecies

    if len(structure) == 0:
        return "no atoms"
    for k, site in enumerate(structure):
        if not site.is_ordered:
            occ = ", ".join(f"{sp} {x:g}" for sp, x in site.species.items())
            return f"disordered site {k} ({occ}); jaxinv needs ordered sites (occupancy 1, one species)"
        sp = site.specie
        if isinstance(sp, DummySpecies):
            label = getattr(site, "label", None) or str(sp)
            return f"unknown element {label!r} at site {k}"
    try:
        lattice = structure.lattice.matrix
        numbers = structure.atomic_numbers
        coords = np.array([site.frac_coords for site in structure])
    except Exception as e:  # a corrupt object, e.g. a broken JSON dict
        return _reason(e)
    return check_cell(lattice, coords, numbers)


def _reason(e: BaseException, warned=()) -> str:
    """One line: the exception, then the parser's last warnings (pymatgen's CIF parser
    says what went wrong in a warning and raises a generic error)."""
    msg = f"{type(e).__name__}: {' '.join(str(e).split())}".rstrip(": ")
    details = [" ".join(str(w.message).split()) for w in warned]
    details = [d for d in dict.fromkeys(details) if d and d not in msg]
    if details:
        msg += " (" + "; ".join(details[-2:]) + ")"
    return msg if len(msg) <= 300 else msg[:297] + "..."


def _safe_name(name: str) -> str:
    """A name usable as a file name: path separators, spaces and control characters become '_'."""
    out = re.sub(r'[\\/:*?"<>|\s\x00-\x1f]', "_", str(name)).strip(".")
    return out or "structure"


def _is_structure_file(path: Path) -> bool:
    return path.suffix.lower() in STRUCTURE_SUFFIXES or path.name.upper().startswith(VASP_PREFIXES)


def _atoms_to_structure(atoms):
    """An ASE ``Atoms`` as a pymatgen ``Structure``, or a reason it cannot be one.

    Numeric ``info`` entries and scalar calculator results (``energy``, as ASE
    moves it out of an extxyz comment line) become ``properties``."""
    if not all(atoms.pbc):
        return None, f"not periodic in 3D (pbc={[bool(p) for p in atoms.pbc]})"
    reason = check_cell(atoms.cell.array, atoms.positions, atoms.numbers)
    if reason:
        return None, reason
    s = Crystal.from_atoms([atoms]).to_structures()[0]
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    for k, v in results.items():
        if np.ndim(v) == 0 and k not in s.properties:
            s.properties[k] = float(v)
    for k in ("material_id", "name"):  # ASE parses a numeric-looking id as a number
        v = atoms.info.get(k)
        if isinstance(v, (str, int, np.integer)) and not isinstance(v, bool):
            s.properties[k] = str(v)
    return s, None


def _xyz_frames(text: str):
    """Split (ext)xyz text into frames: yields (index, frame text or None, reason).

    A frame is an atom-count line, a comment line and that many atom lines. A
    frame cut short, or a count line that is not a number, ends the file (the
    next frame cannot be found)."""
    lines = text.splitlines()
    i, k = 0, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        try:
            n = int(lines[i].strip())
            if n < 0:
                raise ValueError
        except ValueError:
            yield k, None, (f"line {i + 1}: expected an atom count, found {lines[i].strip()[:40]!r}; "
                            "the rest of the file is unreadable")
            return
        frame = lines[i:i + n + 2]
        if len(frame) < n + 2:
            yield k, None, f"truncated: {n} atoms announced, {max(len(frame) - 2, 0)} atom lines found"
            return
        yield k, "\n".join(frame) + "\n", None
        i, k = i + n + 2, k + 1


def _read_entries(path: Path) -> list:
    """Everything in one file as (entry index or None, structure or None, name hint, reason).

    The index is None for a file read as a whole (one structure, or a failure of
    the whole file)."""
    import io as _io
    import warnings

    suffix = path.suffix.lower()
    entries = []
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        try:
            if path.stat().st_size == 0:
                return [(None, None, None, "empty file")]
            if suffix == ".cif":
                from pymatgen.io.cif import CifParser

                parser = CifParser(str(path))
                structures = parser.parse_structures(primitive=False, on_error="warn")
                if not structures:
                    raise ValueError("Invalid CIF file with no structures!")
                failed = [str(w.message) for w in warned if "No structure parsed for section" in str(w.message)]
                if len(structures) > 1:
                    entries += [(k, s, None, None) for k, s in enumerate(structures)]
                else:  # a file cut inside its atom loop parses, with atoms missing: compare with its formula
                    s = structures[0]
                    reason = check_structure(s)
                    if reason is None and (bad := parser.check(s)):
                        reason = f"atoms disagree with the file's formula, truncated? ({' '.join(bad.split())})"
                    entries.append((None, s, None, reason))
                for msg in dict.fromkeys(failed):
                    entries.append((-1, None, None, " ".join(msg.split())))
            elif suffix in (".vasp", ".poscar") or path.name.upper().startswith(VASP_PREFIXES):
                from pymatgen.io.vasp import Poscar

                entries.append((None, Poscar.from_file(str(path), check_for_potcar=False).structure, None, None))
            elif suffix == ".json":
                from pymatgen.core import Structure

                data = json.loads(path.read_text())
                single = not isinstance(data, list)
                for k, d in enumerate([data] if single else data):
                    idx = None if single else k
                    try:
                        s = Structure.from_dict(d)
                    except Exception as e:
                        what = f"missing key {e}" if isinstance(e, KeyError) else _reason(e)
                        entries.append((idx, None, None, f"not a pymatgen Structure ({what})"))
                        continue
                    props = s.properties or {}
                    hint = props.get("material_id") if isinstance(props.get("material_id"), str) else None
                    entries.append((idx, s, hint, None))
                if not entries:
                    return [(None, None, None, "empty list")]
            elif suffix in (".extxyz", ".xyz"):
                from ase.io import read

                frames = list(_xyz_frames(path.read_text(errors="replace")))
                if not frames:
                    return [(None, None, None, "no frames")]
                single = len(frames) == 1
                for k, frame, reason in frames:
                    idx = None if single else k
                    if frame is None:
                        entries.append((idx, None, None, reason))
                        continue
                    try:
                        atoms = read(_io.StringIO(frame), format="extxyz")
                        s, reason = _atoms_to_structure(atoms)
                    except Exception as e:
                        s, reason = None, _reason(e)
                    hint = None
                    if s is not None:
                        hint = s.properties.get("name") or s.properties.get("material_id")
                    entries.append((idx, s, hint, reason))
            elif suffix == ".traj":
                from ase.io import read

                frames = read(str(path), index=":")
                single = len(frames) == 1
                for k, atoms in enumerate(frames):
                    try:
                        s, reason = _atoms_to_structure(atoms)
                    except Exception as e:
                        s, reason = None, _reason(e)
                    entries.append((None if single else k, s, None, reason))
            elif suffix == ".csv":
                from jaxinv.data import load_dataset

                ds = load_dataset(str(path))
                entries += [(k, s, str(i), None) for k, (s, i) in enumerate(zip(ds.structures(), ds.ids))]
            else:  # anything else pymatgen recognises by name
                from pymatgen.core import Structure

                entries.append((None, Structure.from_file(str(path)), None, None))
        except Exception as e:
            return [(None, None, None, _reason(e, warned))]
    return entries


def read_structures_named(source: str | os.PathLike) -> StructureSet:
    """Structures, their names, and what was skipped, from a file or a folder.

    A folder is read file by file (not recursively, sorted by name): ``*.cif``,
    ``*.vasp``/``*.poscar``/``POSCAR*``/``CONTCAR*``, ``*.json`` (a pymatgen
    ``Structure`` dict or a list of them), ``*.extxyz``/``*.xyz`` and ``*.traj``;
    any other file is skipped as "not a structure file". A single file may also
    be a CDVAE CSV or anything pymatgen reads by name. Every structure is checked
    with :func:`check_structure` (and a one-structure CIF against its own
    ``_chemical_formula_sum``, which catches a file cut inside its atom list). A
    file that cannot be parsed, or an entry of a multi-structure file that fails
    the check, is skipped with a :class:`Skipped` record (``file`` the path,
    ``reason`` one line, starting ``entry <index>:`` for an entry of a
    multi-structure file) and logged as a warning.

    Names: the file stem for a one-structure file; ``<stem>_<index>`` for entry
    ``index`` of a multi-structure file, or its ``material_id`` (JSON, CSV,
    extxyz) / ``name`` (extxyz) when it has one. Names are made file-system safe
    and unique (a repeat gets ``-2``, ``-3``, ...).

    Raises :class:`NoStructuresError` (a ``FileNotFoundError``) naming the
    source when it does not exist or nothing in it could be read.
    """
    source = Path(source)
    if not source.exists():
        raise NoStructuresError(f"no such file or folder: {source}")
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        files = [source]
    structures, names, skipped = [], [], []
    for f in files:
        if source.is_dir() and not _is_structure_file(f):
            skipped.append(Skipped(str(f), "not a structure file (expected .cif, .vasp, POSCAR*, CONTCAR*, "
                                           ".json, .extxyz, .xyz or .traj)"))
            continue
        stem = f.stem if f.suffix.lower() in STRUCTURE_SUFFIXES + (".csv",) else f.name
        for idx, s, hint, reason in _read_entries(f):
            if s is not None and reason is None:
                reason = check_structure(s)
            where = "" if idx is None else ("" if idx < 0 else f"entry {idx}: ")
            if reason is not None:
                skipped.append(Skipped(str(f), where + reason))
                continue
            structures.append(s)
            names.append(hint or (stem if idx is None else f"{stem}_{idx}"))
    names = _unique([_safe_name(n) for n in names])
    for s in skipped:
        log.warning("skipped %s: %s", s.file, s.reason)
    if not structures:
        what = "folder" if source.is_dir() else "file"
        if not files:
            sub = any(p.is_dir() for p in source.iterdir())
            detail = "no files in the folder" + (" (subfolders are not read)" if sub else "")
        elif not source.is_dir():
            detail = "; ".join(s.reason for s in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        else:
            first = "; ".join(f"{Path(s.file).name}: {s.reason}" for s in skipped[:3])
            detail = f"{len(skipped)} skipped ({first}{'; ...' if len(skipped) > 3 else ''})"
        raise NoStructuresError(f"no readable structure in {what} {source}: {detail}")
    return StructureSet(structures, names, skipped, str(source))


def _unique(names: list) -> list:
    """The names with repeats renamed ``<name>-2``, ``<name>-3``, ... (never onto another given name)."""
    given, seen, out = set(names), set(), []
    for n in names:
        if n in seen:
            k = 2
            while f"{n}-{k}" in given or f"{n}-{k}" in seen:
                k += 1
            n = f"{n}-{k}"
        seen.add(n)
        out.append(n)
    return out


def read_structures(source: str | os.PathLike) -> list:
    """pymatgen structures from a folder, a CIF/POSCAR, an extxyz/xyz/traj file, a
    JSON list of ``Structure`` dicts or a CDVAE CSV; unreadable files and entries
    are skipped with a logged warning. See :func:`read_structures_named`, which
    also returns names and the skipped files."""
    return read_structures_named(source).structures


def write_skipped(path: str | os.PathLike, skipped: Sequence[Skipped]) -> Path:
    """``skipped.csv``: one row (file, reason) per skipped file or entry; a header only when none."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "reason"])
        for s in skipped:
            w.writerow([s.file, s.reason])
    return path
