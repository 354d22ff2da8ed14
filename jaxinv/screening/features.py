"""Composition and site features as JAX tables and pure functions.

Magpie (Ward et al., npj Comput. Mater. 2, 16028 (2016)) describes a composition
by statistics of 22 elemental properties; matminer's
``ElementProperty.from_preset("magpie")`` is the reference implementation. Here
the elemental data (matminer's ``MagpieData`` with its default imputation of
missing values by the property's mean) is read once into a dense
``(119, 22)`` array indexed by atomic number, and the six statistics are computed
from a padded :class:`~jaxinv.crystal.Crystal` (``numbers``, ``mask``) with
``jnp`` ops, so featurizing 10^5 candidates is one jitted call instead of 10^5
Python loops. :func:`magpie_features` agrees with matminer to float precision
(tested).

Cubic ABX3 and A/B-swapped BAX3 share one composition but not one structure
(724 of the 3,787 perov_5 entries have a twin of the same formula), so a pure
composition model cannot tell them apart. :func:`site_features` adds the cheapest
structural information that does: every elemental property averaged with weights
equal to each atom's effective coordination number (neighbors within 1.2x its
nearest-neighbor distance: 12 on the A site, 6 on the B site of a perovskite).
"""
from __future__ import annotations

import functools

import numpy as np

import jax
import jax.numpy as jnp

__all__ = ["MAGPIE_PROPERTIES", "MAGPIE_STATS", "magpie_table", "magpie_feature_names", "magpie_features",
           "site_features", "ionic_features", "oxidation_features", "OXIDATION_FEATURES", "featurize", "FEATURE_KINDS",
           "N_MAGPIE", "POTENTIAL_FEATURES", "potential_features", "pool_atoms", "sevennet_features"]

MAGPIE_PROPERTIES = ("Number", "MendeleevNumber", "AtomicWeight", "MeltingT", "Column", "Row", "CovalentRadius",
                     "Electronegativity", "NsValence", "NpValence", "NdValence", "NfValence", "NValence",
                     "NsUnfilled", "NpUnfilled", "NdUnfilled", "NfUnfilled", "NUnfilled", "GSvolume_pa",
                     "GSbandgap", "GSmagmom", "SpaceGroupNumber")
MAGPIE_STATS = ("minimum", "maximum", "range", "mean", "avg_dev", "mode")
N_MAGPIE = len(MAGPIE_PROPERTIES) * len(MAGPIE_STATS)
Z_MAX = 118


@functools.lru_cache(maxsize=1)
def magpie_table() -> np.ndarray:
    """(119, 22) float64: row Z holds the Magpie properties of element Z (row 0 unused, NaN
    for elements Magpie lacks, i.e. Z > 103)."""
    from matminer.utils.data import MagpieData
    from pymatgen.core import Element

    data = MagpieData(impute_nan=True)
    table = np.full((Z_MAX + 1, len(MAGPIE_PROPERTIES)), np.nan)
    for z in range(1, Z_MAX + 1):
        el = Element.from_Z(z)
        for k, prop in enumerate(MAGPIE_PROPERTIES):
            try:
                table[z, k] = float(data.get_elemental_property(el, prop))
            except (KeyError, TypeError, ValueError):
                pass
    return table


def magpie_feature_names() -> list[str]:
    """Names in matminer's order: ``'MagpieData <stat> <property>'`` with the property loop outermost."""
    return [f"MagpieData {s} {p}" for p in MAGPIE_PROPERTIES for s in MAGPIE_STATS]


def _fractions(numbers, mask):
    """Per structure: the distinct elements' atom fractions, laid on the atom slots.

    For each atom slot i, ``first[i]`` says it is the first slot of its element
    and ``frac[i]`` is that element's atom fraction, so a statistic weighted over
    distinct elements is a weighted sum over ``first`` slots."""
    n = mask.sum(-1, keepdims=True)
    same = (numbers[..., :, None] == numbers[..., None, :]) & mask[..., :, None] & mask[..., None, :]
    count = same.sum(-1)
    earlier = jnp.tril(same, k=-1).any(-1)
    first = mask & ~earlier
    return first, count / jnp.maximum(n, 1)


@jax.jit
def magpie_features(numbers, mask):
    """Magpie features, (B, 132), of padded compositions (atomic numbers, mask).

    Statistics are over the distinct elements weighted by atom fraction, as in
    matminer: mean = sum w x, avg_dev = sum w |x - mean|, mode = the smallest
    value among the most abundant elements."""
    table = jnp.asarray(magpie_table())
    x = table[numbers]  # (B, N, P)
    first, w = _fractions(numbers, mask)
    wf = jnp.where(first, w, 0.0)[..., None]
    present = first[..., None]
    big = jnp.asarray(1e30, x.dtype)
    xmin = jnp.min(jnp.where(present, x, big), axis=-2)
    xmax = jnp.max(jnp.where(present, x, -big), axis=-2)
    mean = jnp.sum(wf * jnp.where(present, x, 0.0), axis=-2)
    dev = jnp.sum(wf * jnp.where(present, jnp.abs(x - mean[..., None, :]), 0.0), axis=-2)
    wmax = jnp.max(jnp.where(first, w, -1.0), axis=-1, keepdims=True)
    top = first & jnp.isclose(w, wmax)
    mode = jnp.min(jnp.where(top[..., None], x, big), axis=-2)
    stats = jnp.stack([xmin, xmax, xmax - xmin, mean, dev, mode], axis=-1)  # (B, P, 6)
    return stats.reshape(stats.shape[:-2] + (-1,))


def coordination_numbers(crystal, graph, tolerance: float = 1.2):
    """Effective coordination of every atom: neighbors within ``tolerance`` times its
    nearest-neighbor distance, (B, N) (0 on padded atoms)."""
    from jaxinv.graph import edge_vectors
    from jaxinv.potentials.base import safe_norm

    d = safe_norm(edge_vectors(crystal, graph))
    d = jnp.where(graph.mask, d, jnp.inf)
    n = crystal.numbers.shape[-1]
    seg = jax.vmap(lambda v, r: jax.ops.segment_min(v, r, num_segments=n))
    dmin = seg(d, graph.receivers)  # (B, N)
    near = graph.mask & (d <= tolerance * jnp.take_along_axis(dmin, graph.receivers, axis=-1))
    count = jax.vmap(lambda v, r: jax.ops.segment_sum(v, r, num_segments=n))(near.astype(d.dtype), graph.receivers)
    return jnp.where(crystal.mask, count, 0.0)


def site_features(crystal, graph, tolerance: float = 1.2):
    """Coordination-weighted means of the 22 Magpie properties, plus the mean and
    spread of coordination numbers, (B, 24)."""
    cn = coordination_numbers(crystal, graph, tolerance)
    x = jnp.asarray(magpie_table())[crystal.numbers]
    wsum = jnp.maximum(cn.sum(-1, keepdims=True), 1e-9)
    weighted = jnp.sum(cn[..., None] * jnp.where(crystal.mask[..., None], x, 0.0), axis=-2) / wsum
    n = jnp.maximum(crystal.mask.sum(-1), 1)
    cn_mean = cn.sum(-1) / n
    cn_std = jnp.sqrt(jnp.sum(jnp.where(crystal.mask, (cn - cn_mean[:, None]) ** 2, 0.0), -1) / n)
    return jnp.concatenate([weighted, cn_mean[:, None], cn_std[:, None]], axis=-1)


def _valence_electrons(z: int) -> int:
    """Electrons outside the noble-gas core *and* any filled 4f/5f shell.

    Magpie's ``NValence`` counts a full f shell as valence (Hf: 18, Ta: 19, Bi:
    29), so Ta5+ would look like 14 electrons left instead of d0; an f14 shell
    is core for every cation chemistry we care about."""
    t = magpie_table()
    col = {p: MAGPIE_PROPERTIES.index(p) for p in ("NsValence", "NpValence", "NdValence", "NfValence")}
    nf = t[z, col["NfValence"]]
    return int(round(t[z, col["NsValence"]] + t[z, col["NpValence"]] + t[z, col["NdValence"]]
                     + (nf if nf < 14 else 0)))


def _shell(z: int, q: int) -> int:
    """Closed-shell kind of ion Z^q: 0 noble gas / d0, 1 d10, 2 d10 s2 (lone pair),
    3 an anion with an octet, -1 open shell."""
    left = _valence_electrons(z) - q
    if q > 0:
        return {0: 0, 10: 1, 12: 2}.get(left, -1)
    if q < 0:
        return 3 if left == 8 else -1
    return -1


def _closed_shell(z: int, q: int) -> bool:
    """Whether ion Z^q has a closed shell: cations left with 0 (d0, noble gas),
    10 (d10) or 12 (d10 s2 lone pair) valence electrons, anions with an octet."""
    return _shell(z, q) >= 0


@functools.lru_cache(maxsize=200_000)
def _assignment(composition: tuple) -> tuple[float, float, tuple | None]:
    """(balanced, closed-shell balanced, oxidation state per element or None).

    ``composition``: ((Z, count), ...). States are pymatgen's
    ``Element.oxidation_states``. Among balancing assignments a closed-shell one
    is preferred, then the one with most elements in a common oxidation state
    (``common_oxidation_states``), then the smallest total |charge|; that
    choice is what the radius and ionization features below describe."""
    import itertools

    from pymatgen.core import Element

    zs, ns = zip(*composition)
    els = [Element.from_Z(z) for z in zs]
    states = [[q for q in el.oxidation_states if q != 0] for el in els]
    if not all(states):
        return 0.0, 0.0, None
    best, best_key, any_closed = None, None, False
    for combo in itertools.product(*states):
        if sum(q * n for q, n in zip(combo, ns)) != 0:
            continue
        closed = all(_closed_shell(z, q) for z, q in zip(zs, combo))
        any_closed |= closed
        key = (closed, sum(q in el.common_oxidation_states for q, el in zip(combo, els)),
               -sum(abs(q) * n for q, n in zip(combo, ns)))
        if best_key is None or key > best_key:
            best, best_key = combo, key
    if best is None:
        return 0.0, 0.0, None
    return 1.0, float(any_closed), tuple(int(q) for q in best)


def _ionic_flags(composition: tuple) -> tuple[float, float]:
    return _assignment(composition)[:2]


def ionic_features(numbers, mask) -> np.ndarray:
    """(B, 2) host-side flags: the composition can be charge balanced with
    pymatgen's oxidation states; it can be balanced with every ion closed-shell.

    The second is what separates insulators from metals among Castelli's
    perovskites (every candidate of their screen has d0/d10 cations): on perov_5,
    522 of the 3,787 structures pass and they hold 40 of the 43 water-splitting hits.
    Magpie's own "ionic compound" features (matminer ``IonProperty``) include the first."""
    numbers, mask = np.asarray(numbers), np.asarray(mask)
    out = np.zeros((len(numbers), 2), np.float32)
    for b, (z, m) in enumerate(zip(numbers, mask)):
        u, n = np.unique(z[m], return_counts=True)
        out[b] = _ionic_flags(tuple(zip(u.tolist(), n.tolist())))
    return out


@functools.lru_cache(maxsize=4096)
def _ion_data(z: int, q: int) -> tuple[float, float, float]:
    """(radius Å, q-th ionization energy eV, electron affinity eV) of ion Z^q.

    Radius: pymatgen's Shannon radius of the ion (its average over listed
    coordinations), else the atomic radius. For a cation the q-th ionization
    energy is what an electron gains falling back onto it, i.e. a crude
    position of the empty cation level the conduction band is made of; for an
    anion the neutral atom's electron affinity places the filled anion level
    of the valence band."""
    import warnings

    from pymatgen.core import Element, Species

    el = Element.from_Z(z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            r = Species(el.symbol, q).ionic_radius
        except Exception:
            r = None
        r = float(r) if r else float(el.atomic_radius or 1.5)
        ie = float("nan")
        if q > 0:
            try:
                ies = el.ionization_energies
                ie = float(ies[q - 1]) if len(ies) >= q and ies[q - 1] is not None else float("nan")
            except Exception:
                pass
        ea = float("nan")
        if q < 0:
            try:
                ea = float(el.electron_affinity)
            except Exception:
                pass
    return r, ie, ea


OXIDATION_FEATURES = ("balanced", "closed_shell", "frac_d0", "frac_d10", "frac_s2", "frac_open",
                      "log_tolerance", "bond_strain_max", "bond_strain_min", "r_ratio_low_cn", "r_ratio_high_cn",
                      "chi_anion_minus_cation_max", "chi_anion_minus_cation_mean", "ie_cation_max", "ie_cation_min",
                      "ea_anion_mean")


def oxidation_features(crystal, graph, tolerance: float = 1.2) -> np.ndarray:
    """(B, 16) features of the most plausible oxidation-state assignment (see
    :func:`_assignment`) on the structure; names in ``OXIDATION_FEATURES``.

    * ``balanced``, ``closed_shell``: the flags of :func:`ionic_features`;
    * ``frac_*``: fractions of cation atoms that are d0/noble gas, d10, d10s2,
      open shell (open-shell cations make metals or small gaps);
    * bond strain ``s_i = (r_i + r_X) / d_i`` per cation, with ``d_i`` its
      nearest anion distance and ``r_X`` the mean anion radius: 1 when the
      bond has its ideal ionic length, > 1 compressed. ``log_tolerance`` is
      ``log(s_A / s_B)`` for the highest- and lowest-coordinated cations, which
      for a perovskite is the log of Goldschmidt's tolerance factor
      ``t = (r_A + r_X) / (sqrt2 (r_B + r_X))`` (its A-X over B-X distance is
      sqrt2); ``r_ratio_*`` are ``r_cation / r_X`` of those two cations (the
      octahedral factor for B);
    * Pauling electronegativity differences, cation ionization energies and
      the anions' electron affinity: crude band-edge positions.

    Compositions with no balancing assignment get zeros (their flags say so).
    Everything per-composition is cached; the geometry part is one ``jnp`` pass."""
    from jaxinv.graph import edge_vectors
    from jaxinv.potentials.base import safe_norm

    c = crystal.to_host()
    numbers, mask = np.asarray(c.numbers), np.asarray(c.mask)
    b, n = numbers.shape
    q = np.zeros((b, n))
    radius = np.zeros((b, n))
    flags = np.zeros((b, 2))
    for i, (z, m) in enumerate(zip(numbers, mask)):
        u, cnt = np.unique(z[m], return_counts=True)
        bal, closed, states = _assignment(tuple(zip(u.tolist(), cnt.tolist())))
        flags[i] = bal, closed
        if states is not None:
            qz = dict(zip(u.tolist(), states))
            for a in np.flatnonzero(m):
                q[i, a] = qz[int(z[a])]
                radius[i, a] = _ion_data(int(z[a]), int(q[i, a]))[0]
    d = np.asarray(safe_norm(edge_vectors(c, graph)))
    s_idx, r_idx, emask = (np.asarray(a) for a in (graph.senders, graph.receivers, graph.mask))
    qs = np.take_along_axis(q, s_idx, 1)
    qr = np.take_along_axis(q, r_idx, 1)
    opposite = emask & (qs * qr < 0)
    dmin = np.full((b, n), np.inf)
    rows = np.broadcast_to(np.arange(b)[:, None], s_idx.shape)
    np.minimum.at(dmin, (rows[opposite], r_idx[opposite]), d[opposite])
    cn = np.asarray(coordination_numbers(c, graph, tolerance))
    chi = magpie_table()[:, MAGPIE_PROPERTIES.index("Electronegativity")]  # Pauling, Magpie's imputation
    out = np.zeros((b, len(OXIDATION_FEATURES)))
    out[:, :2] = flags
    for i in range(b):
        cat = mask[i] & (q[i] > 0)
        an = mask[i] & (q[i] < 0)
        if not cat.any() or not an.any():
            continue
        z = numbers[i]
        kinds = np.array([_shell(int(z[a]), int(q[i, a])) for a in np.flatnonzero(cat)])
        out[i, 2:6] = [np.mean(kinds == 0), np.mean(kinds == 1), np.mean(kinds == 2), np.mean(kinds < 0)]
        r_x = radius[i, an].mean()
        ok = cat & np.isfinite(dmin[i])
        if ok.any():
            strain = (radius[i, ok] + r_x) / dmin[i, ok]
            hi = np.flatnonzero(ok)[np.argmax(cn[i, ok])]
            lo = np.flatnonzero(ok)[np.argmin(cn[i, ok])]
            s_hi, s_lo = (radius[i, hi] + r_x) / dmin[i, hi], (radius[i, lo] + r_x) / dmin[i, lo]
            out[i, 6:11] = [np.log(s_hi / s_lo), strain.max(), strain.min(), radius[i, lo] / r_x,
                            radius[i, hi] / r_x]
        chi_c, chi_a = chi[z[cat]], chi[z[an]]
        out[i, 11:13] = [np.nanmean(chi_a) - np.nanmax(chi_c), np.nanmean(chi_a) - np.nanmean(chi_c)]
        ie = np.array([_ion_data(int(z[a]), int(q[i, a]))[1] for a in np.flatnonzero(cat)])
        ea = np.array([_ion_data(int(z[a]), int(q[i, a]))[2] for a in np.flatnonzero(an)])
        out[i, 13:16] = [np.nanmax(ie) if np.isfinite(ie).any() else 0.0,
                         np.nanmin(ie) if np.isfinite(ie).any() else 0.0,
                         np.nanmean(ea) if np.isfinite(ea).any() else 0.0]
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


# feature kinds named after a NequIP-family potential of the registry: its learned features
POTENTIAL_FEATURES = ("sevennet0", "sevennet_l3i5")
FEATURE_KINDS = ("magpie", "magpie_site", "magpie_ionic", "magpie_site_ionic", "magpie_oxi", "magpie_site_oxi",
                 *POTENTIAL_FEATURES)


@functools.cache
def _registered(name: str):
    from jaxinv.potentials import load_potential

    return load_potential(name)


@functools.lru_cache(maxsize=8)
def _descriptor_fn(config):
    from jaxinv.potentials.nequip import nequip_descriptor_fn

    return jax.jit(nequip_descriptor_fn(config))


def potential_features(crystal, potential="sevennet0", batch_size: int = 64) -> np.ndarray:
    """A NequIP-family potential's learned description of each structure: the masked
    mean and spread over atoms of its per-atom invariant features
    (:func:`~jaxinv.potentials.nequip.nequip_descriptor_fn`; 2 x 1,089 columns for
    SevenNet-0), from one forward pass of the frozen model.

    ``potential``: a loaded :class:`~jaxinv.potentials.Potential` whose metadata
    holds a NequIP config (a relaxation stage passes the one it relaxes with, so the
    parameters are loaded once), or a registry name (``'sevennet0'``,
    ``'sevennet_l3i5'``). One neighbor graph over all structures gives every batch the
    same edge capacity, and the last batch is padded with repeats, so the pass
    compiles once. 373 structures/s on one CPU core for perov_5 with SevenNet-0
    (benchmarks/RESULTS.md, issue 25 probe)."""
    from jaxinv.graph import neighbor_graph
    from jaxinv.potentials.base import check_species

    pot = _registered(potential) if isinstance(potential, str) else potential
    config = pot.metadata.get("config") if pot.metadata else None
    if config is None or not hasattr(config, "num_layers"):
        raise ValueError(f"potential {pot.name!r} is not a NequIP-family model; its features cannot be taken")
    descriptors = _descriptor_fn(config)
    c = crystal.to_host()
    check_species(pot, c)
    graph = neighbor_graph(c, pot.cutoff)
    out = []
    for start in range(0, c.batch_size, batch_size):
        idx = np.minimum(np.arange(start, start + batch_size), c.batch_size - 1)
        part = c[idx]
        x = np.asarray(descriptors(pot.params, part, jax.tree_util.tree_map(lambda a: a[idx], graph)), np.float64)
        out.append(pool_atoms(x, part.mask)[:min(batch_size, c.batch_size - start)])
    return np.concatenate(out).astype(np.float32)


def pool_atoms(x, mask) -> np.ndarray:
    """Per-structure mean and spread (standard deviation) of per-atom features
    ``x`` (B, N, F) over the real atoms: (B, 2F)."""
    w = np.asarray(mask, np.float64)[..., None]
    n = np.maximum(w.sum(1), 1.0)
    mean = (x * w).sum(1) / n
    spread = np.sqrt((((x - mean[:, None]) ** 2) * w).sum(1) / n)
    return np.concatenate([mean, spread], axis=-1)


def sevennet_features(crystal, batch_size: int = 64) -> np.ndarray:
    """:func:`potential_features` of SevenNet-0 (the ``sevennet0`` feature kind)."""
    return potential_features(crystal, "sevennet0", batch_size)


def featurize(crystal, kind: str = "magpie", cutoff: float = 5.0, batch_size: int = 4096) -> np.ndarray:
    """Host-side features of a whole Crystal batch, computed in chunks.

    ``kind``: ``'magpie'`` (composition only, 132 columns), ``'magpie_site'``
    (+ 24 coordination-weighted columns; needs geometry), and either with
    ``'_ionic'`` (+ 2 charge-balance flags, :func:`ionic_features`) or ``'_oxi'``
    (+ 16 oxidation-state-aware columns, :func:`oxidation_features`; needs geometry);
    ``'sevennet0'`` / ``'sevennet_l3i5'``: that frozen universal potential's learned
    features (:func:`potential_features`; 2,178 columns for SevenNet-0; geometry,
    elements the potential knows)."""
    from jaxinv.graph import neighbor_graph

    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; use one of {FEATURE_KINDS}")
    if kind in POTENTIAL_FEATURES:
        return potential_features(crystal, kind)
    c = crystal.to_host()
    out = []
    for start in range(0, c.batch_size, batch_size):
        part = c[start:start + batch_size]
        f = np.asarray(magpie_features(part.numbers, part.mask))
        g = neighbor_graph(part, cutoff) if ("site" in kind or kind.endswith("oxi")) else None
        if "site" in kind:
            f = np.concatenate([f, np.asarray(site_features(part, g))], axis=-1)
        if kind.endswith("ionic"):
            f = np.concatenate([f, ionic_features(part.numbers, part.mask)], axis=-1)
        if kind.endswith("oxi"):
            f = np.concatenate([f, oxidation_features(part, g)], axis=-1)
        out.append(f)
    return np.concatenate(out).astype(np.float32)
