"""Periodic neighbor graphs over *all* images within a cutoff.

jax-md's neighbor lists use the minimum-image convention, which misses edges
whenever the cutoff exceeds half a cell width, as it does in most small crystal
cells (cubic BaTiO3, a = 4 Å, cutoff 3 Å: 60 directed edges, of which the
minimum image finds 18). Here every periodic image that can hold a neighbor is
searched, so small and strongly skewed cells are handled exactly.

An edge ``e`` of structure ``b`` points from ``senders[b, e]`` (the neighbor j)
to ``receivers[b, e]`` (the center i); its vector is

    r_ij = (frac[j] - frac[i] + shifts[e]) @ lattice,

with integer image ``shifts`` relative to the crystal's *unwrapped* fractional
coordinates, so the graph stays valid while atoms move continuously. This matches
pymatgen's ``get_neighbor_list`` (center, neighbor, image) triplets.

Shapes are static for ``jit``: each structure has ``capacity`` edge slots and a
mask. The number of periodic images searched per structure is static too,
``image_slots(graph.images)``; each structure fills them with the box of images
its own cell needs, so a batch of long and flat cells costs its most demanding
cell, not the box of all their per-axis maxima. When a structure
needs more edges or images than a graph has room for, ``overflow`` is set; the
host-side :func:`neighbor_graph` then grows the capacity and rebuilds, outside jit.

Graph sizing (one rule, here only), split as in jax-md's ``partition.py``:

* :func:`allocate` (host, outside jit) builds a graph and sizes its edge capacity
  by :func:`capacity_for`: ``bucket_size(int(headroom * most edges) + 4, 16)``,
  with one headroom setting, :data:`HEADROOM`, for graphs rebuilt while atoms move
  (``headroom=None``: the exact bucket, for structures that stay put);
* :func:`update` rebuilds a graph inside jit at its fixed sizes, and
  :func:`did_buffer_overflow` (``graph.overflow`` per structure) tells the host to
  reallocate, with :func:`grown_sizes` for what the overflowed step needed.

Capacity only changes padding (and how often shapes change, i.e. recompile), never
a complete graph's edges.
"""
from __future__ import annotations

import functools

import numpy as np
from flax import struct

import jax
import jax.numpy as jnp

from jaxinv.crystal import Crystal, bucket_size

__all__ = ["Graph", "neighbor_graph", "build_graph", "images_needed", "edge_vectors", "edge_lengths",
           "trim_graph", "grown_sizes", "MAX_IMAGES", "HEADROOM", "capacity_for", "allocate", "update",
           "did_buffer_overflow", "StickyGraph"]


@struct.dataclass
class Graph:
    """Padded directed edge lists for a :class:`~jaxinv.crystal.Crystal` batch."""

    senders: jax.Array  # (B, E) int32, neighbor atom j
    receivers: jax.Array  # (B, E) int32, center atom i
    shifts: jax.Array  # (B, E, 3) integer-valued image offsets (float)
    mask: jax.Array  # (B, E) bool
    n_edges: jax.Array  # (B,) edges found, may exceed capacity
    image_overflow: jax.Array  # (B,) more periodic images needed than searched
    cutoff: float = struct.field(pytree_node=False)
    images: tuple = struct.field(pytree_node=False)  # image box (+-): image_slots(images) images per structure

    @property
    def capacity(self) -> int:
        return self.senders.shape[-1]

    @property
    def overflow(self):
        """Per structure: the graph is incomplete and must be rebuilt larger."""
        return (self.n_edges > self.capacity) | self.image_overflow


MAX_IMAGES = 48  # per axis; a cell thinner than cutoff/48 is treated as broken


HEADROOM = 1.2  # edge slots per edge needed, for graphs rebuilt (inside jit) while atoms move
_SLACK = 4  # slots on top of the headroom, for the smallest graphs


MIN_CAPACITY = 16  # the smallest edge capacity on the ladder


def capacity_for(n_edges, headroom: float | None = HEADROOM) -> int:
    """The graph-sizing rule: edge capacity for graphs whose largest edge count is
    ``max(n_edges)``, ``bucket_size(int(headroom * max(n_edges)) + 4, 16)``, on the one
    ladder of :func:`~jaxinv.crystal.bucket_size`.

    ``headroom=None`` gives the exact bucket, ``bucket_size(max(n_edges), 16)``, for
    structures that do not move (labelling, training). Every graph capacity that is
    derived from counted edges comes from here.
    """
    n = int(np.max(np.asarray(n_edges), initial=1))
    if headroom is None:
        return bucket_size(n, MIN_CAPACITY)
    return bucket_size(int(headroom * n) + _SLACK, MIN_CAPACITY)


def images_needed(lattice, cutoff: float):
    """Images per axis (+-) that can hold a neighbor within ``cutoff``, (B, 3).

    With wrapped coordinates the fractional separation along axis a lies in
    (-1, 1), and the distance to the plane of image n is at least |n - 1| d_a,
    where d_a = 1/|b_a| is the spacing of lattice planes; so n_a = floor(rc/d_a) + 1.
    """
    xp = np if isinstance(lattice, np.ndarray) else jnp
    inv = xp.linalg.inv(lattice)
    recip_norm = xp.linalg.norm(inv, axis=-2)  # columns of inv(L) are reciprocal vectors
    # a collapsed or non-finite cell asks for "infinitely many" images
    n = xp.nan_to_num(xp.floor(cutoff * recip_norm), nan=1e6, posinf=1e6)
    return xp.minimum(n, 1e6).astype(np.int32) + 1


def grown_sizes(graph: Graph, lattice, cutoff: float, which=None, headroom: float = HEADROOM) -> tuple[int, tuple]:
    """Edge capacity and images for rebuilding ``graph`` on the host after it overflowed.

    A jitted relaxation step whose rebuilt graph overflows is rejected, so the
    structure stays where the old graph still fits: a graph sized for that
    geometry alone can come back with the same sizes, and the retried step
    overflows again, forever. The overflowed build itself says what the step
    needs: its edge counts (``graph.n_edges``, which may exceed the capacity)
    and the lattice it was built for (``lattice``). ``which`` selects the
    structures that count (e.g. the running ones).
    """
    n_edges = np.asarray(graph.n_edges)
    lattice = np.asarray(lattice, np.float64)
    if which is not None:
        n_edges, lattice = n_edges[which], lattice[which]
    capacity = graph.capacity
    if n_edges.size and int(n_edges.max()) > capacity:
        capacity = capacity_for(n_edges, headroom)
    need = images_needed(lattice, cutoff) if len(lattice) else np.zeros((0, 3), np.int32)
    return capacity, images_for(need, graph.images)  # a collapsed cell fails instead (FAILED_GRAPH)


def image_slots(images: tuple) -> int:
    """Periodic images a graph of this image box searches per structure: prod(2 n_a + 1)."""
    return int(np.prod([2 * int(i) + 1 for i in images]))


def images_for(need, at_least: tuple = (0, 0, 0)) -> tuple:
    """An image box, grown from ``at_least``, whose :func:`image_slots` hold every
    structure's own box ``need`` (rows of :func:`images_needed`; rows beyond
    ``MAX_IMAGES`` are ignored: those structures fail instead).

    Each structure searches only the images its own cell needs, in the first slots,
    so a batch needs as many slots as its most demanding structure, not the box of
    its per-axis maxima: a long and a flat cell together need (2, 2, 9) or (9, 9, 2)
    images worth of slots, not (9, 9, 9). The box grows to cover that structure.
    """
    need = np.asarray(need, np.int64).reshape(-1, 3)
    need = need[(need <= MAX_IMAGES).all(-1)]
    box = tuple(int(i) for i in at_least)
    if not len(need):
        return box
    slots = np.prod(2 * need + 1, axis=-1)
    if image_slots(box) < int(slots.max()):
        box = tuple(max(a, int(b)) for a, b in zip(box, need[int(np.argmax(slots))]))
    return box


def _image_grid_one(need, slots: int, dtype):
    """Slot k -> its image (integer shift, (K, 3)) in a structure's own box ``need``,
    with the slots beyond that box marked unused."""
    dims = 2 * need + 1
    k = jnp.arange(slots)
    index = jnp.stack([k // (dims[1] * dims[2]), (k // dims[2]) % dims[1], k % dims[2]], -1)
    used = k < dims[0] * dims[1] * dims[2]
    zero = need[0] * dims[1] * dims[2] + need[1] * dims[2] + need[2]  # the (0, 0, 0) image
    return (index - need).astype(dtype), used, zero


def _candidates_one(lattice, frac, mask, cutoff, images):
    """Which (receiver i, sender j, image k) triplets are edges, (N, N, K) bool; the
    offsets that wrap ``frac``; the image overflow flag; each slot's image (K, 3)."""
    slots = image_slots(images)
    # each structure walks its own box; the clip keeps the product finite for broken cells
    need = jnp.minimum(images_needed(lattice, cutoff), MAX_IMAGES + 1)
    grid, used, zero_image = _image_grid_one(need, slots, frac.dtype)
    n, k = frac.shape[0], slots
    offset = jnp.floor(frac)
    # Cartesian positions of wrapped atoms and of image offsets; separating the
    # two products is ~30x faster on CPU than one einsum over (N, N, K, 3).
    cart = (frac - offset) @ lattice
    vec = cart[None, :, None, :] - cart[:, None, None, :] + (grid @ lattice)[None, None]
    d2 = jnp.sum(vec * vec, axis=-1)
    same = (jnp.arange(n)[:, None] == jnp.arange(n)[None, :])[:, :, None] & (jnp.arange(k) == zero_image)
    ok = (d2 <= cutoff * cutoff) & mask[:, None, None] & mask[None, :, None] & ~same & used
    image_overflow = ((jnp.prod(2 * need + 1) > slots) | jnp.any(need > MAX_IMAGES)) & mask.any()
    # a structure that needs more images than searched gets no edges at all (and
    # its flag set): a partial graph would silently give wrong energies
    return ok & ~image_overflow, offset, image_overflow, grid


def _triplets(idx, n, k):
    return idx // (n * k), (idx // k) % n, idx % k  # receiver, sender, image


def _edges_one(lattice, frac, mask, cutoff, images, capacity):
    """Edges of one structure, compacted inside jit."""
    ok, offset, image_overflow, grid = _candidates_one(lattice, frac, mask, cutoff, images)
    n, _, k = ok.shape
    flat = ok.reshape(-1)
    (idx,) = jnp.nonzero(flat, size=capacity, fill_value=0)
    valid = jnp.arange(capacity) < flat.sum()
    receivers, senders, image = _triplets(idx, n, k)
    shifts = grid[image] - offset[senders] + offset[receivers]
    receivers = jnp.where(valid, receivers, 0).astype(jnp.int32)
    senders = jnp.where(valid, senders, 0).astype(jnp.int32)
    shifts = jnp.where(valid[:, None], shifts, 0.0)
    return senders, receivers, shifts, valid, flat.sum().astype(jnp.int32), image_overflow


@functools.partial(jax.jit, static_argnames=("cutoff", "images", "capacity"))
def build_graph(crystal: Crystal, cutoff: float, images: tuple, capacity: int) -> Graph:
    """Jittable graph construction with static image range and edge capacity.

    Use this inside jitted loops (relaxation, search); check ``graph.overflow``
    and rebuild with :func:`neighbor_graph` outside jit when it is set.
    """
    fn = functools.partial(_edges_one, cutoff=cutoff, images=tuple(int(i) for i in images), capacity=capacity)
    s, r, sh, m, n, io = jax.vmap(fn)(crystal.lattice, crystal.frac, crystal.mask)
    return Graph(s, r, sh, m, n, io, cutoff=float(cutoff), images=tuple(int(i) for i in images))


@functools.partial(jax.jit, static_argnames=("cutoff", "images"))
def _candidates(crystal: Crystal, cutoff: float, images: tuple):
    fn = functools.partial(_candidates_one, cutoff=cutoff, images=images)
    return jax.vmap(fn)(crystal.lattice, crystal.frac, crystal.mask)


def _candidates_on_ladder(c: Crystal, cutoff: float, images: tuple):
    """:func:`_candidates` with the batch padded up the bucket ladder by empty cells, so the
    batch counts a run meets compile a few programs, not one each."""
    b = c.batch_size
    extra = bucket_size(b) - b
    if extra:
        pad = lambda x, v: np.concatenate([x, np.full((extra,) + x.shape[1:], v, x.dtype)])
        cube = np.broadcast_to(10.0 * np.eye(3, dtype=c.lattice.dtype), (extra, 3, 3))  # no edges: masked
        c = Crystal(np.concatenate([c.lattice, cube]), pad(c.frac, 0.0), pad(c.numbers, 0), pad(c.mask, False))
    return tuple(np.asarray(x)[:b] for x in _candidates(c, float(cutoff), images))


def _compact_on_host(c: Crystal, cutoff: float, images: tuple, capacity: int | None):
    """Candidates on the device, compaction with NumPy (much faster than a jitted
    scatter on CPU); returns padded edge arrays of one chunk."""
    ok, offset, image_overflow, grid = _candidates_on_ladder(c, cutoff, images)
    b, n, _, k = ok.shape
    rows, idx = np.nonzero(ok.reshape(b, -1))
    counts = np.bincount(rows, minlength=b)
    cap = max(capacity or 0, capacity_for(counts, headroom=None))
    slot = np.arange(len(rows)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[rows]
    receivers, senders, image = _triplets(idx, n, k)
    senders_out = np.zeros((b, cap), np.int32)
    receivers_out = np.zeros((b, cap), np.int32)
    shifts_out = np.zeros((b, cap, 3))
    mask_out = np.zeros((b, cap), bool)
    senders_out[rows, slot] = senders
    receivers_out[rows, slot] = receivers
    shifts_out[rows, slot] = grid[rows, image] - offset[rows, senders] + offset[rows, receivers]
    mask_out[rows, slot] = True
    return senders_out, receivers_out, shifts_out, mask_out, counts.astype(np.int32), image_overflow


def neighbor_graph(crystal: Crystal, cutoff: float, capacity: int | None = None, images: tuple | None = None,
                   max_pairs: int = 2**24) -> Graph:
    """All-image neighbor graph of a batch, sized so that nothing overflows (host side).

    ``capacity`` (edge slots per structure) and ``images`` (periodic images
    searched per axis) are minimums; both grow to what the batch needs. A
    structure that would need more than ``MAX_IMAGES`` images per axis (a
    collapsed or absurdly thin cell) gets no edges and ``image_overflow`` set.
    The batch is processed in chunks of at most ``max_pairs`` (atom pairs times
    images) to bound memory. Use ``capacity`` with headroom when the graph will
    be rebuilt inside jit while atoms move (relaxation).
    """
    c = crystal.to_host()
    images = images_for(images_needed(c.lattice[c.present], cutoff), images or (0, 0, 0))
    n_images = image_slots(images)
    chunk = max(1, max_pairs // max(1, c.n_max * c.n_max * n_images))
    parts = [_compact_on_host(c[start:start + chunk], cutoff, images, capacity)
             for start in range(0, c.batch_size, chunk)]
    cap = max(p[0].shape[1] for p in parts)
    padded = []
    for s, r, sh, m, n, io in parts:
        extra = cap - s.shape[1]
        pad2 = lambda x: np.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))
        padded.append((pad2(s), pad2(r), pad2(sh), pad2(m), n, io))
    cat = [np.concatenate(xs) for xs in zip(*padded)]
    return Graph(*(jnp.asarray(x) for x in cat), cutoff=float(cutoff), images=images)


def allocate(crystal: Crystal, cutoff: float, headroom: float | None = HEADROOM, capacity: int | None = None,
             images: tuple | None = None, max_pairs: int = 2**24) -> Graph:
    """A host-built graph of ``crystal`` sized for rebuilding inside jit (:func:`update`).

    ``capacity`` and ``images`` are minimums, as in :func:`neighbor_graph`. When no
    ``capacity`` is given, or the batch needs more, the capacity becomes
    :func:`capacity_for` ``(n_edges, headroom)``: room for neighbor counts to grow
    while atoms move, so that each new capacity (a new compilation) is rare. A given
    capacity that fits is kept as is (growing the image box alone adds no edge slots).
    ``headroom=None``: the exact bucket (:func:`neighbor_graph`), for structures that
    stay put.
    """
    g = neighbor_graph(crystal, cutoff, capacity=capacity, images=images, max_pairs=max_pairs)
    if headroom is not None and (capacity is None or g.capacity > capacity):
        g = pad_graph(g, capacity_for(g.n_edges, headroom))  # the same arrays a rebuild would give
    return g


class StickyGraph:
    """Graph sizes that only grow: neighbor graphs built through it share one edge capacity
    and image range, so the jitted functions that consume them compile once per run
    instead of once per batch. Relaxation drivers keep one per padded size.

    ``images`` and ``capacity`` are the starting minimums (a generous floor, e.g. a
    search's :func:`~jaxinv.search.composition.graph_floor`, or the defaults, which let
    the first batch size them)."""

    def __init__(self, cutoff: float, images=(1, 1, 1), capacity: int = 16, headroom: float | None = None):
        self.cutoff = float(cutoff)
        self.images = tuple(int(i) for i in images)
        self.capacity = int(capacity)
        self.headroom = HEADROOM if headroom is None else headroom
        self.most_needed = 0  # the most edges any crystal (or overflowed step) has needed so far
        self.tightened = False

    def at_least(self, capacity: int, images: tuple):
        """Grow the sticky sizes to at least these (e.g. what an overflowed step needed)."""
        if int(capacity) > self.capacity:  # (an unchanged capacity says nothing about what was needed)
            self.most_needed = max(self.most_needed, int(capacity))
        self.capacity = max(self.capacity, int(capacity))
        self.images = tuple(max(int(a), int(b)) for a, b in zip(self.images, images))

    def saw(self, n_edges) -> None:
        """Record edge counts of graphs built elsewhere (e.g. inside a jitted relaxation step)."""
        self.most_needed = max(self.most_needed, int(np.max(np.asarray(n_edges), initial=0)))

    def tighten(self, slack: float = 2.0) -> bool:
        """Once: lower the capacity to what was needed so far, with headroom, if the
        starting capacity (a generous floor) was more than ``slack`` times that.

        A padded edge costs a pair potential as much as a real one in each call, and a
        floor can overshoot by 2-3x (SiO2 frameworks are far less dense than their bond
        length suggests); SevenNet-0's convolution skips chunks of padding, but its other
        per-edge work does not (NaCl, 16 cells: 48 ms per evaluation at 64 slots, 78-88 ms
        at 192-384). The lower capacity is a new program to compile, though (15-60 s for
        SevenNet-0 on a CPU), so only an overshoot of more than ``slack`` (two rungs of the
        ladder) is worth it. Called after a driver's first run, so a search recompiles at
        most once for it. Returns whether the capacity changed.
        """
        if self.tightened or self.most_needed == 0:
            return False
        self.tightened = True
        fitted = capacity_for(self.most_needed, self.headroom)
        if self.capacity <= slack * fitted:
            return False
        self.capacity = fitted
        return True

    def __call__(self, crystal: Crystal) -> Graph:
        g = allocate(crystal, self.cutoff, self.headroom, capacity=self.capacity, images=self.images)
        self.most_needed = max(self.most_needed, int(np.max(np.asarray(g.n_edges), initial=1)))
        self.capacity, self.images = g.capacity, g.images  # both only grow (they are minimums)
        return g


def update(graph: Graph, crystal: Crystal) -> Graph:
    """``graph`` rebuilt for ``crystal`` (e.g. moved atoms) at its fixed sizes, inside jit.

    Check :func:`did_buffer_overflow` (or ``graph.overflow`` per structure) and
    :func:`allocate` again on the host, with :func:`grown_sizes`, when it is set.
    """
    return build_graph(crystal, graph.cutoff, graph.images, graph.capacity)


def did_buffer_overflow(graph: Graph):
    """Whether any structure of ``graph`` needs more edge slots or images than it has."""
    return jnp.any(graph.overflow)


def pad_graph(g: Graph, capacity: int) -> Graph:
    """Pad edge slots up to ``capacity`` (padded edges are masked self-loops on atom 0)."""
    extra = capacity - g.capacity
    if extra <= 0:
        return g
    padw = lambda x, v: jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2), constant_values=v)
    return g.replace(senders=padw(g.senders, 0), receivers=padw(g.receivers, 0), shifts=padw(g.shifts, 0.0),
                     mask=padw(g.mask, False))


def edge_vectors(crystal: Crystal, graph: Graph):
    """Edge vectors r_ij = x_j + shift @ L - x_i, (B, E, 3); zero on padded edges.

    Differentiable in the crystal's lattice and coordinates, which is what gives
    forces and stress by autodiff. Potentials that need only lengths should use
    :func:`edge_lengths`, which is several times faster to differentiate.
    """
    take = jax.vmap(lambda f, idx: f[idx])
    dfrac = take(crystal.frac, graph.senders) - take(crystal.frac, graph.receivers) + graph.shifts
    # a broadcast sum, not einsum: XLA:CPU runs this batched (E, 3) x (3, 3) dot ~4x slower
    lattice = crystal.lattice
    vec = sum(dfrac[..., a, None] * lattice[:, None, a, :] for a in range(3))
    return jnp.where(graph.mask[..., None], vec, 0.0)


def edge_lengths(crystal: Crystal, graph: Graph):
    """Edge lengths |r_ij|, (B, E); zero on padded (and zero-length) edges.

    The same numbers as ``safe_norm(edge_vectors(crystal, graph))``, with a
    hand-written reverse-mode rule: per Cartesian component, (B, E) arrays instead
    of (B, E, 3) ones and six segment sums for the coordinate gradient. Pair
    potentials spend most of their time here: with it, the BKS energy gradient of 16
    SiO2 cells (164k edge slots) takes 7.0 instead of 22.1 ms on one CPU core. Reverse
    over reverse works (the rule is plain JAX); forward mode does not, as with any
    ``custom_vjp``.
    """
    return _edge_lengths(crystal.frac, crystal.lattice, graph.senders, graph.receivers, graph.shifts, graph.mask)


def _edge_parts(frac, lattice, senders, receivers, shifts, mask):
    take = jax.vmap(lambda f, idx: f[idx])
    dfrac = [take(frac[..., a], senders) - take(frac[..., a], receivers) + shifts[..., a] for a in range(3)]
    cart = [sum(dfrac[a] * lattice[:, a, k, None] for a in range(3)) for k in range(3)]
    sq = jnp.where(mask, cart[0] ** 2 + cart[1] ** 2 + cart[2] ** 2, 0.0)
    ok = sq > 1e-12  # padded and zero-length edges: length 0, no gradient (as safe_norm)
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0), ok, dfrac, cart


@jax.custom_vjp
def _edge_lengths(frac, lattice, senders, receivers, shifts, mask):
    return _edge_parts(frac, lattice, senders, receivers, shifts, mask)[0]


def _edge_lengths_fwd(frac, lattice, senders, receivers, shifts, mask):
    r, ok, dfrac, cart = _edge_parts(frac, lattice, senders, receivers, shifts, mask)
    return r, (frac, lattice, senders, receivers, r, ok, dfrac, cart)


def _edge_lengths_bwd(res, g):
    frac, lattice, senders, receivers, r, ok, dfrac, cart = res
    w = jnp.where(ok, g / jnp.where(ok, r, 1.0), 0.0)
    unit = [w * c for c in cart]  # g * r_k / |r|: the cotangent of each Cartesian component
    d_lattice = jnp.stack([jnp.stack([jnp.sum(dfrac[a] * unit[k], -1) for k in range(3)], -1) for a in range(3)], -2)
    segment = jax.vmap(lambda x, idx: jax.ops.segment_sum(x, idx, frac.shape[1]))
    d_dfrac = [sum(unit[k] * lattice[:, a, k, None] for k in range(3)) for a in range(3)]
    d_frac = jnp.stack([segment(d, senders) - segment(d, receivers) for d in d_dfrac], -1)
    return d_frac.astype(frac.dtype), d_lattice.astype(lattice.dtype), None, None, None, None  # graph: constant


_edge_lengths.defvjp(_edge_lengths_fwd, _edge_lengths_bwd)


def trim_graph(crystal: Crystal, graph: Graph, cutoff: float) -> Graph:
    """Mask out edges longer than ``cutoff``, e.g. of a graph built with a skin.

    Shapes are unchanged; the mask carries no gradient.
    """
    # no gradient path at all, so reverse mode does not run edge_lengths' backward on zeros
    fixed = crystal.replace(frac=jax.lax.stop_gradient(crystal.frac), lattice=jax.lax.stop_gradient(crystal.lattice))
    return graph.replace(mask=graph.mask & (edge_lengths(fixed, graph) < cutoff))
