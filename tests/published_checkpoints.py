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


def with_classes(fx: dict, num_classes: int) -> dict:
    """The fixture with a classifier for ``num_classes`` classes (the layout is the same for any
    count), so that a small image set fits the imported network."""
    def resized(key, shape):
        return [num_classes, *shape[1:]] if key.endswith(("classifier.0.weight", "classifier.0.bias")) else shape
    return {**fx, "keys": [[key, resized(key, shape)] for key, shape in fx["keys"]], "logits": None}


def image_tree(root: Path, num_classes: int) -> torch.Tensor:
    """An ImageFolder tree (train/ and val/, one image per class each) whose val images, after
    the evaluation crop (resize 256, centre crop 224), are ``images`` exactly: 256 px PNGs with
    them in the centre. Returns those images (class i's is row i)."""
    import numpy as np
    from PIL import Image

    shown = torch.cat([images(seed) for seed in range((num_classes + 1) // 2)])[:num_classes]
    for split in ("train", "val"):
        for i, x in enumerate(shown if split == "val" else shown.flip(0)):
            folder = root / split / f"class{i:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            canvas = np.full((256, 256, 3), 77, np.uint8)
            canvas[16:240, 16:240] = (x * 255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(canvas).save(folder / "0.png")
    return shown
