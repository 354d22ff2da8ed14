"""Train a generative model (coordinate VAE, voxel VAE or coordinate WGAN-GP,
optionally conditional) on a dataset's training split, then sample and score it.

    jaxinv run train_generative                                  # coordinate VAE, perov_5
    jaxinv run train_generative model=voxel_vae
    jaxinv run train_generative model=coord_gan data=carbon_24
    jaxinv run train_generative model=coord_cvae train.steps=2000
    jaxinv run train_generative out_dir=outputs/train_generative/<run>   # resume that run

Model presets live in ``jaxinv/configs/generative/model/`` (coord_vae, coord_cvae,
voxel_vae, voxel_cvae, coord_gan, coord_cgan, coord_gan_comp); any field can be
overridden (``model.latent=64``). The run folder gets ``checkpoint/`` (orbax
state, ``model.json``: everything ``jaxinv run generate model=<run folder>``
needs), ``metrics.jsonl`` (validation records), ``train_losses.jsonl`` (training
losses, means over blocks of steps), ``learning_curve.png`` (training and
validation losses against the step), ``samples/`` (CIF and extxyz) and
``results.json`` (CDVAE metrics of the samples against the test split).

Validation while training: losses on the valid split, validity of a few
hundred samples and (VAEs) the reconstruction match rate of valid crystals.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from jaxinv.config import (CONFIG_DIR, DataConfig, Rule, RunConfig, at_least, checked, constrain, non_negative,
                           one_of, positive)
from jaxinv.generative.diffusion import DENOISERS
from jaxinv.generative.diffusion import MODES as DIFFUSION_MODES
from jaxinv.generative.diffusion import DiffusionConfig
from jaxinv.generative.model import CONDITIONS, KINDS, ModelConfig
from jaxinv.generative.train import TrainConfig

# The model presets are a config group named ``model`` that only this experiment
# sees (``generate`` uses ``model=`` for a run folder), so they live outside the
# shared jaxinv/configs/ search path and are added to it by train_generative.yaml.
os.environ.setdefault("JAXINV_GENERATIVE_CONFIGS", str(CONFIG_DIR / "generative"))

log = logging.getLogger("jaxinv.generative")


# The model and train sections are library dataclasses; their rules are declared here.
constrain(
    ModelConfig,
    kind=one_of(*KINDS, "diffcsp"),  # diffcsp: the diffusion model, configured by the diffusion section
    condition=(one_of(*CONDITIONS), Rule(lambda v, m: "composition conditioning is implemented for coord_gan only"
                                         if v == "composition" and m.kind != "coord_gan" else None,
                                         "composition: coord_gan only")),
    latent=at_least(1), hidden=at_least(1), encoder=one_of("set", "mlp"), enc_hidden=at_least(1),
    width=at_least(1), critic_hidden=at_least(1), sigma=positive, beta=non_negative, kl_warmup=non_negative,
    grid=(at_least(8), Rule(lambda v, m: f"must be divisible by 8 (got {v})" if v % 8 else None, "divisible by 8")),
    w_lattice=non_negative, w_frac=non_negative, w_species=non_negative, w_image=non_negative,
    w_property=non_negative, gp_weight=non_negative, n_critic=at_least(1), lr=positive, lr_critic=positive,
    grad_clip=positive,
)
constrain(
    DiffusionConfig,
    mode=one_of(*DIFFUSION_MODES), hidden=at_least(1), layers=at_least(1), n_frequencies=at_least(1),
    time_dim=(at_least(2), Rule(lambda v, m: f"must be even (got {v})" if v % 2 else None, "even")),
    n_steps=at_least(2), sigma_min=positive,
    sigma_max=(positive, Rule(lambda v, m: f"must exceed sigma_min ({m.sigma_min})" if v <= m.sigma_min else None,
                              "> sigma_min")),
    cosine_offset=positive, n_images=at_least(1), corrector_steps=non_negative, corrector_lr=positive,
    w_lattice=non_negative, w_frac=non_negative, w_types=non_negative, lr=positive, grad_clip=positive,
    lattice_clip=positive,
    p_uncond=Rule(lambda v, m: f"must be in [0, 1) (got {v})" if not 0 <= v < 1 else None, "in [0, 1)"),
    denoiser=one_of(*DENOISERS), cutoff=positive, image_range=at_least(1), n_rbf=at_least(2),
)
constrain(TrainConfig, steps=non_negative, batch_size=at_least(1), eval_every=non_negative, eval_size=at_least(1),
          checkpoint_every_s=positive, time_limit_min=non_negative)


@dataclass
class Config(RunConfig):
    """Fields and their meanings: jaxinv/configs/train_generative.yaml (``jaxinv run train_generative --help``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)  # used by model=diffcsp only
    train: TrainConfig = field(default_factory=TrainConfig)
    check_samples: int = checked(256, non_negative)
    check_recon: int = checked(128, non_negative)
    n_samples: int = checked(1000, non_negative)
    n_cif: int = checked(100, non_negative)
    evaluate: bool = True
    n_jobs: int = checked(2, at_least(1))


def main(cfg, run):
    import jax

    from jaxinv.data import load_dataset
    from jaxinv.generative.evaluation import generation_metrics, quick_check, reconstruction_metrics, sample_timed
    from jaxinv.generative.model import GenerativeModel
    from jaxinv.generative.species import Vocabulary
    from jaxinv.generative.steps import read_loss_log, record_losses
    from jaxinv.generative.train import train
    from jaxinv.io import write_cifs, write_extxyz
    from jaxinv.plotting import generative_learning_curve
    from omegaconf import OmegaConf

    if cfg.data.split not in (None, "train"):
        raise ValueError("train_generative trains on the train split and validates on valid; leave data.split unset")
    if cfg.model.kind == "diffcsp":
        return train_diffusion(cfg, run)
    ds = load_dataset(cfg.data.name)
    splits = {s: ds.subset(s) for s in ("train", "valid", "test")}
    if cfg.data.limit:
        tr = splits["train"]
        splits["train"] = tr.subset(np.sort(np.random.default_rng(cfg.seed).permutation(len(tr))[:cfg.data.limit]))
    mcfg = ModelConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True))
    # vocabulary and slot count from the whole training split, also when data.limit trains on part of it
    full_train = ds.subset("train")
    model = GenerativeModel.from_dataset(mcfg, splits["train"], vocab=Vocabulary.from_dataset(full_train),
                                         n_slots=int(full_train.n_atoms.max()))
    for s in ("valid", "test"):  # a crystal with an element never seen in training cannot be encoded
        keep = model.supported(splits[s])
        if not keep.all():
            log.warning("%s split: %d crystals with elements outside the training vocabulary or too many atoms "
                        "are left out of validation / reconstruction", s, int((~keep).sum()))
            splits[s] = splits[s].subset(np.flatnonzero(keep))
    print(f"{model.config.kind} (condition: {model.config.condition}) on {ds.name}: {len(splits['train'])} training "
          f"crystals, {len(model.vocab)} elements, {model.n_slots} slots, properties {model.properties}")
    t0 = time.perf_counter()
    arrays = {s: model.arrays(d) for s, d in splits.items() if s != "test"}
    print(f"representations built in {time.perf_counter() - t0:.1f} s")

    valid = splits["valid"]
    n_recon = min(cfg.check_recon, len(valid)) if model.is_vae else 0
    recon = valid.crystal(np.arange(n_recon), bucket=False) if n_recon else None  # check_recon=0: no check

    def validate(params, step):
        return quick_check(model, params, jax.random.PRNGKey(step), cfg.check_samples, recon)

    tcfg = TrainConfig(**OmegaConf.to_container(cfg.train, resolve=True))
    tcfg.progress = tcfg.progress and cfg.progress
    t0 = time.perf_counter()
    with record_losses(model, every=max(1, min(25, tcfg.steps // 100)), path=run.path("train_losses.jsonl")):
        state, history = train(model, arrays["train"], tcfg, cfg.seed, arrays["valid"], run.out_dir / "checkpoint",
                               validate if cfg.check_samples else None, run.path("metrics.jsonl"))
    train_s = time.perf_counter() - t0
    generative_learning_curve(read_loss_log(run.path("train_losses.jsonl")), history, run.path("learning_curve.png"),
                              f"{model.config.kind} on {ds.name}")
    params = state.params
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    results = {"model": model.to_dict(), "n_params": int(n_params), "train_seconds_this_session": train_s,
               "steps": int(state.step), "history": history}

    if cfg.n_samples == 0:  # train and save only
        run.save_json(results)
        return results
    samples, dt, rate = sample_timed(model, params, jax.random.PRNGKey(cfg.seed + 1), cfg.n_samples)
    results["sampling"] = {"n": cfg.n_samples, "seconds": dt, "crystals_per_second": rate}
    print(f"sampled {cfg.n_samples} crystals in {dt:.2f} s ({rate:.0f} / s, decoding included)")
    write_extxyz(samples, run.path("samples", "samples.extxyz"))
    write_cifs(samples[:cfg.n_cif], run.out_dir / "samples" / "cif")
    if cfg.evaluate:
        gen, _ = generation_metrics(samples, ds.name, reference=ds.subset("test").structures(),
                                    train=splits["train"].structures(), n_jobs=cfg.n_jobs, progress=cfg.progress)
        results["generation"] = gen
        v, c = gen["validity"], gen.get("coverage", {})
        print(f"validity: struct {100 * v['struct_valid']:.2f} %, comp {100 * v['comp_valid']:.2f} %; "
              f"COV-R {100 * c.get('cov_recall', np.nan):.2f} %, COV-P {100 * c.get('cov_precision', np.nan):.2f} %")
        if model.is_vae:
            rec = reconstruction_metrics(model, params, splits["test"].crystal(bucket=False), n_jobs=cfg.n_jobs,
                                         progress=cfg.progress)
            results["reconstruction"] = rec
            print(f"reconstruction of the test split: match rate {100 * rec['match_rate']:.2f} %, "
                  f"RMSE {rec['rmse']:.4f}")
    run.save_json(results)
    return results


def train_diffusion(cfg, run):
    """model=diffcsp: train the periodic diffusion model (:mod:`jaxinv.generative.diffusion`)
    on the train split, save it to ``checkpoint/`` (``diffusion.json``, ``params.msgpack``),
    sample ``n_samples`` crystals (CSP: the compositions of test crystals; de novo: new ones)
    and score them: CSP match rate and RMSE at k=1 against those test crystals, or the
    CDVAE generation metrics. Training checkpoints to ``train_state/`` every
    ``train.checkpoint_every_s``; the same command with the same ``out_dir`` resumes it
    (and only samples, if training had finished). No validation losses yet."""
    import json

    import jax
    from omegaconf import OmegaConf

    from jaxinv.data import load_dataset
    from jaxinv.generative.diffusion import CrystalDiffusion, fit
    from jaxinv.generative.species import Vocabulary
    from jaxinv.io import write_cifs, write_extxyz

    ds = load_dataset(cfg.data.name)
    full_train = ds.subset("train")
    train_ds = full_train
    if cfg.data.limit:
        train_ds = full_train.subset(np.sort(np.random.default_rng(cfg.seed).permutation(len(full_train))[:cfg.data.limit]))
    dcfg = DiffusionConfig(**OmegaConf.to_container(cfg.diffusion, resolve=True))
    model = CrystalDiffusion.from_dataset(dcfg, train_ds, vocab=Vocabulary.from_dataset(full_train),
                                          n_max=int(full_train.n_atoms.max()))
    arrays = model.arrays(train_ds)
    print(f"diffcsp ({dcfg.mode}) on {ds.name}: {len(train_ds)} training crystals, {len(model.vocab)} elements, "
          f"up to {model.n_max} atoms")
    t0 = time.perf_counter()
    with open(run.path("train_losses.jsonl"), "w") as fh:
        def record(rec):
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            log.info("step %d: %s", rec["step"], ", ".join(f"{k}={v:.4g}" for k, v in rec.items() if k != "step"))

        tcfg = cfg.train
        params, history = fit(model, arrays, tcfg.steps, tcfg.batch_size, cfg.seed,
                              log_every=max(1, min(100, tcfg.steps // 20)), callback=record,
                              time_limit_min=tcfg.time_limit_min, checkpoint_dir=run.out_dir / "train_state",
                              checkpoint_every_s=tcfg.checkpoint_every_s, progress=cfg.progress and tcfg.progress)
    train_s = time.perf_counter() - t0
    model.save(run.out_dir / "checkpoint", params)
    results = {"model": model.to_dict(), "n_params": int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
               "train_seconds": train_s, "steps": history[-1]["step"] if history else 0, "history": history}

    if cfg.n_samples == 0:  # train and save only
        run.save_json(results)
        return results
    test = ds.subset("test")
    supported = np.isin(test.numbers, model.vocab.numbers)
    ok = np.array([supported[a:b].all() for a, b in zip(test.offsets[:-1], test.offsets[1:])], bool)
    ok &= test.n_atoms <= model.n_max
    given = test.subset(np.flatnonzero(ok)[:cfg.n_samples]).crystal(bucket=False) if dcfg.mode == "csp" else None
    key = jax.random.PRNGKey(cfg.seed + 1)
    n = len(given) if given is not None else cfg.n_samples
    t0 = time.perf_counter()
    samples = model.sample(params, key, compositions=given, n=n, seed=cfg.seed)
    dt = time.perf_counter() - t0
    results["sampling"] = {"n": n, "seconds": dt, "crystals_per_second": n / dt, "compilation_included": True}
    print(f"sampled {n} crystals in {dt:.1f} s (compilation included)")
    write_extxyz(samples, run.path("samples", "samples.extxyz"))
    write_cifs(samples[:cfg.n_cif], run.out_dir / "samples" / "cif")
    if cfg.evaluate:
        if dcfg.mode == "csp":
            from jaxinv.metrics import score_csp

            csp, _ = score_csp(samples, given, k=1, n_jobs=cfg.n_jobs, progress=cfg.progress)
            results["csp"] = csp
            print(f"CSP on {n} test compositions, k=1: match rate {100 * csp['csp']['match_rate']:.2f} %, "
                  f"RMSE {csp['csp']['rmse']:.4f}")
        else:
            from jaxinv.generative.evaluation import generation_metrics

            gen, _ = generation_metrics(samples, ds.name, reference=test.structures(), train=train_ds.structures(),
                                        n_jobs=cfg.n_jobs, progress=cfg.progress)
            results["generation"] = gen
    run.save_json(results)
    return results
