"""Running a search that can be trusted: checkpoints, history, progress, convergence plot.

:func:`run_search` is the loop around the driver (:class:`~jaxinv.search.core.Search`):
it repeats ``state = search.step(state)`` until a budget of
local relaxations, a number of generations or a target fitness is reached.
After every step it appends the evaluated structures to ``history.db`` (see
:mod:`jaxinv.search.history`) and saves the whole state with orbax; a run
killed at any point and restarted with the same ``out_dir`` and settings
continues the same trajectory (the PRNG key is part of the state) without
losing or duplicating an evaluated structure.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

import jax

from jaxinv.checkpoint import Checkpointer
from jaxinv.crystal import Crystal
from jaxinv.search.core import OPERATORS, Evaluated, Population, Search, SearchState
from jaxinv.search.history import History, plot_convergence

__all__ = ["run_search", "state_to_tree", "state_from_tree"]

log = logging.getLogger("jaxinv.search")


# ------------------------------------------------------------ serialisation
def _crystal_tree(c: Crystal) -> dict:
    return {"lattice": c.lattice, "frac": c.frac, "numbers": c.numbers, "mask": c.mask}


def _pop_tree(p: Population) -> dict:
    d = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "crystal"}
    d["crystal"] = _crystal_tree(p.crystal)
    return d


def _pop_from(d: dict) -> Population:
    c = d["crystal"]
    crystal = Crystal(*(np.asarray(c[k]) for k in ("lattice", "frac", "numbers", "mask")), {})
    return Population(crystal=crystal, **{k: np.asarray(v) for k, v in d.items() if k != "crystal"})


def state_to_tree(state: SearchState) -> dict:
    """A nested dict of host arrays (orbax-friendly); the algorithm's state is a dict of
    its fields, populations among them as nested dicts."""
    ev = state.evaluated
    own = {f.name: getattr(state.algorithm, f.name) for f in dataclasses.fields(state.algorithm)}
    tree = {"key": state.key, "generation": state.generation, "relaxations": state.relaxations,
            "next_id": state.next_id, "population": _pop_tree(state.population), "best": _pop_tree(state.best),
            "evaluated": {"population": _pop_tree(ev.population), "operator": ev.operator, "parents": ev.parents,
                          "status": ev.status, "steps": ev.steps},
            "algorithm": {k: _pop_tree(v) if isinstance(v, Population) else np.asarray(v) for k, v in own.items()}}
    return jax.tree_util.tree_map(np.asarray, tree)


def state_from_tree(tree: dict, state_type: type) -> SearchState:
    """The state :func:`state_to_tree` saved; ``state_type`` is the algorithm's state class."""
    ev = tree["evaluated"]
    own = state_type(**{k: _pop_from(v) if isinstance(v, dict) else np.asarray(v)
                        for k, v in tree["algorithm"].items()})
    return SearchState(
        key=np.asarray(tree["key"]), generation=np.int64(tree["generation"]),
        relaxations=np.int64(tree["relaxations"]), next_id=np.int64(tree["next_id"]),
        population=_pop_from(tree["population"]), best=_pop_from(tree["best"]),
        evaluated=Evaluated(_pop_from(ev["population"]), *(np.asarray(ev[k]) for k in
                                                             ("operator", "parents", "status", "steps"))),
        algorithm=own)


# ---------------------------------------------------------------------- run
def run_search(search: Search, seed: int = 0, max_relaxations: int = 1000, max_generations: int = 10**6,
               target: float | None = None, out_dir: str | Path | None = None, checkpoint: bool = True,
               progress: bool = True, fingerprint: str = "", plot: bool = True, callback=None) -> SearchState:
    """Run ``search`` until ``max_relaxations`` local relaxations, ``max_generations``
    steps or a best fitness <= ``target``. With ``out_dir``: history database,
    orbax checkpoints (resumed when present and ``fingerprint`` matches) and
    ``convergence.png``. ``callback(state)`` runs after every step; returning True stops."""
    history = ckpt = None
    state = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        history = History(out_dir / "history.db")
        if checkpoint:
            ckpt = Checkpointer(out_dir / "checkpoint", fingerprint=f"{search.name}:{seed}:{fingerprint}",
                                max_to_keep=2)
            restored = ckpt.restore()
            if restored is not None:
                state = state_from_tree(restored[1], search.algorithm.state_type)
                dropped = history.truncate(int(state.generation))
                log.info("resumed %s at generation %d (%d relaxations; %d history rows of an unsaved "
                         "generation dropped)", search.name, int(state.generation), int(state.relaxations), dropped)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_relaxations, desc=search.name, unit="relax")
    t0 = time.perf_counter()

    def record(s):
        if history is not None:
            history.write(s, OPERATORS)
        if ckpt is not None:
            ckpt.save(int(s.generation), state_to_tree(s))
        if bar is not None:
            bar.n = min(int(s.relaxations), max_relaxations)
            bar.set_postfix(gen=int(s.generation), best=f"{float(s.best.fitness[0]):.4f}")
            bar.refresh()

    try:
        if state is None:
            state = search.init(jax.random.PRNGKey(seed))
            record(state)
        elif bar is not None:
            bar.n = min(int(state.relaxations), max_relaxations)
        while True:
            done = int(state.relaxations) >= max_relaxations or int(state.generation) >= max_generations
            if target is not None and float(state.best.fitness[0]) <= target:
                done = True
            if callback is not None and callback(state):
                done = True
            if done:
                break
            state = search.step(state)
            record(state)
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
    log.info("%s: %d generations, %d relaxations, best fitness %.5f, %.1f s", search.name, int(state.generation),
             int(state.relaxations), float(state.best.fitness[0]), time.perf_counter() - t0)
    if history is not None and plot:
        plot_convergence(history.rows(), out_dir / "convergence.png", title=search.name, target=target)
    return state
