"""Picking an architecture from a weight-sharing supernet without architecture logits: the two
baselines users would otherwise reach for.

- ``random``: draw architectures uniformly among those within the budget, keep the best.
- ``spos`` (Guo et al., "Single Path One-Shot"): an evolutionary search; each generation keeps
  the best architectures seen so far and breeds new ones from them by mutation (each block
  resampled with probability ``mutation_prob``) and crossover (each block taken from either of
  two parents), rejecting any child over the budget or already evaluated.

Architectures are tuples of candidate indices, one per block. Both searches call ``score`` once
per distinct architecture (held-out top-1 with inherited weights, in the training loop) and
return every evaluated `Candidate` in the order evaluated.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

from .errors import DsnasError

Arch = tuple[int, ...]


@dataclass
class Candidate:
    choices: Arch
    cost: float           # in the unit of the budget (MFLOPs, M params or ms)
    score: float
    generation: int = 0


def best(candidates: list[Candidate]) -> Candidate:
    """Highest score; ties go to the cheaper, then the earlier-evaluated architecture."""
    return min(enumerate(candidates), key=lambda ic: (-ic[1].score, ic[1].cost, ic[0]))[1]


class _Pool:
    """Architectures within the budget, each evaluated at most once."""

    def __init__(self, sizes: list[int], cost: Callable[[Arch], float], budget: float | None,
                 score: Callable[[Arch], float], rng: random.Random):
        self.sizes, self.cost, self.score, self.rng = list(sizes), cost, score, rng
        self.budget = math.inf if not budget else float(budget)
        zeros = (0,) * len(sizes)  # costs add up over blocks: take each block's cheapest op
        cheapest = cost(tuple(min(range(n), key=lambda k, i=i: cost(zeros[:i] + (k,) + zeros[i + 1:]))
                              for i, n in enumerate(sizes)))
        if cheapest > self.budget:
            raise DsnasError(f"no architecture fits the budget of {self.budget:g} (the cheapest costs "
                             f"{cheapest:.3f})")
        self.evaluated: dict[Arch, Candidate] = {}
        self.order: list[Candidate] = []

    def admissible(self, arch: Arch, pending=()) -> bool:
        return arch not in self.evaluated and arch not in pending and self.cost(arch) <= self.budget

    def draw(self, make: Callable[[], Arch], pending=(), tries: int = 2000) -> Arch | None:
        """The first admissible architecture ``make`` produces within ``tries``, else None."""
        for _ in range(tries):
            arch = make()
            if self.admissible(arch, pending):
                return arch
        return None

    def uniform(self) -> Arch:
        return tuple(self.rng.randrange(n) for n in self.sizes)

    def evaluate(self, arch: Arch, generation: int = 0) -> Candidate:
        cand = Candidate(arch, float(self.cost(arch)), float(self.score(arch)), generation)
        self.evaluated[arch] = cand
        self.order.append(cand)
        return cand


def random_search(sizes: list[int], cost: Callable[[Arch], float], budget: float | None,
                  score: Callable[[Arch], float], n: int, seed: int = 0) -> list[Candidate]:
    """Evaluate up to ``n`` distinct architectures drawn uniformly among those within the budget
    (fewer only if the sampler stops finding new ones)."""
    pool = _Pool(sizes, cost, budget, score, random.Random(seed))
    while len(pool.order) < n:
        arch = pool.draw(pool.uniform)
        if arch is None:
            break
        pool.evaluate(arch)
    return pool.order


def evolution_search(sizes: list[int], cost: Callable[[Arch], float], budget: float | None,
                     score: Callable[[Arch], float], n: int, population: int = 20, mutation_prob: float = 0.1,
                     seed: int = 0) -> list[Candidate]:
    """SPOS-style evolution with ``n`` evaluations in all: a uniform first generation of
    ``population``, then generations of ``population // 2`` mutants and as many crossovers of
    the top ``max(2, population // 5)`` architectures seen so far (topped up with uniform draws
    when breeding stops finding new admissible children)."""
    rng = random.Random(seed)
    pool = _Pool(sizes, cost, budget, score, rng)
    top_k = max(2, population // 5)
    generation = 0
    while len(pool.order) < n:
        want = min(population, n - len(pool.order))
        children: list[Arch] = []
        if generation > 0:
            parents = sorted(pool.order, key=lambda c: (-c.score, c.cost))[:top_k]

            def mutate() -> Arch:
                p = rng.choice(parents).choices
                return tuple(rng.randrange(k) if rng.random() < mutation_prob else g for g, k in zip(p, sizes))

            def cross() -> Arch:
                a, b = rng.sample(parents, 2) if len(parents) > 1 else (parents[0], parents[0])
                return tuple(x if rng.random() < 0.5 else y for x, y in zip(a.choices, b.choices))

            for make, quota in ((mutate, want // 2), (cross, want)):
                while len(children) < quota:
                    arch = pool.draw(make, children, tries=200)
                    if arch is None:
                        break
                    children.append(arch)
        while len(children) < want:
            arch = pool.draw(pool.uniform, children)
            if arch is None:
                break
            children.append(arch)
        if not children:
            break
        for arch in children:
            pool.evaluate(arch, generation)
        generation += 1
    return pool.order


def selection_summary(method: str, found: list[Candidate], held_out_images: int, wall_s: float,
                      metric: str = "mflops") -> dict:
    """What a ranking found, for ``metrics.json``; the best candidate's cost is ``best_<metric>``."""
    win = best(found)
    return {"method": method, "evaluated": len(found), "held_out_images": held_out_images,
            "best_held_out_top1": round(win.score, 2), f"best_{metric}": round(win.cost, 3),
            "generations": max(c.generation for c in found) + 1, "wall_s": round(wall_s, 1)}
