"""Pretrained SevenNet models (sevenn 0.13.0) as jaxinv :class:`NequIP` potentials, without torch.

    >>> from jaxinv.potentials.sevennet import load_sevennet
    >>> pot = load_sevennet("7net-0")            # 89 elements, cutoff 5 Å
    >>> out = pot(crystal)                       # energies, forces, stress

The checkpoint is located, in this order, in

1. the installed ``sevenn`` package, found with ``importlib.util.find_spec``,
   which does not execute ``sevenn/__init__.py`` (that would import torch);
2. the jaxinv cache (``$JAXINV_CACHE``, default ``~/.cache/jaxinv``);
3. the sevenn 0.13.0 wheel from PyPI (``pip download --no-deps``), from which
   only the checkpoint is extracted into the cache.

It is read with :mod:`jaxinv.potentials.torch_pickle`, converted once, and the
converted parameters are cached as ``.npz`` next to a JSON config, so later
loads need neither torch nor sevenn nor the checkpoint. The cached file is keyed
by what produced it (:func:`_producer_tag`: the sevenn checkpoint version, the
conversion's format version, and the jaxinv and e3nn-jax versions, whose
Clebsch-Gordan convention decides the sign patches), so a conversion written
by other code is converted again rather than reused.

Conversion notes (SevenNet checkpoints written before sevenn 0.11): the radial
MLP's last layer stores its columns in the *construction* order of the
convolution paths, and some of the stored Wigner-3j buffers are the negatives
of today's. sevenn patches both when it loads an old checkpoint; we do the same
(:func:`_patch_radial_weights`), deciding each sign by comparing the stored
buffer with ``e3nn_jax.clebsch_gordan``. The convolution denominator is the
``denominator`` buffer (sqrt of the average neighbour count), not the config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

import e3nn_jax as e3nn

from jaxinv.potentials.base import Potential
from jaxinv.potentials.nequip import NequIPConfig, conv_paths, gate_irreps, nequip_potential
from jaxinv.potentials.torch_pickle import load_pth

log = logging.getLogger(__name__)

__all__ = ["load_sevennet", "find_checkpoint", "convert_checkpoint", "cache_dir", "MODELS", "SEVENN_VERSION"]

SEVENN_VERSION = "0.13.0"
FORMAT_VERSION = 1  # bump when the converted-parameter layout changes

# name -> (directory, file) under sevenn/pretrained_potentials
MODELS = {
    "7net-0": ("SevenNet_0__11Jul2024", "checkpoint_sevennet_0.pth"),
    "7net-l3i5": ("SevenNet_l3i5", "checkpoint_l3i5.pth"),
}
_ALIASES = {"sevennet-0": "7net-0", "sevennet_0": "7net-0", "7net-0_11july2024": "7net-0",
            "sevennet-l3i5": "7net-l3i5", "sevennet_l3i5": "7net-l3i5"}


def cache_dir() -> Path:
    """The jaxinv cache directory (``$JAXINV_CACHE`` or ``~/.cache/jaxinv``)."""
    return Path(os.environ.get("JAXINV_CACHE") or Path.home() / ".cache" / "jaxinv")


def _canonical(name: str) -> str:
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in MODELS:
        raise ValueError(f"unknown SevenNet model {name!r}; available: {sorted(MODELS)}")
    return key


def _member(name: str) -> str:
    directory, file = MODELS[name]
    return f"sevenn/pretrained_potentials/{directory}/{file}"


def _installed_sevenn() -> list[Path]:
    """Package directories of an installed sevenn, found without importing it."""
    try:
        spec = importlib.util.find_spec("sevenn")
    except (ImportError, ValueError):
        return []
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def extract_from_wheel(wheel: Path, member: str, dest: Path) -> Path:
    """Copy one file out of a wheel (a zip archive) to ``dest``, atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf, tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        tmp.write(zf.read(member))
    os.replace(tmp.name, dest)
    return dest


def find_checkpoint(name: str = "7net-0", cache: Path | None = None, download: bool = True) -> Path:
    """Path of a SevenNet checkpoint: installed sevenn, then the cache, then PyPI."""
    name = _canonical(name)
    rel = Path(_member(name)).relative_to("sevenn")
    for package in _installed_sevenn():
        if (package / rel).is_file():
            return package / rel
    cache = Path(cache) if cache is not None else cache_dir()
    cached = cache / f"sevenn-{SEVENN_VERSION}" / rel
    if cached.is_file():
        return cached
    if not download:
        raise FileNotFoundError(f"SevenNet checkpoint {name!r} not found (sevenn not installed, not in {cache})")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download(Path(tmp), name, cache)
        return extract_from_wheel(wheel, _member(name), cached)


def _pip_download(dest: Path, name: str, cache: Path) -> Path:
    """``pip download`` the sevenn wheel (no dependencies) into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", f"sevenn=={SEVENN_VERSION}", "--no-deps",
           "--only-binary=:all:", "-d", str(dest), "-q"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        raise FileNotFoundError(f"SevenNet checkpoint {name!r}: sevenn is not installed, nothing in {cache}, "
                                f"and `pip download sevenn=={SEVENN_VERSION}` failed:\n{detail}") from err
    return next(dest.glob("sevenn-*.whl"))


# ---------------------------------------------------------------------------- conversion
def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in str(v).split(".")[:3] if x.isdigit())


def _linear_blocks(flat: np.ndarray, irreps_in, irreps_out) -> dict[str, np.ndarray]:
    """An e3nn ``o3.Linear`` flat weight as :class:`IrrepsLinear` parameters.

    e3nn enumerates instructions with the input irrep as the outer loop and stores
    one row-major ``(mul_in, mul_out)`` block per instruction; blocks reaching the
    same output irrep stack along rows (fan-in).
    """
    blocks: dict[str, list] = {}
    offset = 0
    for mul_in, ir_in in e3nn.Irreps(irreps_in):
        for mul_out, ir_out in e3nn.Irreps(irreps_out):
            if ir_in == ir_out:
                size = mul_in * mul_out
                blocks.setdefault(f"w_{ir_out}", []).append(flat[offset:offset + size].reshape(mul_in, mul_out))
                offset += size
    if offset != flat.size:
        raise ValueError(f"linear weight has {flat.size} numbers, irreps {irreps_in} -> {irreps_out} need {offset}")
    return {k: np.concatenate(v, axis=0) for k, v in blocks.items()}


def _patch_radial_weights(w2: np.ndarray, irreps_in, sh_irreps, target, stored_w3j: dict) -> np.ndarray:
    """Reorder the radial MLP's last-layer columns from construction to sorted path
    order, flipping paths whose stored Wigner-3j is the negative of e3nn's
    (what sevenn's ``sort_old_convolution`` does for checkpoints before 0.11)."""
    built = conv_paths(irreps_in, sh_irreps, target, sort=False)
    start = np.cumsum([0] + [p.mul for p in built])
    columns = {p: w2[:, start[k]:start[k + 1]] for k, p in enumerate(built)}
    out = []
    for p in conv_paths(irreps_in, sh_irreps, target):
        block = columns[p]
        key = (p.ir_in.l, p.ir_sh.l, p.ir_out.l)
        if key in stored_w3j:
            cg = e3nn.clebsch_gordan(*key)
            if np.allclose(stored_w3j[key], -cg, atol=1e-5):
                block = -block
            elif not np.allclose(stored_w3j[key], cg, atol=1e-5):
                raise ValueError(f"stored Wigner-3j {key} is neither +- e3nn's Clebsch-Gordan")
        out.append(block)
    return np.concatenate(out, axis=1)


def convert_checkpoint(checkpoint: dict) -> tuple[NequIPConfig, dict]:
    """A SevenNet checkpoint (as read by :func:`load_pth`) -> (config, flax params)."""
    cfg, sd = checkpoint["config"], checkpoint["model_state_dict"]
    unsupported = {k: cfg.get(k) for k in ("use_modality", "readout_as_fcn", "use_bias_in_linear")
                   if cfg.get(k)}
    if unsupported or cfg.get("self_connection_type", "linear") not in ("linear", "nequip"):
        raise NotImplementedError(f"SevenNet options not supported: {unsupported or cfg['self_connection_type']}")
    if "edge_embedding.basis_function.coeffs" not in sd:
        raise NotImplementedError("checkpoint layout not supported (older SevenNet-0 22May2024 naming)")
    from ase.data import atomic_numbers

    symbols = sorted(cfg["chemical_species"])  # type index = alphabetical position of the symbol
    species = tuple(atomic_numbers[s] for s in symbols)
    if {int(k): int(v) for k, v in cfg["_type_map"].items()} != {z: i for i, z in enumerate(species)}:
        raise ValueError("checkpoint type map is not alphabetical by symbol")
    irreps = tuple(str(e3nn.Irreps(s)) for s in cfg["irreps_manual"])
    n_layers = int(cfg["num_convolution_layer"])
    denominators = {float(sd[f"{t}_convolution.denominator"].reshape(-1)[0]) for t in range(n_layers)}
    if len(denominators) != 1:
        raise NotImplementedError(f"per-layer convolution denominators {denominators}")
    cut = cfg["cutoff_function"]
    envelope = {"XPLOR": "xplor", "poly_cut": "polynomial"}[cut["cutoff_function_name"]]
    readout = sd["reduce_input_to_hidden.linear.weight"]
    n_scalars = e3nn.Irreps(irreps[-1]).count("0e")
    config = NequIPConfig(
        species=species, irreps=irreps, sh_lmax=int(cfg["lmax"]), parity=bool(cfg["is_parity"]),
        normalize_sh=bool(cfg.get("_normalize_sph", False)), cutoff=float(cfg["cutoff"]),
        num_basis=int(cfg["radial_basis"]["bessel_basis_num"]), trainable_basis=True,
        envelope=envelope, envelope_p=int(cut.get("poly_cut_p_value", 6)), r_on=float(cut.get("cutoff_on", 4.5)),
        radial_hidden=tuple(int(h) for h in cfg["weight_nn_hidden_neurons"]),
        self_connection="linear" if cfg.get("self_connection_type", "linear") == "linear" else "species_tp",
        conv_denominator=denominators.pop(), readout_hidden=readout.size // n_scalars,
        shift=tuple(float(x) for x in sd["rescale_atomic_energy.shift"]),
        scale=tuple(float(x) for x in sd["rescale_atomic_energy.scale"]),
    )
    if config.self_connection != "linear":
        raise NotImplementedError("SevenNet 'nequip' self-connection checkpoints are not converted yet")
    old = _version(cfg.get("version", "0.0.0")) < (0, 11, 0)

    f32 = lambda a: np.asarray(a, np.float32)
    params: dict = {
        "bessel_coeffs": f32(sd["edge_embedding.basis_function.coeffs"]),
        "embedding": f32(sd["onehot_to_feature_x.linear.weight"]).reshape(config.num_species, -1),
        "readout_1": {"w_0e": f32(readout).reshape(n_scalars, -1)},
        "readout_2": {"w_0e": f32(sd["reduce_hidden_to_energy.linear.weight"]).reshape(-1, 1)},
        "atomic_scale": f32(sd["rescale_atomic_energy.scale"]),
        "atomic_shift": f32(sd["rescale_atomic_energy.shift"]),
    }
    for t in range(n_layers):
        x_in, x_out = e3nn.Irreps(irreps[t]), e3nn.Irreps(irreps[t + 1])
        g = gate_irreps(x_out)
        paths = conv_paths(x_in, config.sh_irreps, g)
        mid = e3nn.Irreps([(p.mul, p.ir_out) for p in paths]).regroup()
        mlp = [f32(sd[f"{t}_convolution.weight_nn.layer{k}.weight"]) for k in range(len(config.radial_hidden) + 1)]
        if old:
            prefix = f"{t}_convolution.convolution._compiled_main_left_right._w3j_"
            stored = {tuple(int(c) for c in k[len(prefix):].split("_")): v for k, v in sd.items()
                      if k.startswith(prefix)}
            mlp[-1] = _patch_radial_weights(mlp[-1], x_in, config.sh_irreps, g, stored)
        lin = lambda key, a, b: _linear_blocks(f32(sd[f"{t}_{key}.linear.weight"]), a, b)
        params[f"layer_{t}"] = {
            "self_connection": lin("self_connection_intro", x_in, g),
            "linear_1": lin("self_interaction_1", x_in, x_in),
            "radial": {f"w_{k}": w for k, w in enumerate(mlp)},
            "linear_2": lin("self_interaction_2", mid, g),
        }
    return config, {"params": params}


# ---------------------------------------------------------------------------- cache
def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + "/") if isinstance(v, dict) else {key: np.asarray(v)})
    return out


def _unflatten(flat: dict) -> dict:
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def _save(path: Path, config: NequIPConfig, params: dict, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"config": config.to_dict(), "meta": meta})
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, __header__=np.array(header), **_flatten(params))
    os.replace(tmp.name, path)


def _producer_tag() -> str:
    """Everything a cached conversion depends on besides the model's name."""
    from importlib.metadata import PackageNotFoundError, version

    import jaxinv

    try:
        e3 = version("e3nn-jax")
    except PackageNotFoundError:  # pragma: no cover - e3nn-jax is a dependency
        e3 = getattr(e3nn, "__version__", "?")
    return f"sevenn {SEVENN_VERSION}|format {FORMAT_VERSION}|jaxinv {jaxinv.__version__}|e3nn-jax {e3}"


def _converted_path(cache: Path, name: str) -> Path:
    key = hashlib.sha1(_producer_tag().encode()).hexdigest()[:12]
    return cache / "sevennet" / f"{name}-sevenn{SEVENN_VERSION}-v{FORMAT_VERSION}-{key}.npz"


def _load(path: Path) -> tuple[NequIPConfig, dict, dict]:
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(str(z["__header__"]))
        params = _unflatten({k: z[k] for k in z.files if k != "__header__"})
    return NequIPConfig.from_dict(header["config"]), params, header["meta"]


def load_sevennet(name: str = "7net-0", cache: Path | str | None = None, download: bool = True,
                  edge_chunk: int | None = None, radial_grid: int = 256) -> Potential:
    """A pretrained SevenNet model as a :class:`Potential` (no torch needed).

    ``name``: "7net-0" (SevenNet-0, 11Jul2024) or "7net-l3i5". The potential's
    ``species`` are the model's 89 elements, so other elements raise
    :class:`~jaxinv.potentials.UnsupportedElementError`. ``edge_chunk`` sets the
    convolution's edges per loop step, which changes speed, not results; the
    default (``NequIPConfig.edge_chunk``, 128) suits CPU caches, and accelerators
    likely prefer larger chunks.

    ``radial_grid``: the radial MLPs are evaluated from cubic Hermite tables of
    this many intervals over the cutoff (:func:`~jaxinv.potentials.nequip.tabulate_radial`);
    0 runs the MLPs themselves. With 256, SevenNet-0 differs from the exact model
    by under 1e-5 eV/atom and 1e-3 eV/Å and is about 1.6x faster on a CPU
    (measured in ``benchmarks/RESULTS.md``).
    """
    name = _canonical(name)
    cache = Path(cache) if cache is not None else cache_dir()
    converted = _converted_path(cache, name)
    producer = _producer_tag()
    loaded = None
    if converted.is_file():
        try:
            loaded = _load(converted)
            if loaded[2].get("producer") != producer:
                raise ValueError(f"written by {loaded[2].get('producer') or 'an older jaxinv'}, not {producer}")
        except (TypeError, KeyError, ValueError, OSError) as e:  # other code or a damaged file: convert again
            log.warning("ignoring cached %s (%s); converting the checkpoint again", converted, e)
            loaded = None
    if loaded is not None:
        config, params, meta = loaded
    else:
        ckpt = find_checkpoint(name, cache, download)
        config, params = convert_checkpoint(load_pth(ckpt))
        meta = {"source": str(ckpt), "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
                "sevenn_version": SEVENN_VERSION, "producer": producer}
        _save(converted, config, params, meta)
    # speed-only settings come from the caller, not from the cached conversion
    chunk = NequIPConfig.edge_chunk if edge_chunk is None else int(edge_chunk)
    config = dataclasses.replace(config, edge_chunk=chunk, radial_grid=int(radial_grid))
    return nequip_potential(config, params, name=name, metadata=meta)
