"""The ShuffleNetV2 search space, its child networks, and the `Choice` module with its gate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import random_arch, slow
from dsnas import DSNAS, Choice, ShuffleNetChild, ShuffleNetSpace
from dsnas.spaces.shufflenet import OPS, make_op

SMALL = dict(num_classes=10, in_channels=3, input_size=32, width=0.25)


# --- ops ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", OPS)
def test_op_stride1_keeps_shape(name):
    op = make_op(name, 32, 32, 1)
    y = op(torch.randn(2, 32, 16, 16))
    assert y.shape == (2, 32, 16, 16)


@pytest.mark.parametrize("name", OPS)
def test_op_stride2_halves_resolution_and_changes_channels(name):
    op = make_op(name, 16, 40, 2)
    y = op(torch.randn(2, 16, 16, 16))
    assert y.shape == (2, 40, 8, 8)


def test_make_op_rejects_unknown_name_and_bad_stride1_shapes():
    with pytest.raises(ValueError, match="shuffle_9x9"):
        make_op("shuffle_9x9", 16, 16, 1)
    with pytest.raises(ValueError, match="cin == cout"):
        make_op("shuffle_3x3", 16, 32, 1)


def test_ops_differ_in_kernel_size():
    """The four candidates really are different ops (not the same unit four times)."""
    counts = {name: sum(p.numel() for p in make_op(name, 32, 32, 1).parameters()) for name in OPS}
    assert counts["shuffle_3x3"] < counts["shuffle_5x5"] < counts["shuffle_7x7"]
    assert counts["shuffle_xception"] != counts["shuffle_3x3"]


# --- the space ------------------------------------------------------------------------------

def _last_feature_map(model: nn.Module, x: torch.Tensor) -> torch.Size:
    shapes = []
    handle = model.head.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        handle.remove()
    return shapes[-1]


def test_small_input_chosen_automatically_for_28px():
    space = ShuffleNetSpace(num_classes=10, in_channels=1, input_size=28, width=0.25)
    assert space.settings.small_input is True
    assert space.stem[0].stride == (1, 1)
    out = space.eval()(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)


def test_224px_uses_strided_stem():
    space = ShuffleNetSpace(num_classes=10, input_size=224, width=0.25)
    assert space.settings.small_input is False
    assert space.stem[0].stride == (2, 2)


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_small_images_end_at_least_2x2(size, channels):
    space = ShuffleNetSpace(num_classes=10, in_channels=channels, input_size=size, width=0.25)
    shape = _last_feature_map(space, torch.randn(1, channels, size, size))
    assert shape[-1] >= 2 and shape[-2] >= 2


def test_space_has_20_choice_blocks_of_4_ops():
    space = ShuffleNetSpace(**SMALL)
    assert space.num_blocks == 20
    assert all(isinstance(c, Choice) and c.names == list(OPS) for c in space.choices)


# --- child == supernet --------------------------------------------------------------------

def _perturb_bn(model: nn.Module, steps: int = 3, seed: int = 0) -> None:
    """A few train-mode forwards so BN running stats are no longer the 0/1 defaults."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(4, 3, 32, 32, generator=g) * 2 + 0.5)


def _assert_child_matches(space: ShuffleNetSpace, choices: list[str]) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(123))
    DSNAS(space).set_path(choices)
    space.eval()
    child = space.child(choices)
    child.eval()
    assert isinstance(child, ShuffleNetChild)
    assert not any(isinstance(m, Choice) for m in child.modules())
    assert child.choices == choices
    with torch.no_grad():
        want, got = space(x), child(x)
    assert got.shape == (2, 10)
    assert torch.allclose(want, got, atol=1e-5), float((want - got).abs().max())


@pytest.mark.parametrize("seed", [0, *slow(1, 2)])
def test_child_equals_supernet(seed):
    torch.manual_seed(seed)
    space = ShuffleNetSpace(**SMALL)
    _assert_child_matches(space, random_arch(seed))


@pytest.mark.parametrize("seed", [3, *slow(4)])
def test_child_equals_supernet_after_bn_stats_change(seed):
    torch.manual_seed(seed)
    space = ShuffleNetSpace(**SMALL)
    choices = random_arch(seed)
    DSNAS(space).set_path(choices)
    before = space.choices[0].candidates[space.choices[0].index(choices[0])].branch_b[0][1].running_mean.clone()
    _perturb_bn(space, seed=seed)
    after = space.choices[0].candidates[space.choices[0].index(choices[0])].branch_b[0][1].running_mean
    assert not torch.equal(before, after)  # the stats really moved
    _assert_child_matches(space, choices)


def test_child_accepts_indices_and_differs_between_architectures():
    torch.manual_seed(0)
    space = ShuffleNetSpace(**SMALL, init="kaiming")  # aligned candidates start as nearly one function
    child = space.child([3] * 20)
    assert child.choices == ["shuffle_xception"] * 20
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = space.child(["shuffle_3x3"] * 20).eval()(x)
        b = child.eval()(x)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("seed", [0, *slow(5)])
def test_child_param_count_matches_cost_table(seed):
    space = ShuffleNetSpace(**SMALL)
    choices = random_arch(seed)
    child = space.child(choices)
    n = sum(p.numel() for p in child.parameters())
    assert n == round(space.costs.total(choices, "params_m") * 1e6)
    assert n < sum(p.numel() for p in space.parameters())


# --- initialisation ---------------------------------------------------------------------------

def _candidate_outputs(space, x):
    """Each block's candidates applied to the input that block sees on an all-3x3 path (eval mode)."""
    space.eval()
    outs = []
    with torch.no_grad():
        h = space.stem(x)
        for block in space.choices:
            outs.append([op(h) for op in block.candidates])
            h = block.candidates[0](h)
    return outs


def _relative_spread(ys):
    ref = ys[0]
    return max(float((y - ref).norm() / ref.norm()) for y in ys[1:])


def test_aligned_init_starts_the_candidates_of_a_block_as_one_function():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    aligned = [_relative_spread(ys) for ys in _candidate_outputs(ShuffleNetSpace(**SMALL), x)]
    torch.manual_seed(0)
    kaiming = [_relative_spread(ys) for ys in _candidate_outputs(ShuffleNetSpace(**SMALL, init="kaiming"), x)]
    assert max(aligned) < 0.05, aligned  # they differ only by BN's eps in the extra BN layers
    assert sum(kaiming) / len(kaiming) > 0.3, kaiming  # independent draws: far apart


def test_aligned_init_stride1_units_start_as_identity_on_their_branch():
    torch.manual_seed(0)
    space = ShuffleNetSpace(**SMALL).eval()
    unit = space.choices[1].candidates[2]  # a stride-1 7x7 unit
    x = torch.randn(2, unit.branch_b[0][0].in_channels * 2, 8, 8).abs()  # ReLU keeps non-negative inputs
    with torch.no_grad():
        y = unit.branch_b(x.chunk(2, dim=1)[1])
    torch.testing.assert_close(y, x.chunk(2, dim=1)[1] / (1 + 0.01) ** 1.5, rtol=1e-4, atol=1e-5)


def test_init_schemes_differ_only_in_weights_and_unknown_scheme_is_refused():
    from dsnas.spaces import init_weights

    torch.manual_seed(0)
    torch_default = ShuffleNetSpace(**SMALL, init="torch")
    torch.manual_seed(0)
    kaiming = ShuffleNetSpace(**SMALL, init="kaiming")
    assert [k for k, _ in torch_default.named_parameters()] == [k for k, _ in kaiming.named_parameters()]
    assert not torch.equal(torch_default.stem[0].weight, kaiming.stem[0].weight)
    assert float(kaiming.classifier.weight.detach().std()) == pytest.approx(0.01, rel=0.2)
    with pytest.raises(ValueError, match="init must be one of"):
        init_weights(kaiming, "xavier")


def test_child_built_alone_gets_the_same_aligned_blocks():
    """`dsnas train` builds the child alone: its depthwise kernels start as Dirac deltas and its
    stride-1 units as identities, as in the supernet."""
    child = ShuffleNetChild(["shuffle_7x7"] * 20, settings=None, **SMALL)
    dw = child.blocks[1].branch_b[1][0].weight.detach()
    assert float(dw[:, 0, 3, 3].min()) == 1.0 and float(dw.abs().sum()) == dw.shape[0]
    assert torch.equal(child.blocks[1].branch_b[0][0].weight[:, :, 0, 0], torch.eye(dw.shape[0]))


# --- Choice -----------------------------------------------------------------------------------

class Recorder(nn.Module):
    """Adds a constant and records each call."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x + self.value


def test_choice_names_from_dict_and_list():
    assert Choice({"a": nn.Identity(), "b": nn.ReLU()}).names == ["a", "b"]
    c = Choice([nn.Identity(), nn.ReLU(), nn.Tanh()])
    assert c.names == ["0", "1", "2"]
    assert len(c) == 3


def test_choice_rejects_no_candidates():
    with pytest.raises(ValueError):
        Choice([])
    with pytest.raises(ValueError):
        Choice({})


def test_choice_runs_only_the_active_candidate():
    ops = {"a": Recorder(1.0), "b": Recorder(10.0), "c": Recorder(100.0)}
    c = Choice(ops)
    x = torch.zeros(3)
    assert torch.equal(c(x), torch.full((3,), 1.0))
    c.active = c.index("c")
    assert torch.equal(c(x), torch.full((3,), 100.0))
    assert [op.calls for op in ops.values()] == [1, 0, 1]


def test_choice_fix_sets_fixed_and_active():
    c = Choice({"a": Recorder(1.0), "b": Recorder(2.0), "c": Recorder(3.0)})
    c.mask = torch.ones((), requires_grad=True)
    c.fix("b")
    assert c.fixed == 1 and c.active == 1
    assert c.mask is None
    assert torch.equal(c(torch.zeros(1)), torch.tensor([2.0]))
    c.fix(2)
    assert c.fixed == 2 and c.active == 2
    assert "fixed=c" in repr(c)


def test_choice_unknown_name_or_index_raises():
    c = Choice({"a": Recorder(1.0), "b": Recorder(2.0)})
    with pytest.raises(ValueError, match="nope"):
        c.fix("nope")
    with pytest.raises(ValueError):
        c.index(2)
    with pytest.raises(ValueError):
        c.index(-1)
    assert c.fixed is None


def test_gate_gradient_is_reward_and_idle_candidates_get_no_grad():
    torch.manual_seed(0)
    lin_a, lin_b, lin_c = nn.Linear(5, 4), nn.Linear(5, 4), nn.Linear(5, 4)
    c = Choice({"a": lin_a, "b": lin_b, "c": lin_c})
    c.active = 1
    c.mask = torch.ones((), requires_grad=True)
    x = torch.randn(3, 5)
    target = torch.randn(3, 4)

    def loss_fn(y):
        return ((torch.tanh(y) - target) ** 2).sum()

    y = c(x)
    assert torch.equal(y, lin_b(x))  # the gate is an identity in the forward pass
    loss_fn(y).backward()

    # the same computation without the gate, by hand: r = <dL/dy, y>
    y_ref = (x @ lin_b.weight.detach().T + lin_b.bias.detach()).requires_grad_(True)
    (dl_dy,) = torch.autograd.grad(loss_fn(y_ref), y_ref)
    expected = torch.sum(dl_dy * y_ref.detach())
    assert c.mask.grad is not None
    assert torch.allclose(c.mask.grad, expected, rtol=1e-5, atol=1e-6)
    assert abs(float(expected)) > 1e-3  # a non-degenerate check

    # the weight gradient passes through the gate unchanged
    assert torch.allclose(lin_b.weight.grad, dl_dy.T @ x, rtol=1e-5, atol=1e-6)
    for idle in (lin_a, lin_c):
        assert idle.weight.grad is None and idle.bias.grad is None


def test_gate_inactive_without_grad_mode():
    c = Choice([nn.Linear(2, 2)])
    c.mask = torch.ones((), requires_grad=True)
    with torch.no_grad():
        y = c(torch.randn(1, 2))
    assert y.grad_fn is None
