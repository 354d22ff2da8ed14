"""Interatomic potentials on one interface: ``energy_fn(params, crystal, graph) -> (B,)``."""
from jaxinv.potentials.base import (Outputs, Potential, UnsupportedElementError, check_species,
                                    energy_forces_stress, pair_energy_sum, safe_norm)

__all__ = ["Outputs", "Potential", "UnsupportedElementError", "check_species", "energy_forces_stress",
           "pair_energy_sum", "safe_norm"]
