"""Interatomic potentials on one interface: ``energy_fn(params, crystal, graph) -> (B,)``.

The equivariant models (:mod:`~jaxinv.potentials.nequip`, pretrained SevenNet in
:mod:`~jaxinv.potentials.sevennet`) and the ASE calculator are imported on first
use, so that ``import jaxinv.potentials`` stays light.
"""
import importlib

from jaxinv.potentials.base import (Outputs, Potential, UnsupportedElementError, check_species,
                                    energy_forces_stress, pair_energy_sum, safe_norm)
from jaxinv.potentials.classical import (bks_sio2, buckingham_coulomb, isolated_cluster, lennard_jones,
                                         matsui_akaogi_tio2, morse, point_charges, stillinger_weber, tersoff)

_LAZY = {
    "NequIPConfig": "jaxinv.potentials.nequip",
    "init_params": "jaxinv.potentials.nequip",
    "nequip_potential": "jaxinv.potentials.nequip",
    "load_sevennet": "jaxinv.potentials.sevennet",
    "JaxinvCalculator": "jaxinv.potentials.calculator",
    "load_potential": "jaxinv.potentials.registry",
    "available_potentials": "jaxinv.potentials.registry",
}

__all__ = ["Outputs", "Potential", "UnsupportedElementError", "check_species", "energy_forces_stress",
           "pair_energy_sum", "safe_norm", *_LAZY,
           # classical potentials (jaxinv.potentials.classical)
           "lennard_jones", "morse", "isolated_cluster", "buckingham_coulomb", "bks_sio2", "matsui_akaogi_tio2",
           "point_charges", "stillinger_weber", "tersoff"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
