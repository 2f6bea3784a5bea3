"""Channels-last survives the ShuffleNet blocks: the channel shuffle and the split keep a
channels-last input channels-last (the convolutions after them need no layout copy), the gate
reads a channels-last output without copying it, and none of it changes a value."""

import pytest
import torch

from dsnas import DSNAS, ShuffleNetSpace
from dsnas.choice import _flat_pair
from dsnas.spaces import shufflenet
from dsnas.spaces.shufflenet import OPS, channel_shuffle, make_op

CL = torch.channels_last


def _is_cl(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=CL) and not t.is_contiguous()


def _nchw_shuffle(x, groups=2):  # the definition: channel j of group g goes to position j * groups + g
    n, c, h, w = x.shape
    return torch.stack(x.chunk(groups, dim=1), dim=2).reshape(n, c, h, w)


def test_channel_shuffle_keeps_the_memory_format_and_the_values():
    x = torch.randn(2, 8, 5, 3)
    ref = _nchw_shuffle(x)
    out = channel_shuffle(x.contiguous(memory_format=CL))
    assert _is_cl(out)
    assert torch.equal(out, ref)
    plain = channel_shuffle(x)
    assert plain.is_contiguous() and torch.equal(plain, ref)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("stride", [1, 2])
def test_block_output_stays_channels_last_with_unchanged_values(op, stride):
    torch.manual_seed(0)
    unit = make_op(op, 16, 16, stride)
    unit.eval()
    x = torch.randn(3, 16, 12, 12)
    ref = unit(x)
    unit.to(memory_format=CL)
    out = unit(x.contiguous(memory_format=CL))
    assert _is_cl(out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_gate_reads_a_channels_last_output_in_place():
    a = torch.randn(2, 6, 4, 4).contiguous(memory_format=CL)
    b = torch.randn(2, 6, 4, 4).contiguous(memory_format=CL)
    fa, fb = _flat_pair(a, b)
    assert fa.data_ptr() == a.data_ptr() and fb.data_ptr() == b.data_ptr()  # views, no copy
    assert torch.allclose(torch.dot(fa, fb), (a * b).sum())
    mixed_a, mixed_b = _flat_pair(a, b.contiguous())  # different layouts: matched by position all the same
    assert torch.allclose(torch.dot(mixed_a, mixed_b), (a * b).sum())


def _former_shuffle(x, groups=2):  # before: the reshape copied a channels-last input into NCHW
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _supernet_outputs():
    torch.manual_seed(0)
    space = ShuffleNetSpace(num_classes=10, in_channels=1, input_size=28, width=0.25).to(memory_format=CL)
    search = DSNAS(space, generator=torch.Generator().manual_seed(0))
    search.arm([i % len(OPS) for i in range(len(search.choices))])
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=CL)
    outs = []
    hooks = [c.register_forward_hook(lambda m, i, o: outs.append(o.detach())) for c in search.choices]
    loss = space(x).square().mean()
    loss.backward()
    for h in hooks:
        h.remove()
    return outs, loss.detach(), torch.stack([c.mask.grad for c in search.choices])


def test_every_block_of_the_supernet_keeps_channels_last_and_its_values(monkeypatch):
    outs, loss, rewards = _supernet_outputs()
    assert all(_is_cl(o) for o in outs)
    monkeypatch.setattr(shufflenet, "channel_shuffle", _former_shuffle)
    ref_outs, ref_loss, ref_rewards = _supernet_outputs()
    assert not any(_is_cl(o) for o in ref_outs)
    for a, b in zip(outs, ref_outs):
        assert torch.equal(a, b)
    assert torch.equal(loss, ref_loss)
    torch.testing.assert_close(rewards, ref_rewards, rtol=1e-4, atol=1e-8)  # the gate sums in memory order
