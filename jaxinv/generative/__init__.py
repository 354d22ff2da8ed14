"""Generative models of crystals: voxel and coordinate VAEs, a coordinate WGAN-GP,
conditional variants, and latent-space optimization toward target properties.

Modules, from data to design:

* :mod:`.species`: element vocabularies and descriptors;
* :mod:`.coords`, :mod:`.voxel`: the two invertible representations;
* :mod:`.symmetry`: lattice-automorphism and origin-shift augmentation;
* :mod:`.nets`, :mod:`.models`: flax.linen networks;
* :mod:`.model`: :class:`GenerativeModel`, the bundle of representation,
  normalization and networks, with ``generate`` / ``encode`` / ``decode``;
* :mod:`.steps`, :mod:`.train`: pure jitted train steps and the training loop
  (validation, orbax checkpoints, exact resume);
* :mod:`.latent`, :mod:`.design`: latent-space optimization and its checks;
* :mod:`.evaluation`: CDVAE metrics through :mod:`jaxinv.metrics`.

Command line: ``jaxinv run train_generative``, ``jaxinv run generate``,
``jaxinv run optimize_latent``.
"""
from jaxinv.generative.coords import CoordSpec, decode_coords, encode_coords
from jaxinv.generative.latent import Objective, optimize_latent, parse_objectives
from jaxinv.generative.model import GenerativeModel, ModelConfig, load_model
from jaxinv.generative.species import Vocabulary
from jaxinv.generative.steps import TrainState, init_state, make_train_step
from jaxinv.generative.train import TrainConfig, train
from jaxinv.generative.voxel import VoxelSpec, decode_voxels, voxelize

__all__ = ["CoordSpec", "decode_coords", "encode_coords", "Objective", "optimize_latent", "parse_objectives",
           "GenerativeModel", "ModelConfig", "load_model", "Vocabulary", "TrainState", "init_state",
           "make_train_step", "TrainConfig", "train", "VoxelSpec", "decode_voxels", "voxelize"]
