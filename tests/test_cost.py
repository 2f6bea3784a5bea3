"""Cost tables: per-candidate entries, calibration against the published ShuffleNetV2 figure,
agreement with counting the extracted child, bounds, and tables for custom models."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from conftest import random_arch
from dsnas import Choice, CostTable, ShuffleNetChild, ShuffleNetSpace, cost_table
from dsnas.cost import METRICS, count
from dsnas.spaces.shufflenet import OPS


def _assert_all_entries_positive(table: CostTable) -> None:
    assert table.num_blocks == 20
    for metric in METRICS:
        rows = table.entries[metric]
        assert len(rows) == 20 and all(len(r) == len(OPS) for r in rows)
        bad = [(b, c, v) for b, r in enumerate(rows) for c, v in enumerate(r) if not v > 0]
        assert not bad, f"{metric}: non-positive entries (block, candidate, value) {bad[:5]}"
        assert table.base[metric] > 0


def test_entries_positive_224(table_224):
    _assert_all_entries_positive(table_224)
    assert table_224.names == [list(OPS)] * 20


def test_entries_positive_28px_gray_10_classes():
    table = ShuffleNetSpace(num_classes=10, in_channels=1, input_size=28).costs
    _assert_all_entries_positive(table)


def test_calibration_shufflenetv2_3x3(table_224):
    # All-3x3 ShuffleNetV2 (SPOS layout) at 224 px: the published 306.184 MFLOPs (counted: 306.185024).
    total = table_224.total(["shuffle_3x3"] * 20, "mflops")
    assert abs(total - 306.184) < 2e-3
    assert table_224.costs(["shuffle_3x3"] * 20)["mflops"] == pytest.approx(306.185, abs=1e-9)


def test_total_accepts_indices_and_names(table_224):
    names = random_arch(7)
    idx = [OPS.index(n) for n in names]
    for m in METRICS:
        assert table_224.total(idx, m) == table_224.total(names, m)


def test_total_rejects_bad_input(table_224):
    with pytest.raises(ValueError, match="metric"):
        table_224.total(["shuffle_3x3"] * 20, "gflops")
    with pytest.raises(ValueError, match="19"):
        table_224.total(["shuffle_3x3"] * 19)


@pytest.mark.parametrize("choices", [
    ["shuffle_3x3"] * 20,
    ["shuffle_xception"] * 20,
    random_arch(11),
    random_arch(12),
])
def test_table_sum_equals_child_count(table_224, choices):
    child = ShuffleNetChild(choices)  # 224 px, 1000 classes, 3 channels, width 1.0
    counted, out = count(child, torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    for m in METRICS:
        assert math.isclose(counted[m], table_224.total(choices, m), rel_tol=1e-9), (m, counted[m])


def test_bounds_ordered_and_min_is_cheapest_per_block(table_224):
    for m in METRICS:
        b = table_224.bounds(m)
        assert b["min"] <= b["mean"] <= b["max"]
        assert b["min"] < b["max"]
        cheapest = [min(range(len(r)), key=r.__getitem__) for r in table_224.entries[m]]
        dearest = [max(range(len(r)), key=r.__getitem__) for r in table_224.entries[m]]
        assert b["min"] == pytest.approx(table_224.total(cheapest, m), rel=1e-12)
        assert b["max"] == pytest.approx(table_224.total(dearest, m), rel=1e-12)
        # any architecture lies within the bounds
        for seed in range(5):
            assert b["min"] - 1e-9 <= table_224.total(random_arch(seed), m) <= b["max"] + 1e-9
    # Concretely: the Xception unit runs its strided depthwise conv before any pointwise conv, so it
    # is the cheapest op in the four downsampling blocks; the 3x3 unit is the cheapest elsewhere,
    # and the cheapest everywhere in parameters.
    first_of_stage = {0, 4, 8, 16}
    cheapest = ["shuffle_xception" if i in first_of_stage else "shuffle_3x3" for i in range(20)]
    assert table_224.bounds("mflops")["min"] == pytest.approx(table_224.total(cheapest, "mflops"), rel=1e-12)
    assert table_224.bounds("params_m")["min"] == pytest.approx(table_224.total(["shuffle_3x3"] * 20, "params_m"))


# --- custom models --------------------------------------------------------------------------

H = W = 8


def _tiny_model(first: str = "k1", second: str = "id", as_choice: bool = True) -> nn.Module:
    """conv3x3 3->8 | Choice(conv k1/k3/k5(bias)) | ReLU | Choice(identity / BN) | pool | linear."""
    conv_ops = {"k1": lambda: nn.Conv2d(8, 8, 1, bias=False),
                "k3": lambda: nn.Conv2d(8, 8, 3, padding=1, bias=False),
                "k5": lambda: nn.Conv2d(8, 8, 5, padding=2, bias=True)}
    norm_ops = {"id": lambda: nn.Identity(), "bn": lambda: nn.BatchNorm2d(8)}
    if as_choice:
        block1 = Choice({k: f() for k, f in conv_ops.items()})
        block2 = Choice({k: f() for k, f in norm_ops.items()})
    else:
        block1, block2 = conv_ops[first](), norm_ops[second]()
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), block1, nn.ReLU(), block2,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_cost_table_on_custom_model_by_hand():
    model = _tiny_model()
    table = cost_table(model, torch.zeros(1, 3, H, W))
    hw = H * W
    assert table.names == [["k1", "k3", "k5"], ["id", "bn"]]
    # base: stem conv + ReLU + pool (input elements) + linear
    assert table.base["mflops"] * 1e6 == pytest.approx(9 * 3 * 8 * hw + 8 * hw + 8 * hw + 80)
    assert table.base["macs_m"] * 1e6 == pytest.approx(9 * 3 * 8 * hw + 80)
    assert table.base["params_m"] * 1e6 == pytest.approx(216 + 90)
    mflops = [[v * 1e6 for v in row] for row in table.entries["mflops"]]
    assert mflops[0] == pytest.approx([64 * hw, 9 * 64 * hw, 25 * 64 * hw + 8 * hw])
    assert mflops[1] == pytest.approx([0, 2 * 8 * hw], abs=1e-9)
    macs = [[v * 1e6 for v in row] for row in table.entries["macs_m"]]
    assert macs[0] == pytest.approx([64 * hw, 9 * 64 * hw, 25 * 64 * hw])
    params = [[v * 1e6 for v in row] for row in table.entries["params_m"]]
    assert params == [pytest.approx([64, 576, 1608]), pytest.approx([0, 16], abs=1e-9)]


@pytest.mark.parametrize("first,second", list(itertools.product(["k1", "k3", "k5"], ["id", "bn"])))
def test_custom_table_total_equals_counting_plain_model(first, second):
    table = cost_table(_tiny_model(), torch.zeros(1, 3, H, W))
    plain, _ = count(_tiny_model(first, second, as_choice=False), torch.zeros(1, 3, H, W))
    for m in METRICS:
        assert math.isclose(table.total([first, second], m), plain[m], rel_tol=1e-9, abs_tol=1e-12), m


def test_cost_table_restores_choice_state_and_mode():
    model = _tiny_model()
    c1, c2 = [m for m in model.modules() if isinstance(m, Choice)]
    mask = torch.ones((), requires_grad=True)
    c1.active, c1.mask = 2, mask
    c2.active = 1
    model.train()
    cost_table(model, torch.zeros(1, 3, H, W))
    assert (c1.active, c2.active) == (2, 1)
    assert c1.mask is mask and c2.mask is None
    assert model.training and all(m.training for m in model.modules())


def test_cost_table_leaves_weights_and_buffers_untouched():
    space = ShuffleNetSpace(num_classes=10, input_size=32, width=0.25)  # training mode, as built
    before = {k: v.clone() for k, v in space.state_dict().items()}
    space.costs
    after = space.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"{len(changed)} tensors changed, e.g. {changed[:3]}"


def test_cost_table_for_tiny_images():
    # 8 px, stride-1 stem: the last two stages run at 1x1, fine for an eval-mode forward.
    space = ShuffleNetSpace(num_classes=10, input_size=8, width=0.25)
    space.eval()(torch.zeros(1, 3, 8, 8))
    space.train()
    assert space.costs.total(["shuffle_3x3"] * 20) > 0
