"""The record of a run: every evaluated structure in an ASE database, and a convergence plot.

``history.db`` is an ASE SQLite database (``ase db history.db`` lists it; query
it with ``ase.db.connect``). One row per relaxed structure: the relaxed atoms and
the key-value pairs

    ident, generation, operator, parent1, parent2 (history ids, -1 for none),
    e_cell (energy, eV per cell; "energy" is reserved by ASE), enthalpy (eV/atom), fitness (at evaluation time),
    objective1 (the second objective, multi-objective runs only),
    status (relaxation status), steps (FIRE steps), relaxations (running total)

A generation is written before its checkpoint, so after a crash the database
may hold one generation more than the checkpoint; resuming deletes those rows
(:meth:`History.truncate`) and the resumed run writes them again, identically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxinv.crystal import Crystal
from jaxinv.relax.fire import STATUS_NAMES

__all__ = ["History", "convergence_curve", "plot_convergence", "hull_table", "most_stable", "plot_hull"]


class History:
    def __init__(self, path: str | Path):
        from ase.db import connect

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = connect(str(self.path), append=True)

    def write(self, state, operators: tuple[str, ...]) -> None:
        """Append the structures evaluated in the step that produced ``state``."""
        ev = state.evaluated
        pop = ev.population
        c = Crystal(*(np.asarray(x) for x in (pop.crystal.lattice, pop.crystal.frac, pop.crystal.numbers,
                                                pop.crystal.mask)), {})
        atoms = c.to_atoms()
        gen, total = int(state.generation), int(state.relaxations)
        obj = np.asarray(pop.objectives)
        with self.db:
            for b, a in enumerate(atoms):
                kv = dict(ident=int(pop.ident[b]), generation=gen, operator=operators[int(ev.operator[b])],
                          parent1=int(ev.parents[b, 0]), parent2=int(ev.parents[b, 1]),
                          e_cell=_finite(pop.energy[b]), enthalpy=_finite(pop.enthalpy[b]),
                          fitness=_finite(pop.fitness[b]),
                          status=STATUS_NAMES.get(int(ev.status[b]), "unknown"), steps=int(ev.steps[b]),
                          relaxations=total)
                if obj.shape[1] > 1:
                    kv["objective1"] = _finite(obj[b, 1])
                self.db.write(a, key_value_pairs=kv)

    def truncate(self, generation: int) -> int:
        """Delete rows of generations after ``generation``; returns how many."""
        ids = [row.id for row in self.db.select(f"generation>{int(generation)}")]
        if ids:
            self.db.delete(ids)
        return len(ids)

    def rows(self) -> list[dict]:
        """All rows' key-value pairs, in insertion order."""
        return [dict(row.key_value_pairs, id=row.id) for row in self.db.select(sort="id")]

    def __len__(self) -> int:
        return self.db.count()


def _finite(x) -> float:
    x = float(x)
    return x if np.isfinite(x) else 1e300  # ASE db stores no inf; 1e300 marks "failed"


def convergence_curve(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(number of relaxations, best fitness so far) after each evaluated structure."""
    f = np.array([r["fitness"] for r in rows], float)
    f[f >= 1e299] = np.inf
    return np.arange(1, len(f) + 1), np.minimum.accumulate(f) if len(f) else f


def plot_convergence(rows: list[dict], path: str | Path, title: str = "", target: float | None = None) -> Path:
    """Best fitness vs relaxations as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = convergence_curve(rows)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.step(x, y, where="post", label="best fitness")
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=0.8, label="target")
    ax.set_xlabel("local relaxations")
    ax.set_ylabel("best fitness (eV/atom)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def hull_table(path: str | Path, symprec: float = 0.1) -> list[dict]:
    """The convex hull of a variable-composition run, from its ``history.db``.

    The lowest enthalpy per atom of each reduced composition among the structures
    whose relaxation did not fail (a failed or non-finite row is never a phase),
    then a pymatgen ``PhaseDiagram`` of those: each row gives the reduced formula,
    the enthalpy (eV/atom), the formation enthalpy against the run's own elemental
    phases, the distance above the final hull (the fitness stored in the history is
    the distance at evaluation time, against the hull known then), ``on_hull``,
    the structure itself (pymatgen, ``structure``) and its space group (spglib,
    ``symprec`` Å), its history ident and how many structures of the composition
    were relaxed. Sorted by the fraction of the heavier element. Raises ``ValueError`` when an element has no
    successful structure, since no hull can be drawn then."""
    from ase.db import connect
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition
    from pymatgen.io.ase import AseAtomsAdaptor

    from jaxinv.metrics.structure import space_group_number

    db = connect(str(path))
    best: dict[str, tuple] = {}
    counts: dict[str, int] = {}
    for row in db.select():
        formula = Composition(row.formula).reduced_formula
        counts[formula] = counts.get(formula, 0) + 1
        h = float(row.enthalpy)
        if str(row.get("status", "")).startswith("failed") or not np.isfinite(h) or h >= 1e299:
            continue
        if formula not in best or h < best[formula][0]:
            best[formula] = (h, row.id, int(row.ident))
    elements = sorted({el for f in counts for el in Composition(f).elements}, key=lambda e: e.Z)
    pure = {Composition(f).elements[0] for f in best if len(Composition(f).elements) == 1}
    missing = [e for e in elements if e not in pure]
    if missing:
        tried = [sum(n for f, n in counts.items() if Composition(f).elements == [e]) for e in missing]
        raise ValueError(f"no successful structure of {', '.join(e.symbol for e in missing)} "
                         f"({', '.join(map(str, tried))} relaxed): no hull; run longer")
    entries = {f: PDEntry(Composition(f), h * Composition(f).num_atoms, name=f) for f, (h, _, _) in best.items()}
    pd = PhaseDiagram(list(entries.values()))
    table = []
    for f, (h, row_id, ident) in best.items():
        entry = entries[f]
        structure = AseAtomsAdaptor.get_structure(db.get_atoms(id=row_id))
        e_above = float(pd.get_e_above_hull(entry))
        table.append({"formula": f, "fraction": float(Composition(f).get_atomic_fraction(elements[-1])),
                      "enthalpy_per_atom": h, "formation_per_atom": float(pd.get_form_energy_per_atom(entry)),
                      "e_above_hull": e_above, "on_hull": e_above < 1e-8,
                      "structure": structure, "space_group": space_group_number(structure, symprec), "ident": ident,
                      "structures": counts[f]})
    return sorted(table, key=lambda r: (r["fraction"], r["formula"]))


def most_stable(table: list[dict]) -> dict:
    """The row of :func:`hull_table` a composition-range search reports as its result:
    the compound closest to the final hull, and among compounds on it the one with the
    lowest formation enthalpy (the deepest point of the hull). An element is the answer
    only when no compound was relaxed. The history's best fitness is a poorer choice:
    it is the distance to the hull known at evaluation time, so the first element or
    compound that touched an early hull keeps it (an Al-Ni run reported an fcc Ni cell
    that ended 0.073 eV/atom above the final hull)."""
    compounds = [r for r in table if 0.0 < r["fraction"] < 1.0] or table
    return min(compounds, key=lambda r: (not r["on_hull"], 0.0 if r["on_hull"] else r["e_above_hull"],
                                         r["formation_per_atom"]))


def plot_hull(table: list[dict], path: str | Path, title: str = "") -> Path:
    """Formation enthalpy against composition (PNG): the hull's phases joined by the
    hull, every other composition's best as an open marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pymatgen.core import Composition

    heavier = max((el for r in table for el in Composition(r["formula"]).elements), key=lambda e: e.Z)
    lighter = min((el for r in table for el in Composition(r["formula"]).elements), key=lambda e: e.Z)
    x = np.array([r["fraction"] for r in table])
    y = np.array([r["formation_per_atom"] for r in table])
    on = np.array([r["on_hull"] for r in table])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    # far-off compositions (poorly sampled, or unstable) would squash the hull: they are
    # drawn at the top edge as triangles
    top = max(0.05, 0.5 * abs(min(float(y.min()), 0.0)))
    off = y > top
    ax.plot(x[on], y[on], "-o", color="C0", label="convex hull")
    ax.plot(x[~on & ~off], y[~on & ~off], "o", mfc="none", color="C1", label="best of other compositions")
    if off.any():
        ax.plot(x[off], np.full(off.sum(), top), "^", mfc="none", color="C3",
                label=f"{int(off.sum())} above {top:.2f} eV/atom")
    ax.set_ylim(min(float(y.min()), 0.0) - 0.05, top + 0.03)
    for r in table:
        if r["on_hull"] and 0 < r["fraction"] < 1:
            ax.annotate(f"{r['formula']} ({r['space_group']})", (r["fraction"], r["formation_per_atom"]),
                        textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel(f"fraction of {heavier.symbol} in {lighter.symbol}-{heavier.symbol}")
    ax.set_ylabel("formation enthalpy (eV/atom)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
