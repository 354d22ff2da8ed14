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


def rejected_overflow_state(config):
    """A FIRE state whose last attempted move overflowed its graph and was rejected.

    An FCC cell of this LJ sits where its graph (cutoff + skin) is exactly full; the move
    shrinks the cell to 70% of its volume, which brings a new shell within reach. As in
    the jitted step, the state keeps the old geometry but carries the overflowed build
    (edge counts, the lattice it was built for) and ``needs_graph``. Returns
    ``(state, moved crystal, graph cutoff)``.
    """
    import jax.numpy as jnp
    from pymatgen.core import Lattice, Structure

    from jaxinv.crystal import Crystal
    from jaxinv.graph import build_graph, neighbor_graph
    from jaxinv.relax.fire import fire_relaxer

    rc = LJ.cutoff + config.skin_for(LJ.cutoff)
    fcc = Structure(Lattice.cubic(3.3 * 1.12), ["Si"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    here = Crystal.from_structures([fcc])
    moved = Crystal.from_structures([fcc.copy().scale_lattice(fcc.volume * 0.7)])
    fits_here = neighbor_graph(here, rc)
    overflowed = build_graph(moved, rc, fits_here.images, fits_here.capacity)
    assert bool(overflowed.overflow[0]) and int(overflowed.n_edges[0]) > fits_here.capacity
    init_fn, _ = fire_relaxer(LJ.energy_fn, LJ.cutoff, config)
    state = init_fn(LJ.params, here, fits_here)
    nb = state.neighbors
    state = state.replace(neighbors=nb.replace(graph=overflowed, lattice=jnp.asarray(moved.lattice, nb.lattice.dtype),
                                               needs_graph=jnp.ones_like(nb.needs_graph)))
    return state, moved, rc
