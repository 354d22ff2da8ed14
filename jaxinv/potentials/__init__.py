"""Interatomic potentials on one interface: ``energy_fn(params, crystal, graph) -> (B,)``."""
from jaxinv.potentials.base import (Outputs, Potential, UnsupportedElementError, check_species,
                                    energy_forces_stress, pair_energy_sum, safe_norm)
from jaxinv.potentials.classical import (bks_sio2, buckingham_coulomb, isolated_cluster, lennard_jones,
                                         matsui_akaogi_tio2, morse, point_charges, stillinger_weber, tersoff)

__all__ = ["Outputs", "Potential", "UnsupportedElementError", "check_species", "energy_forces_stress",
           "pair_energy_sum", "safe_norm",
           # classical potentials (jaxinv.potentials.classical)
           "lennard_jones", "morse", "isolated_cluster", "buckingham_coulomb", "bks_sio2", "matsui_akaogi_tio2",
           "point_charges", "stillinger_weber", "tersoff"]
