"""Class scores simulated from labels, the way YAMNet's pooled scores really differ from them.

Training the label-grounded decoder and validating without audio both need what the encoder
would output for a clip whose labels are known. On real clips whose label is one AudioSet
class, YAMNet

* scores the labelled class high but not always;
* fires on the class's ontology ancestors at least as much ("Animal", "Domestic animals, pets"
  for a dog), and often on its children ("Bark", "Bow-wow") and siblings;
* fires on several unrelated classes.

Labels alone, or labels with a little uniform noise, are too clean: validation on them
flatters retrieval. :class:`Simulation` adds the ontology and the unrelated intruders, with
parameters fitted by ``bench/fits/simulation_check.py`` (see docs/experiments.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .audioset import Hierarchy


@dataclass(frozen=True)
class Simulation:
    """Parameters of the label -> pooled score noise (fitted with bench/fits/simulation_check.py)."""

    hit_beta: tuple[float, float] = (0.6, 4.0)  # a present class scores 1 - Beta(a, b) ...
    miss_rate: float = 0.15  # ... or, this often, U(0, miss_high): missed or scored low
    miss_high: float = 0.6
    child_rate: float = 0.55  # a labelled class's child fires this often, at score * U(lo, 1)
    child_low: float = 0.3
    child_max: float = float("inf")  # ... but at most this many of them fire on average
    sibling_rate: float = 0.5  # a sibling fires this often at U(sibling_range)
    sibling_range: tuple[float, float] = (0.1, 0.8)
    sibling_max: float = float("inf")  # at most this many siblings fire on average
    intruders: float = 5.5  # unrelated classes per clip ~ Poisson(intruders)
    intruder_beta: tuple[float, float] = (0.6, 2.0)  # their scores: 0.1 + 0.9 Beta(a, b)
    prior_floor: float = 0.1  # intruder prior = (1 - floor) label frequency + floor uniform
    ancestor_keep: tuple[float, float] = (
        0.95,
        1.1,
    )  # an ancestor scores >= its firing descendants x U(...)


def _present(rng: np.random.Generator, shape: tuple[int, ...], sim: Simulation) -> np.ndarray:
    """Scores of classes that are really present ``shape``."""
    hit = 1.0 - rng.beta(*sim.hit_beta, size=shape)
    miss = rng.uniform(0.0, sim.miss_high, size=shape)
    return np.where(rng.random(shape) < sim.miss_rate, miss, hit).astype(np.float32)


def simulate(
    labels: np.ndarray,
    rng: np.random.Generator,
    prior: np.ndarray | None,
    hierarchy: Hierarchy | None,
    sim: Simulation = Simulation(),
) -> np.ndarray:
    """Clip scores ``[N, C]`` an encoder might give clips with multi-hot ``labels [N, C]``.

    ``prior [C]``: how often each class is labelled in the corpus (the usual intruders);
    ``hierarchy``: the ontology (None: no children, siblings or ancestors fire).
    """
    lab = np.asarray(labels) > 0
    n, c = lab.shape
    s = np.where(lab, _present(rng, (n, c), sim), 0.0).astype(np.float32)
    rows = np.arange(n)
    if hierarchy is not None:
        t = s.copy()  # related classes follow the scores of the labelled ones
        for i in np.flatnonzero(lab.any(axis=0)):
            who = np.flatnonzero(lab[:, i])
            kids = np.flatnonzero(hierarchy.children[i])
            if len(kids):
                rate = min(sim.child_rate, sim.child_max / len(kids))
                fire = rng.random((len(who), len(kids))) < rate
                val = t[who, i][:, None] * rng.uniform(sim.child_low, 1.0, size=fire.shape)
                s[np.ix_(who, kids)] = np.maximum(s[np.ix_(who, kids)], np.where(fire, val, 0.0))
            sibs = np.flatnonzero(hierarchy.siblings[i])
            if len(sibs):
                rate = min(sim.sibling_rate, sim.sibling_max / len(sibs))
                fire = rng.random((len(who), len(sibs))) < rate
                val = rng.uniform(*sim.sibling_range, size=fire.shape)
                s[np.ix_(who, sibs)] = np.maximum(s[np.ix_(who, sibs)], np.where(fire, val, 0.0))
    prior64 = None if prior is None else np.asarray(prior, dtype=np.float64)
    p = np.full(c, 1.0 / c) if prior64 is None else prior64 / max(float(prior64.sum()), 1e-12)
    p = (1.0 - sim.prior_floor) * p + sim.prior_floor / c
    counts = rng.poisson(sim.intruders, size=n)
    who = np.repeat(rows, counts)
    cls = rng.choice(c, size=len(who), p=p)
    val = (0.1 + 0.9 * rng.beta(*sim.intruder_beta, size=len(who))).astype(np.float32)
    np.maximum.at(s, (who, cls), val)
    if hierarchy is not None:  # whatever fires lifts its ancestors (YAMNet: "Animal" ~1.0)
        s = lift_ancestors(s, hierarchy, rng, sim)
    return s


def lift_ancestors(
    s: np.ndarray, hierarchy: Hierarchy, rng: np.random.Generator, sim: Simulation
) -> np.ndarray:
    """Each ancestor a scores at least ``max(s[:, descendants of a]) * U(ancestor_keep)`` (at most
    1): YAMNet's "Animal" tops its dog, and so outranks the labelled class in most real clips."""
    out = s.copy()
    desc = hierarchy.ancestors.T  # desc[a, i]: i below a
    for a in np.flatnonzero(desc.any(axis=1)):
        below = s[:, desc[a]].max(axis=1)
        lift = np.minimum(below * rng.uniform(*sim.ancestor_keep, size=len(s)), 1.0)
        out[:, a] = np.maximum(out[:, a], lift)
    return out
