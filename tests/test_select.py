"""The random-search and SPOS-style evolutionary selection: budget, distinct candidates, one score
call per architecture, determinism, and evolution beating random sampling on a toy objective."""

import pytest

from dsnas.errors import DsnasError
from dsnas.select import Candidate, best, evolution_search, random_search

SIZES = [4] * 12
COST = [0.0, 1.0, 2.0, 3.0]  # op k costs k per block


def cost(arch):
    return sum(COST[k] for k in arch)


def counting(score):
    calls = []

    def wrapped(arch):
        calls.append(arch)
        return score(arch)

    return wrapped, calls


def toy_score(arch):
    """Best when every block takes op 2, the most expensive op the budget below allows in all blocks."""
    return float(sum(k == 2 for k in arch)) + 0.01 * sum(arch)


@pytest.mark.parametrize("search", ["random", "spos"])
def test_candidates_distinct_within_budget_scored_once(search):
    score, calls = counting(toy_score)
    if search == "random":
        found = random_search(SIZES, cost, 15.0, score, 60, seed=1)
    else:
        found = evolution_search(SIZES, cost, 15.0, score, 60, population=12, seed=1)
    archs = [c.choices for c in found]
    assert len(found) == 60 and len(set(archs)) == 60
    assert all(cost(a) <= 15.0 for a in archs)
    assert calls == archs  # one score call per candidate, in evaluation order
    assert all(c.cost == cost(c.choices) and c.score == toy_score(c.choices) for c in found)


@pytest.mark.parametrize("search", [random_search, evolution_search])
def test_seeded_and_deterministic(search):
    a = [c.choices for c in search(SIZES, cost, 15.0, toy_score, 30, seed=4)]
    b = [c.choices for c in search(SIZES, cost, 15.0, toy_score, 30, seed=4)]
    c = [c.choices for c in search(SIZES, cost, 15.0, toy_score, 30, seed=5)]
    assert a == b and a != c


def test_evolution_generations_and_population():
    found = evolution_search(SIZES, cost, None, toy_score, 50, population=20, seed=0)
    per_gen = [sum(c.generation == g for c in found) for g in range(3)]
    assert per_gen == [20, 20, 10]  # the last generation is cut to the evaluation count


def test_evolution_beats_random_at_equal_evaluations():
    """Breeding from the best must find better architectures than uniform sampling."""
    sizes = [4] * 20
    budget = 30.0  # op 2 everywhere costs 40: the optimum mixes op 2 with cheaper ops

    def score(arch):
        return float(sum(k == 2 for k in arch))

    evo = [best(evolution_search(sizes, cost, budget, score, 300, population=30, seed=s)).score for s in range(5)]
    rnd = [best(random_search(sizes, cost, budget, score, 300, seed=s)).score for s in range(5)]
    assert min(evo) > max(rnd)
    assert max(evo) == 15.0  # 15 blocks of op 2 (cost 30) and 5 of op 0 reach the budget exactly


def test_children_are_bred_from_the_best():
    """At mutation_prob 0, every block of a generation-1 child comes from one of the top
    architectures of generation 0 (mutants are copies that get rejected as duplicates)."""
    found = evolution_search(SIZES, cost, None, toy_score, 40, population=20, mutation_prob=0.0, seed=2)
    parents = sorted([c for c in found if c.generation == 0], key=lambda c: -c.score)[:4]
    for child in (c for c in found if c.generation == 1):
        for i, gene in enumerate(child.choices):
            assert gene in {p.choices[i] for p in parents}


def test_small_space_is_exhausted_without_looping():
    found = random_search([2, 2], cost, None, toy_score, 10, seed=0)
    assert sorted(c.choices for c in found) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    found = evolution_search([2, 2], cost, 1.0, toy_score, 10, population=2, seed=0)
    assert sorted(c.choices for c in found) == [(0, 0), (0, 1), (1, 0)]


def test_budget_below_the_cheapest_architecture_is_a_clear_error():
    with pytest.raises(DsnasError, match="no architecture fits the budget of 0.5 "):
        random_search([4, 4], lambda a: 1.0 + cost(a), 0.5, toy_score, 5)


def test_best_prefers_score_then_cost_then_order():
    cands = [Candidate((0,), 2.0, 50.0), Candidate((1,), 1.0, 50.0), Candidate((2,), 1.0, 50.0),
             Candidate((3,), 0.5, 49.0)]
    assert best(cands).choices == (1,)


def test_random_search_is_uniform_over_admissible_architectures():
    """Rejection sampling keeps the draw uniform among the architectures within the budget."""
    counts = {}
    for s in range(300):
        for c in random_search([3, 3], cost, 2.0, toy_score, 1, seed=s):
            counts[c.choices] = counts.get(c.choices, 0) + 1
    admissible = [(a, b) for a in range(3) for b in range(3) if COST[a] + COST[b] <= 2.0]
    assert sorted(counts) == sorted(admissible)
    expected = 300 / len(admissible)
    chi2 = sum((v - expected) ** 2 / expected for v in counts.values())
    assert chi2 < 20.5  # p ~ 0.001 for 5 degrees of freedom
