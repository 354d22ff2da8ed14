"""Compositional validity by SMACT's rules, as CDVAE scores it.

A composition is valid when it has a single element, or (alloys) only metals, or
some assignment of one oxidation state per element is charge neutral for the
integer stoichiometry reduced by its gcd, and passes the Pauling test: every
cation is less electronegative than every anion.

Rule sets (``name`` of :func:`get_rules`):

``"smact14"`` (default)
    Exactly CDVAE's ``smact_validity`` with ``smact==2.2.1`` (its pinned version):
    the original 2014 SMACT oxidation states, SMACT 2.2.1's Pauling
    electronegativities and metal list (vendored in :mod:`._smact221`), and
    CDVAE's handling of a missing electronegativity (see :func:`_pauling_cdvae`).
``"icsd24"``
    What ``smact.screening.smact_validity(composition)`` does by default in smact
    4: oxidation states seen in >= 3 ICSD-2024 reports
    (``ICSD24OxStatesFilter().filter(consensus=3)``), current electronegativities,
    and a missing electronegativity fails the Pauling test.
``"smact4:<set>"``
    Any named set of the installed smact (``smact14``, ``icsd16``, ``icsd24``,
    ``pymatgen_sp``, ``wiki``) with smact 4's handling, i.e. what
    ``smact_validity(c, oxidation_states_set="<set>")`` returns.

Results are cached per (rules, reduced composition): ten thousand generated
samples usually have a few hundred distinct compositions.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = ["OxidationRules", "get_rules", "smact_valid", "composition_validity", "RULE_SETS", "reduced_counts",
           "compositions_of"]

RULE_SETS = ("smact14", "icsd24", "smact4:smact14", "smact4:icsd16", "smact4:icsd24", "smact4:pymatgen_sp",
             "smact4:wiki")
_MAX_COMBOS_PER_CHUNK = 1 << 20


@dataclass(frozen=True, eq=False)
class OxidationRules:
    """Data of one SMACT rule set.

    ``missing_eneg`` is ``"cdvae"`` (SMACT 2.2.1 under CDVAE's ``except TypeError``)
    or ``"fail"`` (smact 4: any element without an electronegativity fails).
    """

    name: str
    oxidation_states: dict  # symbol -> tuple of ints
    pauling_eneg: dict  # symbol -> float | None
    metals: frozenset
    missing_eneg: str = "fail"
    source: str = ""


@functools.cache
def get_rules(name: str = "smact14") -> OxidationRules:
    """The rule set called ``name`` (see the module docstring)."""
    if name == "smact14":
        from jaxinv.metrics import _smact221 as d

        return OxidationRules("smact14", d.OXIDATION_STATES, d.PAULING_ENEG, d.METALS, missing_eneg="cdvae",
                              source="SMACT 2.2.1 oxidation_states.txt + element_data.txt (vendored), as CDVAE")
    import smact

    if name == "icsd24":
        from smact.utils.oxidation import ICSD24OxStatesFilter

        df = ICSD24OxStatesFilter().filter(consensus=3, include_zero=False, commonality="low")
        states = {str(r["element"]): tuple(int(x) for x in str(r["oxidation_state"]).split())
                  for _, r in df.iterrows()}
        source = f"smact {smact.__version__} default: ICSD24OxStatesFilter().filter(consensus=3)"
    elif name.startswith("smact4:"):
        attr = {"smact14": "oxidation_states_smact14", "icsd16": "oxidation_states_icsd16",
                "icsd24": "oxidation_states_icsd24", "pymatgen_sp": "oxidation_states_sp",
                "wiki": "oxidation_states_wiki"}.get(name.split(":", 1)[1])
        if attr is None:
            raise ValueError(f"unknown smact oxidation-state set {name!r}; known: {', '.join(RULE_SETS)}")
        states = {}
        for sym in smact.ordered_elements(1, 103):
            ox = getattr(smact.Element(sym), attr, None)
            states[sym] = tuple(int(x) for x in (ox or ()))
        source = f"smact {smact.__version__} Element.{attr}"
    else:
        raise ValueError(f"unknown oxidation-state rule set {name!r}; known: {', '.join(RULE_SETS)}")
    eneg = {sym: smact.Element(sym).pauling_eneg for sym in smact.ordered_elements(1, 103)}
    return OxidationRules(name, states, eneg, frozenset(smact.metals), missing_eneg="fail", source=source)


def reduced_counts(composition) -> tuple[tuple[str, int], ...]:
    """((symbol, count), ...) sorted by atomic number, counts divided by their gcd.

    ``composition`` is a pymatgen ``Composition``/``Structure``, a formula string,
    or a mapping of element (symbol or Z) to count. This is CDVAE's
    ``Crystal.get_composition``: elements sorted by Z, integer counts over their gcd.
    """
    from pymatgen.core import Composition, Element

    if hasattr(composition, "composition"):
        composition = composition.composition
    if isinstance(composition, str):
        composition = Composition(composition)
    if isinstance(composition, Composition):
        items = [(el.symbol, el.Z, amt) for el, amt in composition.element_composition.items()]
    else:
        items = []
        for el, amt in dict(composition).items():
            e = Element.from_Z(int(el)) if isinstance(el, (int, np.integer)) else Element(str(el))
            items.append((e.symbol, e.Z, amt))
    counts = []
    for sym, z, amt in sorted(items, key=lambda t: t[1]):
        if amt <= 0:
            continue
        if abs(amt - round(amt)) > 1e-6:
            raise ValueError(f"non-integer amount {amt} of {sym}; SMACT validity needs an ordered structure")
        counts.append((sym, int(round(amt))))
    if not counts:
        raise ValueError("empty composition")
    g = math.gcd(*(c for _, c in counts))
    return tuple((s, c // g) for s, c in counts)


def smact_valid(composition, rules: str | OxidationRules = "smact14", use_pauling_test: bool = True,
                include_alloys: bool = True) -> bool:
    """Whether ``composition`` passes SMACT's charge-neutrality and Pauling tests."""
    rules = get_rules(rules) if isinstance(rules, str) else rules
    return _valid_cached(reduced_counts(composition), rules, use_pauling_test, include_alloys)


@functools.lru_cache(maxsize=200_000)
def _valid_cached(counts: tuple, rules: OxidationRules, use_pauling_test: bool, include_alloys: bool) -> bool:
    symbols = [s for s, _ in counts]
    if len(symbols) == 1:
        return True
    if include_alloys and all(s in rules.metals for s in symbols):
        return True
    ox_lists = [rules.oxidation_states.get(s, ()) for s in symbols]
    if any(len(o) == 0 for o in ox_lists):
        return False  # no oxidation states: itertools.product is empty, as in CDVAE and smact
    stoich = np.array([c for _, c in counts], np.int64)
    eneg = [rules.pauling_eneg.get(s) for s in symbols]
    if use_pauling_test and any(e is None for e in eneg):
        if rules.missing_eneg == "fail":
            # smact 4: eneg_states_test returns False for any pair with a missing value,
            # so only the fast paths above can pass
            return False
        return _valid_missing_eneg_cdvae(ox_lists, stoich, eneg)
    return _valid_vectorized(ox_lists, stoich, np.array(eneg, np.float64) if use_pauling_test else None)


def _combos(ox_lists):
    """All oxidation-state assignments, (n_combos, n_elements), in chunks."""
    sizes = [len(o) for o in ox_lists]
    total = int(np.prod(sizes))
    tables = [np.asarray(o, np.int64) for o in ox_lists]
    for start in range(0, total, _MAX_COMBOS_PER_CHUNK):
        idx = np.arange(start, min(total, start + _MAX_COMBOS_PER_CHUNK))
        digits = np.unravel_index(idx, sizes)
        yield np.stack([t[d] for t, d in zip(tables, digits)], axis=1)


def _valid_vectorized(ox_lists, stoich, eneg) -> bool:
    """Charge neutrality sum(ox * n) == 0 and (with ``eneg``) max eneg of cations <
    min eneg of anions, over every assignment at once."""
    for ox in _combos(ox_lists):
        neutral = ox @ stoich == 0
        if eneg is None:
            if neutral.any():
                return True
            continue
        ox = ox[neutral]
        if not len(ox):
            continue
        # a pair (cation i, anion j) fails when eneg_i >= eneg_j
        max_cation = np.where(ox > 0, eneg, -np.inf).max(axis=1)
        min_anion = np.where(ox < 0, eneg, np.inf).min(axis=1)
        if np.any(max_cation < min_anion):
            return True
    return False


def _pauling_cdvae(ox_states: Sequence[int], eneg: Sequence[float | None]) -> bool:
    """SMACT 2.2.1's ``eneg_states_test`` as CDVAE calls it.

    Pairs are visited in element order. A cation/anion pair compares the two
    electronegativities; when one is None that comparison raises TypeError, which
    CDVAE catches as "assume it is okay" (the whole test passes). A pair that is not
    cation/anion but has a None fails the test.
    """
    for (o1, e1), (o2, e2) in itertools.combinations(zip(ox_states, eneg), 2):
        if o1 > 0 and o2 < 0:
            if e1 is None or e2 is None:
                return True
            if e1 >= e2:
                return False
        elif o1 < 0 and o2 > 0:
            if e1 is None or e2 is None:
                return True
            if e1 <= e2:
                return False
        elif e1 is None or e2 is None:
            return False
    return True


def _valid_missing_eneg_cdvae(ox_lists, stoich, eneg) -> bool:
    """Slow path (an element without electronegativity, e.g. a noble gas)."""
    for ox in itertools.product(*ox_lists):
        if int(np.dot(ox, stoich)) == 0 and _pauling_cdvae(ox, eneg):
            return True
    return False


def compositions_of(samples) -> list:
    """pymatgen ``Composition`` of each structure, or of each row of a Crystal.

    A row's elements come in the order of its atoms and its amounts are floats,
    exactly as ``Structure.composition`` builds them (Magpie sums in that order).
    Anything else is passed to ``Composition`` (formulas, mappings, compositions).
    """
    from pymatgen.core import Composition, Element

    from jaxinv.crystal import Crystal

    if not isinstance(samples, Crystal):
        return [c.composition if hasattr(c, "composition") else Composition(c) for c in samples]
    c = samples.to_host()
    out = []
    for b in range(c.batch_size):
        amounts: dict = {}
        for z in c.numbers[b][c.mask[b]].tolist():
            amounts[z] = amounts.get(z, 0.0) + 1
        out.append(Composition({Element.from_Z(z): n for z, n in amounts.items()}))
    return out


def composition_validity(compositions: Iterable, rules: str | OxidationRules = "smact14") -> np.ndarray:
    """Boolean array: :func:`smact_valid` of each composition (or structure, or row of a Crystal)."""
    from jaxinv.crystal import Crystal

    rules = get_rules(rules) if isinstance(rules, str) else rules
    if isinstance(compositions, Crystal):
        compositions = compositions_of(compositions)
    out = []
    for c in compositions:
        try:
            out.append(smact_valid(c, rules))
        except ValueError:  # empty or fractional composition
            out.append(False)
    return np.array(out, dtype=bool)
