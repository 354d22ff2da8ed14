"""NequIP-style equivariant message passing in ``flax.linen`` with e3nn-jax.

The architecture follows NequIP (Batzner et al., 2022) as implemented by
SevenNet, and is general enough to hold SevenNet-0 and SevenNet-l3i5 exactly
(see :mod:`jaxinv.potentials.sevennet`). Per interaction layer ``t``, with node
irreps ``X_t -> X_{t+1}``::

    sc  = SelfConnection(h)            # linear, or NequIP's species tensor product
    h1  = Linear(h)                    # X_t -> X_t
    m_i = sum_{j in N(i)} R(r_ij) * (h1_j (x) Y(r_ij)) / denominator   # 'uvu' convolution
    h   = Gate(Linear(m) + sc)         # -> X_{t+1}

followed by two linears (no activation in between) on the scalars of the last
layer, and a per-species affine map ``E_i = scale[s_i] * e_i + shift[s_i]``.

Conventions, chosen to match e3nn (torch) and therefore pretrained checkpoints:

* features are :class:`e3nn_jax.IrrepsArray` in the ``mul_ir`` layout, with
  "regrouped" irreps (each irrep appears once, sorted);
* linears hold one ``(fan_in, mul_out)`` matrix per irrep, scaled by
  ``1/sqrt(fan_in)`` and initialised from N(0, 1) (e3nn's ``o3.Linear``);
* the radial basis is ``prefactor * sin(c_n r) / r`` times a cutoff envelope,
  fed into a bias-free MLP that gives one weight per (edge, path, channel);
* the convolution paths ``(l_in, l_sh) -> l_out`` are enumerated over input
  irreps, then spherical harmonics, then output ``l``, and stably sorted by the
  output irrep: the radial MLP's output columns follow that order;
* activations are normalised to unit second moment. For SiLU the constant is
  e3nn-torch's Monte-Carlo estimate 1.6791767923989418 (not the exact
  1.67653...): pretrained SevenNet weights are only correct with it.

Speed: see :func:`uvu_convolution`. On CPU the convolution is limited by
memory traffic, so it loops over chunks of edges whose intermediates stay in
cache; what remains is dominated by the radial MLP's last matrix product. For
inference, :func:`tabulate_radial` replaces the radial MLPs by cubic Hermite
tables in the edge length (``NequIPConfig.radial_grid``), which removes that
product.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxinv.crystal import Crystal
from jaxinv.graph import Graph, edge_vectors
from jaxinv.potentials.base import Potential, safe_norm

__all__ = ["SILU_NORM", "NequIPConfig", "NequIP", "IrrepsLinear", "SpeciesLinear", "RadialMLP",
           "Interaction", "conv_paths", "gate_irreps", "init_params", "nequip_energy_fn",
           "nequip_atomic_energy_fn", "nequip_potential", "normalize2mom", "tabulate_radial",
           "hermite_weights", "radial_embedding", "nequip_descriptor_fn"]

# e3nn (torch) 0.5/0.6 normalises SiLU by a Monte-Carlo estimate of 1/sqrt(E[silu(z)^2]),
# z ~ N(0, 1) (torch.randn(1e6), seed 0). Pretrained SevenNet weights were fit with this
# value; the exact one (1.67653...) shifts SevenNet-0 energies by 3-7 meV/atom.
SILU_NORM = 1.6791767923989418


def normalize2mom(fn) -> float:
    """1/sqrt(E[fn(z)^2]) for z ~ N(0, 1), by Gauss-Hermite quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(200)
    return float(1.0 / np.sqrt(np.sum(w * np.asarray(fn(z), np.float64) ** 2) / np.sqrt(2 * np.pi)))


TANH_NORM = normalize2mom(np.tanh)


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True)
class NequIPConfig:
    """Hyperparameters of :class:`NequIP` (hashable, JSON-serialisable).

    ``irreps`` lists the node irreps: the species embedding (scalars only), then the
    output of each interaction layer, so there are ``len(irreps) - 1`` layers. The
    type index of a species is its position in ``species`` (atomic numbers).
    """

    species: tuple[int, ...]
    irreps: tuple[str, ...]
    sh_lmax: int = 2
    parity: bool = True  # False: every irrep even (SevenNet-0); SH are then 0e+1e+2e
    normalize_sh: bool = True  # SH of r/|r| (True) or of r itself (Y_l ~ r^l)
    cutoff: float = 5.0
    num_basis: int = 8
    trainable_basis: bool = True  # Bessel frequencies c_n as parameters (init n*pi/cutoff)
    basis_prefactor: float | None = None  # None: 2/cutoff (SevenNet); NequIP uses sqrt(2/cutoff)
    envelope: str = "polynomial"  # "polynomial" (exponent envelope_p) or "xplor" (switch on at r_on)
    envelope_p: int = 6
    r_on: float = 4.5
    radial_hidden: tuple[int, ...] = (64, 64)
    self_connection: str = "linear"  # "linear" (SevenNet) or "species_tp" (NequIP)
    conv_denominator: float = 1.0  # messages are summed, then divided by this (SevenNet: sqrt(avg_num_neigh))
    silu_norm: float = SILU_NORM
    readout_hidden: int = 64
    shift: float | tuple[float, ...] = 0.0  # per species (type order) or one value
    scale: float | tuple[float, ...] = 1.0
    edge_chunk: int = 128  # edges per step of the convolution loop (speed only; see uvu_convolution)
    radial_grid: int = 0  # >0: radial weights from a cubic Hermite table of this many intervals (inference)

    def __post_init__(self):
        if self.envelope not in ("polynomial", "xplor"):
            raise ValueError(f"envelope must be 'polynomial' or 'xplor', not {self.envelope!r}")
        if self.self_connection not in ("linear", "species_tp"):
            raise ValueError(f"self_connection must be 'linear' or 'species_tp', not {self.self_connection!r}")
        if len(self.irreps) < 2:
            raise ValueError("irreps needs the embedding irreps and at least one layer's")
        first = e3nn.Irreps(self.irreps[0])
        if any(ir.l > 0 or ir.p < 0 for _, ir in first):
            raise ValueError(f"the embedding irreps must be even scalars, got {first}")
        for s in self.irreps:
            if e3nn.Irreps(s).regroup() != e3nn.Irreps(s):
                raise ValueError(f"irreps {s} must be regrouped (sorted, each irrep once): {e3nn.Irreps(s).regroup()}")
        if self.envelope == "xplor" and not 0 < self.r_on < self.cutoff:
            raise ValueError("xplor envelope needs 0 < r_on < cutoff")
        if self.radial_grid < 0:
            raise ValueError(f"radial_grid must be >= 0, not {self.radial_grid}")

    @property
    def num_layers(self) -> int:
        return len(self.irreps) - 1

    @property
    def num_species(self) -> int:
        return len(self.species)

    @property
    def sh_irreps(self) -> e3nn.Irreps:
        return e3nn.Irreps([(1, (l, (-1) ** l if self.parity else 1)) for l in range(self.sh_lmax + 1)])

    @classmethod
    def simple(cls, species: Sequence[int], channels: int = 32, lmax: int = 2, num_layers: int = 3,
               parity: bool = True, **kwargs) -> "NequIPConfig":
        """``channels`` of every ``l <= lmax`` (natural parity if ``parity``) in hidden
        layers, scalars only at the embedding and after the last layer."""
        hidden = "+".join(f"{channels}x{l}{'o' if parity and l % 2 else 'e'}" for l in range(lmax + 1))
        irreps = (f"{channels}x0e",) + (hidden,) * (num_layers - 1) + (f"{channels}x0e",)
        return cls(species=tuple(int(z) for z in species), irreps=irreps, sh_lmax=lmax, parity=parity, **kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NequIPConfig":
        tuples = {"species", "irreps", "radial_hidden"}
        d = {k: (tuple(v) if k in tuples or (k in ("shift", "scale") and isinstance(v, list)) else v)
             for k, v in d.items()}
        return cls(**d)


def gate_irreps(irreps_out: e3nn.Irreps) -> e3nn.Irreps:
    """Irreps entering the gate that produces ``irreps_out``: scalars, one 0e gate per
    gated channel, then the gated (l > 0) irreps, regrouped (the 0e block holds
    the 0e scalars first, then the gates)."""
    irreps_out = e3nn.Irreps(irreps_out)
    scalars = e3nn.Irreps([(m, ir) for m, ir in irreps_out if ir.l == 0])
    gated = e3nn.Irreps([(m, ir) for m, ir in irreps_out if ir.l > 0])
    gates = e3nn.Irreps([(m, "0e") for m, _ in gated])
    return (scalars + gates + gated).regroup()


@dataclass(frozen=True)
class Path:
    """One 'uvu' convolution path: input chunk ``i_in`` (x) SH ``l_sh`` -> ``ir_out``."""

    i_in: int
    mul: int
    ir_in: e3nn.Irrep
    ir_sh: e3nn.Irrep
    ir_out: e3nn.Irrep


def conv_paths(irreps_in, sh_irreps, irreps_target, sort: bool = True) -> list[Path]:
    """The convolution paths reaching an irrep of ``irreps_target``.

    Enumerated over input chunks, SH irreps and output irreps in that order (the
    construction order of e3nn's ``TensorProduct`` instructions); with ``sort``
    stably sorted by output irrep, which is the order of the messages and of the
    radial MLP's output columns.
    """
    allowed = {ir for _, ir in e3nn.Irreps(irreps_target)}
    paths = [Path(i, mul, ir_in, ir_sh, ir_out)
             for i, (mul, ir_in) in enumerate(e3nn.Irreps(irreps_in))
             for _, ir_sh in e3nn.Irreps(sh_irreps)
             for ir_out in ir_in * ir_sh if ir_out in allowed]
    if sort:
        order = {ir: k for k, ir in enumerate(sorted(allowed))}
        paths = sorted(paths, key=lambda p: order[p.ir_out])
    return paths


def _mid_irreps(paths: list[Path]) -> e3nn.Irreps:
    """Regrouped irreps of the summed messages (paths are already sorted by output)."""
    return e3nn.Irreps([(p.mul, p.ir_out) for p in paths]).regroup()


def _activation(x, fn, norm):
    return norm * fn(x)


# ---------------------------------------------------------------------------- modules
class IrrepsLinear(nn.Module):
    """Equivariant linear map with one ``(fan_in, mul_out)`` weight per irrep.

    Equals e3nn's ``o3.Linear`` for regrouped irreps (path normalisation 'element'):
    ``out_ir = x_ir @ W_ir / sqrt(fan_in_ir)``. Output irreps no input can reach
    are zero (kept, unlike ``e3nn_jax.flax.Linear``).
    """

    irreps_out: str

    @nn.compact
    def __call__(self, x: e3nn.IrrepsArray) -> e3nn.IrrepsArray:
        irreps_out = e3nn.Irreps(self.irreps_out)
        lead = x.shape[:-1]
        chunks = []
        for mul_out, ir in irreps_out:
            ins = [c if c is not None else jnp.zeros(lead + (m, ir.dim), x.dtype)
                   for (m, ir_in), c in zip(x.irreps, x.chunks) if ir_in == ir and m > 0]
            if not ins:
                chunks.append(None)
                continue
            xin = ins[0] if len(ins) == 1 else jnp.concatenate(ins, axis=-2)
            fan_in = xin.shape[-2]
            w = self.param(f"w_{ir}", nn.initializers.normal(1.0), (fan_in, mul_out))
            chunks.append(jnp.einsum("...ui,uw->...wi", xin, w.astype(x.dtype) / math.sqrt(fan_in)))
        return e3nn.from_chunks(irreps_out, chunks, lead, x.dtype)


class SpeciesLinear(nn.Module):
    """NequIP's self-connection: a tensor product with the one-hot species, i.e. a
    linear map per species, ``out_ir = x_ir @ W_ir[:, s] / sqrt(fan_in * num_species)``
    (e3nn ``FullyConnectedTensorProduct(x, one_hot)`` weights ``(fan_in, S, mul_out)``)."""

    irreps_out: str
    num_species: int

    @nn.compact
    def __call__(self, x: e3nn.IrrepsArray, species) -> e3nn.IrrepsArray:
        irreps_out = e3nn.Irreps(self.irreps_out)
        chunks = []
        for mul_out, ir in irreps_out:
            ins = [c for (m, ir_in), c in zip(x.irreps, x.chunks) if ir_in == ir and m > 0 and c is not None]
            if not ins:
                chunks.append(None)
                continue
            xin = jnp.concatenate(ins, axis=-2)
            fan_in = xin.shape[-2]
            w = self.param(f"w_{ir}", nn.initializers.normal(1.0), (fan_in, self.num_species, mul_out))
            w = jnp.take(w.astype(x.dtype), species, axis=1) / math.sqrt(fan_in * self.num_species)  # (u, n, w)
            chunks.append(jnp.einsum("nui,unw->nwi", xin, w))
        return e3nn.from_chunks(irreps_out, chunks, x.shape[:-1], x.dtype)


class RadialMLP(nn.Module):
    """Bias-free MLP on the radial embedding, normalised SiLU between layers
    (e3nn's ``FullyConnectedNet``); zero input gives zero output.

    Calling the module declares its parameters and returns the MLP as a pure
    function, so that it can run inside the convolution's loop over edge chunks.
    """

    features: tuple[int, ...]
    silu_norm: float = SILU_NORM

    @nn.compact
    def __call__(self, fan_in: int, dtype=jnp.float32):
        mats = []
        for k, out in enumerate(self.features):
            w = self.param(f"w_{k}", nn.initializers.normal(1.0), (fan_in, out))
            mats.append(w.astype(dtype) / math.sqrt(fan_in))
            fan_in = out

        def mlp(x):
            for k, w in enumerate(mats):
                x = x @ w
                if k < len(mats) - 1:
                    x = _activation(x, jax.nn.silu, self.silu_norm)
            return x

        return mlp


@jax.custom_vjp
def _couple(b, x):
    """``t[c, k, u] = sum_i b[c, i, k] x[c, i, u]`` for per-edge couplings ``b`` (C, d, K)
    and features ``x`` (C, d, mul), d = 2l+1 <= 7.

    Forward: the sum over ``i`` written out, which XLA fuses into one loop
    vectorised over channels. Backward: two batched matmuls, which on CPU beat
    the reductions that differentiating the written-out sum produces (2x here).
    """
    return sum(b[:, i, :, None] * x[:, i, None, :] for i in range(b.shape[1]))


def _couple_fwd(b, x):
    return _couple(b, x), (b, x)


def _couple_bwd(res, g):
    b, x = res
    return jnp.einsum("cku,ciu->cik", g, x), jnp.einsum("cik,cku->ciu", b, g)


_couple.defvjp(_couple_fwd, _couple_bwd)


def uvu_convolution(paths: list[Path], x: e3nn.IrrepsArray, sh: dict, radial, weight_fn, senders, receivers,
                    chunk: int = NequIPConfig.edge_chunk, n_valid=None) -> e3nn.IrrepsArray:
    """Sum over edges of the per-path messages ``w_e * (x_j (x) Y_e)``, scattered to receivers.

    ``paths`` are sorted by output irrep; ``weight_fn(radial)`` maps the radial
    embedding (E, num_basis) to one weight per (edge, path, channel), columns in
    path order (E, sum of path multiplicities). The output has the regrouped
    irreps of the paths (the "mid" irreps), in the ``mul_ir`` layout of e3nn.

    Memory traffic, not arithmetic, limits this on CPU: an (E, dim(mid))
    message array (3136 floats per edge in SevenNet-0) costs more to write,
    read and differentiate than the arithmetic producing it. So

    * edges go through ``lax.scan`` in equal chunks of at most ``chunk`` edges
      whose weights and messages stay in cache, and the chunk body (radial MLP
      included) is rematerialised in the backward pass, so no (E, features)
      array is ever allocated (page faults on fresh large buffers cost more than
      the arithmetic). Graphs with at most ``chunk`` edges take one step without
      a loop or recomputation. On a CPU with 1 MB of L2 per core, 64-128 edges
      per chunk ran SevenNet-0 about 1.3x faster than 256 (benchmarks/RESULTS.md);
      without the rematerialisation it was 4x slower;
    * the paths of one input irrep are computed together: the Clebsch-Gordan
      couplings of all its paths are contracted with the spherical harmonics in
      one small matmul, ``B[e, i, k] = sum_j Y[e, j] CG[i, j, k]``, then
      ``T[e, k, u] = sum_i B[e, i, k] x_j[e, i, u]`` (:func:`_couple`);
    * features use the ``ir_mul`` layout inside, so products vectorise over the
      channels ``u`` rather than over 2l+1 <= 7 components;
    * each path's messages are added into their own (N, 2l+1, mul) accumulator
      (no concatenation), and arrays are cut with ``jnp.split`` (the transpose
      of a split is one concatenation; a slice transposes to a full-size pad).

    If the edges that carry messages come first and ``n_valid`` counts them,
    chunks made only of padding are skipped (padded batches of graphs).
    """
    n, e = x.shape[0], senders.shape[0]
    irreps_in = x.irreps
    mid = _mid_irreps(paths)
    sh_ls = sorted(sh)
    sh_dim = sum(2 * l + 1 for l in sh_ls)
    sh_start = {l: l * l for l in sh_ls}

    # trace-time plan: per input chunk, its paths and the stacked CG couplings
    groups = []  # (input chunk index, [path indices], cg (d_in, sh_dim, K))
    for g, (mul, ir) in enumerate(irreps_in):
        members = [k for k, p in enumerate(paths) if p.i_in == g]
        if not members:
            continue
        k_total = sum(paths[k].ir_out.dim for k in members)
        cg = np.zeros((ir.dim, sh_dim, k_total))
        k0 = 0
        for k in members:
            p = paths[k]
            j0 = sh_start[p.ir_sh.l]
            cg[:, j0:j0 + p.ir_sh.dim, k0:k0 + p.ir_out.dim] = np.sqrt(p.ir_out.dim) * e3nn.clebsch_gordan(
                ir.l, p.ir_sh.l, p.ir_out.l)
            k0 += p.ir_out.dim
        groups.append((g, members, cg))

    # node features in ir_mul layout, flat (N, sum of dim * mul)
    x_flat = jnp.concatenate([jnp.swapaxes(c, -1, -2).reshape(n, -1) for c in x.chunks], axis=1)
    in_cuts = np.cumsum([ir.dim * m for m, ir in irreps_in])[:-1]
    path_cuts = np.cumsum([p.mul for p in paths])[:-1]
    y_all = jnp.concatenate([sh[l] for l in sh_ls], axis=1)  # (E, sh_dim)
    cgs = [jnp.asarray(cg.transpose(1, 0, 2).reshape(sh_dim, -1), x.dtype) for _, _, cg in groups]

    def body(acc, edges):
        rad, y, src, dst = edges
        c = src.shape[0]
        w = weight_fn(rad)
        xs = [xk.reshape(c, ir.dim, m) for xk, (m, ir) in zip(jnp.split(x_flat[src], in_cuts, axis=1), irreps_in)]
        ws = jnp.split(w, path_cuts, axis=1)
        new = list(acc)
        for (g, members, cg), cg_flat in zip(groups, cgs):
            d_in, _, k_total = cg.shape
            b = (y @ cg_flat).reshape(c, d_in, k_total)
            t_all = _couple(b, xs[g])  # (C, K, mul)
            t_parts = jnp.split(t_all, np.cumsum([paths[k].ir_out.dim for k in members])[:-1], axis=1)
            for t, k in zip(t_parts, members):
                new[k] = acc[k].at[dst].add(t * ws[k][:, None, :])
        return tuple(new), None

    acc = tuple(jnp.zeros((n, p.ir_out.dim, p.mul), x.dtype) for p in paths)
    edges = (radial, y_all, senders, receivers)
    if e <= chunk:  # small graphs: one step, no loop and no recomputation
        acc, _ = body(acc, edges)
    else:
        steps = -(-e // chunk)
        size = -(-e // (8 * steps)) * 8  # equal chunks, padded by less than 8 edges each
        pad = steps * size - e
        # padded edges have a zero radial embedding, hence zero weights: they send nothing
        edges = tuple(jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in edges)
        edges = tuple(a.reshape((steps, size) + a.shape[1:]) for a in edges)
        if n_valid is not None:
            skip = lambda acc, _: (acc, None)
            step = lambda acc, xs: jax.lax.cond(xs[0] < n_valid, body, skip, acc, xs[1])
            edges = (jnp.arange(steps) * size, edges)
        else:
            step = body
        acc, _ = jax.lax.scan(jax.checkpoint(step), acc, edges)
    out = []
    for _, ir in mid:
        parts = [acc[k] for k, p in enumerate(paths) if p.ir_out == ir]
        out.append(jnp.swapaxes(jnp.concatenate(parts, axis=-1), -1, -2))
    return e3nn.from_chunks(mid, out, (n,), x.dtype)


def gate(g: e3nn.IrrepsArray, irreps_out: e3nn.Irreps, silu_norm: float) -> e3nn.IrrepsArray:
    """Normalised SiLU (even) / tanh (odd) on scalars; l > 0 irreps times SiLU(gate)."""
    blocks = {ir: c for (_, ir), c in zip(g.irreps, g.chunks)}
    even = e3nn.Irrep("0e")
    n_even = sum(m for m, ir in irreps_out if ir == even)
    gates = _activation(blocks[even][..., n_even:, 0], jax.nn.silu, silu_norm) if even in blocks else None
    out, offset = [], 0
    for mul, ir in irreps_out:
        x = blocks[ir]
        if ir.l == 0 and ir.p == 1:
            out.append(_activation(x[..., :mul, :], jax.nn.silu, silu_norm))
        elif ir.l == 0:
            out.append(_activation(x[..., :mul, :], jnp.tanh, TANH_NORM))
        else:
            out.append(x * gates[..., offset:offset + mul, None])
            offset += mul
    return e3nn.from_chunks(irreps_out, out, g.shape[:-1], g.dtype)


class Interaction(nn.Module):
    """One interaction layer ``X_in -> X_out`` (see the module docstring)."""

    irreps_in: str
    irreps_out: str
    config: NequIPConfig

    @nn.compact
    def __call__(self, h: e3nn.IrrepsArray, species, sh: dict, radial, senders, receivers, n_valid=None):
        cfg = self.config
        irreps_in, irreps_out = e3nn.Irreps(self.irreps_in), e3nn.Irreps(self.irreps_out)
        g_irreps = gate_irreps(irreps_out)
        paths = conv_paths(irreps_in, cfg.sh_irreps, g_irreps)

        if cfg.self_connection == "linear":
            sc = IrrepsLinear(str(g_irreps), name="self_connection")(h)
        else:
            sc = SpeciesLinear(str(g_irreps), cfg.num_species, name="self_connection")(h, species)
        h1 = IrrepsLinear(str(irreps_in), name="linear_1")(h)

        n_weights = sum(p.mul for p in paths)
        weight_fn = RadialMLP(tuple(cfg.radial_hidden) + (n_weights,), cfg.silu_norm,
                              name="radial")(cfg.num_basis, radial.dtype)
        if cfg.radial_grid:  # ``radial`` holds edge lengths; the MLP's weights stay for tabulate_radial
            table = self.param("radial_table", nn.initializers.zeros, (cfg.radial_grid, 4, n_weights))
            weight_fn = hermite_weights(table.astype(radial.dtype), cfg.cutoff / cfg.radial_grid)
        mid = uvu_convolution(paths, h1, sh, radial, weight_fn, senders, receivers, cfg.edge_chunk, n_valid)
        mid = mid / cfg.conv_denominator
        g = IrrepsLinear(str(g_irreps), name="linear_2")(mid) + sc
        return gate(g, irreps_out, cfg.silu_norm)


class NequIP(nn.Module):
    """Per-atom energies of a flat graph.

    ``species`` (N,) type indices; ``edge_vec`` (E, 3) = x_j - x_i (+ image);
    ``senders`` j and ``receivers`` i (E,); ``edge_mask`` (E,) marks real edges.
    Masked edges, edges at or beyond the cutoff and zero-length edges carry no
    message, with finite gradients.
    """

    config: NequIPConfig

    @nn.compact
    def __call__(self, species, edge_vec, senders, receivers, edge_mask=None):
        cfg = self.config
        dtype = edge_vec.dtype
        r = safe_norm(edge_vec)
        valid = (r > 0) & (r < cfg.cutoff)
        if edge_mask is not None:
            valid = valid & edge_mask
        # edges that carry messages first (stable, so receivers stay in order): the
        # convolution then skips chunks made only of padding
        order = jnp.argsort(~valid, stable=True)
        edge_vec, r, valid, senders, receivers = (a[order] for a in (edge_vec, r, valid, senders, receivers))
        n_valid = jnp.sum(valid)
        r_safe = jnp.where(valid, r, 0.5 * cfg.cutoff)  # keeps sin(cr)/r and vec/r away from 0/0

        # radial embedding; zero on invalid edges, so (the MLP having no biases) their
        # path weights and therefore their messages vanish
        if cfg.trainable_basis:
            coeffs = self.param("bessel_coeffs", lambda *_: jnp.asarray(_initial_values(cfg)["bessel_coeffs"]))
        else:
            coeffs = jnp.asarray(_initial_values(cfg)["bessel_coeffs"])
        if cfg.radial_grid:  # tabulated weights: the layers take the length, 0 marking "no message"
            radial = jnp.where(valid, r_safe, 0.0)[:, None]
        else:
            radial = radial_embedding(cfg, coeffs.astype(dtype), r_safe) * valid[:, None]

        vec = edge_vec / r_safe[:, None] if cfg.normalize_sh else edge_vec
        sh_arr = e3nn.spherical_harmonics(cfg.sh_irreps, vec, normalize=False, normalization="component")
        sh = {ir.l: c[:, 0, :] for (_, ir), c in zip(sh_arr.irreps, sh_arr.chunks)}

        emb_irreps = e3nn.Irreps(cfg.irreps[0])
        w_emb = self.param("embedding", nn.initializers.normal(1.0), (cfg.num_species, emb_irreps.dim))
        h = e3nn.IrrepsArray(emb_irreps, w_emb.astype(dtype)[species] / math.sqrt(cfg.num_species))

        for t in range(cfg.num_layers):
            h = Interaction(cfg.irreps[t], cfg.irreps[t + 1], cfg, name=f"layer_{t}")(
                h, species, sh, radial, senders, receivers, n_valid)

        e = IrrepsLinear(f"{cfg.readout_hidden}x0e", name="readout_1")(h.filter(keep="0e"))
        e = IrrepsLinear("1x0e", name="readout_2")(e).array[:, 0]
        scale = self.param("atomic_scale", lambda *_: jnp.asarray(_initial_values(cfg)["atomic_scale"]))
        shift = self.param("atomic_shift", lambda *_: jnp.asarray(_initial_values(cfg)["atomic_shift"]))
        return e * scale.astype(dtype)[species] + shift.astype(dtype)[species]


def radial_embedding(cfg: NequIPConfig, coeffs, r):
    """Bessel basis times the cutoff envelope, (E, num_basis), for lengths ``r > 0``."""
    prefactor = 2.0 / cfg.cutoff if cfg.basis_prefactor is None else cfg.basis_prefactor
    basis = prefactor * jnp.sin(coeffs * r[:, None]) / r[:, None]
    return basis * _envelope(cfg, r)[:, None]


def hermite_weights(table, spacing: float):
    """Radial weights from a table: ``lengths (C, 1) -> (C, W)``, zero where the length is 0.

    ``table[k]`` holds ``[f(r_k), h f'(r_k), f(r_k+1), h f'(r_k+1)]`` on the grid
    ``r_k = k h``, so one gather fetches all an edge needs, and the cubic Hermite
    interpolant is C1: forces (its derivative) are continuous in the positions.
    """
    n = table.shape[0]

    def weights(lengths):
        r = lengths[:, 0]
        x = r / spacing
        k = jnp.clip(jnp.floor(x), 0, n - 1)
        t = x - k
        t2 = t * t
        t3 = t2 * t
        coef = jnp.stack([2 * t3 - 3 * t2 + 1, t3 - 2 * t2 + t, 3 * t2 - 2 * t3, t3 - t2], axis=-1)
        coef = coef * (r > 0)[:, None]
        return jnp.einsum("cj,cjw->cw", coef, table[k.astype(jnp.int32)])

    return weights


def tabulate_radial(config: NequIPConfig, params, grid: int = 256):
    """``(config, params)`` that compute every layer's radial weights from a table.

    Each layer's radial MLP is a function of the edge length alone, and on a CPU
    it is most of a SevenNet-0 evaluation's arithmetic (64 x 960 multiply-adds
    per edge and layer, forward, recomputed, and backward for the forces). A
    cubic Hermite table of ``grid`` intervals over ``[0, cutoff]``, with values
    and derivatives from the MLP itself, replaces that with one gather and a
    4-term sum. The tables are computed from ``params`` here; they do not
    follow later changes to the MLP weights, so train with ``radial_grid=0``.
    Accuracy for SevenNet-0 at the default grid is measured in
    ``tests/test_sevennet.py``.
    """
    cfg = dataclasses.replace(config, radial_grid=int(grid))
    exact = dataclasses.replace(config, radial_grid=0)
    dtype = jnp.asarray(0.0).dtype  # float64 when jax runs in 64-bit mode
    p = jax.tree_util.tree_map(jnp.asarray, params)["params"]
    coeffs = p["bessel_coeffs"] if exact.trainable_basis else jnp.asarray(_initial_values(exact)["bessel_coeffs"])
    coeffs = coeffs.astype(dtype)
    h = exact.cutoff / grid
    r = jnp.arange(grid + 1, dtype=dtype) * h
    r = r.at[0].set(1e-3 * h)  # sin(cr)/r at 0 by its limit's neighbour; no edge is that short
    new = dict(p)
    for t in range(exact.num_layers):
        layer = p[f"layer_{t}"]
        features = tuple(layer["radial"][f"w_{k}"].shape[1] for k in range(len(layer["radial"])))
        mlp = RadialMLP(features, exact.silu_norm).apply({"params": layer["radial"]}, exact.num_basis, dtype)
        f, df = jax.jvp(lambda x: mlp(radial_embedding(exact, coeffs, x)), (r,), (jnp.ones_like(r),))
        table = jnp.stack([f[:-1], h * df[:-1], f[1:], h * df[1:]], axis=1)
        new[f"layer_{t}"] = {**layer, "radial_table": table}
    return cfg, {**params, "params": new}


def _envelope(cfg: NequIPConfig, r):
    """Cutoff envelope, 1 at r = 0 and 0 from the cutoff on."""
    rc = cfg.cutoff
    if cfg.envelope == "xplor":  # CHARMM/XPLOR switch between r_on and rc
        r2, rc2, ron2 = r * r, rc * rc, cfg.r_on * cfg.r_on
        switch = (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ron2) / (rc2 - ron2) ** 3
        f = jnp.where(r < cfg.r_on, 1.0, switch)
    else:  # NequIP polynomial: smooth to p-th order at rc
        p, x = float(cfg.envelope_p), r / rc
        f = (1.0 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2))
    return jnp.where(r < rc, f, 0.0)


# ---------------------------------------------------------------------------- potential
def _initial_values(cfg: NequIPConfig) -> dict[str, np.ndarray]:
    """The parameters that do not start random: Bessel frequencies n*pi/cutoff and the
    per-species scale and shift."""
    n = cfg.num_species
    return {"bessel_coeffs": np.arange(1, cfg.num_basis + 1, dtype=np.float32) * np.float32(np.pi / cfg.cutoff),
            "atomic_scale": np.broadcast_to(np.asarray(cfg.scale, np.float32), (n,)).copy(),
            "atomic_shift": np.broadcast_to(np.asarray(cfg.shift, np.float32), (n,)).copy()}


def init_params(config: NequIPConfig, rng: jax.Array):
    """Parameters for training from scratch: N(0, 1) weights (the e3nn ``1/sqrt(fan_in)``
    scaling is applied in the forward pass), plus :func:`_initial_values`.

    Same tree as ``NequIP(config).init(...)``, whose shapes it takes from
    ``jax.eval_shape``; the values are drawn with NumPy, because ``init`` runs (and
    so compiles) the whole model, which takes seconds on CPU.
    """
    if config.radial_grid:
        exact = dataclasses.replace(config, radial_grid=0)
        return tabulate_radial(exact, init_params(exact, rng), config.radial_grid)[1]
    model = NequIP(config)
    edges = jax.ShapeDtypeStruct((2,), jnp.int32)
    shapes = jax.eval_shape(model.init, rng, edges, jax.ShapeDtypeStruct((2, 3), jnp.float32), edges, edges)
    gen = np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel())
    special = _initial_values(config)

    def value(path, leaf):
        name = path[-1].key
        x = special[name] if name in special else gen.standard_normal(leaf.shape)
        return jnp.asarray(x, leaf.dtype)

    return jax.tree_util.tree_map_with_path(value, shapes)


def _type_table(species: Sequence[int]) -> np.ndarray:
    table = np.zeros(119, np.int32)  # unknown elements map to type 0; check_species rejects them first
    table[np.asarray(species)] = np.arange(len(species))
    return table


def _flat_inputs(table, params, crystal: Crystal, graph: Graph):
    """``NequIP.apply``'s arguments for a padded batch: parameters, then species, edge
    vectors, senders, receivers and edge mask of the batch as one flat graph."""
    b, n = crystal.numbers.shape
    offset = (jnp.arange(b, dtype=jnp.int32) * n)[:, None]
    vec = edge_vectors(crystal, graph).reshape(-1, 3)
    senders = (graph.senders + offset).reshape(-1)
    receivers = (graph.receivers + offset).reshape(-1)
    species = jnp.asarray(table)[crystal.numbers].reshape(-1)
    # NumPy parameters (e.g. loaded from a checkpoint) closed over inside a jitted
    # function stay NumPy; indexing them by traced species would fail
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return params, species, vec, senders, receivers, graph.mask.reshape(-1)


def nequip_atomic_energy_fn(config: NequIPConfig):
    """``(params, crystal, graph) -> (B, N)`` per-atom energies (zero on padded atoms)."""
    model = NequIP(config)
    table = _type_table(config.species)

    def atomic_energy_fn(params, crystal: Crystal, graph: Graph):
        b, n = crystal.numbers.shape
        e = model.apply(*_flat_inputs(table, params, crystal, graph)).reshape(b, n)
        return jnp.where(crystal.mask, e, 0.0)

    return atomic_energy_fn


def nequip_descriptor_fn(config: NequIPConfig):
    """``(params, crystal, graph) -> (B, N, F)`` invariant per-atom features of a NequIP model
    (zero on padded atoms): for every interaction layer the scalar channels and the norm of
    each l > 0 channel, then the first readout's hidden values and the atom's energy.

    These are what the model has learned about an atom's environment; property heads on
    them (:func:`jaxinv.screening.features.featurize` with ``kind="sevennet0"``) reach
    0.066-0.070 eV/cell on perov_5 heat_ref, against 0.14 for Magpie features
    (benchmarks/RESULTS.md, issue 25 probe). For SevenNet-0, F = 5 x 128 scalars +
    4 x 96 norms + 64 + 1 = 1,089.
    """
    model = NequIP(config)
    table = _type_table(config.species)
    keep = {f"layer_{t}" for t in range(config.num_layers)} | {"readout_1"}

    def descriptor_fn(params, crystal: Crystal, graph: Graph):
        b, n = crystal.numbers.shape
        e, state = model.apply(*_flat_inputs(table, params, crystal, graph),
                               capture_intermediates=lambda mdl, method: method == "__call__" and mdl.name in keep,
                               mutable=["intermediates"])
        found = state["intermediates"]
        blocks = []
        for t in range(config.num_layers):
            h = found[f"layer_{t}"]["__call__"][0]
            blocks.append(h.filter(keep="0e").array)
            rest = h.filter(drop="0e")
            if rest.irreps.dim:
                blocks.append(e3nn.norm(rest).array)  # one rotation-invariant norm per l > 0 channel
        blocks += [found["readout_1"]["__call__"][0].array, e[:, None]]
        x = jnp.concatenate(blocks, axis=-1).reshape(b, n, -1)
        return jnp.where(crystal.mask[..., None], x, 0.0)

    return descriptor_fn


def nequip_energy_fn(config: NequIPConfig):
    """``(params, crystal, graph) -> (B,)`` energies, the :class:`Potential` contract."""
    atomic = nequip_atomic_energy_fn(config)
    return lambda params, crystal, graph: jnp.sum(atomic(params, crystal, graph), axis=-1)


def nequip_potential(config: NequIPConfig, params, name: str = "nequip", metadata: dict | None = None) -> Potential:
    """A :class:`Potential` for a NequIP model with the given parameters.

    ``metadata['atomic_energy_fn']`` gives per-atom energies (used by the ASE calculator).
    """
    if config.radial_grid:  # (re)build the tables from the MLP weights in ``params``
        config, params = tabulate_radial(config, params, config.radial_grid)
    meta = {"config": config, "atomic_energy_fn": nequip_atomic_energy_fn(config), **(metadata or {})}
    return Potential(name, nequip_energy_fn(config), params, config.cutoff, species=tuple(config.species),
                     metadata=meta)
