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

Speed: the convolution is written as explicit per-path products with
precomputed Clebsch-Gordan couplings ``A = sqrt(2l+1) C . Y`` (shared by all
layers), one gather of sender features per layer and one ``segment_sum`` over
receivers per layer. The dominant cost is the radial MLP's last matrix product.
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
           "nequip_atomic_energy_fn", "nequip_potential", "normalize2mom"]

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
    (e3nn's ``FullyConnectedNet``); zero input gives zero output."""

    features: tuple[int, ...]
    silu_norm: float = SILU_NORM

    @nn.compact
    def __call__(self, x):
        for k, out in enumerate(self.features):
            fan_in = x.shape[-1]
            w = self.param(f"w_{k}", nn.initializers.normal(1.0), (fan_in, out))
            x = x @ (w.astype(x.dtype) / math.sqrt(fan_in))
            if k < len(self.features) - 1:
                x = _activation(x, jax.nn.silu, self.silu_norm)
        return x


def _coupling(sh: dict, l1: int, l2: int, lo: int, cache: dict):
    """``sqrt(2 lo + 1) * sum_j C[i, j, k] Y_j`` per edge, (E, 2l1+1, 2lo+1); memoised
    because every layer reuses the same spherical harmonics."""
    key = (l1, l2, lo)
    if key not in cache:
        cg = np.sqrt(2 * lo + 1) * e3nn.clebsch_gordan(l1, l2, lo)
        y = sh[l2]
        cache[key] = jnp.einsum("ej,ijk->eik", y, jnp.asarray(cg, y.dtype))
    return cache[key]


def gate(g: e3nn.IrrepsArray, irreps_out: e3nn.Irreps, silu_norm: float) -> e3nn.IrrepsArray:
    """Normalised SiLU (even) / tanh (odd) on scalars; l > 0 irreps times SiLU(gate)."""
    blocks = {ir: c for (_, ir), c in zip(g.irreps, g.chunks)}
    n_even = sum(m for m, ir in irreps_out if ir == e3nn.Irrep("0e"))
    gates = None
    if "0e" in g.irreps:
        gates = _activation(blocks[e3nn.Irrep("0e")][..., n_even:, 0], jax.nn.silu, silu_norm)
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
    def __call__(self, h: e3nn.IrrepsArray, species, sh: dict, radial, senders, receivers, cache: dict):
        cfg = self.config
        irreps_in, irreps_out = e3nn.Irreps(self.irreps_in), e3nn.Irreps(self.irreps_out)
        g_irreps = gate_irreps(irreps_out)
        paths = conv_paths(irreps_in, cfg.sh_irreps, g_irreps)
        mid_irreps = _mid_irreps(paths)
        n, e = h.shape[0], senders.shape[0]

        if cfg.self_connection == "linear":
            sc = IrrepsLinear(str(g_irreps), name="self_connection")(h)
        else:
            sc = SpeciesLinear(str(g_irreps), cfg.num_species, name="self_connection")(h, species)
        h1 = IrrepsLinear(str(irreps_in), name="linear_1")(h)

        weights = RadialMLP(tuple(cfg.radial_hidden) + (sum(p.mul for p in paths),), cfg.silu_norm,
                            name="radial")(radial)  # (E, sum of path multiplicities)
        x_j = h1.array[senders]  # one gather per layer, then free slicing
        chunks = [x_j[:, s].reshape(e, m, ir.dim) for s, (m, ir) in zip(irreps_in.slices(), irreps_in)]
        messages, col = [], 0
        for p in paths:
            a = _coupling(sh, p.ir_in.l, p.ir_sh.l, p.ir_out.l, cache)  # (E, d_in, d_out)
            x = chunks[p.i_in]  # (E, mul, d_in)
            # sum over d_in (<= 7) written out: XLA fuses it into one elementwise loop,
            # which beats a batched dot of tiny matrices on CPU
            t = sum(x[:, :, i, None] * a[:, None, i, :] for i in range(p.ir_in.dim))
            messages.append((t * weights[:, col:col + p.mul, None]).reshape(e, -1))
            col += p.mul
        summed = jax.ops.segment_sum(jnp.concatenate(messages, axis=1), receivers, num_segments=n)
        mid = e3nn.IrrepsArray(mid_irreps, summed / cfg.conv_denominator)
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
        r_safe = jnp.where(valid, r, 0.5 * cfg.cutoff)  # keeps sin(cr)/r and vec/r away from 0/0

        # radial embedding; zero on invalid edges, so (the MLP having no biases) their
        # path weights and therefore their messages vanish
        n = jnp.arange(1, cfg.num_basis + 1, dtype=jnp.float32)
        if cfg.trainable_basis:
            coeffs = self.param("bessel_coeffs", lambda *_: n * jnp.pi / cfg.cutoff)
        else:
            coeffs = n * jnp.pi / cfg.cutoff
        prefactor = 2.0 / cfg.cutoff if cfg.basis_prefactor is None else cfg.basis_prefactor
        basis = prefactor * jnp.sin(coeffs.astype(dtype) * r_safe[:, None]) / r_safe[:, None]
        radial = basis * (_envelope(cfg, r_safe) * valid)[:, None]

        vec = edge_vec / r_safe[:, None] if cfg.normalize_sh else edge_vec
        sh_arr = e3nn.spherical_harmonics(cfg.sh_irreps, vec, normalize=False, normalization="component")
        sh = {ir.l: c[:, 0, :] for (_, ir), c in zip(sh_arr.irreps, sh_arr.chunks)}

        emb_irreps = e3nn.Irreps(cfg.irreps[0])
        w_emb = self.param("embedding", nn.initializers.normal(1.0), (cfg.num_species, emb_irreps.dim))
        h = e3nn.IrrepsArray(emb_irreps, w_emb.astype(dtype)[species] / math.sqrt(cfg.num_species))

        cache: dict = {}
        for t in range(cfg.num_layers):
            h = Interaction(cfg.irreps[t], cfg.irreps[t + 1], cfg, name=f"layer_{t}")(
                h, species, sh, radial, senders, receivers, cache)

        e = IrrepsLinear(f"{cfg.readout_hidden}x0e", name="readout_1")(h.filter(keep="0e"))
        e = IrrepsLinear("1x0e", name="readout_2")(e).array[:, 0]
        shape = (cfg.num_species,)
        scale = self.param("atomic_scale", lambda *_: jnp.broadcast_to(jnp.asarray(cfg.scale, jnp.float32), shape))
        shift = self.param("atomic_shift", lambda *_: jnp.broadcast_to(jnp.asarray(cfg.shift, jnp.float32), shape))
        return e * scale.astype(dtype)[species] + shift.astype(dtype)[species]


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
def init_params(config: NequIPConfig, rng: jax.Array):
    """Random parameters (N(0, 1) weights, e3nn scaling) for training from scratch."""
    species = jnp.zeros((2,), jnp.int32)
    vec = jnp.array([[1.0, 0.5, -0.3], [-1.0, -0.5, 0.3]], jnp.float32)
    edges = jnp.array([0, 1], jnp.int32)
    return NequIP(config).init(rng, species, vec, edges, edges[::-1])


def _type_table(species: Sequence[int]) -> np.ndarray:
    table = np.zeros(119, np.int32)  # unknown elements map to type 0; check_species rejects them first
    table[np.asarray(species)] = np.arange(len(species))
    return table


def nequip_atomic_energy_fn(config: NequIPConfig):
    """``(params, crystal, graph) -> (B, N)`` per-atom energies (zero on padded atoms)."""
    model = NequIP(config)
    table = _type_table(config.species)

    def atomic_energy_fn(params, crystal: Crystal, graph: Graph):
        b, n = crystal.numbers.shape
        offset = (jnp.arange(b, dtype=jnp.int32) * n)[:, None]
        vec = edge_vectors(crystal, graph).reshape(-1, 3)
        senders = (graph.senders + offset).reshape(-1)
        receivers = (graph.receivers + offset).reshape(-1)
        species = jnp.asarray(table)[crystal.numbers].reshape(-1)
        e = model.apply(params, species, vec, senders, receivers, graph.mask.reshape(-1)).reshape(b, n)
        return jnp.where(crystal.mask, e, 0.0)

    return atomic_energy_fn


def nequip_energy_fn(config: NequIPConfig):
    """``(params, crystal, graph) -> (B,)`` energies, the :class:`Potential` contract."""
    atomic = nequip_atomic_energy_fn(config)
    return lambda params, crystal, graph: jnp.sum(atomic(params, crystal, graph), axis=-1)


def nequip_potential(config: NequIPConfig, params, name: str = "nequip", metadata: dict | None = None) -> Potential:
    """A :class:`Potential` for a NequIP model with the given parameters.

    ``metadata['atomic_energy_fn']`` gives per-atom energies (used by the ASE calculator).
    """
    meta = {"config": config, "atomic_energy_fn": nequip_atomic_energy_fn(config), **(metadata or {})}
    return Potential(name, nequip_energy_fn(config), params, config.cutoff, species=tuple(config.species),
                     metadata=meta)
