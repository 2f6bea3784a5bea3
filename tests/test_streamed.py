"""Large-image ImageFolder trees stream through a DataLoader with the ImageNet transforms; a file
that fails to decode is a one-line error, not a traceback from a worker."""

import numpy as np
import pytest
import torch
from PIL import Image

from dsnas import DsnasError
from dsnas.data import Loader, load_data


def _tree(root, size=80, per_class=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_large_images_stream_with_standard_transforms(tmp_path):
    data = load_data(str(_tree(tmp_path)), input_size=64)
    assert not data.in_memory and (data.num_classes, data.in_channels, data.input_size) == (2, 3, 64)
    x, y = next(iter(Loader(data, "train", 4, 0, torch.device("cpu"), train=True, workers=0)))
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    xv, _ = next(iter(Loader(data, "test", 4, 0, torch.device("cpu"), train=False, workers=0)))
    assert xv.shape[1:] == (3, 64, 64)


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_streamed_image_is_one_line_error(tmp_path, workers):
    root = _tree(tmp_path)
    (root / "train" / "dog" / "0.png").write_bytes(b"this is not a png")
    data = load_data(str(root), input_size=64)
    loader = Loader(data, "train", 6, 0, torch.device("cpu"), train=True, workers=workers)
    with pytest.raises(DsnasError, match="cannot be read"):
        list(loader)


def test_held_out_streamed_images_use_the_test_transforms(tmp_path):
    """Baselines rank candidates on held-out training images: deterministic test-time crops,
    disjoint from the images left for training."""
    from dsnas.data import hold_out

    data = load_data(str(_tree(tmp_path, per_class=4)), input_size=64)
    kept, held = hold_out(data, 3, seed=0)
    assert len(kept.train) == 5 and len(held.test) == 3
    assert not set(kept.train.indices) & set(held.test.indices)
    assert held.test.dataset.transform is data.test.transform
    assert kept.train.dataset.transform is data.train.transform  # training keeps its augmentation
    a = next(iter(Loader(held, "test", 3, 0, torch.device("cpu"), train=False)))[0]
    b = next(iter(Loader(held, "test", 3, 0, torch.device("cpu"), train=False)))[0]
    assert torch.equal(a, b)
