"""Load CDVAE-format CSV datasets, parse the CIFs once and cache the arrays.

Search order for a registered dataset ``name``:

1. ``$JAXINV_DATA/<name>/``
2. ``../shared/data/<name>/`` next to the working directory or the source checkout
3. the user cache ``$JAXINV_CACHE/data/<name>/`` (default ``~/.cache/jaxinv``),
   which is filled from CDVAE's upstream files when the machine is online.

Parsed arrays are cached as ``.npz`` under ``$JAXINV_CACHE/parsed/``, keyed by
what produced them: the file's path, size and modification time, the property
columns asked for, the parser's format version, and the versions of jaxinv and
pymatgen (which parses the CIFs). A second load takes milliseconds instead of
seconds of CIF parsing; a cache written by other code or settings is not reused.

Splits: an upstream ``test.csv`` is always the test split and is never pooled
into training; see :func:`load_dataset`.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import urllib.request
import warnings
from pathlib import Path

import numpy as np

from jaxinv.data.dataset import Dataset, SkippedRow
from jaxinv.data.registry import REGISTRY, SPLIT_FILES, DatasetInfo

__all__ = ["load_dataset", "parse_spec", "find_dataset_dir", "DatasetNotFoundError", "cache_dir", "read_cdvae_csv"]

log = logging.getLogger("jaxinv.data")
_CACHE_VERSION = 3  # bump when the parsing or the cached layout changes
_TEXT_COLUMNS = {"", "material_id", "cif", "formula", "pretty_formula", "elements", "index"}
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


class DatasetNotFoundError(FileNotFoundError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("JAXINV_CACHE", Path.home() / ".cache" / "jaxinv"))


def _shared_candidates() -> list[Path]:
    repo = Path(__file__).resolve().parents[2]
    return [Path.cwd().parent / "shared" / "data", repo.parent / "shared" / "data", Path.cwd() / "shared" / "data"]


def find_dataset_dir(name: str) -> tuple[Path | None, list[str]]:
    """First directory holding CSV files of ``name``, and every place looked at."""
    tried = []
    candidates = []
    if os.environ.get("JAXINV_DATA"):
        candidates.append(Path(os.environ["JAXINV_DATA"]) / name)
    candidates += [p / name for p in _shared_candidates()]
    candidates.append(cache_dir() / "data" / name)
    seen = set()
    for d in candidates:
        d = d.resolve()
        if d in seen:
            continue
        seen.add(d)
        tried.append(str(d))
        if d.is_dir() and any((d / f).is_file() for f in SPLIT_FILES.values()):
            return d, tried
    return None, tried


def _download(info: DatasetInfo, dest: Path, timeout: float = 20.0) -> bool:
    """Fetch the upstream CSVs into ``dest``; False when offline."""
    dest.mkdir(parents=True, exist_ok=True)
    got = False
    for split, fname in SPLIT_FILES.items():
        target = dest / fname
        if target.exists():
            got = True
            continue
        url = info.url(split)
        try:
            log.info("downloading %s", url)
            with urllib.request.urlopen(url, timeout=timeout) as r:
                data = r.read()
        except Exception as e:  # offline, DNS failure, HTTP error
            log.warning("could not download %s: %s", url, e)
            continue
        tmp = target.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.rename(target)
        got = True
    return got


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'perov_5:test' -> ('perov_5', 'test'); 'perov_5' -> ('perov_5', None)."""
    if ":" in spec and not Path(spec).exists():
        name, split = spec.rsplit(":", 1)
        split = {"val": "valid", "validation": "valid"}.get(split, split)
        return name, split
    return spec, None


def _parse_row(cif: str):
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = Structure.from_str(cif, fmt="cif")
    if not s.is_ordered:
        raise ValueError("disordered sites (partial occupancy)")
    if len(s) == 0:
        raise ValueError("no atoms")
    lat = s.lattice.matrix
    if not np.all(np.isfinite(lat)) or abs(np.linalg.det(lat)) < 1e-6:
        raise ValueError("degenerate lattice")
    return lat, s.frac_coords, np.array(s.atomic_numbers, np.int32)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _property_columns(header: list[str], rows: list[dict], info: DatasetInfo | None) -> list[str]:
    """Numeric columns: the registry's properties, or (for an unregistered file) every column
    whose non-empty values are mostly numbers. A stray non-numeric value does not drop its
    column; its row is skipped with the reason instead (see :func:`read_cdvae_csv`)."""
    if info is not None:
        return [p for p in info.properties if p in header]
    cols = []
    for h in header:
        if h in _TEXT_COLUMNS or h.startswith("Unnamed"):
            continue
        vals = [(r.get(h) or "").strip() for r in rows]
        vals = [v for v in vals if v]
        if vals and 2 * sum(_is_number(v) for v in vals) > len(vals):
            cols.append(h)
    return cols


def _producer_tag(info: DatasetInfo | None) -> str:
    """What a parsed-CSV cache depends on besides the file: the parser's format version,
    jaxinv's and pymatgen's versions and the property columns asked for."""
    from importlib.metadata import PackageNotFoundError, version

    import jaxinv

    try:
        pmg = version("pymatgen")
    except PackageNotFoundError:  # pragma: no cover - pymatgen is a dependency
        pmg = "?"
    props = ",".join(info.properties) if info is not None else "<numeric columns>"
    return f"format {_CACHE_VERSION}|jaxinv {jaxinv.__version__}|pymatgen {pmg}|properties {props}"


def _file_key(path: Path, info: DatasetInfo | None = None) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{_producer_tag(info)}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def read_cdvae_csv(path: str | Path, info: DatasetInfo | None = None, use_cache: bool = True) -> dict:
    """Parse one CDVAE-format CSV into ragged arrays, skipping malformed rows.

    A row is skipped (with a logged warning naming its 1-based row number and the
    reason) when its CIF does not parse, or a property value is missing or not a
    finite number. Returns a dict of arrays plus ``skipped`` (list of SkippedRow).
    """
    path = Path(path)
    cache = cache_dir() / "parsed" / f"{path.parent.name}-{path.stem}-{_file_key(path, info)}.npz"
    if use_cache and cache.exists():
        try:
            z = np.load(cache, allow_pickle=False)
            out = {k: z[k] for k in z.files}
            out["labels"] = {k[6:]: out.pop(k) for k in list(out) if k.startswith("label:")}
            out["skipped"] = [SkippedRow(str(path), int(r), str(m), str(why)) for r, m, why in
                              zip(out.pop("skip_row"), out.pop("skip_id"), out.pop("skip_reason"))]
            for s in out["skipped"]:
                log.warning("%s", s)
            return out
        except Exception as e:  # a corrupt cache is rebuilt, never fatal
            log.warning("ignoring unreadable cache %s: %s", cache, e)

    csv.field_size_limit(2**31 - 1)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if "cif" not in header:
        raise ValueError(f"{path}: no 'cif' column (columns: {header}); expected CDVAE's CSV format")
    props = _property_columns(header, rows, info)
    lattices, fracs, numbers, ids, skipped = [], [], [], [], []
    labels = {p: [] for p in props}
    for k, row in enumerate(rows, start=1):
        mid = str(row.get("material_id", "") or "")
        try:
            values = {}
            for p in props:
                raw = (row.get(p) or "").strip()
                if raw == "":
                    raise ValueError(f"missing value for {p!r}")
                try:
                    v = float(raw)
                except ValueError:
                    raise ValueError(f"{p!r} is not a number: {raw[:40]!r}") from None
                if not math.isfinite(v):
                    raise ValueError(f"{p!r} is {raw}")
                values[p] = v
            if not (row.get("cif") or "").strip():
                raise ValueError("empty cif")
            try:
                lat, frac, z = _parse_row(row["cif"])
            except Exception as e:
                raise ValueError(f"bad CIF: {type(e).__name__}: {str(e)[:120]}") from None
        except ValueError as e:
            skip = SkippedRow(str(path), k, mid, str(e))
            log.warning("%s", skip)
            skipped.append(skip)
            continue
        lattices.append(lat)
        fracs.append(frac)
        numbers.append(z)
        ids.append(mid or f"{path.stem}-{k}")
        for p in props:
            labels[p].append(values[p])
    sizes = np.array([len(z) for z in numbers], np.int64)
    out = {
        "ids": np.array(ids, dtype=str),
        "lattice": np.array(lattices, np.float64).reshape(-1, 3, 3),
        "frac": np.concatenate(fracs).astype(np.float64) if fracs else np.zeros((0, 3)),
        "numbers": np.concatenate(numbers).astype(np.int32) if numbers else np.zeros(0, np.int32),
        "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "labels": {p: np.array(v, np.float64) for p, v in labels.items()},
        "skipped": skipped,
    }
    if use_cache:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            flat = {k: v for k, v in out.items() if k not in ("labels", "skipped")}
            flat.update({f"label:{k}": v for k, v in out["labels"].items()})
            flat["skip_row"] = np.array([s.row for s in skipped], np.int64)
            flat["skip_id"] = np.array([s.material_id for s in skipped], dtype=str)
            flat["skip_reason"] = np.array([s.reason for s in skipped], dtype=str)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, **flat)
            tmp.rename(cache)
        except OSError as e:
            log.warning("could not write cache %s: %s", cache, e)
    return out


def _hash_split(ids: np.ndarray, salt: str, with_test: bool = True) -> np.ndarray:
    """Deterministic split by a hash of each id: stable when rows are added or reordered.

    ``with_test=False`` (an upstream test file exists) gives train/valid only: the
    rows that would have been test go to train, so a row's valid membership is the
    same either way (90/10)."""
    u = np.array([int(hashlib.sha1(f"{salt}:{i}".encode()).hexdigest()[:8], 16) / 2**32 for i in ids])
    a, b, _ = SPLIT_FRACTIONS
    valid = (u >= a) & (u < a + b)
    rest = np.where(u < a, "train", "test") if with_test else np.full(len(u), "train")
    return np.where(valid, "valid", rest).astype("<U5")


_OWN_SPLIT_NOTED: set = set()


def load_dataset(spec: str | os.PathLike, split: str | None = None, use_cache: bool = True,
                 download: bool = True) -> Dataset:
    """Load a dataset by registry name (``'perov_5'``, ``'carbon_24:test'``) or path.

    ``spec`` may also be a CSV file or a directory of CDVAE CSV files.

    Splits (``Dataset.split_source`` says which rule applied):

    * ``train.csv``, ``val.csv`` and ``test.csv`` all exist: they are the splits;
    * an upstream ``test.csv`` exists but not both others: ``test.csv`` is the
      test split, and is never pooled into training; the rows of the other
      file(s) are split 90/10 into train/valid by a hash of ``material_id``;
    * no ``test.csv``: the rows of whatever files exist are pooled and split
      80/10/10 by that hash, so ``:test`` is jaxinv's own split, not the
      upstream test set (logged once per dataset and process).
    """
    spec = os.fspath(spec)
    name, spec_split = parse_spec(spec)
    split = split or spec_split
    info = REGISTRY.get(name)
    path = Path(name)
    if path.is_file():
        files = {"file": path}
        name = path.stem
    else:
        if path.is_dir():
            directory, tried = path, [str(path)]
        elif info is None:
            raise DatasetNotFoundError(
                f"unknown dataset {name!r}: not a file or directory, and not one of {sorted(REGISTRY)}")
        else:
            directory, tried = find_dataset_dir(name)
            if directory is None and download:
                dest = cache_dir() / "data" / name
                if _download(info, dest):
                    directory = dest
        if directory is None:
            urls = "\n  ".join(info.url(s) for s in SPLIT_FILES)
            raise DatasetNotFoundError(
                f"dataset {name!r} not found. Looked in:\n  " + "\n  ".join(tried)
                + f"\nand could not download it. Get the CSV files from\n  {urls}\n"
                f"and put them in $JAXINV_DATA/{name}/ (or point JAXINV_DATA at their parent directory).")
        files = {s: directory / f for s, f in SPLIT_FILES.items() if (directory / f).is_file()}
        if not files:
            raise DatasetNotFoundError(f"no train.csv, val.csv or test.csv in {directory}")

    parsed = {s: read_cdvae_csv(p, info, use_cache) for s, p in files.items()}
    parts = list(parsed.values())
    props = set(parts[0]["labels"])
    for p in parts[1:]:
        props &= set(p["labels"])
    lattice = np.concatenate([p["lattice"] for p in parts])
    offsets, total = [np.zeros(1, np.int64)], 0
    for p in parts:
        offsets.append(p["offsets"][1:] + total)
        total += p["offsets"][-1]
    ids = np.concatenate([p["ids"] for p in parts])
    split_arr, source = _assign_splits(name, files, parsed, ids)
    ds = Dataset(
        name=name, ids=ids, lattice=lattice,
        frac=np.concatenate([p["frac"] for p in parts]),
        numbers=np.concatenate([p["numbers"] for p in parts]),
        offsets=np.concatenate(offsets),
        labels={k: np.concatenate([p["labels"][k] for p in parts]) for k in sorted(props)},
        split=split_arr.astype("<U5"), split_source=source,
        skipped=tuple(s for p in parts for s in p["skipped"]),
        units=dict(info.units) if info else {},
    )
    if ds.skipped:
        log.warning("%s: loaded %d structures, skipped %d malformed rows", name, len(ds), len(ds.skipped))
    return ds.subset(split) if split else ds


def _assign_splits(name: str, files: dict, parsed: dict, ids: np.ndarray) -> tuple[np.ndarray, str]:
    """Split label of every row (in the order of ``parsed``) and a sentence saying where it came from."""
    if set(files) == set(SPLIT_FILES):
        split = np.concatenate([np.full(len(p["ids"]), s) for s, p in parsed.items()])
        return split.astype("<U5"), "upstream train/val/test files"
    if "test" in files:  # the upstream test file stays the test split, whatever else is missing
        split, start = np.empty(len(ids), "<U5"), 0
        for s, p in parsed.items():
            n = len(p["ids"])
            split[start:start + n] = "test" if s == "test" else _hash_split(p["ids"], name, with_test=False)
            start += n
        others = ", ".join(f.name for s, f in files.items() if s != "test")
        return split, (f"test = upstream test.csv; train/valid = 90/10 hash split of {others} "
                       "(test.csv never pooled into training)")
    names = ", ".join(p.name for p in files.values())
    source = (f"80/10/10 hash split of {names}: no upstream test.csv, so ':test' is jaxinv's own split, "
              "not the upstream test set")
    key = (name, tuple(str(f) for f in files.values()))
    if key not in _OWN_SPLIT_NOTED:
        _OWN_SPLIT_NOTED.add(key)
        log.warning("%s: %s", name, source)
    return _hash_split(ids, name), source


def load_from_config(data_cfg, seed: int = 0) -> Dataset:
    """The dataset a ``DataConfig`` names: ``name``, optional ``split`` and ``limit``.

    ``limit`` keeps the first N structures of a seeded shuffle, so small runs are
    a fair sample of the split rather than its first rows.
    """
    ds = load_dataset(data_cfg.name, split=data_cfg.get("split"))
    limit = data_cfg.get("limit")
    if limit is not None and limit < len(ds):
        idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:limit])
        ds = ds.subset(idx)
    return ds
