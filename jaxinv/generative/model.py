"""A generative model bundle: hyperparameters, representation, normalization,
flax module(s) and the host-side calls that turn latents into crystals.

:class:`GenerativeModel` holds everything except the parameters (a pytree
passed explicitly, jax style), and saves itself as ``model.json`` plus
``model_arrays.npz`` (the pool of training conditions) so that a checkpoint
directory is enough to sample: see :func:`load_model`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

import jax
import jax.numpy as jnp

from jaxinv.crystal import Crystal
from jaxinv.generative.coords import (CoordSpec, LatticeScaler, decode_coords, encode_coords, lattice_to_params,
                                      params_to_lattice)
from jaxinv.generative.models import CoordCritic, CoordGenerator, CoordVAE, VoxelVAE, vec_to_frac
from jaxinv.generative.species import Vocabulary
from jaxinv.generative.symmetry import automorphism_table
from jaxinv.generative.voxel import VoxelSpec, decode_voxels, voxelize

__all__ = ["ModelConfig", "GenerativeModel", "load_model", "DEFAULT_PROPERTIES", "KINDS"]

KINDS = ("coord_vae", "voxel_vae", "coord_gan")
CONDITIONS = ("none", "property", "composition")

#: properties modelled by default (property head / condition), per dataset
DEFAULT_PROPERTIES = {"perov_5": ["heat_ref", "dir_gap"], "carbon_24": ["energy_per_atom"],
                      "mp_20": ["formation_energy_per_atom", "band_gap"]}


@dataclass
class ModelConfig:
    """Hyperparameters of a generative model (the Hydra ``model`` group schema)."""

    kind: str = "coord_vae"  # coord_vae | voxel_vae | coord_gan
    condition: str = "none"  # none | property | composition (composition: GANs only)
    properties: list = field(default_factory=list)  # [] = the dataset's defaults (DEFAULT_PROPERTIES)
    property_head: bool = True  # VAEs: joint property head on the latent
    latent: int = 32  # latent dimension
    hidden: int = 256  # decoder / generator width
    encoder: str = "set"  # coordinate VAE encoder: set (permutation-invariant) | mlp (on canonical slots)
    enc_hidden: int = 128  # coordinate VAE set encoder width
    width: int = 32  # voxel VAE convolution channels
    grid: int = 32  # voxel grid points per axis (divisible by 8)
    sigma: float = 0.26  # voxel Gaussian width (Å)
    # (False in the dataclass so that run folders saved before the head existed still load;
    # train_generative.yaml sets it)
    composition_head: bool = False  # voxel VAE: predict the element multiset; decode that many peaks, of those elements
    critic_hidden: int = 128  # GAN critic width
    niggli: bool = False  # Niggli-reduce cells before encoding
    # losses
    beta: float = 0.01  # KL weight (after warm-up)
    kl_warmup: int = 1000  # steps of linear KL warm-up
    matching: bool = True  # coordinate VAE: slot-permutation-invariant loss (Hungarian matching)
    w_lattice: float = 1.0  # loss weight: lattice parameters
    w_frac: float = 10.0  # loss weight: fractional coordinates
    w_species: float = 1.0  # loss weight: species
    w_image: float = 1.0  # loss weight: voxel image
    w_property: float = 1.0  # loss weight: property head
    gp_weight: float = 10.0  # WGAN-GP gradient penalty weight
    n_critic: int = 5  # critic steps per generator step
    # optimization
    lr: float = 1e-3  # learning rate
    lr_critic: float = 1e-4  # critic learning rate
    grad_clip: float = 1.0  # global gradient-norm clip
    # augmentation
    augment_ops: bool = True  # random lattice automorphisms (rigid rotations that keep the cell)
    augment_shift: bool = False  # random origin shifts (whole voxels for voxel models)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ModelConfig":
        """From a dict (e.g. a resolved OmegaConf node); unknown keys raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}")
        return cls(**{k: (list(v) if k == "properties" else v) for k, v in d.items()})

    def validate(self):
        if self.kind not in KINDS:
            raise ValueError(f"model.kind must be one of {KINDS}, not {self.kind!r}")
        if self.condition not in CONDITIONS:
            raise ValueError(f"model.condition must be one of {CONDITIONS}, not {self.condition!r}")
        if self.condition == "composition" and self.kind != "coord_gan":
            raise ValueError("composition conditioning is implemented for coord_gan only")
        if self.kind == "voxel_vae" and self.grid % 8:
            raise ValueError(f"model.grid must be divisible by 8 (got {self.grid})")


class GenerativeModel:
    """Representation + normalization + networks of one generative model.

    Build one from a training set with :meth:`from_dataset`, initialize
    parameters with :meth:`init`, train with :mod:`jaxinv.generative.train`, then
    :meth:`generate`, :meth:`encode`, :meth:`decode`, :meth:`reconstruct` and
    :meth:`predict` crystals and properties.
    """

    def __init__(self, config: ModelConfig, vocab: Vocabulary, n_slots: int, lattice_scaler: LatticeScaler,
                 properties: Sequence[str], prop_mean: Sequence[float], prop_std: Sequence[float],
                 cond_pool: np.ndarray | None = None, dataset: str = ""):
        config.validate()
        self.config = config
        self.vocab = vocab
        self.n_slots = int(n_slots)
        self.lattice_scaler = lattice_scaler
        self.properties = list(properties)
        self.prop_mean = np.asarray(prop_mean, np.float64).reshape(-1)
        self.prop_std = np.asarray(prop_std, np.float64).reshape(-1)
        self.cond_pool = None if cond_pool is None else np.asarray(cond_pool, np.float32)
        self.dataset = dataset
        self.coord_spec = CoordSpec(self.n_slots, vocab, config.niggli)
        self.voxel_spec = VoxelSpec(vocab, config.grid, config.sigma)
        c = config
        n_props = len(self.properties) if (c.property_head and c.kind != "coord_gan") else 0
        if c.kind == "coord_vae":
            self.module = CoordVAE(self.n_slots, vocab.n_classes, c.latent, c.hidden, c.enc_hidden, n_props,
                                   self.cond_dim, c.encoder)
        elif c.kind == "voxel_vae":
            self.module = VoxelVAE(c.grid, self.voxel_spec.channels, c.latent, c.width, c.hidden, n_props,
                                   self.cond_dim, self.n_slots if c.composition_head else 0, vocab.n_classes)
        else:
            self.module = CoordGenerator(self.n_slots, vocab.n_classes, c.hidden)
            self.critic = CoordCritic(c.critic_hidden)
        self.n_props = n_props
        self.jit_cache: dict = {}  # jitted train/eval steps, built once per model (see steps.py)

    # ------------------------------------------------------------ properties
    @property
    def is_vae(self) -> bool:
        return self.config.kind != "coord_gan"

    @property
    def cond_dim(self) -> int:
        if self.config.condition == "property":
            return len(self.properties)
        if self.config.condition == "composition":
            return len(self.vocab)
        return 0

    @property
    def latent_dim(self) -> int:
        return self.config.latent

    # ---------------------------------------------------------------- build
    @classmethod
    def from_dataset(cls, config: ModelConfig, train, properties: Sequence[str] | None = None,
                     vocab: Vocabulary | None = None, n_slots: int | None = None) -> "GenerativeModel":
        """Fit vocabulary, slot count, lattice and property normalization on ``train``
        (``vocab`` and ``n_slots`` may be given, e.g. from a larger training split)."""
        config.validate()
        props = list(properties or config.properties or DEFAULT_PROPERTIES.get(train.name, sorted(train.labels)))
        missing = [p for p in props if p not in train.labels]
        if missing:
            raise ValueError(f"properties {missing} are not labels of {train.name} (labels: {sorted(train.labels)})")
        vocab = vocab or Vocabulary.from_dataset(train)
        n_slots = int(n_slots or train.n_atoms.max())
        lat = lattice_to_params(train.lattice)
        y = np.stack([train.labels[p] for p in props], -1) if props else np.zeros((len(train), 0))
        mean, std = y.mean(0), np.maximum(y.std(0), 1e-6)
        model = cls(config, vocab, n_slots, LatticeScaler.fit(lat), props, mean, std, dataset=train.name)
        if model.cond_dim:
            model.cond_pool = model.conditions_of(train.crystal(bucket=False))
        return model

    def init(self, key) -> Any:
        """Fresh parameters (for a GAN: ``{'gen': ..., 'critic': ...}``)."""
        B, N, K = 2, self.n_slots, self.vocab.n_classes
        cond = jnp.zeros((B, self.cond_dim)) if self.cond_dim else None
        k1, k2, k3 = jax.random.split(key, 3)
        if self.config.kind == "coord_vae":
            return self.module.init(k1, jnp.zeros((B, 6)), jnp.zeros((B, N, 3)), jnp.zeros((B, N), jnp.int32), k2,
                                    cond)
        if self.config.kind == "voxel_vae":
            G, C = self.config.grid, self.voxel_spec.channels
            return self.module.init(k1, jnp.zeros((B, G, G, G, C)), jnp.zeros((B, 6)), k2, cond)
        gen = self.module.init(k1, jnp.zeros((B, self.latent_dim)), k2, cond)
        critic = self.critic.init(k3, jnp.zeros((B, 6)), jnp.zeros((B, N, 3, 2)), jnp.zeros((B, N, K)), cond)
        return {"gen": gen, "critic": critic}

    # ------------------------------------------------------------ data prep
    def supported(self, dataset) -> np.ndarray:
        """(M,) which crystals of a dataset the model can represent (known elements,
        at most ``n_slots`` atoms)."""
        known = np.isin(dataset.numbers, self.vocab.numbers)
        ok_atoms = np.array([known[a:b].all() for a, b in zip(dataset.offsets[:-1], dataset.offsets[1:])], bool)
        return ok_atoms & (dataset.n_atoms <= self.n_slots)

    def arrays(self, dataset, progress: bool = False) -> dict:
        """Host arrays of a dataset for training / evaluation (one row per structure)."""
        crystal = dataset.crystal(bucket=False)
        rep = encode_coords(crystal, self.coord_spec)
        # automorphisms depend on the metric only, the same for the input and the decoded cell
        ops, counts = automorphism_table(params_to_lattice(rep["lattice"]))
        out = {"lattice": rep["lattice"].astype(np.float32), "frac": rep["frac"].astype(np.float32),
               "species": rep["species"], "ops": ops.astype(np.int8), "n_ops": counts,
               "props": self.normalize_properties(
                   np.stack([dataset.labels[p] for p in self.properties], -1) if self.properties
                   else np.zeros((len(dataset), 0))).astype(np.float32)}
        if self.config.kind == "voxel_vae":
            # voxelize the (possibly Niggli-reduced) cells the lattice parameters describe
            c = decode_coords(rep, self.vocab)
            out["image"] = voxelize(c, self.voxel_spec, dtype=np.float16)
        if self.cond_dim:
            out["cond"] = self.conditions_of(crystal, out["props"])
        return out

    def conditions_of(self, crystal: Crystal, props_normalized: np.ndarray | None = None) -> np.ndarray:
        """The condition vectors of known crystals: normalized properties or compositions."""
        if self.config.condition == "property":
            if props_normalized is None:
                props_normalized = self.normalize_properties(np.stack([crystal.labels[p] for p in self.properties], -1))
            return np.asarray(props_normalized, np.float32)
        if self.config.condition == "composition":
            c = crystal.to_host()
            classes = self.vocab.classes(np.where(c.mask, c.numbers, 0))
            counts = np.stack([(classes == k + 1).sum(1) for k in range(len(self.vocab))], -1)
            return (counts / np.maximum(counts.sum(1, keepdims=True), 1)).astype(np.float32)
        return np.zeros((len(crystal), 0), np.float32)

    def normalize_properties(self, y) -> np.ndarray:
        return (np.asarray(y, np.float64) - self.prop_mean) / self.prop_std

    def denormalize_properties(self, y) -> np.ndarray:
        return np.asarray(y, np.float64) * self.prop_std + self.prop_mean

    def condition(self, n: int, targets=None, seed: int = 0) -> np.ndarray | None:
        """(n, cond_dim) condition vectors, or None for an unconditional model.

        ``targets``: a mapping property -> value (physical units) or an (n, P)
        array for property conditioning; a formula / pymatgen Composition (or a
        list of n) for composition conditioning; None draws conditions of random
        training crystals (the model then samples the data distribution).
        """
        if not self.cond_dim:
            if targets is not None:
                raise ValueError("this model is unconditional; it takes no targets")
            return None
        if targets is None:
            rng = np.random.default_rng(seed)
            return self.cond_pool[rng.integers(0, len(self.cond_pool), n)]
        if self.config.condition == "property":
            if isinstance(targets, Mapping):
                missing = [p for p in self.properties if p not in targets]
                if missing:
                    raise ValueError(f"targets must give every conditioning property; missing {missing}")
                y = np.array([[float(targets[p]) for p in self.properties]] * n)
            else:
                y = np.asarray(targets, np.float64)
                y = np.broadcast_to(y, (n, len(self.properties))) if y.ndim == 1 else y
            if y.shape != (n, len(self.properties)):
                raise ValueError(f"property targets must have shape ({n}, {len(self.properties)}); got {y.shape}")
            return self.normalize_properties(y).astype(np.float32)
        from pymatgen.core import Composition

        comps = [targets] * n if isinstance(targets, (str, Composition)) else list(targets)
        if len(comps) != n:
            raise ValueError(f"need {n} compositions, got {len(comps)}")
        out = np.zeros((n, len(self.vocab)), np.float32)
        for i, comp in enumerate(comps):
            comp = Composition(comp)
            for el, amt in comp.items():
                out[i, self.vocab.classes(np.array([el.Z]))[0] - 1] = amt / comp.num_atoms
        return out

    # ----------------------------------------------------- jitted functions
    @functools.cached_property
    def _decode_fn(self):
        if self.config.kind == "coord_gan":
            return jax.jit(lambda p, z, key, cond: self.module.apply(p["gen"], z, key, cond))
        return jax.jit(lambda p, z, key, cond: self.module.apply(p, z, cond, method="decode"))

    @functools.cached_property
    def _encode_fn(self):
        if self.config.kind == "coord_vae":
            return jax.jit(lambda p, lat, frac, sp, cond: self.module.apply(p, lat, frac, sp, cond, method="encode"))
        if self.config.kind == "voxel_vae":
            return jax.jit(lambda p, img, lat, cond: self.module.apply(p, img, lat, cond, method="encode"))
        raise TypeError("a GAN has no encoder")

    @functools.cached_property
    def _predict_fn(self):
        return jax.jit(lambda p, z: self.module.apply(p, z, method="predict"))

    # ------------------------------------------------------------- host API
    def outputs_to_crystals(self, out: Mapping, threshold: float = 0.25) -> Crystal:
        """Network outputs -> a host :class:`Crystal` batch (argmax species, clipped cells)."""
        lat = self.lattice_scaler.inverse(np.asarray(out["lattice"], np.float64))
        lat[:, :3] = np.clip(lat[:, :3], 1.0, 100.0)
        lat[:, 3:] = np.clip(lat[:, 3:], 20.0, 160.0)
        if self.config.kind == "voxel_vae":
            image = np.asarray(out["image"], np.float32)
            species = None
            if "composition_logits" in out:
                classes = np.asarray(out["composition_logits"]).argmax(-1)
                species = np.where(classes > 0, np.asarray((0,) + self.vocab.numbers)[classes], 0)
            return decode_voxels(image, params_to_lattice(lat), self.voxel_spec, threshold=threshold,
                                 n_max=self.n_slots, species=species)
        frac = np.asarray(vec_to_frac(out["frac_vec"]), np.float64)
        scores = np.asarray(out["probs"] if "probs" in out else out["logits"])
        if "count_logits" in out:
            scores = _fix_count(scores, np.asarray(out["count_logits"]).argmax(-1) + 1)
        return decode_coords({"lattice": lat, "frac": frac, "species": scores}, self.vocab)

    def decode(self, params, z, cond=None, key=None, batch_size: int = 1024) -> Crystal:
        """Latent codes (n, latent) -> crystals (host), in batches."""
        z = np.asarray(z, np.float32)
        key = jax.random.PRNGKey(0) if key is None else key
        parts = []
        for start in range(0, len(z), batch_size):
            zb = z[start:start + batch_size]
            cb = None if cond is None else jnp.asarray(cond[start:start + batch_size])
            n = len(zb)
            if n < batch_size and len(z) > batch_size:  # keep one compiled shape
                zb = np.concatenate([zb, np.zeros((batch_size - n, zb.shape[1]), np.float32)])
                cb = None if cb is None else jnp.concatenate([cb, jnp.zeros((batch_size - n,) + cb.shape[1:])])
            out = self._decode_fn(params, jnp.asarray(zb), jax.random.fold_in(key, start), cb)
            out = jax.tree_util.tree_map(lambda x: np.asarray(x)[:n], out)
            parts.append(self.outputs_to_crystals(out))
        return Crystal.concatenate(parts) if len(parts) > 1 else parts[0]

    def generate(self, params, key, n: int, targets=None, batch_size: int = 1024, seed: int = 0) -> Crystal:
        """``n`` new crystals from the prior (see :meth:`condition` for ``targets``)."""
        k_z, k_dec = jax.random.split(key)
        z = np.asarray(jax.random.normal(k_z, (n, self.latent_dim)))
        cond = self.condition(n, targets, seed)
        return self.decode(params, z, cond, k_dec, batch_size)

    def _inputs(self, crystal: Crystal) -> dict:
        rep = encode_coords(crystal, self.coord_spec)
        lat_n = self.lattice_scaler.transform(rep["lattice"]).astype(np.float32)
        if self.config.kind == "voxel_vae":
            img = voxelize(decode_coords(rep, self.vocab), self.voxel_spec)
            return {"image": img, "lattice": lat_n}
        return {"lattice": lat_n, "frac": rep["frac"].astype(np.float32), "species": rep["species"]}

    def encode(self, params, crystal: Crystal, cond=None, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(mu, logvar) of known crystals (VAEs). Conditional VAEs take the crystals'
        own labels as condition unless ``cond`` is given."""
        if cond is None and self.cond_dim:
            cond = self.conditions_of(crystal)
        mus, logvars = [], []
        for start in range(0, len(crystal), batch_size):
            part = self._inputs(crystal[start:start + batch_size])
            cb = None if cond is None else jnp.asarray(cond[start:start + batch_size])
            if self.config.kind == "coord_vae":
                mu, lv = self._encode_fn(params, part["lattice"], part["frac"], part["species"], cb)
            else:
                mu, lv = self._encode_fn(params, part["image"], part["lattice"], cb)
            mus.append(np.asarray(mu))
            logvars.append(np.asarray(lv))
        return np.concatenate(mus), np.concatenate(logvars)

    def reconstruct(self, params, crystal: Crystal, cond=None) -> Crystal:
        """Encode (posterior mean) and decode known crystals."""
        if cond is None and self.cond_dim:
            cond = self.conditions_of(crystal)
        mu, _ = self.encode(params, crystal, cond)
        return self.decode(params, mu, cond)

    def predict(self, params, z) -> np.ndarray:
        """Property head on latents -> (n, P) properties in physical units."""
        if not self.n_props:
            raise TypeError("this model has no property head")
        return self.denormalize_properties(np.asarray(self._predict_fn(params, jnp.asarray(z, jnp.float32))))

    # ----------------------------------------------------------- save/load
    def to_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "vocab": self.vocab.to_list(), "n_slots": self.n_slots,
                "lattice_scaler": self.lattice_scaler.to_dict(), "properties": self.properties,
                "prop_mean": self.prop_mean.tolist(), "prop_std": self.prop_std.tolist(), "dataset": self.dataset}

    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "model.json").write_text(json.dumps(self.to_dict(), indent=2))
        if self.cond_pool is not None:
            np.savez(directory / "model_arrays.npz", cond_pool=self.cond_pool)
        return directory / "model.json"

    @classmethod
    def from_dict(cls, d: dict, cond_pool=None) -> "GenerativeModel":
        return cls(ModelConfig.from_dict(d["config"]), Vocabulary.from_list(d["vocab"]), d["n_slots"],
                   LatticeScaler.from_dict(d["lattice_scaler"]), d["properties"], d["prop_mean"], d["prop_std"],
                   cond_pool, d.get("dataset", ""))


def _fix_count(logits: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """Class indices with exactly ``n_atoms`` occupied slots per crystal: the slots
    least likely to be empty, each taking its most likely element."""
    logp = logits - logits.max(-1, keepdims=True)
    p_empty = np.exp(logp[..., 0]) / np.exp(logp).sum(-1)
    rank = np.argsort(np.argsort(p_empty, axis=1, kind="stable"), axis=1, kind="stable")
    element = logits[..., 1:].argmax(-1) + 1
    return np.where(rank < n_atoms[:, None], element, 0)


def load_model(directory) -> tuple[GenerativeModel, Any]:
    """(model, params) from a training run folder (or its ``checkpoint`` folder).

    Reads ``model.json`` and restores the latest checkpoint's parameters.
    """
    from flax import serialization

    from jaxinv.checkpoint import Checkpointer

    directory = Path(directory)
    if not (directory / "model.json").exists() and (directory / "checkpoint" / "model.json").exists():
        directory = directory / "checkpoint"
    meta = directory / "model.json"
    if not meta.exists():
        raise FileNotFoundError(f"no model.json in {directory}: point model= at a train_generative run folder")
    arrays = directory / "model_arrays.npz"
    pool = np.load(arrays)["cond_pool"] if arrays.exists() else None
    model = GenerativeModel.from_dict(json.loads(meta.read_text()), pool)
    # keep the run's fingerprint (a Checkpointer rewrites it), so the run can still be resumed
    fp = directory / "fingerprint.json"
    ckpt = Checkpointer(directory, json.loads(fp.read_text()).get("fingerprint", "") if fp.exists() else "")
    restored = ckpt.restore()
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    _, tree = restored
    template = model.init(jax.random.PRNGKey(0))
    params = serialization.from_state_dict(template, tree["state"]["params"])
    return model, params
