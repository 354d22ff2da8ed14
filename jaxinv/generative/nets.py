"""Network building blocks (flax.linen): MLPs, a permutation-invariant set encoder,
a PointNet critic and periodic 3D convolutional voxel encoders/decoders.

Voxel networks run on a CPU budget, which shapes them: the 32^3 grid is folded
into 8^3 voxels of 64 sub-voxels each by a lossless space-to-depth reshape (a
3D convolution with a 4^3 kernel and stride 4 is then a Dense layer on the
folded channels), and the 3^3 convolutions run at 8^3 and 4^3 only, with
circular padding so that the network respects the periodicity of the cell.
On the development CPU a direct 3D-conv network at 32^3 trained ~30x slower.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["MLP", "SetEncoder", "PointNetCritic", "VoxelEncoder", "VoxelDecoder", "space_to_depth",
           "depth_to_space", "CircularConv"]


class MLP(nn.Module):
    """Dense layers with SiLU in between; no activation after the last layer."""

    features: Sequence[int]
    act: Callable = nn.silu
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x):
        for k, f in enumerate(self.features):
            x = nn.Dense(f)(x)
            if k < len(self.features) - 1:
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
                x = self.act(x)
        return x


class SetEncoder(nn.Module):
    """Permutation-invariant encoder of a set of slots plus global features.

    Per-slot embedding, ``layers`` pre-norm self-attention blocks (padding slots
    are masked out as keys), then masked mean and max pooling joined with the
    embedded global features.
    """

    hidden: int = 128
    heads: int = 4
    layers: int = 2
    out: int = 256

    @nn.compact
    def __call__(self, slots, mask, glob):
        h = MLP((self.hidden, self.hidden))(slots)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, N): queries see real slots only
        for _ in range(self.layers):
            a = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.hidden)(
                nn.LayerNorm()(h), mask=attn_mask)
            h = h + a
            h = h + MLP((2 * self.hidden, self.hidden))(nn.LayerNorm()(h))
        m = mask[..., None].astype(h.dtype)
        mean = (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        mx = jnp.where(m > 0, h, -1e9).max(1)
        mx = jnp.where(m.sum(1) > 0, mx, 0.0)
        g = MLP((self.hidden,))(glob)
        return MLP((self.out, self.out))(jnp.concatenate([mean, mx, g], -1))


class PointNetCritic(nn.Module):
    """A PointNet-style critic: a shared per-slot MLP, symmetric pooling, then an MLP.

    Slots are weighted by their soft occupancy ``occ`` in the mean (so empty
    slots do not count) and masked out of the max; the score is therefore
    invariant to permutations of the slots, exactly. ``glob`` holds per-crystal
    features (lattice parameters, condition).
    """

    hidden: int = 128
    layers: int = 3

    @nn.compact
    def __call__(self, slots, occ, glob):
        g = MLP((self.hidden,))(glob)
        x = jnp.concatenate([slots, jnp.broadcast_to(g[:, None], slots.shape[:2] + g.shape[-1:])], -1)
        h = MLP((self.hidden,) * self.layers, act=nn.leaky_relu)(x)
        w = occ[..., None]
        mean = (h * w).sum(1) / jnp.maximum(w.sum(1), 1e-3)
        mx = (h + (w - 1.0) * 10.0).max(1)  # soft mask: empty slots are pushed down, smoothly
        count = w.sum(1) / slots.shape[1]
        out = MLP((2 * self.hidden, self.hidden, 1), act=nn.leaky_relu)(jnp.concatenate([mean, mx, count, g], -1))
        return out[..., 0]


def space_to_depth(x, r: int):
    """(B, X, Y, Z, C) -> (B, X/r, Y/r, Z/r, r^3 C), lossless."""
    B, X, Y, Z, C = x.shape
    x = x.reshape(B, X // r, r, Y // r, r, Z // r, r, C).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(B, X // r, Y // r, Z // r, r ** 3 * C)


def depth_to_space(x, r: int):
    """Inverse of :func:`space_to_depth`."""
    B, X, Y, Z, D = x.shape
    C = D // r ** 3
    x = x.reshape(B, X, Y, Z, r, r, r, C).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(B, r * X, r * Y, r * Z, C)


class CircularConv(nn.Module):
    """3^3 convolution with periodic (wrap-around) padding.

    Written as im2col (27 shifted copies, then one matrix product): on CPU,
    XLA's 3D convolution was several times slower at these sizes.
    """

    features: int

    @nn.compact
    def __call__(self, x):
        X, Y, Z = x.shape[1:4]
        p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)), mode="wrap")
        cols = [p[:, i:i + X, j:j + Y, k:k + Z] for i in range(3) for j in range(3) for k in range(3)]
        return nn.Dense(self.features)(jnp.concatenate(cols, -1))


class _ResBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        return x + CircularConv(self.features)(nn.silu(nn.LayerNorm()(x)))


class VoxelEncoder(nn.Module):
    """(B, G, G, G, C) -> (B, out). Grid size must be divisible by 8."""

    width: int = 32
    out: int = 256

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.width)(space_to_depth(x, 4))  # = conv 4^3, stride 4
        h = _ResBlock(self.width)(h)
        h = nn.Dense(2 * self.width)(nn.silu(space_to_depth(h, 2)))  # = conv 2^3, stride 2
        h = _ResBlock(2 * self.width)(h)
        h = nn.silu(nn.LayerNorm()(h))
        return nn.Dense(self.out)(h.reshape(h.shape[0], -1))


class VoxelDecoder(nn.Module):
    """(B, latent) -> (B, G, G, G, channels); mirror of :class:`VoxelEncoder`."""

    grid: int = 32
    channels: int = 3
    width: int = 32

    @nn.compact
    def __call__(self, z):
        s = self.grid // 8
        h = nn.Dense(s ** 3 * 2 * self.width)(z).reshape(z.shape[0], s, s, s, 2 * self.width)
        h = _ResBlock(2 * self.width)(h)
        h = depth_to_space(nn.Dense(8 * self.width)(nn.silu(h)), 2)  # = transposed conv 2^3, stride 2
        h = _ResBlock(self.width)(h)
        h = _ResBlock(self.width)(h)
        h = nn.silu(nn.LayerNorm()(h))
        return depth_to_space(nn.Dense(64 * self.channels)(h), 4)  # = transposed conv 4^3, stride 4
