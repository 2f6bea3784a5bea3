"""The budget penalty survives the fp16 gradient scaler: the gate rewards carry the loss scale,
so the resource term must carry it too, or unscaling the alpha-gradients divides the penalty by
the scale (2**16 at first) and the budget stops acting."""

import torch
from torch import nn

from dsnas import DSNAS, ShuffleNetSpace
from dsnas.train import train_step

def _alpha_grads(scaler, amp=None, penalty=0.05) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """alpha.grad after one search step (unscaled by ``scaler``), with ``penalty`` per MFLOP and
    without; 0.05 makes the resource term about as large as the rewards' part."""
    out = []
    for lam in (penalty, 0.0):
        torch.manual_seed(0)
        space = ShuffleNetSpace(num_classes=10, in_channels=1, input_size=28, width=0.25)
        search = DSNAS(space, costs=space.costs, budget=None, penalty=lam,
                       generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for a in search.alphas:
                a.normal_(generator=torch.Generator().manual_seed(2))
        search.arm([i % 4 for i in range(len(search.choices))])
        opt = torch.optim.SGD(space.parameters(), lr=0.0)
        arch_opt = torch.optim.SGD(search.alphas, lr=0.0)  # lr 0: only the gradients matter here
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
        train_step(space, x, y, nn.CrossEntropyLoss(), opt, arch_opt, search, scaler, amp)
        out.append([a.grad.clone() for a in search.alphas])
    return out[0], out[1]


def _penalty_part(with_penalty, without):
    return torch.cat([a - b for a, b in zip(with_penalty, without)])


def test_scaled_fp32_step_keeps_the_penalty_exactly():
    plain, plain_free = _alpha_grads(torch.amp.GradScaler("cpu", enabled=False))
    scaled, scaled_free = _alpha_grads(torch.amp.GradScaler("cpu", init_scale=2.0 ** 16))
    term = _penalty_part(plain, plain_free)
    assert float(term.abs().max()) > 0.1 * float(torch.cat(plain_free).abs().max())  # the penalty matters
    for a, b in zip(scaled, plain):  # a power-of-two scale is exact
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


def test_fp16_alpha_gradient_matches_fp32_with_a_penalty():
    # a penalty that outweighs fp16's rounding of the rewards, so the whole gradient is compared
    fp32, fp32_free = _alpha_grads(torch.amp.GradScaler("cpu", enabled=False), penalty=5.0)
    fp16, fp16_free = _alpha_grads(torch.amp.GradScaler("cpu", init_scale=2.0 ** 16), amp=torch.float16, penalty=5.0)
    # the resource term does not depend on the precision: after unscaling it is the fp32 one
    torch.testing.assert_close(_penalty_part(fp16, fp16_free), _penalty_part(fp32, fp32_free), rtol=1e-3, atol=1e-7)
    whole = torch.cat(fp32)
    torch.testing.assert_close(torch.cat(fp16), whole, rtol=0.02, atol=0.02 * float(whole.abs().max()))
