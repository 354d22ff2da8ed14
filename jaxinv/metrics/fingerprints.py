"""CDVAE's fingerprints: CrystalNN site fingerprints averaged over sites, and Magpie
composition features standardized with CDVAE's fixed scaler.

Structure fingerprint: matminer ``CrystalNNFingerprint.from_preset("ops")`` of every
site, averaged (CDVAE's ``np.array(site_fps).mean(axis=0)``), 61 numbers.
Composition fingerprint: matminer ``ElementProperty.from_preset("magpie")`` (132
numbers), standardized as ``(x - mean) / std`` with the constants CDVAE ships in
``cdvae/common/constants.py`` and NaN replaced by 0 (CDVAE's ``StandardScaler``
with ``replace_nan_token=0``).

CrystalNN costs ~10 ms per site, so structure fingerprints are computed in worker
processes (``n_jobs``) and cached on disk in an SQLite file keyed by a hash of the
exact geometry (lattice, fractional coordinates, atomic numbers) and of everything
that produced the value: :data:`FINGERPRINT_CODE_VERSION`, jaxinv's, matminer's and
pymatgen's versions and the fingerprint settings (preset, reduction, image limit).
A structure that timed out is stored under the time limit it was given, so a run
with another limit computes it again instead of reading a failure.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["structure_fingerprints", "composition_fingerprints", "load_magpie_scaler", "scale_composition",
           "FingerprintCache", "structure_key", "N_STRUCT_FEATURES", "N_COMP_FEATURES", "SCALER_FILE"]

log = logging.getLogger("jaxinv.metrics")

# bump when the fingerprint code changes what it returns (entries of older code are then ignored)
FINGERPRINT_CODE_VERSION = 2
N_STRUCT_FEATURES = 61
N_COMP_FEATURES = 132
SCALER_FILE = "cdvae_magpie_scaler.json"


# ------------------------------------------------------------------ scaler
def _scaler_candidates() -> list[Path]:
    repo = Path(__file__).resolve().parents[2]
    out = []
    if os.environ.get("JAXINV_DATA"):
        out.append(Path(os.environ["JAXINV_DATA"]) / "metrics" / SCALER_FILE)
    out += [repo.parent / "shared" / "data" / "metrics" / SCALER_FILE,
            Path.cwd().parent / "shared" / "data" / "metrics" / SCALER_FILE,
            Path.cwd() / "shared" / "data" / "metrics" / SCALER_FILE]
    return out


def load_magpie_scaler(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CDVAE's fixed Magpie (means, stds), each of length 132.

    Looked up in ``$JAXINV_DATA/metrics/``, then ``../shared/data/metrics/`` next to
    the repository root and the working directory, unless ``path`` is given.
    """
    tried = [Path(path)] if path is not None else _scaler_candidates()
    for p in tried:
        if p.is_file():
            d = json.loads(p.read_text())
            means, stds = np.asarray(d["means"], np.float64), np.asarray(d["stds"], np.float64)
            if means.shape != (N_COMP_FEATURES,) or stds.shape != (N_COMP_FEATURES,):
                raise ValueError(f"{p}: expected {N_COMP_FEATURES} means and stds, got {means.shape}, {stds.shape}")
            return means, stds
    raise FileNotFoundError(
        "CDVAE's Magpie scaler (cdvae_magpie_scaler.json, the CompScalerMeans/CompScalerStds of "
        "cdvae/common/constants.py as {\"means\": [...], \"stds\": [...]}) was not found. Looked at:\n  "
        + "\n  ".join(str(p) for p in tried) + "\nPut it in $JAXINV_DATA/metrics/ or ../shared/data/metrics/.")


def scale_composition(fps: np.ndarray, scaler: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """CDVAE's ``CompScaler.transform``: (x - mean) / std, NaN -> 0."""
    means, stds = scaler if scaler is not None else load_magpie_scaler()
    z = (np.asarray(fps, np.float64) - means) / stds
    return np.where(np.isnan(z), 0.0, z)


# ------------------------------------------------------- composition (Magpie)
_MAGPIE = None


def _magpie():
    global _MAGPIE
    if _MAGPIE is None:
        from matminer.featurizers.composition.composite import ElementProperty

        _MAGPIE = ElementProperty.from_preset("magpie")
    return _MAGPIE


def composition_fingerprints(compositions: Sequence) -> np.ndarray:
    """Raw Magpie features (n, 132) of compositions, structures or a Crystal's rows,
    one call per distinct reduced formula (Magpie depends on element fractions only)."""
    from jaxinv.metrics.composition import compositions_of

    comps = compositions_of(compositions)
    out = np.full((len(comps), N_COMP_FEATURES), np.nan)
    done: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, c in enumerate(comps):
            if c.num_atoms == 0:
                continue
            key = c.reduced_formula
            if key not in done:
                try:
                    done[key] = np.asarray(_magpie().featurize(c), np.float64)
                except Exception as e:  # unknown element data: CDVAE would crash; we mark it
                    log.warning("Magpie features failed for %s: %s", key, e)
                    done[key] = np.full(N_COMP_FEATURES, np.nan)
            out[k] = done[key]
    return out


# ------------------------------------------------------ structure (CrystalNN)
_CNN = None


def _crystalnn():
    global _CNN
    if _CNN is None:
        from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

        _CNN = CrystalNNFingerprint.from_preset("ops")
    return _CNN


# Most periodic images CrystalNN may have to visit around one site. A sane crystal needs
# a few hundred to a few thousand; a degenerate generated cell (a needle or a pancake,
# lattice planes hundredths of an Å apart) needs millions, and pymatgen's image search
# then runs for many minutes inside compiled code. Such a structure counts as failed,
# like one where CrystalNN raises.
MAX_IMAGE_CELLS = 1_000_000
# Wall seconds one structure's fingerprint may take in a worker process before the worker
# is killed and the structure counts as failed (sane structures take well under 1 s; the
# image guard above misses some degenerate cells, where CrystalNN then runs for minutes).
FINGERPRINT_TIMEOUT = 120.0
_SEARCH_RADIUS = 7.0  # Å, CrystalNN's search_cutoff (VoronoiNN widens it when a Voronoi cell is not closed)


def _image_cells(lattice) -> float:
    """Number of cells in the box of periodic images within ``_SEARCH_RADIUS``."""
    from jaxinv.graph import images_needed

    n = images_needed(np.asarray(lattice, np.float64)[None], _SEARCH_RADIUS)[0]
    return float(np.prod(2.0 * n + 1))


def _featurize(args) -> tuple[np.ndarray | None, float]:
    """Mean CrystalNN fingerprint of one structure (None when CrystalNN fails, or the
    cell is so thin that even its LLL-reduced basis has more than
    ``MAX_IMAGE_CELLS`` image cells to search: CDVAE then drops the sample from
    coverage and counts it invalid), and the CPU seconds it took (to tell slow code
    from a busy machine). The fingerprint is computed in the reduced basis: the same
    crystal, so the same fingerprint, with fewer images to visit."""
    import time

    from jaxinv.metrics.structure import lll_reduced

    lattice, numbers, frac = args
    from pymatgen.core import Lattice, Structure

    t0 = time.process_time()
    try:
        lattice, frac = lll_reduced(np.asarray(lattice, np.float64), np.asarray(frac, np.float64))
        if not _image_cells(lattice) <= MAX_IMAGE_CELLS:
            return None, time.process_time() - t0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = Structure(Lattice(lattice), [int(z) for z in numbers], frac)
            fp = _crystalnn()
            site_fps = [fp.featurize(s, i) for i in range(len(s))]
        v = np.array(site_fps, np.float64).mean(axis=0)
        v = v if v.shape == (N_STRUCT_FEATURES,) else None
    except Exception:
        v = None
    return v, time.process_time() - t0


def _worker_init():
    _crystalnn()


def _version_tag() -> str:
    """Everything a cached fingerprint depends on besides the geometry."""
    from importlib.metadata import version

    import jaxinv

    return (f"code {FINGERPRINT_CODE_VERSION}|jaxinv {jaxinv.__version__}|crystalnn-ops-mean"
            f"|matminer {version('matminer')}|pymatgen {version('pymatgen')}"
            f"|lll|max cells {MAX_IMAGE_CELLS}|search radius {_SEARCH_RADIUS:g}")


def _timeout_tag(tag: str, timeout: float) -> str:
    """Key tag of a structure that ran out of time: valid only for the same time limit."""
    return f"{tag}|timed out after {float(timeout):g} s"


def structure_key(lattice, numbers, frac, tag: str = "") -> str:
    """Hash of the exact geometry: equal only for bit-identical structures."""
    h = hashlib.sha1(tag.encode())
    h.update(np.ascontiguousarray(lattice, np.float64).tobytes())
    h.update(np.ascontiguousarray(numbers, np.int64).tobytes())
    h.update(np.ascontiguousarray(frac, np.float64).tobytes())
    return h.hexdigest()


class FingerprintCache:
    """An SQLite table ``key -> fingerprint`` (NULL for a failed fingerprint)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60)
        self._db.execute("CREATE TABLE IF NOT EXISTS fp (key TEXT PRIMARY KEY, vec BLOB)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict:
        out = {}
        keys = list(keys)
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            q = f"SELECT key, vec FROM fp WHERE key IN ({','.join('?' * len(part))})"
            for k, blob in self._db.execute(q, part):
                out[k] = None if blob is None else np.frombuffer(blob, np.float64).copy()
        return out

    def put_many(self, items: dict) -> None:
        rows = [(k, None if v is None else np.asarray(v, np.float64).tobytes()) for k, v in items.items()]
        self._db.executemany("INSERT OR REPLACE INTO fp VALUES (?, ?)", rows)
        self._db.commit()

    def close(self) -> None:
        self._db.close()


def default_cache_path() -> Path:
    from jaxinv.data.loader import cache_dir

    return cache_dir() / "metrics" / "fingerprints.sqlite"


def structure_fingerprints(structures, n_jobs: int = 2, cache: bool | str | os.PathLike = True,
                           progress: bool = True, skip: np.ndarray | None = None, desc: str = "CrystalNN",
                           min_parallel: int = 64, stats: dict | None = None,
                           timeout: float | None = FINGERPRINT_TIMEOUT) -> np.ndarray:
    """Mean CrystalNN fingerprints (n, 61); rows of NaN where CrystalNN failed.

    ``skip`` marks structures not to fingerprint (NaN rows), e.g. degenerate cells.
    ``cache``: True for the default file (``$JAXINV_CACHE/metrics/fingerprints.sqlite``),
    a path, or False. Identical structures are fingerprinted once. Worker
    processes start only for at least ``min_parallel`` structures (each costs a few
    seconds of imports). With at least ``min_parallel`` structures each runs in a
    worker that is killed after ``timeout`` wall seconds, and the structure counts as
    failed (None disables the limit). ``stats``, if given, is updated with the
    numbers of structures computed, read from the cache and timed out, and the CPU
    seconds CrystalNN took.
    """
    from jaxinv.metrics._parallel import TaskTimeout, parallel_map
    from jaxinv.metrics.structure import as_arrays

    lattices, fracs, numbers = as_arrays(structures)
    n = len(lattices)
    skip = np.zeros(n, bool) if skip is None else np.asarray(skip, bool)
    tag = _version_tag()
    keys = [structure_key(l, z, f, tag) for l, z, f in zip(lattices, numbers, fracs)]
    limit = timeout  # a structure that timed out is a failure only under this same limit
    db = None
    if cache:
        try:
            db = FingerprintCache(default_cache_path() if cache is True else cache)
        except sqlite3.Error as e:  # a read-only or broken cache must not stop scoring
            log.warning("fingerprint cache unavailable (%s); computing without it", e)
    wanted = sorted(set(k for k, s in zip(keys, skip) if not s))
    known = db.get_many(wanted) if db else {}
    timeout_keys = {}
    if db is not None and limit is not None:  # structures that ran out of this same time limit before
        wanted_set, ttag = set(wanted), _timeout_tag(tag, limit)
        timeout_keys = {key: structure_key(l, z, f, ttag)
                        for key, l, z, f in zip(keys, lattices, numbers, fracs) if key in wanted_set}
        missing = {timeout_keys[k]: k for k in wanted if k not in known}
        for tk in db.get_many(sorted(missing)):
            known[missing[tk]] = None
    todo = {}
    for k, key in enumerate(keys):
        if not skip[k] and key not in known and key not in todo:
            todo[key] = (lattices[k], numbers[k], fracs[k])
    n_cached = sum(1 for key, s in zip(keys, skip) if not s and key in known)
    log.info("CrystalNN fingerprints: %d structures, %d cached, %d distinct to compute (%d jobs)",
             n, n_cached, len(todo), n_jobs)
    if stats is not None:
        stats["computed"] = stats.get("computed", 0) + len(todo)
        stats["cached"] = stats.get("cached", 0) + n_cached
    if todo:
        items = list(todo.items())
        args = [v for _, v in items]
        results, pending, cpu, timed_out = {}, {}, 0.0, 0
        for (key, _), out in zip(items, parallel_map(_featurize, args, n_jobs, initializer=_worker_init,
                                                     progress=progress, desc=desc, min_tasks=min_parallel,
                                                     timeout=timeout)):
            if isinstance(out, TaskTimeout):
                vec, seconds = None, 0.0
                timed_out += 1
                results[key] = None
                if limit is not None:  # stored only under its time limit
                    pending[structure_key(*todo[key], _timeout_tag(tag, limit))] = None
            else:
                vec, seconds = out
                results[key] = pending[key] = vec
            cpu += seconds
            if db is not None and len(pending) >= 256:  # keep finished work if interrupted
                db.put_many(pending)
                pending.clear()
        if stats is not None:
            stats["cpu_s"] = stats.get("cpu_s", 0.0) + cpu
            stats["timed_out"] = stats.get("timed_out", 0) + timed_out
        if db is not None and pending:
            db.put_many(pending)
        known.update(results)
    if db is not None:
        db.close()
    out = np.full((n, N_STRUCT_FEATURES), np.nan)
    for k, key in enumerate(keys):
        v = None if skip[k] else known.get(key)
        if v is not None:
            out[k] = v
    return out
