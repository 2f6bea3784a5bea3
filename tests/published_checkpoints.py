"""Checkpoints in the published layouts, rebuilt from a key/shape list (tests/data/published/*.json)
with a fill seeded per key; the stored logits are the authors' networks' on the same input."""

import json
import math
import zlib
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data" / "published"


def value(key: str, shape) -> torch.Tensor:
    """A deterministic tensor for ``key``: scaled weights, non-trivial BN statistics."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    name = key.rsplit(".", 1)[-1]
    if name == "num_batches_tracked":
        return torch.tensor(1000)
    if name == "running_var":
        return torch.rand(shape, generator=g) * 1.5 + 0.5
    if name in ("running_mean", "bias"):
        return torch.randn(shape, generator=g) * 0.1
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return torch.randn(shape, generator=g) * math.sqrt((1 if len(shape) == 2 else 2) / fan_in)
    if name == "weight":  # BN scale
        return 1 + 0.4 * (torch.rand(shape, generator=g) - 0.5)
    return torch.randn(shape, generator=g)  # log_alpha


def images(seed: int = 0, size: int = 224) -> torch.Tensor:
    """Two RGB images in [0, 1], on the 1/255 grid an 8-bit image has."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (2, 3, size, size), generator=g).float() / 255


def fixture(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def checkpoint(fx: dict) -> dict:
    """The checkpoint the fixture describes: its state dict, in its outer dict if it has one."""
    state = {key: value(key, shape) for key, shape in fx["keys"]}
    outer = fx.get("outer")
    return {**outer, "state_dict": state} if outer is not None else state
