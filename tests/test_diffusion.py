"""The periodic joint diffusion model: torus kernel, forward marginals, reverse-step
math, invariances of the denoiser, training and sampling."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import jax
import jax.numpy as jnp

from jaxinv.generative.diffusion import (CrystalDiffusion, DiffusionConfig, PeriodicNet, ddpm_step, fit, make_schedule,
                                         noise_crystal, unmask_step)
from jaxinv.generative.torus import (geometric_sigmas, score_norm, ve_predictor_step, wrap,
                                     wrapped_normal_log_density, wrapped_normal_score)

SIGMAS = [0.005, 0.03, 0.1, 0.3, 0.5]
TINY = dict(hidden=32, layers=2, n_frequencies=4, time_dim=16)
PERIODIC = dict(TINY, denoiser="periodic", cutoff=4.0, image_range=3, n_rbf=8)  # exact for heights >= 4 / 3.5 Å


def _brute_force(x, sigma, n_images=200):
    """log density and score of the wrapped normal by a direct float64 sum of Gaussians."""
    k = np.arange(-n_images, n_images + 1)
    y = x[:, None] + k
    g = np.exp(-0.5 * (y / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    return np.log(g.sum(1)), (-y / sigma ** 2 * g).sum(1) / g.sum(1)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_wrapped_normal_against_brute_force_and_finite_differences(float64, sigma):
    # points within a few sigma of 0 (where the density is not underflowing in the brute force)
    # and across the whole circle, including outside [-1/2, 1/2) to exercise the wrapping
    x = np.concatenate([np.linspace(-4, 4, 41) * sigma, np.linspace(-1.7, 1.7, 41)])
    x_wrapped = x - np.floor(x + 0.5)
    logp_ref, score_ref = _brute_force(x_wrapped, sigma)
    logp = np.asarray(wrapped_normal_log_density(jnp.asarray(x), sigma))
    score = np.asarray(wrapped_normal_score(jnp.asarray(x), sigma))
    ok = np.isfinite(logp_ref)
    np.testing.assert_allclose(logp[ok], logp_ref[ok], rtol=1e-9, atol=1e-9)
    finite = np.isfinite(score_ref)
    np.testing.assert_allclose(score[finite], score_ref[finite], rtol=1e-7, atol=1e-6 / sigma)
    # the score is the derivative of the log density (central differences)
    h = 1e-4 * sigma
    fd = (np.asarray(wrapped_normal_log_density(jnp.asarray(x + h), sigma))
          - np.asarray(wrapped_normal_log_density(jnp.asarray(x - h), sigma))) / (2 * h)
    np.testing.assert_allclose(score, fd, rtol=1e-5, atol=1e-4 / sigma)
    # and the density integrates to one over the circle
    grid = (np.arange(20000) + 0.5) / 20000 - 0.5
    assert abs(np.exp(np.asarray(wrapped_normal_log_density(jnp.asarray(grid), sigma))).mean() - 1) < 1e-8


def test_score_norm(float64):
    norm = score_norm(np.array(SIGMAS))
    # small sigma: the Gaussian's Fisher information 1 / sigma^2
    assert abs(norm[0] * SIGMAS[0] ** 2 - 1) < 1e-6
    # at every sigma: Monte Carlo E[score^2] over wrapped normal draws
    rng = np.random.default_rng(0)
    for s, n in zip(SIGMAS, norm):
        x = wrap(jnp.asarray(rng.normal(0, s, 200_000)))
        mc = float(jnp.mean(wrapped_normal_score(x, s) ** 2))
        assert abs(mc / n - 1) < 0.02, (s, mc, n)
    # the wrapped normal flattens out: at sigma = 0.5 its Fisher information is far below 1 / sigma^2
    assert norm[-1] * 0.5 ** 2 < 0.2


def test_forward_marginals_match_closed_forms():
    cfg = DiffusionConfig(mode="de_novo", n_steps=100)
    sch = make_schedule(cfg)
    rng = np.random.default_rng(1)
    lattice0 = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)
    frac0 = jnp.asarray(rng.uniform(size=(4, 3)), jnp.float32)
    types0 = jnp.array([1, 2, 3, 0])
    mask = types0 > 0
    n = 20000
    for t in (1, 30, 70, 100):
        noisy = jax.vmap(lambda k: noise_crystal(k, sch, lattice0, frac0, types0, mask, t, 9))(
            jax.random.split(jax.random.PRNGKey(t), n))
        ab = float(sch.alpha_bar[t])
        # lattice: N(sqrt(ab) L0, (1 - ab) I)
        np.testing.assert_allclose(noisy.lattice.mean(0), np.sqrt(ab) * lattice0, atol=4 * np.sqrt((1 - ab) / n) + 1e-6)
        np.testing.assert_allclose(noisy.lattice.var(0), 1 - ab, rtol=0.05, atol=1e-6)
        # coordinates: wrapped normal around f0, first circular moment exp(-2 pi^2 sigma^2)
        s = float(sch.sigma[t])
        d = np.asarray(noisy.frac - frac0)
        np.testing.assert_allclose(np.cos(2 * np.pi * d).mean(0), np.exp(-2 * np.pi ** 2 * s ** 2), atol=0.02)
        np.testing.assert_allclose(np.sin(2 * np.pi * d).mean(0), 0.0, atol=0.02)
        # the normalized score target has unit mean square at every step
        assert abs(float((noisy.frac_target ** 2).mean()) - 1) < 0.03
        # types: each real atom hidden with probability 1 - keep_t = t / T; padding never
        hidden = np.asarray(noisy.masked)
        np.testing.assert_allclose(hidden[:, :3].mean(0), t / 100, atol=0.015)
        assert not hidden[:, 3].any()
        assert (np.asarray(noisy.types)[hidden] == 9).all()
    # the end of the process: frac nearly uniform, lattice nearly pure noise
    assert float(sch.alpha_bar[-1]) < 1e-4 and abs(sch.sigma[-1] - 0.5) < 1e-6


def test_reverse_steps_recover_a_point_mass_with_the_exact_score():
    """With the exact score / noise of a point-mass data distribution, the reverse
    chains end at the point: checks the predictor and DDPM step formulas."""
    cfg = DiffusionConfig(n_steps=200)
    sch = make_schedule(cfg)
    f0 = jnp.array([0.1, 0.55, 0.97])
    L0 = jnp.array([[1.0, 0.1, 0.0], [0.0, 0.9, 0.2], [0.3, 0.0, 1.1]])

    def chain(key):
        k0, k1, key = jax.random.split(key, 3)
        frac = jax.random.uniform(k0, (3,))
        lattice = jax.random.normal(k1, (3, 3))

        def step(carry, t):
            key, frac, lattice = carry
            key, kf, kl = jax.random.split(key, 3)
            frac = ve_predictor_step(kf, frac, wrapped_normal_score(frac - f0, sch.sigma[t]), sch.sigma[t],
                                     sch.sigma[t - 1])
            eps = (lattice - jnp.sqrt(sch.alpha_bar[t]) * L0) / jnp.sqrt(1 - sch.alpha_bar[t])
            return (key, frac, ddpm_step(kl, sch, lattice, eps, t)), None

        (_, frac, lattice), _ = jax.lax.scan(step, (key, frac, lattice), jnp.arange(200, 0, -1))
        return frac, lattice

    frac, lattice = jax.jit(jax.vmap(chain))(jax.random.split(jax.random.PRNGKey(0), 64))
    assert float(jnp.abs(wrap(frac - f0)).max()) < 1e-3
    np.testing.assert_allclose(lattice, jnp.broadcast_to(L0, lattice.shape), atol=1e-3)
    # the wrong sign of the score would diverge: the test can fail
    assert geometric_sigmas(0.005, 0.5, 200)[1] == pytest.approx(0.005)


def test_clipped_lattice_step():
    """The x0 form of the DDPM mean equals the epsilon form when nothing is clipped,
    and a wild noise prediction cannot push the lattice past the clip."""
    sch = make_schedule(DiffusionConfig(n_steps=100))
    rng = np.random.default_rng(0)
    lattice, eps = jnp.asarray(rng.normal(size=(3, 3))), jnp.asarray(rng.normal(size=(3, 3)))
    key = jax.random.PRNGKey(0)
    for t in (100, 50, 2):
        ab, ab_prev = sch.alpha_bar[t], sch.alpha_bar[t - 1]
        alpha = ab / ab_prev
        eps_form = (lattice - (1 - alpha) / jnp.sqrt(1 - ab) * eps) / jnp.sqrt(alpha)
        noise = jnp.sqrt((1 - alpha) * (1 - ab_prev) / (1 - ab)) * jax.random.normal(key, (3, 3))
        np.testing.assert_allclose(ddpm_step(key, sch, lattice, eps, t), eps_form + noise, rtol=2e-4, atol=2e-4)
    # the last step returns the predicted clean lattice: clipped, whatever eps was
    wild = 1e4 * eps
    x0 = (lattice - jnp.sqrt(1 - sch.alpha_bar[1]) * wild) / jnp.sqrt(sch.alpha_bar[1])
    assert float(jnp.abs(x0).max()) > 100
    np.testing.assert_allclose(ddpm_step(key, sch, lattice, wild, 1, clip=4.0), jnp.clip(x0, -4, 4), atol=1e-5)
    # from pure noise at t = T with a wild eps, the next state stays of order one
    assert float(jnp.abs(ddpm_step(key, sch, lattice, wild, 100, clip=4.0)).max()) < 10


def test_unmask_step_reveals_all_atoms_by_the_end():
    sch = make_schedule(DiffusionConfig(mode="de_novo", n_steps=50))
    types = jnp.full((200, 6), 7).at[:, 5].set(0)
    mask = types > 0
    logits = jnp.log(jnp.array([0.7, 0.2, 0.1, 1e-9, 1e-9, 1e-9]))[None, None].repeat(6, 1).repeat(200, 0)
    revealed_at = []
    for t in range(50, 0, -1):
        types = unmask_step(jax.random.PRNGKey(t), sch, types, mask, logits, t, 7)
        revealed_at.append(float(((types != 7) & mask).mean() / mask.mean()))
    assert revealed_at[-1] == 1.0 and abs(revealed_at[24] - 0.5) < 0.06  # linear: half revealed half-way
    t = np.asarray(types)[:, :5]
    np.testing.assert_allclose([(t == k).mean() for k in (1, 2, 3)], [0.7, 0.2, 0.1], atol=0.04)
    assert (np.asarray(types)[:, 5] == 0).all()


# ------------------------------------------------------------- invariances
@pytest.fixture(scope="module")
def net():
    model = CrystalDiffusion(DiffusionConfig(mode="de_novo", **TINY), _vocab(), 12, 12.0, np.ones(13) / 13)
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), model.init(jax.random.PRNGKey(0)))
    return model, params


def _vocab():
    from jaxinv.generative.species import Vocabulary

    return Vocabulary((6, 8, 22, 38))


def _apply(model, params, lattice, frac, types, mask, t=0.37, scale=1.0):
    out = model.net.apply(params, jnp.asarray(lattice), jnp.asarray(frac), jnp.asarray(types), jnp.asarray(mask), t,
                          0.0, 0.0, scale)
    return [np.asarray(o) for o in out]


def _crystal(rng, n=5, pad=2):
    lattice = rng.normal(size=(3, 3)) + 1.5 * np.eye(3)
    frac = np.concatenate([rng.uniform(size=(n, 3)), np.zeros((pad, 3))])
    types = np.concatenate([rng.integers(1, 6, n), np.zeros(pad, int)])  # 5 = [MASK]
    return lattice, frac, types, types > 0


def test_denoiser_invariances(float64, net):
    model, params = net
    rng = np.random.default_rng(3)
    lattice, frac, types, mask = _crystal(rng)
    f_out, l_out, logits = _apply(model, params, lattice, frac, types, mask)
    real = mask
    close = lambda a, b, what: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10, err_msg=what)
    # permutation of the real atoms (padding stays at the end): outputs permute with them
    perm = np.concatenate([rng.permutation(5), [5, 6]])
    out = _apply(model, params, lattice, frac[perm], types[perm], mask[perm])
    close(out[0][real], f_out[perm][real], "permutation: coordinates")
    close(out[1], l_out, "permutation: lattice")
    close(out[2][real], logits[perm][real], "permutation: types")
    # a common translation of the fractional coordinates
    out = _apply(model, params, lattice, frac + rng.uniform(size=3), types, mask)
    close(out[0][real], f_out[real], "translation: coordinates")
    close(out[1], l_out, "translation: lattice")
    close(out[2][real], logits[real], "translation: types")
    # another periodic image of each atom
    out = _apply(model, params, lattice, frac + rng.integers(-3, 4, size=frac.shape), types, mask)
    close(out[0][real], f_out[real], "images: coordinates")
    close(out[1], l_out, "images: lattice")
    # rotation and reflection of the lattice (rows rotate: L -> L R^T): coordinates invariant, lattice equivariant
    for R in (Rotation.random(random_state=4).as_matrix(), -Rotation.random(random_state=5).as_matrix()):
        out = _apply(model, params, lattice @ R.T, frac, types, mask)
        close(out[0][real], f_out[real], "rotation: coordinates invariant")
        close(out[1], l_out @ R.T, "rotation: lattice equivariant")
        close(out[2][real], logits[real], "rotation: types invariant")
    # whatever sits in the padding slots
    out = _apply(model, params, lattice, np.where(mask[:, None], frac, rng.uniform(size=frac.shape)),
                 np.where(mask, types, 3), mask)
    close(out[0][real], f_out[real], "padding: coordinates")
    close(out[1], l_out, "padding: lattice")
    # and the check can fail: moving one atom changes the others' outputs
    moved = frac.copy()
    moved[0] += 0.1
    assert np.abs(_apply(model, params, lattice, moved, types, mask)[0][1:5] - f_out[1:5]).max() > 1e-6


def test_supercell_copies_get_identical_scores(float64, net):
    """Cell choice: the model is *not* invariant to it (its noise lives in the fractional
    units of the given cell, as in DiffCSP), but on a 2x supercell both copies of an
    atom get the same coordinate score and types, because a translation by the
    primitive vector (1/2 along a in the supercell) only permutes the copies."""
    model, params = net
    rng = np.random.default_rng(7)
    lattice, frac, types, mask = _crystal(rng, n=5, pad=0)
    super_lattice = np.diag([2.0, 1.0, 1.0]) @ lattice
    super_frac = np.concatenate([frac * [0.5, 1, 1], frac * [0.5, 1, 1] + [0.5, 0, 0]])
    super_types = np.concatenate([types, types])
    f_out, l_out, logits = _apply(model, params, super_lattice, super_frac, super_types, super_types > 0)
    np.testing.assert_allclose(f_out[:5], f_out[5:], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(logits[:5], logits[5:], rtol=1e-9, atol=1e-10)
    # the copies differ from each other only by the translation, so a broken translation
    # invariance would show here: shift one copy by a non-primitive vector and they differ
    broken = super_frac.copy()
    broken[5:] += [0.25, 0, 0]
    f_b = _apply(model, params, super_lattice, broken, super_types, super_types > 0)[0]
    assert np.abs(f_b[:5] - f_b[5:]).max() > 1e-6


# ------------------------------------------- the cell-invariant denoiser
@pytest.fixture(scope="module")
def pnet():
    model = CrystalDiffusion(DiffusionConfig(mode="de_novo", **PERIODIC), _vocab(), 12, 12.0, np.ones(13) / 13)
    assert isinstance(model.net, PeriodicNet)
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), model.init(jax.random.PRNGKey(0)))
    return model, params


def _heights(lattice):
    """Distances between lattice planes: 1 / |columns of L^-1| (rows of L are the vectors)."""
    return 1 / np.linalg.norm(np.linalg.inv(lattice), axis=0)


def _real_crystal(rng, n=5, pad=0):
    """A generic triclinic cell in Å whose heights (~3.5 Å) exceed cutoff / (R + 1/2)."""
    lattice = 4.0 * np.eye(3) + 0.6 * rng.normal(size=(3, 3))
    frac = np.concatenate([rng.uniform(size=(n, 3)), np.zeros((pad, 3))])
    types = np.concatenate([rng.integers(1, 6, n), np.zeros(pad, int)])  # 5 = [MASK]
    return lattice, frac, types, types > 0


def _apply_real(model, params, lattice, frac, types, mask, net=None):
    """PeriodicNet on a cell in Å, normalized as CrystalDiffusion.denoise does it, with the
    Cartesian score s_i (frac_out_i = L s_i) and the lattice tensor S (out = L_norm S) recovered."""
    scale = float(model.lattice_scale(mask.sum()))
    out = (net or model.net).apply(params, jnp.asarray(lattice / scale), jnp.asarray(frac), jnp.asarray(types),
                                   jnp.asarray(mask), 0.37, 0.0, 0.0, scale)
    f_out, l_out, logits = (np.asarray(o) for o in out)
    return {"frac": f_out, "cart": np.linalg.solve(lattice, f_out.T).T, "lattice": l_out,
            "S": np.linalg.solve(lattice / scale, l_out), "logits": logits}


def _close(a, b, what):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10, err_msg=what)


def test_periodic_denoiser_invariances(float64, pnet):
    """The checks of test_denoiser_invariances, on PeriodicNet; and the network as
    CrystalDiffusion.denoise calls it (normalized lattice, scale from the mask)."""
    model, params = pnet
    rng = np.random.default_rng(3)
    lattice, frac, types, mask = _real_crystal(rng, pad=2)
    assert _heights(lattice).min() > 4.0 / 3.5
    ref = _apply_real(model, params, lattice, frac, types, mask)
    real = mask
    s = float(model.lattice_scale(5))
    batch = model.denoise(params, jnp.asarray(lattice / s)[None], jnp.asarray(frac)[None], jnp.asarray(types)[None],
                          jnp.asarray(mask)[None], jnp.array([370]))  # t / T = 0.37
    for o, key in zip(batch, ("frac", "lattice", "logits")):
        _close(np.asarray(o[0]), ref[key], f"denoise: {key}")
    perm = np.concatenate([rng.permutation(5), [5, 6]])
    out = _apply_real(model, params, lattice, frac[perm], types[perm], mask[perm])
    _close(out["frac"][real], ref["frac"][perm][real], "permutation: coordinates")
    _close(out["lattice"], ref["lattice"], "permutation: lattice")
    _close(out["logits"][real], ref["logits"][perm][real], "permutation: types")
    for what, f in (("translation", frac + rng.uniform(size=3)), ("images", frac + rng.integers(-3, 4, frac.shape))):
        out = _apply_real(model, params, lattice, f, types, mask)
        for key in ("frac", "logits"):
            _close(out[key][real], ref[key][real], f"{what}: {key}")
        _close(out["lattice"], ref["lattice"], f"{what}: lattice")
    # rotation and reflection (L -> L R^T): fractional score and types invariant, lattice output equivariant
    for R in (Rotation.random(random_state=4).as_matrix(), -Rotation.random(random_state=5).as_matrix()):
        out = _apply_real(model, params, lattice @ R.T, frac, types, mask)
        _close(out["frac"][real], ref["frac"][real], "rotation: coordinates invariant")
        _close(out["cart"][real], ref["cart"][real] @ R.T, "rotation: Cartesian score rotates")
        _close(out["lattice"], ref["lattice"] @ R.T, "rotation: lattice equivariant")
        _close(out["logits"][real], ref["logits"][real], "rotation: types invariant")
    out = _apply_real(model, params, lattice, np.where(mask[:, None], frac, rng.uniform(size=frac.shape)),
                      np.where(mask, types, 3), mask)
    _close(out["frac"][real], ref["frac"][real], "padding: coordinates")
    _close(out["lattice"], ref["lattice"], "padding: lattice")
    # the check can fail: moving one atom changes the others' outputs
    moved = frac.copy()
    moved[0] += 0.05
    assert np.abs(_apply_real(model, params, lattice, moved, types, mask)["frac"][1:5] - ref["frac"][1:5]).max() > 1e-6


def _unimodular(rng, lattice, min_height):
    """A random integer M with det +-1 and entries in [-2, 2], M != +-I, whose cell M L
    still has every height >= min_height (so the image window covers the cutoff)."""
    while True:
        M = np.eye(3, dtype=int)
        for _ in range(4):  # products of elementary shears, a sign flip and a row swap
            a, b = rng.choice(3, 2, replace=False)
            E = np.eye(3, dtype=int)
            E[a, b] = rng.choice([-1, 1])
            M = E @ M
        M = M[rng.permutation(3)] * rng.choice([-1, 1], size=(3, 1))
        if np.abs(M).max() <= 2 and np.abs(M).sum() > 3 and _heights(M @ lattice).min() >= min_height:
            return M


def test_periodic_denoiser_equivalent_cell(float64, pnet):
    """Another basis of the same lattice, L' = M L (M unimodular), f' = f M^-1 wrapped:
    the same atoms in space. The Cartesian scores and types are equal; the fractional
    score d/df log p = L d/dx log p transforms as frac_out' = M frac_out (rows: frac_out
    M^T); the lattice output L_norm S as M times itself (S is the same tensor)."""
    model, params = pnet
    rng = np.random.default_rng(11)
    lattice, frac, types, mask = _real_crystal(rng)
    ref = _apply_real(model, params, lattice, frac, types, mask)
    for _ in range(3):
        M = _unimodular(rng, lattice, 4.0 / 3.5)
        assert abs(round(np.linalg.det(M))) == 1
        new_lattice, new_frac = M @ lattice, np.mod(frac @ np.linalg.inv(M), 1.0)
        out = _apply_real(model, params, new_lattice, new_frac, types, mask)
        _close(out["cart"], ref["cart"], f"M={M.tolist()}: Cartesian score")
        _close(out["frac"], ref["frac"] @ M.T, f"M={M.tolist()}: fractional score covariant")
        _close(out["lattice"], M @ ref["lattice"], f"M={M.tolist()}: lattice output M times")
        _close(out["S"], ref["S"], f"M={M.tolist()}: lattice tensor")
        _close(out["logits"], ref["logits"], f"M={M.tolist()}: types")
    # the condition matters: a window of images too small for the cutoff in a skewed cell truncates
    # the sums, and the outputs then depend on the cell (the check can fail)
    M = np.array([[1, 2, 0], [0, 1, 2], [0, 0, 1]])
    assert _heights(M @ lattice).min() < 4.0 / 1.5
    narrow = model.net.clone(image_range=1)
    out = _apply_real(model, params, M @ lattice, np.mod(frac @ np.linalg.inv(M), 1.0), types, mask, net=narrow)
    assert np.abs(out["cart"] - _apply_real(model, params, lattice, frac, types, mask, net=narrow)["cart"]).max() > 1e-6


def _supercell(lattice, frac, types, M):
    """The cell M L (det M = k > 0 copies of each atom) with the copies of atom a at
    rows a, a + N, ..., a + (k - 1) N."""
    k = round(abs(np.linalg.det(M)))
    inv = np.linalg.inv(M)
    shifts = np.array([[a, b, c] for a in range(3) for b in range(3) for c in range(3)]) @ inv
    shifts = np.unique(np.round(np.mod(shifts, 1.0), 9) % 1.0, axis=0)
    assert len(shifts) == k
    new_frac = np.concatenate([np.mod(frac @ inv + s, 1.0) for s in shifts])
    return M @ lattice, new_frac, np.tile(types, k), k


@pytest.mark.parametrize("M", [[[2, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 1, 0], [-1, 1, 0], [0, 0, 1]]],
                         ids=["2x1x1", "non-diagonal"])
def test_periodic_denoiser_supercell(float64, pnet, M):
    """A supercell: every copy of an atom gets the primitive atom's Cartesian score and
    type logits, and the lattice tensor S is the primitive cell's (the network sees the
    same Å geometry: scale (k N V_atom)^(1/3) for k N atoms). This holds because the
    messages are linear in the image sums and summed over j, with a fixed divisor:
    a nonlinearity on e, or a mean over j instead of the sum, makes it fail."""
    model, params = pnet
    rng = np.random.default_rng(5)
    lattice, frac, types, mask = _real_crystal(rng)
    ref = _apply_real(model, params, lattice, frac, types, mask)
    M = np.array(M)
    big_lattice, big_frac, big_types, k = _supercell(lattice, frac, types, M)
    out = _apply_real(model, params, big_lattice, big_frac, big_types, big_types > 0)
    for c in range(k):
        rows = slice(5 * c, 5 * (c + 1))
        _close(out["cart"][rows], ref["cart"], f"copy {c}: Cartesian score")
        _close(out["frac"][rows], ref["frac"] @ M.T, f"copy {c}: fractional score")
        _close(out["logits"][rows], ref["logits"], f"copy {c}: types")
    _close(out["S"], ref["S"], "lattice tensor")
    # the check can fail: move one copy of atom 0 and the primitive cell is gone
    big_frac[5] += 0.03
    moved = _apply_real(model, params, big_lattice, big_frac, big_types, big_types > 0)
    assert np.abs(moved["cart"][1:5] - ref["cart"][1:5]).max() > 1e-6


def test_classifier_free_guidance(float64, perov_small):
    model = CrystalDiffusion.from_dataset(DiffusionConfig(mode="de_novo", condition="dir_gap", **TINY), perov_small)
    gaps = perov_small.labels["dir_gap"]
    assert model.condition_stats == pytest.approx((gaps.mean(), gaps.std()))
    arrays = model.arrays(perov_small)
    np.testing.assert_allclose(arrays["y"], (gaps - gaps.mean()) / gaps.std(), rtol=1e-5, atol=1e-6)
    assert (arrays["has_y"] == 1).all()
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), model.init(jax.random.PRNGKey(0)))
        b = {k: jnp.asarray(v[:4]) for k, v in arrays.items()}
        t = jnp.array([10, 300, 600, 900])
        args = (params, b["lattice"], b["frac"], b["types"], b["mask"], t)
        cond = model.denoise(*args, b["y"], b["has_y"])
        free = model.denoise(*args)
        # the null condition ignores y; a real label changes the output
        np.testing.assert_allclose(model.denoise(*args, b["y"] + 5.0, jnp.zeros(4))[0], free[0], rtol=1e-12)
        assert np.abs(np.asarray(cond[0] - free[0])).max() > 1e-6
        for w in (0.0, 2.0):
            guided = model.guided_denoise(*args, b["y"], b["has_y"], w)
            for g, c, u in zip(guided, cond, free):
                np.testing.assert_allclose(g, c + w * (c - u), rtol=1e-10, atol=1e-12)
    # targets: a window draws labels inside it; an unconditional model refuses one
    y, has_y = model._targets(np.random.default_rng(0), 1000, (1.5, 3.0))
    raw = y * model.condition_stats[1] + model.condition_stats[0]
    assert (has_y == 1).all() and raw.min() >= 1.5 - 1e-5 and raw.max() <= 3.0 + 1e-5 and raw.std() > 0.3
    with pytest.raises(ValueError, match="unconditional"):
        CrystalDiffusion.from_dataset(DiffusionConfig(**TINY), perov_small)._targets(np.random.default_rng(0), 2, 1.0)
    with pytest.raises(ValueError, match="no label 'band_gap'"):
        CrystalDiffusion.from_dataset(DiffusionConfig(condition="band_gap", **TINY), perov_small)


# ------------------------------------------------------ training, sampling
@pytest.fixture(scope="module")
def perov_small(perov):
    return perov.subset("train").subset(np.arange(32))


@pytest.mark.parametrize("config", [TINY, PERIODIC], ids=["cspnet", "periodic"])
def test_training_reduces_the_loss(perov_small, config):
    # de novo: all three terms (lattice, coordinates, types); CSP is the same loss without the last
    model = CrystalDiffusion.from_dataset(DiffusionConfig(mode="de_novo", n_steps=100, **config), perov_small)
    arrays = model.arrays(perov_small)
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    loss = jax.jit(jax.vmap(lambda p, k: model.loss(p, batch, k), (None, 0)))
    keys = jax.random.split(jax.random.PRNGKey(5), 16)  # the same noise draws before and after
    mean_loss = lambda p: jax.tree_util.tree_map(lambda x: float(x.mean()), loss(p, keys))
    params0 = model.init(jax.random.PRNGKey(0))
    params, history = fit(model, arrays, 100, batch_size=16, params=params0, log_every=50)
    before, after = mean_loss(params0), mean_loss(params)
    print(before, after)
    assert after.total < 0.8 * before.total, (before, after, history)
    assert after.lattice < before.lattice and after.types < before.types and after.frac < before.frac


def test_training_resumes_where_it_was_stopped(perov_small, tmp_path):
    # a run stopped at step 6 and resumed to 10 from its checkpoint takes the uninterrupted
    # run's steps: the same parameters, Adam moments and loss history
    model = CrystalDiffusion.from_dataset(DiffusionConfig(mode="de_novo", n_steps=20, **TINY), perov_small)
    arrays = model.arrays(perov_small)
    whole, whole_history = fit(model, arrays, 10, batch_size=8, seed=3, log_every=2)
    logged = []
    fit(model, arrays, 6, batch_size=8, seed=3, log_every=2, checkpoint_dir=tmp_path)
    resumed, history = fit(model, arrays, 10, batch_size=8, seed=3, log_every=2, checkpoint_dir=tmp_path,
                           callback=logged.append)
    assert [h["step"] for h in history] == [2, 4, 6, 8, 10]
    assert logged == history  # the callback replays the restored records, then logs the new ones
    for a, b in zip(whole_history, history):
        assert a["step"] == b["step"] and a["total"] == pytest.approx(b["total"], rel=1e-5)
    leaves = jax.tree_util.tree_leaves
    assert all(np.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(leaves(whole), leaves(resumed)))
    # a finished run resumes to no more steps; another seed is another run and is refused
    again, history = fit(model, arrays, 10, batch_size=8, seed=3, log_every=2, checkpoint_dir=tmp_path)
    assert len(history) == 5 and all(np.array_equal(a, b) for a, b in zip(leaves(resumed), leaves(again)))
    with pytest.raises(ValueError, match="different run"):
        fit(model, arrays, 10, batch_size=8, seed=4, checkpoint_dir=tmp_path)

@pytest.mark.parametrize("mode, config", [("csp", TINY), ("de_novo", TINY), ("csp", PERIODIC)],
                         ids=["csp", "de_novo", "csp-periodic"])
def test_sampling_returns_valid_crystals(perov_small, mode, config, tmp_path):
    model = CrystalDiffusion.from_dataset(DiffusionConfig(mode=mode, n_steps=20, **config), perov_small)
    params = model.init(jax.random.PRNGKey(0))
    if mode == "csp":
        given = perov_small.crystal(np.arange(6), bucket=False)
        out = model.sample(params, jax.random.PRNGKey(1), compositions=given)
        assert out.formulas() == given.formulas()  # the composition is kept, atom for atom
        np.testing.assert_array_equal(out.numbers, given.numbers)
        types, mask = model.csp_inputs(["SrZrO3"])  # formulas work too, up to n_max atoms
        assert sorted(model.vocab.atomic_numbers(types[0][mask[0]])) == [8, 8, 8, 38, 40]
        with pytest.raises(ValueError, match="at most 5"):
            model.csp_inputs(["Sr2Zr2O6"])
    else:
        out = model.sample(params, jax.random.PRNGKey(1), n=6)
        assert set(np.unique(out.numbers[out.mask])) <= set(model.vocab.numbers)
        assert (out.n_atoms == 5).all()  # perov_5 has 5 atoms per cell, so does every draw
    assert out.lattice.shape == (6, 3, 3) and out.frac.shape == (6, 5, 3)
    assert np.isfinite(out.lattice).all() and np.isfinite(out.frac).all()
    assert (np.linalg.det(out.lattice) > 0).all() and ((out.frac >= 0) & (out.frac < 1)).all()
    # save / load round trip gives the same samples
    model.save(tmp_path, params)
    loaded, params2 = CrystalDiffusion.load(tmp_path)
    assert type(loaded.net) is type(model.net) and loaded.net == model.net  # the config rebuilds the same net
    again = loaded.sample(params2, jax.random.PRNGKey(1), **({"compositions": given} if mode == "csp" else {"n": 6}))
    np.testing.assert_allclose(again.lattice, out.lattice)


def test_cli_train_and_generate(tmp_path):
    from jaxinv.cli import run_experiment

    run = tmp_path / "train"
    res = run_experiment("train_generative", [
        "model=diffcsp", "diffusion.hidden=16", "diffusion.layers=1", "diffusion.n_steps=10", "data.limit=32",
        "train.steps=3", "train.batch_size=8", "n_samples=4", "n_cif=1", "progress=false", "n_jobs=1",
        f"out_dir={run}"])
    assert res["steps"] == 3 and res["csp"]["csp"]["n_targets"] == 4 and len(res["history"]) == 3
    assert (run / "checkpoint" / "diffusion.json").exists() and (run / "samples" / "samples.extxyz").exists()
    gen = run_experiment("generate", [f"model={run}", "n=3", "batch_size=2", "composition=SrZrO3",
                                      "metrics=[validity]", "progress=false", "n_jobs=1", f"out_dir={tmp_path / 'gen'}"])
    assert gen["n"] == 3 and gen["atoms_per_cell"] == {5: 3} and 0 <= gen["metrics"]["validity"]["valid"] <= 1
    with pytest.raises(ValueError, match="composition"):
        run_experiment("generate", [f"model={run}", "n=2", "progress=false", f"out_dir={tmp_path / 'gen2'}"])
    # structure prediction: k candidates, ranked (unrelaxed: by how often proposed; relaxed: by energy)
    for pot in ("none", "lj"):
        res = run_experiment("predict_structure", [f"model={run}", "composition=[SrZrO3, BaTiO3]", "k=4", "n_cif=2",
                                                   f"potential={pot}", "max_steps=20", "progress=false",
                                                   f"out_dir={tmp_path / pot}"])
        assert set(res["compositions"]) == {"SrZrO3", "BaTiO3"}
        import csv

        rows = list(csv.DictReader(open(tmp_path / pot / "candidates.csv")))
        assert len(rows) == 8 and {r["formula"] for r in rows} == {"SrZrO3", "BaTiO3"}
        for f in ("SrZrO3", "BaTiO3"):
            ranked = [r for r in rows if r["given"] == f and r["rank"]]
            assert [int(r["rank"]) for r in ranked] == sorted(int(r["rank"]) for r in ranked)
            assert res["compositions"][f]["distinct"] == max((int(r["rank"]) for r in ranked), default=0)
            if pot == "lj":  # ranked candidates have energies, in rising order of their group's best
                e = [float(r["energy_per_atom"]) for r in ranked]
                assert np.isfinite(e).all() and e[0] == min(e)
        assert all(r["status"] == ("sampled" if pot == "none" else r["status"]) for r in rows)
        cifs = sorted(q.name for q in (tmp_path / pot / "predicted").iterdir())
        assert cifs and all(c.endswith("_rank1.cif") or c.endswith("_rank2.cif") for c in cifs), cifs
    with pytest.raises(Exception, match="composition"):
        run_experiment("predict_structure", [f"model={run}", "composition=SrXx3", f"out_dir={tmp_path / 'bad'}"])
    with pytest.raises(Exception, match="composition.*Sr2Zr2O6.*at most 5"):  # before any sampling
        run_experiment("predict_structure", [f"model={run}", "composition=Sr2Zr2O6", f"out_dir={tmp_path / 'big'}"])


@pytest.mark.slow  # 90 s; the guidance arithmetic is test_classifier_free_guidance's
def test_cli_conditional_generation(tmp_path):
    from jaxinv.cli import run_experiment

    run = tmp_path / "train"
    run_experiment("train_generative", [
        "model=diffcsp", "diffusion.mode=de_novo", "diffusion.condition=dir_gap", "diffusion.hidden=16",
        "diffusion.layers=1", "diffusion.n_steps=10", "data.limit=32", "train.steps=2", "train.batch_size=8",
        "n_samples=2", "evaluate=false", "progress=false", f"out_dir={run}"])
    gen = run_experiment("generate", [f"model={run}", "n=3", "batch_size=3", "targets={dir_gap: [1.5, 3.0]}",
                                      "guidance=2", "evaluate=false", "progress=false", f"out_dir={tmp_path / 'gen'}"])
    assert gen["n"] == 3 and gen["targets"] == {"dir_gap": [1.5, 3.0]}
    for bad, why in (("targets={heat_ref: 1.0}", "conditioned on 'dir_gap'"), ("targets={dir_gap: [3, 1]}", "window")):
        with pytest.raises(Exception, match=why):
            run_experiment("generate", [f"model={run}", "n=2", bad, "progress=false", f"out_dir={tmp_path / 'bad'}"])


@pytest.mark.slow  # ~25 s idle, more on a busy machine; the net itself is tested above
def test_cli_periodic_denoiser(tmp_path):
    from jaxinv.cli import run_experiment

    run = tmp_path / "train"
    res = run_experiment("train_generative", [
        "model=diffcsp", "diffusion.denoiser=periodic", "diffusion.hidden=16", "diffusion.layers=1",
        "diffusion.n_steps=10", "data.limit=32", "train.steps=2", "train.batch_size=8", "n_samples=2",
        "evaluate=false", "progress=false", f"out_dir={run}"])
    assert res["steps"] == 2
    model, _ = CrystalDiffusion.load(run / "checkpoint")
    assert model.config.denoiser == "periodic" and isinstance(model.net, PeriodicNet)
    with pytest.raises(Exception, match="denoiser"):
        run_experiment("train_generative", ["model=diffcsp", "diffusion.denoiser=egnn", f"out_dir={tmp_path / 'bad'}"])
    with pytest.raises(ValueError, match="denoiser"):
        DiffusionConfig(denoiser="egnn").validate()


def test_cli_train_only(tmp_path):
    """n_samples=0 trains and saves without sampling (was a ZeroDivision/range error
    after training); sampling nothing from the library is a clear error."""
    import json

    from jaxinv.cli import run_experiment

    run = tmp_path / "train"
    res = run_experiment("train_generative", [
        "model=diffcsp", "diffusion.hidden=8", "diffusion.layers=1", "diffusion.n_steps=5", "data.limit=16",
        "train.steps=1", "train.batch_size=4", "n_samples=0", "evaluate=false", "progress=false", f"out_dir={run}"])
    assert res["steps"] == 1 and "sampling" not in res
    assert not (run / "samples").exists()
    # the same command with more steps resumes from train_state/ and logs only the new step
    res = run_experiment("train_generative", [
        "model=diffcsp", "diffusion.hidden=8", "diffusion.layers=1", "diffusion.n_steps=5", "data.limit=16",
        "train.steps=2", "train.batch_size=4", "n_samples=0", "evaluate=false", "progress=false", f"out_dir={run}"])
    assert res["steps"] == 2 and [h["step"] for h in res["history"]] == [1, 2]
    logged = [json.loads(line)["step"] for line in (run / "train_losses.jsonl").read_text().splitlines()]
    assert logged == [1, 2]
    model, params = CrystalDiffusion.load(run / "checkpoint")
    with pytest.raises(ValueError, match="zero structures|nothing to sample"):
        model.sample(params, jax.random.PRNGKey(0), compositions=[])


def test_learning_curve_collects_finished_runs(tmp_path):
    """bench_diffusion curve: a size whose run folder already holds a CSP score is read,
    not retrained; the record carries that run's match rate, steps and mean of the last
    losses, sizes come out in the order asked, and the PNG is written."""
    import json

    import bench_diffusion

    for n, rate in ((100, 0.2), (400, 0.35)):
        run = tmp_path / f"perov_5_n{n}"
        run.mkdir()
        history = [{"step": s, "total": 1.0 - s / 1e4, "frac": 0.5} for s in range(100, 1100, 100)]
        run.joinpath("results.json").write_text(json.dumps({
            "steps": 1000, "train_seconds": 12.0, "history": history,
            "sampling": {"n": 369, "seconds": 30.0},
            "csp": {"csp": {"match_rate": rate, "rmse": 0.1, "n_targets": 369}, "validity": 0.99}}))
    out = tmp_path / "curve.json"
    res = bench_diffusion.main(["curve", "--sizes", "400", "100", "--steps", "1000", "--root", str(tmp_path),
                                "--out", str(out)])
    assert [r["n_train_requested"] for r in res["runs"]] == [400, 100]
    assert [r["match_rate"] for r in res["runs"]] == [0.35, 0.2]
    assert res["runs"][0]["loss_last"]["total"] == pytest.approx(1.0 - 800 / 1e4)  # steps 600-1000
    assert json.loads(out.read_text())["runs"][1]["n_test"] == 369
    assert out.with_suffix(".png").stat().st_size > 1000
