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

__all__ = ["History", "convergence_curve", "plot_convergence"]


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
