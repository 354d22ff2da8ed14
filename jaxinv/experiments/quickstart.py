"""Quickstart: a small inverse-design screen, the ``screen`` experiment with small defaults.

    jaxinv run quickstart                       # about a few minutes on a laptop CPU, offline
    jaxinv run quickstart out_dir=runs/qs       # run the same line again to resume

Enumerates elemental substitutions of 50 perov_5 prototypes with pymatgen's
substitution probabilities, trains a quick ensemble on perov_5 (``magpie_site_oxi``
features, the direct gap as P(gap > 0) plus a Gaussian given gap > 0) and keeps the
charge-neutral candidates whose predicted heat of formation (<= 1 eV per 5-atom cell,
Castelli's 0.2 eV/atom) and direct gap (1.5-3 eV) can pass within 2σ (a gap needs
P(gap > 0) >= 0.005); writes ``ranked.csv``, CIFs of the best candidates and ``report.md``
with plots. Every field of ``jaxinv/configs/quickstart.yaml`` is a ``screen`` field.
"""
from __future__ import annotations

from jaxinv.cli import load_experiment

_screen = load_experiment("screen")
Config = _screen.Config
main = _screen.main
