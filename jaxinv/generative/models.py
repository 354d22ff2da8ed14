"""The generative networks (flax.linen): coordinate VAE, voxel VAE, coordinate WGAN.

All take an optional condition vector ``cond`` (B, cond_dim): target properties
(conditional VAE/GAN) or a composition (composition-conditioned GAN). VAEs carry
a property head on the latent code, trained jointly, which latent-space
optimization differentiates through.

Networks see normalized inputs: lattice parameters standardized by a
:class:`~jaxinv.generative.coords.LatticeScaler`, fractional coordinates as
unit vectors (cos 2 pi f, sin 2 pi f) per axis (continuous across cell faces),
element classes as one-hot vectors (class 0 = empty slot).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxinv.generative.nets import MLP, PointNetCritic, SetEncoder, VoxelDecoder, VoxelEncoder

__all__ = ["CoordVAE", "VoxelVAE", "CoordGenerator", "CoordCritic", "frac_to_vec", "vec_to_frac"]

TWO_PI = 2.0 * jnp.pi


def frac_to_vec(frac):
    """(..., 3) fractional coordinates -> (..., 3, 2) unit vectors (cos, sin)."""
    a = TWO_PI * frac
    return jnp.stack([jnp.cos(a), jnp.sin(a)], -1)


def vec_to_frac(vec):
    """(..., 3, 2) vectors (any length) -> (..., 3) fractional coordinates in [0, 1)."""
    return jnp.mod(jnp.arctan2(vec[..., 1], vec[..., 0]) / TWO_PI, 1.0)


def _with_cond(x, cond):
    return x if cond is None else jnp.concatenate([x, cond], -1)


class _Heads(nn.Module):
    """Decoder output heads of the coordinate models: lattice, positions, species."""

    n_slots: int
    n_classes: int

    @nn.compact
    def __call__(self, h):
        B = h.shape[0]
        return {"lattice": nn.Dense(6)(h),
                "frac_vec": nn.Dense(self.n_slots * 6)(h).reshape(B, self.n_slots, 3, 2),
                "logits": nn.Dense(self.n_slots * self.n_classes)(h).reshape(B, self.n_slots, self.n_classes)}


class CoordVAE(nn.Module):
    """VAE on the coordinate representation: a permutation-invariant set encoder
    and an MLP decoder emitting every slot (in canonical order) at once."""

    n_slots: int
    n_classes: int
    latent: int = 32
    hidden: int = 256
    enc_hidden: int = 128
    n_props: int = 0
    cond_dim: int = 0
    encoder_type: str = "set"

    def setup(self):
        self.encoder = (SetEncoder(hidden=self.enc_hidden, out=self.hidden) if self.encoder_type == "set"
                        else MLP((self.hidden, self.hidden), layer_norm=True))
        self.stats = nn.Dense(2 * self.latent)
        self.decoder = MLP((self.hidden,) * 3, layer_norm=True)
        self.decoder_act = nn.silu
        self.heads = _Heads(self.n_slots, self.n_classes)
        self.count = nn.Dense(self.n_slots)  # number of atoms, 1..n_slots, predicted first (as CDVAE does)
        if self.n_props:
            self.head = MLP((128, 128, self.n_props))

    def encode(self, lattice, frac, species, cond=None):
        """Normalized lattice (B, 6), frac (B, N, 3), classes (B, N) -> (mu, logvar)."""
        slots = jnp.concatenate([jax.nn.one_hot(species, self.n_classes),
                                 frac_to_vec(frac).reshape(frac.shape[:2] + (6,))], -1)
        if self.encoder_type == "set":
            h = self.encoder(slots, species > 0, _with_cond(lattice, cond))
        else:  # canonical slot order makes a flat MLP a valid (and faster) encoder
            h = self.encoder(jnp.concatenate([slots.reshape(slots.shape[0], -1), _with_cond(lattice, cond)], -1))
        mu, logvar = jnp.split(self.stats(nn.silu(h)), 2, -1)
        return mu, jnp.clip(logvar, -12.0, 6.0)

    def decode(self, z, cond=None):
        """Latent (B, latent) -> {'lattice' (B, 6), 'frac_vec' (B, N, 3, 2), 'logits' (B, N, K),
        'count_logits' (B, N): scores of 1..N atoms}."""
        h = self.decoder_act(self.decoder(_with_cond(z, cond)))
        return dict(self.heads(h), count_logits=self.count(h))

    def predict(self, z):
        """Property head: latent -> normalized properties (B, n_props)."""
        return self.head(z)

    def __call__(self, lattice, frac, species, key, cond=None):
        mu, logvar = self.encode(lattice, frac, species, cond)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape)
        out = dict(self.decode(z, cond), mu=mu, logvar=logvar, z=z)
        if self.n_props:
            out["props"] = self.predict(z)
        return out


class VoxelVAE(nn.Module):
    """VAE on voxel images (periodic 3D convolutions), lattice parameters carried
    beside the image: encoded with it and decoded from the latent by an MLP.

    With ``n_slots`` > 0 a composition head also predicts the crystal's element
    multiset as ``n_slots`` class scores (class 0 = no atom, targets sorted by class),
    so decoding knows how many peaks to keep and which elements to give them: the
    two descriptor channels alone cannot name one of dozens of elements precisely.
    """

    grid: int = 32
    channels: int = 3
    latent: int = 64
    width: int = 32
    hidden: int = 256
    n_props: int = 0
    cond_dim: int = 0
    n_slots: int = 0
    n_classes: int = 0

    def setup(self):
        self.encoder = VoxelEncoder(self.width, self.hidden)
        self.enc_mlp = MLP((self.hidden, 2 * self.latent))
        self.dec_image = VoxelDecoder(self.grid, self.channels, self.width)
        self.dec_lattice = MLP((self.hidden, self.hidden, 6))
        if self.n_slots:
            self.dec_composition = MLP((self.hidden, self.n_slots * self.n_classes))
        if self.n_props:
            self.head = MLP((128, 128, self.n_props))

    def encode(self, image, lattice, cond=None):
        h = nn.silu(self.encoder(image))
        mu, logvar = jnp.split(self.enc_mlp(_with_cond(jnp.concatenate([h, lattice], -1), cond)), 2, -1)
        return mu, jnp.clip(logvar, -12.0, 6.0)

    def decode(self, z, cond=None):
        zc = _with_cond(z, cond)
        out = {"image": self.dec_image(zc), "lattice": self.dec_lattice(zc)}
        if self.n_slots:
            out["composition_logits"] = self.dec_composition(zc).reshape(z.shape[0], self.n_slots, self.n_classes)
        return out

    def predict(self, z):
        return self.head(z)

    def __call__(self, image, lattice, key, cond=None):
        mu, logvar = self.encode(image, lattice, cond)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape)
        out = dict(self.decode(z, cond), mu=mu, logvar=logvar, z=z)
        if self.n_props:
            out["props"] = self.predict(z)
        return out


class CoordGenerator(nn.Module):
    """WGAN generator: noise (+ condition) -> lattice, unit position vectors and
    one-hot species. Species are sampled with the straight-through Gumbel-softmax:
    exactly one-hot forward (so the critic cannot tell fakes by their softness),
    softmax gradients backward."""

    n_slots: int
    n_classes: int
    hidden: int = 256
    tau: float = 1.0

    @nn.compact
    def __call__(self, z, key, cond=None):
        h = nn.silu(MLP((self.hidden,) * 3, layer_norm=True)(_with_cond(z, cond)))
        out = _Heads(self.n_slots, self.n_classes)(h)
        vec = out["frac_vec"]
        vec = vec / jnp.sqrt((vec ** 2).sum(-1, keepdims=True) + 1e-6)
        logits = out["logits"]
        g = jax.random.gumbel(key, logits.shape)
        soft = jax.nn.softmax((logits + g) / self.tau)
        hard = jax.nn.one_hot(jnp.argmax(soft, -1), self.n_classes)
        probs = hard + soft - jax.lax.stop_gradient(soft)
        return {"lattice": out["lattice"], "frac_vec": vec, "probs": probs, "logits": logits}


class CoordCritic(nn.Module):
    """WGAN critic on (lattice, position vectors, species one-hots): PointNet over
    slots, so the score does not depend on slot order."""

    hidden: int = 128
    layers: int = 3

    @nn.compact
    def __call__(self, lattice, frac_vec, probs, cond=None):
        B, N = probs.shape[:2]
        slots = jnp.concatenate([frac_vec.reshape(B, N, 6), probs], -1)
        occ = 1.0 - probs[..., 0]
        return PointNetCritic(self.hidden, self.layers)(slots, occ, _with_cond(lattice, cond))
