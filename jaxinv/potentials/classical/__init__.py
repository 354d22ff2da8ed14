"""Classical interatomic potentials on jaxinv's :class:`~jaxinv.potentials.Potential` interface.

Pair: :func:`lennard_jones`, :func:`morse` (multi-species tables, choice of
cutoff treatment). Ionic: :func:`buckingham_coulomb`, :func:`bks_sio2`,
:func:`matsui_akaogi_tio2`, :func:`point_charges` (damped shifted force Coulomb
by default, Ewald on request). Many-body: :func:`stillinger_weber`,
:func:`tersoff` (three-body sums over a per-atom neighbor table built from the
all-image graph inside jit).
"""
from jaxinv.potentials.classical.coulomb import dsf_energy, ewald_energy, ewald_parameters, point_charges
from jaxinv.potentials.classical.ionic import bks_sio2, buckingham_coulomb, matsui_akaogi_tio2
from jaxinv.potentials.classical.pair import isolated_cluster, lennard_jones, morse
from jaxinv.potentials.classical.stillinger_weber import stillinger_weber
from jaxinv.potentials.classical.tersoff import tersoff
from jaxinv.potentials.classical.triplets import neighbor_overflow, neighbor_table

__all__ = ["lennard_jones", "morse", "isolated_cluster", "buckingham_coulomb", "bks_sio2", "matsui_akaogi_tio2",
           "point_charges", "dsf_energy", "ewald_energy", "ewald_parameters", "stillinger_weber", "tersoff",
           "neighbor_table", "neighbor_overflow"]
