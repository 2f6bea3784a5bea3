"""The DSNAS estimator, alpha updates, early fix and derivation on toy models."""

import itertools
import math

import pytest
import torch
from torch import nn

from dsnas import DSNAS, Choice
from dsnas.search import dsnas_alpha_grad


class Const(nn.Module):
    """Ignores its input's values and outputs a fixed vector (the loss is then linear in the gates)."""

    def __init__(self, value):
        super().__init__()
        self.register_buffer("value", torch.as_tensor(value, dtype=torch.float32))

    def forward(self, x):
        return x * 0 + self.value


class SumOfChoices(nn.Module):
    def __init__(self, values):  # values[i][k]: output vector of candidate k of block i
        super().__init__()
        self.blocks = nn.ModuleList(Choice([Const(v) for v in row]) for row in values)
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, x):
        return sum(block(x) for block in self.blocks)


def _toy(seed=0, blocks=3, k=3, dim=4):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(blocks, k, dim, generator=g)
    model = SumOfChoices(values)
    search = DSNAS(model, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        for a in search.alphas:
            a.copy_(torch.randn(k, generator=g))
    w = torch.randn(dim, generator=g)
    return model, search, w


def _exact_grad(model, search, w):
    """Gradient of E_s[L] w.r.t. alpha by enumerating every path (L linear in the gates)."""
    alphas = [a.detach().clone().requires_grad_(True) for a in search.alphas]
    expected = 0.0
    x = torch.zeros(4)
    for path in itertools.product(*[range(len(c)) for c in search.choices]):
        search.set_path(list(path))
        with torch.no_grad():
            loss = torch.dot(w, model(x))
        prob = math.prod(torch.softmax(a, 0)[s] for a, s in zip(alphas, path))
        expected = expected + prob * loss
    return torch.autograd.grad(expected, alphas)


def test_estimator_expectation_equals_exact_gradient():
    """Averaging the DSNAS gradient over all paths, weighted by their probability, gives
    exactly the gradient of the expected loss (linear-in-masks case)."""
    model, search, w = _toy()
    exact = _exact_grad(model, search, w)
    probs = [p.clone() for p in search.probs()]
    mean = [torch.zeros_like(a) for a in search.alphas]
    x = torch.zeros(4)
    for path in itertools.product(*[range(len(c)) for c in search.choices]):
        search.arm(list(path))
        torch.dot(w, model(x)).backward()
        search.compute_arch_grads()
        prob = math.prod(float(p[s]) for p, s in zip(probs, path))
        for m, a in zip(mean, search.alphas):
            m += prob * a.grad
    for m, e in zip(mean, exact):
        torch.testing.assert_close(m, e, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_estimator_monte_carlo_matches_exact_gradient():
    """sample() draws from softmax(alpha): the Monte Carlo mean converges to the exact gradient."""
    model, search, w = _toy(seed=3)
    exact = _exact_grad(model, search, w)
    n = 6000
    total = [torch.zeros_like(a) for a in search.alphas]
    sq = [torch.zeros_like(a) for a in search.alphas]
    x = torch.zeros(4)
    for _ in range(n):
        search.sample()
        torch.dot(w, model(x)).backward()
        search.compute_arch_grads()
        for t, s, a in zip(total, sq, search.alphas):
            t += a.grad
            s += a.grad ** 2
    for t, s, e in zip(total, sq, exact):
        mean = t / n
        stderr = ((s / n - mean ** 2).clamp_min(0) / n).sqrt()
        assert torch.all((mean - e).abs() <= 5 * stderr + 1e-4), (mean, e, stderr)


def test_alpha_grad_formula():
    alpha = torch.tensor([0.5, -1.0, 2.0])
    p = torch.softmax(alpha, 0)
    g = dsnas_alpha_grad(alpha, 2, torch.tensor(3.0))
    torch.testing.assert_close(g, (torch.tensor([0.0, 0.0, 1.0]) - p) * 3.0)
    assert abs(float(g.sum())) < 1e-6  # softmax gradients sum to zero


def test_arch_grads_written_before_step_and_move_alpha_to_better_op():
    """One candidate fits the target, the others do not: a few hundred search steps (alpha.grad
    set from the loss, then the Adam step) make alpha prefer it in every block."""
    torch.manual_seed(0)
    target = torch.randn(8)

    class Block(nn.Module):
        def __init__(self, good):
            super().__init__()
            self.good = good
            self.scale = nn.Parameter(torch.ones(8))

        def forward(self, x):
            return x * self.scale if self.good else x + 0.5

    model = nn.Sequential(*[Choice({"bad_a": Block(False), "good": Block(True), "bad_b": Block(False)})
                            for _ in range(3)])
    search = DSNAS(model, generator=torch.Generator().manual_seed(0))
    arch_opt = torch.optim.Adam(search.alphas, lr=0.05, betas=(0.5, 0.999))
    weight_opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(300):
        search.sample()
        loss = ((model(target.clone()) - target) ** 2).mean()
        weight_opt.zero_grad(set_to_none=True)
        arch_opt.zero_grad(set_to_none=True)
        loss.backward()
        search.compute_arch_grads()
        assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in search.alphas)
        arch_opt.step()
        weight_opt.step()
    assert search.derive() == [1, 1, 1]
    assert all(float(p[1]) > 0.6 for p in search.probs())


def test_unsampled_candidates_get_no_gradient():
    model = nn.Sequential(Choice([nn.Linear(4, 4), nn.Linear(4, 4)]), Choice([nn.Linear(4, 4), nn.Linear(4, 4)]))
    search = DSNAS(model, generator=torch.Generator().manual_seed(0))
    path = search.sample()
    model(torch.randn(2, 4)).sum().backward()
    for block, s in zip(search.choices, path):
        for k, op in enumerate(block.candidates):
            assert (op.weight.grad is None) == (k != s)


def _set_probs(search, block, probs):
    with torch.no_grad():
        search.alphas[block].copy_(torch.log(torch.tensor(probs)))


def test_early_fix_picks_argmax_only_past_threshold():
    model = nn.Sequential(*[Choice([nn.Identity() for _ in range(4)]) for _ in range(3)])
    search = DSNAS(model, early_fix=0.3)
    _set_probs(search, 0, [0.10, 0.15, 0.46, 0.29])   # gap 0.17: stays open
    _set_probs(search, 1, [0.05, 0.10, 0.55, 0.30])   # gap 0.25: stays open
    _set_probs(search, 2, [0.05, 0.05, 0.18, 0.72])   # gap 0.54: fixed to 3 (not to candidate 1)
    assert search.early_fix() == [2]
    assert search.fixed() == [None, None, 3]
    _set_probs(search, 1, [0.04, 0.03, 0.62, 0.31])   # gap 0.31 >= 0.3: fixed to its argmax, 2
    assert search.early_fix() == [1]
    assert search.fixed() == [None, 2, 3]
    # fixed blocks run their op, ungated, and get no alpha gradient
    path = search.sample()
    assert path[1:] == [2, 3]
    assert search.choices[2].mask is None


def _budget_search(budget):
    model = nn.Sequential(*[Choice({"cheap": nn.Identity(), "dear": nn.Identity()}) for _ in range(3)])
    search = DSNAS(model, costs=[torch.tensor([1.0, 10.0])] * 3, budget=budget, early_fix=0.3)
    with torch.no_grad():
        for a in search.alphas:
            a.copy_(torch.tensor([0.0, 2.0]))  # every block is sure of its dear op: p = 0.12 / 0.88
    return search


def test_early_fix_keeps_a_completion_within_the_budget():
    # budget 21: one dear block (10 + 1 + 1 = 12) fits, two (10 + 10 + 1 = 21) fit, three (30) do not
    search = _budget_search(21.0)
    newly = search.early_fix()
    assert search.cheapest_completion() <= 21.0
    assert newly == [1, 2] and search.fixed() == [None, 1, 1]  # the first block stays open
    # the open block cannot take its dear op; the derived child is repaired to fit
    assert search.derive_within() == [0, 1, 1]


def test_early_fix_without_budget_fixes_every_confident_block():
    search = _budget_search(None)
    assert search.early_fix() == [0, 1, 2]
    assert search.derive_within() == [1, 1, 1]  # no budget: plain argmax


def test_early_fix_leaves_every_block_open_when_none_fits():
    search = _budget_search(11.5)  # one dear block alone already breaks it: 10 + 1 + 1 = 12
    assert search.early_fix() == []
    assert search.fixed() == [None, None, None]
    assert search.derive_within() == [0, 0, 0]


def test_fixed_blocks_keep_alpha_and_derive_uses_fixed_op():
    model, search, w = _toy()
    search.choices[0].fix(2)
    with torch.no_grad():
        search.alphas[0].copy_(torch.tensor([5.0, 0.0, 0.0]))  # argmax 0, but the block is fixed to 2
    before = search.alphas[0].detach().clone()
    search.sample()
    torch.dot(w, model(torch.zeros(4))).backward()
    search.compute_arch_grads()
    assert search.alphas[0].grad is None
    assert torch.equal(search.alphas[0].detach(), before)
    assert search.derive()[0] == 2


def test_resource_penalty_pushes_toward_cheap_ops_and_derive_within_budget():
    model = nn.Sequential(*[Choice({"cheap": nn.Identity(), "dear": nn.Identity()}) for _ in range(4)])
    costs = [torch.tensor([1.0, 10.0])] * 4
    search = DSNAS(model, costs=costs, budget=5.0, penalty=0.05, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(search.alphas, lr=0.05)
    for _ in range(200):
        search.sample()
        # no task signal: the loss does not depend on the choice
        (model(torch.ones(3, requires_grad=True)).sum() * 0).backward()
        opt.zero_grad(set_to_none=True)
        search.compute_arch_grads()
        opt.step()
    assert search.derive() == [0, 0, 0, 0]
    # derive_within repairs an argmax that is over budget, cheapest loss of probability first
    search2 = DSNAS(model, costs=costs)
    with torch.no_grad():
        for a, pref in zip(search2.alphas, [3.0, 2.0, 1.0, 0.5]):
            a.copy_(torch.tensor([0.0, pref]))
    assert search2.derive() == [1, 1, 1, 1]
    within = search2.derive_within(25.0)  # 4 x 10 = 40 > 25: two blocks must switch
    assert search2.path_cost(within) <= 25.0
    assert within == [1, 1, 0, 0]


def test_state_dict_round_trip():
    model, search, _ = _toy()
    search.choices[1].fix(2)
    state = search.state_dict()
    model2, search2, _ = _toy(seed=9)
    search2.load_state_dict(state)
    assert search2.fixed() == search.fixed()
    for a, b in zip(search.alphas, search2.alphas):
        assert torch.equal(a.detach(), b.detach())


def test_no_choice_modules_is_an_error():
    with pytest.raises(ValueError):
        DSNAS(nn.Linear(2, 2))
