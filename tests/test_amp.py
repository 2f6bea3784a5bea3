"""Mixed precision in the training step: the fp16 gradient scaler must reach the alpha-gradients
(computed from the scaled gate rewards) exactly as it reaches the weights', an overflowing step
must leave alpha and the weights untouched, and ``amp: auto`` keeps the search stage in fp32."""

import pytest
import torch
from torch import nn

from conftest import tiny_config
from dsnas import DSNAS, ShuffleNetSpace
from dsnas.runtime import autocast_dtype, stage_autocast
from dsnas.train import run_search, train_step


def _setup(seed=0, init="aligned"):
    torch.manual_seed(seed)
    space = ShuffleNetSpace(num_classes=10, in_channels=1, input_size=28, width=0.25, init=init)
    search = DSNAS(space, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # non-uniform alpha, so every term of the estimator matters
        for a in search.alphas:
            a.normal_()
    opt = torch.optim.SGD(space.parameters(), lr=0.1, momentum=0.9)
    arch_opt = torch.optim.Adam(search.alphas, lr=0.01)
    return space, search, opt, arch_opt


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)


def _step(scaler, amp=None, path=None, init="aligned"):
    space, search, opt, arch_opt = _setup(init=init)
    path = search.sample() if path is None else search.arm(path)
    x, y = _batch()
    before = [p.detach().clone() for p in space.parameters()]
    alphas = [a.detach().clone() for a in search.alphas]
    loss = train_step(space, x, y, nn.CrossEntropyLoss(), opt, arch_opt, search, scaler, amp)
    return dict(path=path, loss=loss, space=space, search=search, before=before, alphas=alphas,
                grads=[a.grad.clone() for a in search.alphas])


def test_scaled_step_equals_unscaled_step():
    plain = _step(torch.amp.GradScaler("cpu", enabled=False))
    scaled = _step(torch.amp.GradScaler("cpu", init_scale=2.0 ** 12), path=plain["path"])
    assert scaled["path"] == plain["path"]
    # a power-of-two scale is exact: the unscaled alpha-gradients equal the plain ones
    for a, b in zip(scaled["grads"], plain["grads"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    assert any(float(g.abs().max()) > 0 for g in plain["grads"])
    for a, b in zip(scaled["search"].alphas, plain["search"].alphas):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(scaled["space"].parameters(), plain["space"].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_overflowing_step_leaves_alpha_and_weights_alone():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127, growth_interval=1)
    r = _step(scaler, init="torch")  # PyTorch's default classifier init gives rewards large enough to overflow
    assert torch.isfinite(r["loss"])
    assert not all(bool(torch.isfinite(g).all()) for g in r["grads"])  # the rewards overflowed
    for a, before in zip(r["search"].alphas, r["alphas"]):
        assert torch.equal(a.detach(), before)
    for p, before in zip(r["space"].parameters(), r["before"]):
        assert torch.equal(p.detach(), before)
    assert scaler.get_scale() == 2.0 ** 126


def test_fully_fixed_search_step_does_not_trip_the_scaler():
    space, search, opt, arch_opt = _setup()
    search.fix_all([0] * len(search.choices))
    search.sample()
    x, y = _batch()
    train_step(space, x, y, nn.CrossEntropyLoss(), opt, arch_opt, search, torch.amp.GradScaler("cpu"), None)
    assert all(a.grad is None for a in search.alphas)


def test_bf16_autocast_step_runs_and_reaches_alpha():
    r = _step(torch.amp.GradScaler("cpu", enabled=False), amp=torch.bfloat16)
    g = torch.cat(r["grads"])
    assert g.dtype == torch.float32 and bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0
    assert not all(torch.equal(a.detach(), b) for a, b in zip(r["search"].alphas, r["alphas"]))


def test_auto_precision_keeps_the_search_stage_in_fp32():
    from dsnas.methods import FINETUNE, SEARCH, SUPERNET, TRAIN, WARMUP

    for stage in (WARMUP, SUPERNET, FINETUNE, TRAIN):
        assert stage_autocast("auto", torch.bfloat16, stage.full_precision) is torch.bfloat16
    assert stage_autocast("auto", torch.bfloat16, SEARCH.full_precision) is None
    assert stage_autocast("bf16", torch.bfloat16, SEARCH.full_precision) is torch.bfloat16  # asked for explicitly
    assert stage_autocast("fp16", torch.float16, SEARCH.full_precision) is torch.float16


def test_autocast_dtype_choices():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("off", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("fp16", cpu) is torch.float16


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_search_end_to_end_under_amp(tmp_path, amp):
    cfg = tiny_config("arch_lr=0.05", "seed=5", f"amp={amp}")
    res = run_search(cfg, tmp_path / "run", quiet=True)
    assert all(h["train_loss"] == h["train_loss"] for h in res.metrics["history"])  # finite, not NaN
    assert res.metrics["top1"] is not None
    assert any(float(a.detach().abs().max()) > 0 for a in res.search.alphas)  # alpha moved
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert bool(ckpt["scaler"]) == (amp == "fp16")


def test_precision_label():
    from dsnas.methods import METHODS
    from dsnas.runtime import precision_label

    dsnas, spos = METHODS["dsnas"].stages, METHODS["spos"].stages
    assert precision_label("auto", None, dsnas) == "fp32"
    assert precision_label("auto", torch.bfloat16, dsnas) == "bf16, search stage fp32"
    assert precision_label("auto", torch.bfloat16, spos) == "bf16"  # no stage collects rewards
    assert precision_label("bf16", torch.bfloat16, dsnas) == "bf16"
    assert precision_label("fp16", torch.float16, dsnas) == "fp16 (scaled)"
