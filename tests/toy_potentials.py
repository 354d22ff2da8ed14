"""A Lennard-Jones pair potential written only from the common interface, for tests
that must not depend on the library's own potentials (and for subprocess tests)."""
from jaxinv.potentials import Potential, pair_energy_sum

SIGMA, EPSILON, CUTOFF = 2.0, 0.1, 5.0


def _lj(params, crystal, graph):
    def pair(r, zi, zj):
        sr6 = (params["sigma"] / r) ** 6
        cut = (params["sigma"] / CUTOFF) ** 6  # shifted to zero at the potential's cutoff
        return 4 * params["eps"] * ((sr6 * sr6 - sr6) - (cut * cut - cut))
    return pair_energy_sum(pair, crystal, graph)


LJ = Potential("toy-lj", _lj, {"sigma": SIGMA, "eps": EPSILON}, cutoff=CUTOFF, species=(14, 6))


def ase_lj():
    """ASE's own (independent) implementation of the same potential."""
    from ase.calculators.lj import LennardJones

    return LennardJones(sigma=SIGMA, epsilon=EPSILON, rc=CUTOFF, smooth=False)
