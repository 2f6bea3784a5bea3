"""Choice modules that share a label are one decision: one alpha, one sampled candidate run by
all of them, fixed together, and one gate mask whose gradient is the sum of their rewards."""

import pytest
import torch
from torch import nn

from dsnas import DSNAS, Choice
from dsnas.choice import decisions
from dsnas.cost import cost_table
from dsnas.search import dsnas_alpha_grad


class Const(nn.Module):
    """Outputs ``value`` everywhere: a loss that sums the gated outputs is linear in the masks."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full_like(x, self.value)


def _linear_net(label_b: str = "x") -> nn.Sequential:
    """Three Choices over the same names; the first two carry label "x" unless told otherwise."""
    return nn.Sequential(Choice({"a": Const(1.0), "b": Const(-2.0), "c": Const(0.5)}, "x"),
                         Choice({"a": Const(3.0), "b": Const(1.0), "c": Const(-1.0)}, label_b),
                         Choice({"a": Const(0.0), "b": Const(2.0), "c": Const(1.0)}, "y"))


class SumOfGates(nn.Module):
    """Every Choice sees the same input; the loss is the sum of all their (gated) outputs."""

    def __init__(self, choices: nn.Sequential):
        super().__init__()
        self.choices = choices

    def forward(self, x):
        return sum(c(x).sum() for c in self.choices)


def test_tied_modules_move_together_and_share_one_mask():
    net = _linear_net()
    search = DSNAS(net)
    assert search.labels == ["x", "y"] and [len(a) for a in search.alphas] == [3, 3]
    search.arm([2, 1])
    assert net[0].active == net[1].active == 2 and net[2].active == 1
    assert net[0].mask is net[1].mask is not None and net[2].mask is not net[0].mask
    search.fix_all([1, 0])
    assert net[0].fixed == net[1].fixed == 1 and net[2].fixed == 0 and search.fixed() == [1, 0]
    state = search.state_dict()
    assert list(state["alphas"]) == ["x", "y"] and state["fixed"] == {"x": 1, "y": 0}


def test_the_reward_of_a_tied_decision_is_the_sum_over_its_modules():
    x = torch.randn(2, 3)
    tied, untied = SumOfGates(_linear_net()), SumOfGates(_linear_net("x2"))
    search, separate = DSNAS(tied), DSNAS(untied)
    search.arm([1, 2])
    separate.arm([1, 1, 2])
    tied(x).backward()
    untied(x).backward()
    rewards = [c.mask.grad for c in separate.choices]
    assert torch.allclose(search.choices[0].mask.grad, rewards[0] + rewards[1])
    search.compute_arch_grads()
    assert torch.allclose(search.alphas[0].grad, dsnas_alpha_grad(search.alphas[0], 1, rewards[0] + rewards[1]))


def test_the_estimator_is_exact_on_a_tied_decision_linear_in_its_masks():
    """E over the sampled candidate of the DSNAS gradient equals the exact gradient of E[L]."""
    x = torch.ones(1, 4)
    net = SumOfGates(_linear_net())
    search = DSNAS(net)
    with torch.no_grad():
        search.alphas[0].copy_(torch.tensor([0.3, -0.5, 0.9]))
    p = torch.softmax(search.alphas[0].detach(), 0)
    losses = torch.zeros(3)
    expected_grad = torch.zeros(3)
    for s in range(3):
        search.arm([s, 0])
        loss = net(x)
        loss.backward()
        search.compute_arch_grads()
        losses[s] = loss.detach()  # the "y" block runs "a" (output 0) every time
        expected_grad += p[s] * search.alphas[0].grad
    alpha = search.alphas[0].detach().clone().requires_grad_(True)
    exact = torch.autograd.grad((torch.softmax(alpha, 0) * losses).sum(), alpha)[0]
    assert torch.allclose(expected_grad, exact, atol=1e-6)


def test_a_tied_decision_costs_the_sum_of_its_modules():
    net = nn.Sequential(Choice({"wide": nn.Linear(4, 4), "none": nn.Identity()}, "x"),
                        Choice({"wide": nn.Linear(4, 4), "none": nn.Identity()}, "y"),
                        Choice({"wide": nn.Linear(4, 4), "none": nn.Identity()}, "x"))
    table = cost_table(net, torch.zeros(1, 4))
    assert table.labels == ["x", "y"]
    assert table.entries["mflops"] == [[2 * 16 / 1e6, 0.0], [16 / 1e6, 0.0]]
    assert table.entries["params_m"] == [[2 * 20 / 1e6, 0.0], [20 / 1e6, 0.0]]
    assert table.base["params_m"] == pytest.approx(0.0, abs=1e-12)


def test_tied_modules_must_name_the_same_candidates():
    net = nn.Sequential(Choice({"a": nn.Identity(), "b": nn.Identity()}, "x"),
                        Choice({"a": nn.Identity(), "c": nn.Identity()}, "x"))
    with pytest.raises(ValueError, match="labelled 'x' name different candidates"):
        DSNAS(net)
    assert len(decisions(_linear_net())) == 2
