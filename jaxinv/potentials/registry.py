"""Potentials by name, for configs and the command line (``potential=sevennet0``).

Each entry names a factory and its default keyword arguments; modules are
imported only when their potential is asked for, so that loading a classical
potential never touches the SevenNet checkpoint.
"""
from __future__ import annotations

import importlib

from jaxinv.potentials.base import Potential

__all__ = ["load_potential", "available_potentials", "factory_of"]

_REGISTRY: dict[str, tuple[str, str, dict, str]] = {
    "sevennet0": ("jaxinv.potentials.sevennet", "load_sevennet", {"name": "7net-0"},
                  "SevenNet-0 (11Jul2024), universal NequIP potential trained on MPtrj, 89 elements"),
    "sevennet_l3i5": ("jaxinv.potentials.sevennet", "load_sevennet", {"name": "7net-l3i5"},
                      "SevenNet-l3i5, lmax=3 variant of SevenNet-0"),
    "lj": ("jaxinv.potentials.classical", "lennard_jones", {},
           "Lennard-Jones (sigma, epsilon, species, cutoff as options)"),
    "morse": ("jaxinv.potentials.classical", "morse", {}, "Morse pair potential (r0, epsilon, alpha)"),
    "sw_si": ("jaxinv.potentials.classical", "stillinger_weber", {}, "Stillinger-Weber Si (1985)"),
    "tersoff_si": ("jaxinv.potentials.classical", "tersoff", {"elements": ["Si"]}, "Tersoff Si"),
    "tersoff_c": ("jaxinv.potentials.classical", "tersoff", {"elements": ["C"]}, "Tersoff C"),
    "bks_sio2": ("jaxinv.potentials.classical", "bks_sio2", {}, "BKS SiO2 with a repulsive core"),
    "buckingham_tio2": ("jaxinv.potentials.classical", "matsui_akaogi_tio2", {},
                        "Matsui-Akaogi Buckingham + Coulomb TiO2"),
    "trained": ("jaxinv.potentials.train", "load_trained", {},
                "a NequIP model written by `jaxinv run train_potential` (option path=<run>/model)"),
}


def available_potentials() -> dict[str, str]:
    """Name -> one-line description."""
    return {k: v[3] for k, v in _REGISTRY.items()}


def factory_of(name: str) -> tuple[str, str, dict] | None:
    """(module, factory function name, default options) of a registered potential, or None;
    the module is not imported (checking a config must not load SevenNet's)."""
    entry = _REGISTRY.get(name)
    return None if entry is None else (entry[0], entry[1], dict(entry[2]))


def load_potential(name: str, **options) -> Potential:
    """Build the potential registered as ``name``; ``options`` override its defaults."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown potential {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    module, factory, defaults, _ = _REGISTRY[name]
    fn = getattr(importlib.import_module(module), factory)
    return fn(**{**defaults, **options})
