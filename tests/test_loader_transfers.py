"""Host-to-device copies that do not stall the GPU: CPU tensors reach a GPU through pinned
memory without blocking, and the in-memory loader's batches (indices, crops and flips drawn from
the same CPU generators) are exactly the ones it gave when it copied them with plain `.to`."""

import pytest
import torch

from dsnas import data
from dsnas.data import Loader, load_data


def test_to_device_pins_and_does_not_block(monkeypatch):
    calls = []

    def pin(self):
        calls.append("pin")
        return self

    def to(self, device, non_blocking=False):
        calls.append((torch.device(device).type, non_blocking))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.Tensor, "to", to)
    data.to_device(torch.zeros(3), torch.device("cuda"))
    assert calls == ["pin", ("cuda", True)]
    calls.clear()
    data.to_device(torch.zeros(3), torch.device("cpu"))
    assert calls == [("cpu", True)]  # nothing to pin on the way to the CPU


def _former_augment(images, pad, generator):  # the augmentation as it was, draws copied with .to
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(images.device)
    rows = (offsets[0][:, None] + torch.arange(h))[:, :, None]
    cols = (offsets[1][:, None] + torch.arange(w))[:, None, :]
    out = padded.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out).contiguous()


def _former_batches(loader):
    for step, idx in enumerate(loader.plan, start=loader.plan.start):
        index = torch.tensor(idx)
        x, y = loader.images[index].float().div_(255), loader.labels[index]
        if loader.train and loader.pad:
            g = torch.Generator().manual_seed(hash((loader.seed, loader.plan.epoch, step, loader.rank)) & 0xFFFFFFFF)
            x = _former_augment(x, loader.pad, g)
        yield (x - loader.mean) / loader.std, y


@pytest.mark.parametrize("pad", [2, 0])
def test_in_memory_batches_are_unchanged(pad):
    d = load_data()
    d.train = d.train.limit(640, seed=3)
    loader = Loader(d, "train", 64, seed=5, device=torch.device("cpu"), train=True, pad=pad)
    for epoch, start in ((0, 0), (2, 4)):  # a later epoch, resumed mid-way
        loader.set_epoch(epoch, start)
        got, want = list(loader), list(_former_batches(loader))
        assert len(got) == len(want) == 10 - start
        for (x, y), (x0, y0) in zip(got, want):
            assert torch.equal(x, x0) and torch.equal(y, y0)
