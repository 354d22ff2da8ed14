"""A periodic, E(3)-invariant joint diffusion model of crystals (DiffCSP-style).

Three quantities are noised together, with one time step t in 1..T per crystal:

* **fractional coordinates**: variance-exploding score diffusion on the torus with
  a wrapped-normal kernel (:mod:`jaxinv.generative.torus`); sampled by
  predictor-corrector (ancestral VE predictor, Langevin corrector);
* **the lattice**: DDPM (cosine schedule, epsilon prediction) on the 3x3 matrix of
  row vectors, divided by (n_atoms * mean volume per atom)^(1/3) so that cells of
  any atom count have rows of length ~1. The matrix, not six lattice parameters,
  is noised because Gaussian noise on L is isotropic: with a network whose output
  is ``C(invariants) @ L`` (a mix of the lattice vectors, equivariant under
  L -> L R^T for any orthogonal R) the learned distribution of cells is exactly
  O(3)-invariant whatever orientation the data came in, and no angle ever leaves
  its valid range;
* **atom types** (de novo mode only): absorbing-state discrete diffusion (D3PM /
  masked diffusion) with a linear keep probability 1 - t/T. Element identities are
  categories without order or metric, so a discrete process fits them better than
  Gaussian noise on one-hot vectors: every intermediate state is a real element or
  [MASK], there is no rounding at the end, and the reverse step has a closed form
  (a masked atom is revealed with probability 1/t, drawn from the network).

In **CSP** mode the composition (atom count and types) is given and fixed; in
**de novo** mode the atom count is drawn from the training distribution and the
types are generated.

Two denoisers (``denoiser``), each written for one crystal and vmapped over a batch,
with the same outputs: the coordinate score in fractional units, the lattice
epsilon (a mix of the rows of L, so it rotates with the lattice) and type logits.

:class:`CSPNet` (``cspnet``, the default) is fully connected among the atoms of the
cell. Its edge features are the Gram matrix L L^T (rotation invariant) and
sin/cos(2 pi k (f_j - f_i)) for integer k (periodic, translation invariant);
messages are averaged over the other atoms. So, exactly: the coordinate score is
invariant to atom order (equivariant as a per-atom output), to a common translation
of the fractional coordinates, to replacing f by f + integer (the periodic image),
and to rotations and reflections of the lattice; the lattice output rotates with
it. What does not hold, as in DiffCSP: invariance to the choice of unit cell. A
supercell or another basis changes both the Gram matrix and the Fourier features;
what holds on a supercell is only that the copies of one atom get identical outputs
(a translation by a primitive vector permutes them).

:class:`PeriodicNet` (``periodic``) works in Å (L_norm times
:meth:`CrystalDiffusion.lattice_scale`) on sums over the periodic images of each
pair within ``cutoff``: a radial basis (scalar), the displacement vectors
(vector) and rhat (x) rhat (tensor), all with a smooth envelope. Its messages are
linear in these sums and summed (not averaged) over the atoms of the cell, so the k
copies of an atom in a supercell add up to it. It has all of CSPNet's invariances
and, besides, the choice of cell: for L' = M L, f' = f M^-1 (M integer, det +-1:
the same atoms in space) the Cartesian score s_i and the logits are unchanged, the
fractional score L s_i becomes M times itself (d/df = L d/dx), and the lattice
output L_norm S (S a Cartesian tensor) becomes M times itself; on a supercell every
copy of an atom gets the primitive atom's Cartesian score and logits and S is the
primitive cell's. This is exact only while the image window n in [-R, R]^3
(``image_range``, around the nearest image of f_j - f_i) holds every image within
the cutoff, i.e. while every height of the cell (the distance between its lattice
planes) is at least cutoff / (R + 1/2): 2.4 Å for the defaults (6 Å, R = 2), which
perov_5's cells (heights ~4 Å) satisfy. A flatter cell (a Niggli cell with a short
height, or a very noisy lattice early in sampling or at large t in training) gets
truncated sums: they stay smooth in L and f and keep every other invariance, but
then depend on the cell and miss far images. R is not enlarged automatically (the
shapes are static and the cost grows as (2R + 1)^3); raise ``image_range`` for data
with short heights. Neither net makes the *process* cell-invariant: the noise
itself is defined in the given cell (fractional wrapped normal, Gaussian entries of
L_norm), so cells are Niggli-reduced before training (``niggli``) so that a crystal
is seen in one standard cell. ``tests/test_diffusion.py`` checks all of the above.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optax
from flax import struct

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxinv.crystal import Crystal
from jaxinv.generative.coords import CoordSpec, encode_coords, params_to_lattice
from jaxinv.generative.species import Vocabulary
from jaxinv.generative.torus import (geometric_sigmas, langevin_corrector_step, score_norm, ve_predictor_step, wrap,
                                     wrapped_normal_score)

__all__ = ["DiffusionConfig", "NoiseSchedule", "make_schedule", "CSPNet", "PeriodicNet", "periodic_pair_features",
           "NoisyCrystal", "noise_crystal",
           "DiffusionLoss", "CrystalDiffusion", "make_train_step", "ddpm_step", "unmask_step", "make_sampler", "fit"]

MODES = ("csp", "de_novo")
DENOISERS = ("cspnet", "periodic")


@dataclass
class DiffusionConfig:
    """Hyperparameters of the diffusion model (the CPU preset's values by default)."""

    mode: str = "csp"  # csp (composition given) | de_novo (atom types generated too)
    hidden: int = 128  # node and message width
    layers: int = 4  # message-passing layers
    n_frequencies: int = 8  # Fourier features per axis: sin/cos(2 pi k df), k = 1..n
    time_dim: int = 32  # sinusoidal embedding of t / T
    n_steps: int = 1000  # diffusion steps T
    sigma_min: float = 0.005  # fractional-coordinate noise at t = 1
    sigma_max: float = 0.5  # ... at t = T (nearly uniform on the circle)
    cosine_offset: float = 0.008  # lattice DDPM cosine schedule offset s
    n_images: int = 10  # images either side in the wrapped-normal sums
    corrector_steps: int = 1  # Langevin corrector steps per time step (0: predictor only)
    corrector_lr: float = 1e-5  # corrector step size at sigma_min; it scales as (sigma / sigma_min)^2
    w_lattice: float = 1.0  # loss weight of the lattice noise prediction
    w_frac: float = 1.0  # loss weight of the fractional-coordinate score
    w_types: float = 1.0  # loss weight of the atom-type prediction (de novo)
    lr: float = 1e-3  # Adam learning rate
    grad_clip: float = 1.0  # global gradient-norm clip
    niggli: bool = True  # Niggli-reduce the training cells
    lattice_clip: float = 4.0  # bound on each entry of the predicted clean normalized lattice while sampling
    condition: str = ""  # a dataset label to condition on (classifier-free guidance); "" for none
    p_uncond: float = 0.1  # fraction of training crystals shown without their label (the null condition)
    denoiser: str = "cspnet"  # cspnet (Fourier features of the given cell) | periodic (cell-invariant, PeriodicNet)
    cutoff: float = 6.0  # periodic: neighbour cutoff in Å
    image_range: int = 2  # periodic: images n in [-R, R]^3 of each pair; exact while every cell height >= cutoff / (R + 1/2)
    n_rbf: int = 16  # periodic: Gaussian radial basis functions of the scalar pair features

    def validate(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError("need 0 < sigma_min < sigma_max")
        if not 0 <= self.p_uncond < 1:
            raise ValueError("p_uncond must be in [0, 1)")
        if self.denoiser not in DENOISERS:
            raise ValueError(f"denoiser must be one of {DENOISERS}, not {self.denoiser!r}")
        if not (self.cutoff > 0 and self.image_range >= 1 and self.n_rbf >= 2):
            raise ValueError("need cutoff > 0, image_range >= 1 and n_rbf >= 2")


# ------------------------------------------------------------------ schedules
@struct.dataclass
class NoiseSchedule:
    """Per-step noise levels, index t in 0..T (index 0: no noise)."""

    sigma: jax.Array  # (T+1,) fractional-coordinate noise
    score_norm: jax.Array  # (T+1,) E[score^2] at sigma (1 at t = 0)
    alpha_bar: jax.Array  # (T+1,) lattice signal fraction, 1 at t = 0
    keep: jax.Array  # (T+1,) probability that an atom type is still unmasked, 1 - t/T

    @property
    def n_steps(self) -> int:
        return self.sigma.shape[0] - 1


def make_schedule(config: DiffusionConfig) -> NoiseSchedule:
    return _schedule(config.n_steps, config.sigma_min, config.sigma_max, config.cosine_offset, config.n_images)


@functools.lru_cache(maxsize=16)
def _schedule(T: int, sigma_min: float, sigma_max: float, s: float, n_images: int) -> NoiseSchedule:
    sigma = geometric_sigmas(sigma_min, sigma_max, T)
    norm = np.concatenate([[1.0], score_norm(sigma[1:], n_images=n_images)])
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    alpha_bar = f / f[0]
    beta = np.clip(1 - alpha_bar[1:] / alpha_bar[:-1], 0.0, 0.999)  # clipped as in Nichol & Dhariwal
    alpha_bar = np.concatenate([[1.0], np.cumprod(1 - beta)])
    keep = 1.0 - np.arange(T + 1) / T
    return NoiseSchedule(*(jnp.asarray(a, jnp.float32) for a in (sigma, norm, alpha_bar, keep)))


# -------------------------------------------------------------------- network
def _time_embedding(t, dim: int):
    """Sinusoidal embedding of a time in [0, 1]."""
    freqs = jnp.exp(jnp.linspace(0.0, jnp.log(1000.0), dim // 2))
    return jnp.concatenate([jnp.sin(t * freqs), jnp.cos(t * freqs)])


def _node_features(types, t, y, has_y, n_tokens: int, hidden: int, time_dim: int, conditional: bool):
    """Type embedding + time embedding (+ label embedding); call inside a compact module."""
    h = nn.Embed(n_tokens, hidden)(types)
    h = h + nn.Dense(hidden)(nn.silu(nn.Dense(hidden)(_time_embedding(t, time_dim))))
    if conditional:  # has_y = 0 zeroes the label's features: the null condition is a learned constant
        y_feats = jnp.concatenate([has_y * _time_embedding(y / 4.0, time_dim), jnp.atleast_1d(has_y)])
        h = h + nn.Dense(hidden)(nn.silu(nn.Dense(hidden)(y_feats)))
    return h


class CSPNet(nn.Module):
    """The denoiser, for one crystal: (lattice (3, 3), frac (N, 3), types (N,),
    mask (N,), t in [0, 1], and for a conditional model the standardized label y
    with ``has_y`` 0 for the null condition) -> (coordinate score / its rms (N, 3),
    lattice epsilon (3, 3), type logits (N, n_elements) or None).

    The first Dense of each edge MLP acts on [h_i, h_j, edge features]; it is
    applied as W_i h_i + W_j h_j + W_e e (the same function), so the wide node
    part costs N products per layer instead of N^2."""

    n_tokens: int  # embedding rows: 0 padding, 1..V elements, V + 1 [MASK]
    n_elements: int  # type logits emitted (0 in CSP mode)
    hidden: int = 128
    layers: int = 4
    n_frequencies: int = 8
    time_dim: int = 32
    conditional: bool = False

    @nn.compact
    def __call__(self, lattice, frac, types, mask, t, y=0.0, has_y=0.0, scale=1.0):
        del scale  # Å per lattice unit: PeriodicNet's; this net sees the normalized cell only
        n = frac.shape[0]
        gram = lattice @ lattice.T
        gram6 = gram[jnp.triu_indices(3)]  # invariant under L -> L R^T
        k = jnp.arange(1, self.n_frequencies + 1, dtype=frac.dtype)
        diff = frac[None, :, :] - frac[:, None, :]  # (N, N, 3): f_j - f_i
        phase = 2 * jnp.pi * diff[..., None] * k  # integer k: blind to images, translations cancel in diff
        fourier = jnp.concatenate([jnp.sin(phase), jnp.cos(phase)], -1).reshape(n, n, -1)
        senders = (mask[:, None] & mask[None, :] & ~jnp.eye(n, dtype=bool)).astype(frac.dtype)
        n_senders = jnp.maximum(senders.sum(1, keepdims=True), 1.0)
        edge_static = jnp.concatenate([fourier, jnp.broadcast_to(gram6, (n, n, 6))], -1)

        h = _node_features(types, t, y, has_y, self.n_tokens, self.hidden, self.time_dim, self.conditional)
        for _ in range(self.layers):
            hn = nn.LayerNorm()(h)
            pre = (nn.Dense(self.hidden, use_bias=False)(hn)[:, None] + nn.Dense(self.hidden, use_bias=False)(hn)[None]
                   + nn.Dense(self.hidden)(edge_static))
            m = nn.silu(nn.Dense(self.hidden)(nn.silu(pre)))
            agg = (m * senders[..., None]).sum(1) / n_senders  # mean over the other atoms of the cell
            h = h + nn.Dense(self.hidden)(nn.silu(nn.Dense(self.hidden)(jnp.concatenate([hn, agg], -1))))
        h = nn.LayerNorm()(h)
        frac_out = nn.Dense(3)(h)
        w = mask.astype(h.dtype)[:, None]
        pooled = (h * w).sum(0) / jnp.maximum(w.sum(), 1.0)
        coef = nn.Dense(9)(nn.silu(nn.Dense(self.hidden)(pooled))).reshape(3, 3)
        lattice_out = coef @ lattice  # mixes the lattice vectors: rotates with the lattice
        logits = nn.Dense(self.n_elements)(h) if self.n_elements else None
        return frac_out, lattice_out, logits


def _gaussians(cutoff: float, *counts: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres and widths of consecutive Gaussian bases, each ``count`` evenly spread over [0, cutoff]."""
    centres = np.concatenate([np.linspace(0.0, cutoff, n) for n in counts])
    widths = np.concatenate([np.full(n, cutoff / (n - 1)) for n in counts])
    return centres, widths


_SYM6 = (np.array([0, 0, 0, 1, 1, 2]), np.array([0, 1, 2, 1, 2, 2]))  # upper triangle of a 3x3 tensor
_SYM6_TO_3x3 = np.array([[0, 1, 2], [1, 3, 4], [2, 4, 5]])


def periodic_pair_features(lattice, frac, mask, cutoff: float, image_range: int, n_rbf: int, n_vector: int,
                           n_tensor: int):
    """Geometric pair features of one crystal, summed over the images n in
    [-R, R]^3 of each pair (i, j) of real atoms (i = j, n = 0 left out):

        e_ij[r] = sum_n phi_r(d) env(d)                    (N, N, n_rbf)
        V_ij[r] = sum_n psi_r(d) env(d) (x_j + n L - x_i)  (N, N, n_vector, 3), Å
        T_ij[r] = sum_n chi_r(d) env(d) rhat (x) rhat      (N, N, n_tensor, 3, 3)

    with ``lattice`` in Å (rows), d = |x_j + n L - x_i|, Gaussian bases phi, psi, chi
    on [0, cutoff] and a cosine envelope that vanishes with its slope at the cutoff.
    The window of n is centred on the nearest image f_j - f_i wrapped into
    [-1/2, 1/2), so it holds every image within the cutoff when each cell height is
    at least cutoff / (R + 1/2); then the features are a function of the atoms'
    positions in space alone, whatever the cell. Otherwise the sums are truncated."""
    r = jnp.arange(-image_range, image_range + 1, dtype=frac.dtype)
    images = jnp.stack(jnp.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)  # (K, 3)
    df = wrap(frac[None, :, :] - frac[:, None, :])  # (N, N, 3): blind to f -> f + integer and to translations
    x = df[:, :, None, :] + images  # (N, N, K, 3)
    # x_j + n L - x_i, written out: on CPU XLA ran the (N, N, K, 3) @ (3, 3) product several times slower
    disp = x[..., :1] * lattice[0] + x[..., 1:2] * lattice[1] + x[..., 2:] * lattice[2]
    d = jnp.sqrt((disp ** 2).sum(-1))
    n = frac.shape[0]
    itself = jnp.eye(n, dtype=bool)[:, :, None] & (images == 0).all(-1)
    keep = mask[:, None, None] & mask[None, :, None] & ~itself & (d < cutoff)
    env = jnp.where(keep, 0.5 * (jnp.cos(jnp.pi * jnp.minimum(d, cutoff) / cutoff) + 1), 0.0)
    centres, widths = _gaussians(cutoff, n_rbf, n_vector, n_tensor)  # one exp for all three bases
    basis = env[..., None] * jnp.exp(-0.5 * ((d[..., None] - centres) / widths) ** 2)  # (N, N, K, all)
    unit = disp / jnp.where(d > 0, d, 1.0)[..., None]
    # one contraction over the images for all three (the unused blocks cost less than separate ones)
    cols = jnp.concatenate([jnp.ones_like(d)[..., None], disp, unit[..., _SYM6[0]] * unit[..., _SYM6[1]]], -1)
    sums = jnp.einsum("ijkr,ijkc->ijrc", basis, cols)  # (N, N, all, 10)
    a, b = n_rbf, n_rbf + n_vector
    return sums[:, :, :a, 0], sums[:, :, a:b, 1:4], sums[:, :, b:, 4:][..., _SYM6_TO_3x3]


class PeriodicNet(nn.Module):
    """A denoiser invariant to the choice of unit cell, for one crystal: the same
    call and outputs as :class:`CSPNet`, plus ``scale`` (Å per normalized lattice
    unit), since its features live in real space.

    Everything the atoms exchange is a sum over j of something LINEAR in the image
    sums of :func:`periodic_pair_features`, times a function of (h_i, h_j). In a
    supercell (or another cell) each atom j of the primitive cell has k copies with
    identical h, whose image sums add up to the primitive cell's, so every such sum
    over j is the primitive cell's: by induction over the layers the copies of an
    atom get the primitive atom's h and outputs. A nonlinearity on e, or a mean over
    j, would count the copies k times and break this; the fixed divisor
    ``neighbours`` (the expected number of atoms within the cutoff) keeps the sums O(1)."""

    n_tokens: int
    n_elements: int
    hidden: int = 128
    layers: int = 4
    time_dim: int = 32
    conditional: bool = False
    cutoff: float = 6.0  # Å
    image_range: int = 2
    n_rbf: int = 16
    n_vector: int = 8
    n_tensor: int = 4
    neighbours: float = 32.0  # fixed divisor of the sums over j

    @nn.compact
    def __call__(self, lattice, frac, types, mask, t, y=0.0, has_y=0.0, scale=1.0):
        real = lattice * scale  # Å
        e, v, tensor = periodic_pair_features(real, frac, mask, self.cutoff, self.image_range, self.n_rbf,
                                              self.n_vector, self.n_tensor)
        h = _node_features(types, t, y, has_y, self.n_tokens, self.hidden, self.time_dim, self.conditional)
        for _ in range(self.layers):
            hn = nn.LayerNorm()(h)
            g = nn.silu(nn.Dense(self.hidden, use_bias=False)(hn)[:, None] + nn.Dense(self.hidden)(hn)[None])
            # bias-free and linear in e: zero for padding pairs, and the supercell's copies add up exactly
            m = nn.Dense(self.hidden, use_bias=False)(e) * nn.Dense(self.hidden)(g)
            agg = m.sum(1) / self.neighbours
            h = h + nn.Dense(self.hidden)(nn.silu(nn.Dense(self.hidden)(jnp.concatenate([hn, agg], -1))))
        h = nn.LayerNorm()(h)
        pair = nn.silu(nn.Dense(self.hidden, use_bias=False)(h)[:, None] + nn.Dense(self.hidden)(h)[None])
        coef = nn.Dense(self.n_vector + self.n_tensor)(pair)  # functions of (h_i, h_j) only: linear in v, tensor
        # Cartesian score per atom; in the cell's basis it is L s_i, i.e. the rows s_i L^T: under L -> M L
        # (f -> f M^-1) the fractional score d/df log p = L d/dx log p becomes M times itself. Not divided by
        # the neighbour count: image sums of vectors mostly cancel, and a fixed length (the cutoff) is enough
        # to start the output at O(1) (a tiny start is slow to grow under Adam)
        score = jnp.einsum("ijr,ijrc->ic", coef[..., :self.n_vector], v) / self.cutoff
        frac_out = score @ real.T
        w = mask.astype(h.dtype)
        n_real = jnp.maximum(w.sum(), 1.0)
        pooled = (h * w[:, None]).sum(0) / n_real  # a mean of per-atom invariants: the copies' mean is the primitive's
        iso = nn.Dense(1)(nn.silu(nn.Dense(self.hidden)(pooled)))  # S = a I + ...: lets eps follow L at high noise
        s = iso * jnp.eye(3, dtype=h.dtype) + jnp.einsum("ijr,ijrcd->cd", coef[..., self.n_vector:], tensor) / (
            n_real * self.neighbours)
        lattice_out = lattice @ s  # S is a Cartesian tensor, the same in any cell: rows mix as L does
        logits = nn.Dense(self.n_elements)(h) if self.n_elements else None
        return frac_out, lattice_out, logits


# ---------------------------------------------------------------- forward noise
@struct.dataclass
class NoisyCrystal:
    """One crystal at step t of the forward process, with the regression targets."""

    lattice: jax.Array  # (3, 3) L_t
    frac: jax.Array  # (N, 3) f_t
    types: jax.Array  # (N,) tokens (masked atoms hold the [MASK] token)
    lattice_noise: jax.Array  # (3, 3) epsilon
    frac_target: jax.Array  # (N, 3) wrapped-normal score / its rms
    masked: jax.Array  # (N,) bool: type hidden at step t


def noise_crystal(key, schedule: NoiseSchedule, lattice, frac, types, mask, t, mask_token: int | None,
                  n_images: int = 10) -> NoisyCrystal:
    """Sample q(x_t | x_0) for one crystal; ``mask_token`` None keeps the types (CSP)."""
    k_lat, k_frac, k_type = jax.random.split(key, 3)
    eps = jax.random.normal(k_lat, (3, 3))
    ab = schedule.alpha_bar[t]
    lattice_t = jnp.sqrt(ab) * lattice + jnp.sqrt(1 - ab) * eps
    sigma = schedule.sigma[t]
    frac_t = jnp.mod(frac + sigma * jax.random.normal(k_frac, frac.shape), 1.0)
    target = wrapped_normal_score(frac_t - frac, sigma, n_images) / jnp.sqrt(schedule.score_norm[t])
    if mask_token is None:
        masked = jnp.zeros(types.shape, bool)
    else:
        masked = mask & (jax.random.uniform(k_type, types.shape) >= schedule.keep[t])
    types_t = types if mask_token is None else jnp.where(masked, mask_token, types)
    return NoisyCrystal(lattice_t, frac_t, types_t, eps, target, masked)


@struct.dataclass
class DiffusionLoss:
    """Batch losses: the weighted total and its three denoising terms."""

    total: jax.Array
    lattice: jax.Array  # mean squared error of the lattice epsilon
    frac: jax.Array  # mean squared error of the normalized coordinate score, over real atoms
    types: jax.Array  # cross-entropy over masked atoms (0 in CSP mode)


# ---------------------------------------------------------------------- model
class CrystalDiffusion:
    """Vocabulary, normalization, schedule and network of one diffusion model.

    ``params`` are passed explicitly (jax style). Data enter as host arrays from
    :meth:`arrays`: normalized lattices (M, 3, 3), fractional coordinates
    (M, n_max, 3), element classes 1..V (0 = padding) and masks.
    """

    def __init__(self, config: DiffusionConfig, vocab: Vocabulary, n_max: int, volume_per_atom: float,
                 atom_count_probs, dataset: str = "", condition_stats: tuple[float, float] = (0.0, 1.0)):
        config.validate()
        self.condition_stats = (float(condition_stats[0]), float(condition_stats[1]))  # label mean, std
        self.config, self.vocab, self.n_max = config, vocab, int(n_max)
        self.volume_per_atom = float(volume_per_atom)
        self.atom_count_probs = np.asarray(atom_count_probs, np.float64)  # (n_max + 1,) over atom counts
        self.dataset = dataset
        self.schedule = make_schedule(config)
        self.mask_token = len(vocab) + 1 if config.mode == "de_novo" else None
        c = config
        tokens, elements = len(vocab) + 2, len(vocab) if c.mode == "de_novo" else 0
        if c.denoiser == "periodic":  # the divisor: atoms expected within the cutoff at the mean density
            neighbours = 4 / 3 * np.pi * c.cutoff ** 3 / self.volume_per_atom
            self.net = PeriodicNet(tokens, elements, c.hidden, c.layers, c.time_dim, bool(c.condition), c.cutoff,
                                   c.image_range, c.n_rbf, neighbours=float(neighbours))
        else:
            self.net = CSPNet(tokens, elements, c.hidden, c.layers, c.n_frequencies, c.time_dim, bool(c.condition))

    @classmethod
    def from_dataset(cls, config: DiffusionConfig, dataset, vocab: Vocabulary | None = None,
                     n_max: int | None = None) -> "CrystalDiffusion":
        crystal = dataset.crystal(bucket=False)
        n = np.asarray(crystal.n_atoms)
        n_max = int(n_max or n.max())
        vpa = float(np.mean(np.abs(np.linalg.det(crystal.lattice)) / n))
        probs = np.bincount(n, minlength=n_max + 1)[:n_max + 1] / len(n)
        stats = (0.0, 1.0)
        if config.condition:
            y = _labels(dataset, config.condition)
            y = y[np.isfinite(y)]
            stats = (float(y.mean()), float(max(y.std(), 1e-8)))
        return cls(config, vocab or Vocabulary.from_dataset(dataset), n_max, vpa, probs, dataset.name, stats)

    def init(self, key):
        n = self.n_max  # jitted: op-by-op initialization compiles every small primitive separately
        return jax.jit(self.net.init)(key, jnp.eye(3), jnp.zeros((n, 3)), jnp.ones(n, jnp.int32), jnp.ones(n, bool),
                                      0.5, 0.0, 1.0)

    @property
    def conditional(self) -> bool:
        return bool(self.config.condition)

    def standardize(self, y):
        """Label values (the dataset's units) -> the network's standardized y."""
        mean, std = self.condition_stats
        return (np.asarray(y, np.float64) - mean) / std

    def lattice_scale(self, n_atoms):
        """Å per normalized lattice unit for a crystal of ``n_atoms`` atoms."""
        return (np.maximum(n_atoms, 1) * self.volume_per_atom) ** (1 / 3)

    def arrays(self, crystal: Crystal) -> dict:
        """Host training arrays of a crystal batch (or a Dataset): the cell of lattice
        parameters after optional Niggli reduction (orientation is irrelevant to an
        equivariant model), normalized by :meth:`lattice_scale`. A conditional model
        also gets ``y`` (standardized label) and ``has_y`` (0 where the label is missing)
        from a Dataset's labels."""
        labels = None
        if not isinstance(crystal, Crystal):
            labels = _labels(crystal, self.config.condition) if self.conditional else None
            crystal = crystal.crystal(bucket=False)
        rep = encode_coords(crystal, CoordSpec(self.n_max, self.vocab, self.config.niggli))
        mask = rep["species"] > 0
        scale = self.lattice_scale(mask.sum(1))[:, None, None]
        out = {"lattice": (params_to_lattice(rep["lattice"]) / scale).astype(np.float32),
               "frac": rep["frac"].astype(np.float32), "types": rep["species"].astype(np.int32), "mask": mask}
        if self.conditional:
            if labels is None:
                raise ValueError(f"a model conditioned on {self.config.condition!r} trains on a Dataset with that label")
            known = np.isfinite(labels)
            out["y"] = np.where(known, self.standardize(np.where(known, labels, 0.0)), 0.0).astype(np.float32)
            out["has_y"] = known.astype(np.float32)
        return out

    def denoise(self, params, lattice, frac, types, mask, t, y=None, has_y=None):
        """The network on a batch: t (B,) integer steps; y, has_y (B,) for a conditional
        model (None: the null condition)."""
        B = frac.shape[0]
        y = jnp.zeros(B) if y is None else y
        has_y = jnp.zeros(B) if has_y is None else has_y
        scale = (jnp.maximum(mask.sum(1), 1) * self.volume_per_atom) ** (1 / 3)  # lattice_scale, traced
        apply = lambda L, f, a, m, s, yy, hy, sc: self.net.apply(params, L, f, a, m, s, yy, hy, sc)
        return jax.vmap(apply)(lattice, frac, types, mask, t / self.schedule.n_steps, y, has_y,
                               scale.astype(lattice.dtype))

    def guided_denoise(self, params, lattice, frac, types, mask, t, y, has_y, guidance):
        """Classifier-free guidance: (1 + w) D(x, y) - w D(x, null) for all three
        outputs (type logits too: a product of the conditional and unconditional
        distributions' powers). An unconditional model, or ``guidance`` None (no
        guidance: the conditional model as trained), is one plain call."""
        cond = self.denoise(params, lattice, frac, types, mask, t, y, has_y)
        if not self.conditional or guidance is None:
            return cond
        free = self.denoise(params, lattice, frac, types, mask, t)
        mix = lambda c, u: None if c is None else c + guidance * (c - u)
        return tuple(mix(c, u) for c, u in zip(cond, free))

    def loss(self, params, batch: dict, key) -> DiffusionLoss:
        """Denoising score-matching losses of a batch at uniformly drawn steps."""
        c, B = self.config, batch["frac"].shape[0]
        k_t, k_noise = jax.random.split(key)
        t = jax.random.randint(k_t, (B,), 1, self.schedule.n_steps + 1)
        noise = lambda k, L, f, a, m, s: noise_crystal(k, self.schedule, L, f, a, m, s, self.mask_token, c.n_images)
        x = jax.vmap(noise)(jax.random.split(k_noise, B), batch["lattice"], batch["frac"], batch["types"],
                            batch["mask"], t)
        y = has_y = None
        if self.conditional:  # drop the label of a p_uncond fraction: they train the null condition
            keep = jax.random.uniform(jax.random.fold_in(key, 1), (B,)) >= c.p_uncond
            y, has_y = batch["y"], batch["has_y"] * keep
        frac_out, lattice_out, logits = self.denoise(params, x.lattice, x.frac, x.types, batch["mask"], t, y, has_y)
        w = batch["mask"].astype(frac_out.dtype)
        l_lat = jnp.mean((lattice_out - x.lattice_noise) ** 2)
        l_frac = (((frac_out - x.frac_target) ** 2).sum(-1) * w).sum() / (3 * jnp.maximum(w.sum(), 1.0))
        l_types = jnp.zeros(())
        if logits is not None:
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(batch["types"] - 1, 0))
            hidden = x.masked.astype(ce.dtype)
            l_types = (ce * hidden).sum() / jnp.maximum(hidden.sum(), 1.0)
        total = c.w_lattice * l_lat + c.w_frac * l_frac + c.w_types * l_types
        return DiffusionLoss(total, l_lat, l_frac, l_types)

    # -------------------------------------------------------------- sampling
    def csp_inputs(self, compositions) -> tuple[np.ndarray, np.ndarray]:
        """Formulas (or pymatgen Compositions, or a Crystal) -> (types (B, n_max), mask)."""
        if isinstance(compositions, Crystal):
            c = compositions.to_host()
            numbers = [c.numbers[b][c.mask[b]] for b in range(len(c))]
        else:
            from pymatgen.core import Composition

            numbers = []
            for comp in compositions:
                comp = Composition(comp)
                if abs(comp.num_atoms - round(comp.num_atoms)) > 1e-8:
                    raise ValueError(f"{comp} has a fractional atom count")
                numbers.append(np.concatenate([[el.Z] * int(round(a)) for el, a in comp.items()]))
        types = np.zeros((len(numbers), self.n_max), np.int32)
        for b, z in enumerate(numbers):
            if len(z) > self.n_max:
                raise ValueError(f"{len(z)} atoms; the model holds at most {self.n_max}")
            types[b, :len(z)] = self.vocab.classes(np.asarray(z))
        return types, types > 0

    def de_novo_inputs(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Atom counts drawn from the training distribution, all types [MASK]."""
        counts = rng.choice(len(self.atom_count_probs), n, p=self.atom_count_probs)
        mask = np.arange(self.n_max)[None, :] < counts[:, None]
        return np.where(mask, self.mask_token, 0).astype(np.int32), mask

    def to_crystals(self, lattice, frac, types, mask) -> Crystal:
        """Normalized network-space arrays -> a host Crystal (right-handed cells)."""
        lattice, frac = np.asarray(lattice, np.float64).copy(), np.asarray(frac, np.float64).copy()
        types, mask = np.asarray(types), np.asarray(mask, bool)
        lattice *= self.lattice_scale(mask.sum(1))[:, None, None]
        # a left-handed sample: flip the first lattice vector and its coordinate (same positions)
        left = np.linalg.det(lattice) < 0
        lattice[left, 0] *= -1
        frac[left, :, 0] *= -1
        frac = np.where(mask[..., None], np.mod(frac, 1.0), 0.0)
        numbers = np.where(mask, self.vocab.atomic_numbers(np.where(mask, np.clip(types, 0, len(self.vocab)), 0)), 0)
        return Crystal(lattice, frac, numbers, mask)

    def sampler(self, guided: bool = False):
        """The jitted reverse process (:func:`make_sampler`), built once per model and
        flag: unguided sampling makes one network call per step, guided sampling two."""
        cache = self.__dict__.setdefault("_compiled", {})
        if guided not in cache:
            cache[guided] = make_sampler(self, guided)
        return cache[guided]

    def train_step(self):
        """The jitted training step (:func:`make_train_step`), built once per model, so a
        resumed or repeated :func:`fit` does not compile it again."""
        cache = self.__dict__.setdefault("_compiled", {})
        if "train" not in cache:
            cache["train"] = make_train_step(self)
        return cache["train"]

    def sample(self, params, key, compositions=None, n: int | None = None, seed: int = 0,
               batch_size: int = 256, target=None, guidance: float = 0.0) -> Crystal:
        """CSP: crystals of the given ``compositions`` (formulas or a Crystal);
        de novo: ``n`` new crystals. Runs in chunks of ``batch_size`` (the last one
        padded, so one compiled shape serves all). Returns a host :class:`Crystal`.

        A conditional model takes a ``target`` in the label's units: a value, or a
        window (lo, hi) from which each sample's label is drawn uniformly, or None
        for the null condition; ``guidance`` is the classifier-free weight w (0: the
        conditional model as trained)."""
        if self.config.mode == "csp":
            if compositions is None:
                raise ValueError("a CSP model needs compositions")
            types, mask = self.csp_inputs(compositions)
        else:
            if n is None:
                raise ValueError("a de novo model needs n")
            types, mask = self.de_novo_inputs(np.random.default_rng(seed), n)
        total, size = len(types), min(batch_size, len(types))
        if total == 0:
            raise ValueError("nothing to sample: n = 0 or no compositions")
        y, has_y = self._targets(np.random.default_rng((seed, 1)), total, target)
        sampler = self.sampler(guided=target is not None and guidance != 0)
        parts = []
        for start in range(0, total, size):
            t, m = types[start:start + size], mask[start:start + size]
            yy, hy = y[start:start + size], has_y[start:start + size]
            pad = size - len(t)
            t, m = np.pad(t, ((0, pad), (0, 0))), np.pad(m, ((0, pad), (0, 0)))
            yy, hy = np.pad(yy, (0, pad)), np.pad(hy, (0, pad))
            out = sampler(params, jax.random.fold_in(key, start), jnp.asarray(t), jnp.asarray(m),
                               jnp.asarray(yy), jnp.asarray(hy), jnp.float32(guidance))
            lattice, frac, new_types = (np.asarray(x)[:size - pad] for x in out)
            parts.append(self.to_crystals(lattice, frac, new_types, m[:size - pad]))
        return Crystal.concatenate(parts) if len(parts) > 1 else parts[0]

    def _targets(self, rng, n: int, target) -> tuple[np.ndarray, np.ndarray]:
        """Standardized labels (n,) and has_y flags for a target value or window."""
        if target is None:
            return np.zeros(n, np.float32), np.zeros(n, np.float32)
        if not self.conditional:
            raise ValueError("this model is unconditional: train it with diffusion.condition=<label> to give a target")
        lo, hi = (target, target) if np.isscalar(target) else map(float, target)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise ValueError(f"target must be a value or a window lo <= hi, not {target!r}")
        return self.standardize(rng.uniform(lo, hi, n)).astype(np.float32), np.ones(n, np.float32)

    # ------------------------------------------------------------ save/load
    def to_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "vocab": self.vocab.to_list(), "n_max": self.n_max,
                "volume_per_atom": self.volume_per_atom, "atom_count_probs": self.atom_count_probs.tolist(),
                "dataset": self.dataset, "condition_stats": list(self.condition_stats)}

    @classmethod
    def from_dict(cls, d: dict) -> "CrystalDiffusion":
        return cls(DiffusionConfig(**d["config"]), Vocabulary.from_list(d["vocab"]), d["n_max"], d["volume_per_atom"],
                   d["atom_count_probs"], d.get("dataset", ""), tuple(d.get("condition_stats", (0.0, 1.0))))

    def save(self, directory, params) -> Path:
        from flax import serialization

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "diffusion.json").write_text(json.dumps(self.to_dict(), indent=2))
        (directory / "params.msgpack").write_bytes(serialization.to_bytes(params))
        return directory

    @classmethod
    def load(cls, directory) -> tuple["CrystalDiffusion", Any]:
        from flax import serialization

        directory = Path(directory)
        model = cls.from_dict(json.loads((directory / "diffusion.json").read_text()))
        params = serialization.from_bytes(model.init(jax.random.PRNGKey(0)),
                                          (directory / "params.msgpack").read_bytes())
        return model, params


# --------------------------------------------------------------- jitted steps
def _labels(dataset, name: str) -> np.ndarray:
    if name not in dataset.labels:
        raise ValueError(f"diffusion.condition: {dataset.name} has no label {name!r} (it has {sorted(dataset.labels)})")
    return np.asarray(dataset.labels[name], np.float64)


def make_optimizer(config: DiffusionConfig):
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), optax.adam(config.lr))


def make_train_step(model: CrystalDiffusion):
    """``step(params, opt_state, batch, key) -> (params, opt_state, DiffusionLoss)``, jitted."""
    tx = make_optimizer(model.config)

    def step(params, opt_state, batch, key):
        grad_fn = jax.value_and_grad(lambda p: (lambda l: (l.total, l))(model.loss(p, batch, key)), has_aux=True)
        (_, losses), grads = grad_fn(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, losses

    return jax.jit(step)


def ddpm_step(key, schedule: NoiseSchedule, lattice, eps, t, clip: float = jnp.inf):
    """One DDPM posterior step of the lattice from t to t - 1, given the predicted
    noise: variance beta-tilde (zero at t = 1, so the last step is the mean).

    The posterior mean is written through the predicted clean lattice
    x0 = (L_t - sqrt(1 - abar) eps) / sqrt(abar), clipped to [-clip, clip]
    entrywise (Ho et al.'s clipped sampler). Unclipped it is the usual epsilon
    form. Without the clip a few samples ran away: near t = T, sqrt(abar) is ~1e-2,
    so a modest error in eps becomes a huge x0 and the chain never recovers (2 of
    369 perov_5 samples ended at ~5e25 Å^3 per atom)."""
    ab, ab_prev = schedule.alpha_bar[t], schedule.alpha_bar[t - 1]
    alpha = ab / ab_prev
    x0 = jnp.clip((lattice - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab), -clip, clip)
    mean = (jnp.sqrt(ab_prev) * (1 - alpha) * x0 + jnp.sqrt(alpha) * (1 - ab_prev) * lattice) / (1 - ab)
    var = (1 - alpha) * (1 - ab_prev) / (1 - ab)
    return mean + jnp.sqrt(var) * jax.random.normal(key, lattice.shape)


def unmask_step(key, schedule: NoiseSchedule, types, mask, logits, t, mask_token: int):
    """One reverse step of the absorbing type process: a masked atom is revealed with
    probability (keep_{t-1} - keep_t) / (1 - keep_t) (1/t for the linear schedule, 1
    at t = 1), its element drawn from the network's logits; revealed atoms stay."""
    k_reveal, k_draw = jax.random.split(key)
    p_reveal = (schedule.keep[t - 1] - schedule.keep[t]) / (1 - schedule.keep[t])
    reveal = (types == mask_token) & mask & (jax.random.uniform(k_reveal, types.shape) < p_reveal)
    return jnp.where(reveal, jax.random.categorical(k_draw, logits) + 1, types)


def make_sampler(model: CrystalDiffusion, guided: bool = False):
    """``sample(params, key, types (B, N), mask (B, N), y (B,), has_y (B,), guidance)
    -> (lattice, frac, types)`` in network space, jitted: T reverse steps, each a
    Langevin corrector on the coordinates (``corrector_steps``) then one predictor
    step of all three parts. With ``guided`` every network call is classifier-free
    guided with weight ``guidance`` (:meth:`CrystalDiffusion.guided_denoise`);
    without, ``guidance`` is ignored and each call is the (conditional) network alone."""
    c, sch = model.config, model.schedule
    T, mask_token = sch.n_steps, model.mask_token

    def reverse_step(params, y, has_y, guidance, carry, t):
        key, lattice, frac, types, mask = carry
        w = guidance if guided else None
        denoise = lambda L, f, a: model.guided_denoise(params, L, f, a, mask, tb, y, has_y, w)
        key, k_corr, k_frac, k_lat, k_type = jax.random.split(key, 5)
        tb = jnp.full(frac.shape[:1], t)
        sigma, sigma_prev = sch.sigma[t], sch.sigma[t - 1]
        rms = jnp.sqrt(sch.score_norm[t])
        step_size = c.corrector_lr * (sigma / c.sigma_min) ** 2
        for k in jax.random.split(k_corr, c.corrector_steps):
            frac_out, _, _ = denoise(lattice, frac, types)
            frac = langevin_corrector_step(k, frac, frac_out * rms, step_size)
        frac_out, eps, logits = denoise(lattice, frac, types)
        frac = ve_predictor_step(k_frac, frac, frac_out * rms, sigma, sigma_prev)
        lattice = ddpm_step(k_lat, sch, lattice, eps, t, c.lattice_clip)
        if mask_token is not None:
            types = unmask_step(k_type, sch, types, mask, logits, t, mask_token)
        return (key, lattice, frac, types, mask), None

    def sample(params, key, types, mask, y, has_y, guidance):
        k_lat, k_frac, key = jax.random.split(key, 3)
        B, N = types.shape
        lattice = jax.random.normal(k_lat, (B, 3, 3))
        frac = jax.random.uniform(k_frac, (B, N, 3))  # the wrapped normal at sigma_max is nearly uniform
        carry = (key, lattice, frac, types, mask)
        carry, _ = jax.lax.scan(lambda cr, t: reverse_step(params, y, has_y, guidance, cr, t), carry,
                                jnp.arange(T, 0, -1))
        _, lattice, frac, types, _ = carry
        return lattice, frac, types

    return jax.jit(sample)


def fit(model: CrystalDiffusion, arrays: dict, steps: int, batch_size: int = 64, seed: int = 0, params=None,
        log_every: int = 100, callback=None, time_limit_min: float = 0.0, checkpoint_dir=None,
        checkpoint_every_s: float | None = None, progress: bool = False) -> tuple[Any, list[dict]]:
    """Train for ``steps`` steps on host ``arrays``; batches are drawn by
    ``default_rng((seed, step))`` (as :class:`jaxinv.generative.train.Batcher` does)
    and the step's key is ``fold_in(PRNGKey(seed), step)``.
    Returns the parameters and the means of the losses over blocks of ``log_every`` steps
    (``callback`` gets each block's record); stops early after ``time_limit_min`` (0: none).

    With ``checkpoint_dir``, the parameters, the optimizer state and the history are saved
    there every ``checkpoint_every_s`` (default: ``TrainConfig``'s) and at the end, and a later call with the same model,
    data and seed resumes from them: since the batches and keys depend only on the step,
    a run killed and resumed takes the same steps as one that was not. Blocks end at
    multiples of ``log_every`` and saves come only between blocks, so its history is the
    same too (a run stopped by ``time_limit_min`` ends with a shorter block)."""
    import time

    from flax import serialization
    from tqdm import tqdm

    from jaxinv.generative.train import Batcher, TrainConfig

    key = jax.random.PRNGKey(seed)
    params = model.init(jax.random.split(key)[1]) if params is None else params
    opt_state = make_optimizer(model.config).init(params)
    history, start, ckpt = [], 0, None
    if checkpoint_dir is not None:
        from jaxinv.checkpoint import Checkpointer, fingerprint_arrays, from_json_leaf, json_leaf

        inputs = fingerprint_arrays(json_leaf(model.to_dict()), *(arrays[k] for k in sorted(arrays)),
                                    np.array([seed, batch_size]))
        every = TrainConfig.checkpoint_every_s if checkpoint_every_s is None else checkpoint_every_s
        ckpt = Checkpointer(checkpoint_dir, inputs, every_seconds=every)
        restored = ckpt.restore()
        if restored is not None:  # the templates give the trees back their types (optax's NamedTuples)
            start, tree = restored
            params = serialization.from_state_dict(params, tree["params"])
            opt_state = serialization.from_state_dict(opt_state, tree["opt_state"])
            history = from_json_leaf(tree["history"])
            if callback is not None:  # the caller's log restarts from the saved records
                for rec in history:
                    callback(rec)

    def snapshot():
        return {"params": serialization.to_state_dict(params), "opt_state": serialization.to_state_dict(opt_state),
                "history": json_leaf(history)}

    step_fn = model.train_step()
    batcher = Batcher(arrays, batch_size, seed)
    block = []
    t0 = time.monotonic()
    bar = tqdm(total=steps, initial=start, desc="train diffusion", disable=not progress, dynamic_ncols=True)
    done = start
    try:
        for step in range(start, steps):
            batch = {k: jnp.asarray(v) for k, v in batcher(step).items()}
            params, opt_state, losses = step_fn(params, opt_state, batch, jax.random.fold_in(key, step))
            block.append(losses)
            done = step + 1
            bar.update(1)
            out_of_time = bool(time_limit_min) and time.monotonic() - t0 > 60 * time_limit_min
            if done % log_every == 0 or done == steps or out_of_time:
                means = {f.name: float(np.mean([getattr(l, f.name) for l in block]))
                         for f in dataclasses.fields(losses)}
                history.append({"step": done, **means})
                block = []
                bar.set_postfix(loss=f"{means['total']:.3g}")
                if callback is not None:
                    callback(history[-1])
            if ckpt is not None and not block:  # only between blocks, so a resumed history is whole
                ckpt.maybe_save(done, snapshot)
            if out_of_time:
                break
    finally:
        bar.close()
    if ckpt is not None:
        if ckpt.latest_step != done:
            ckpt.save(done, snapshot())
        ckpt.close()
    return params, history
