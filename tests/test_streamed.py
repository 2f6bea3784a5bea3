"""Large-image ImageFolder trees stream through a DataLoader with the ImageNet transforms; a file
that fails to decode is a one-line error, not a traceback from a worker."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import image_folders
from dsnas import DsnasError
from dsnas.data import Loader, load_data


def test_large_images_stream_with_standard_transforms(tmp_path):
    data = load_data(str(image_folders(tmp_path)), input_size=64)
    assert not data.in_memory and (data.num_classes, data.in_channels, data.input_size) == (2, 3, 64)
    x, y = next(iter(Loader(data, "train", 4, 0, torch.device("cpu"), train=True, workers=0)))
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    xv, _ = next(iter(Loader(data, "test", 4, 0, torch.device("cpu"), train=False, workers=0)))
    assert xv.shape[1:] == (3, 64, 64)


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_streamed_image_is_one_line_error(tmp_path, workers):
    root = image_folders(tmp_path)
    (root / "train" / "dog" / "0.png").write_bytes(b"this is not a png")
    data = load_data(str(root), input_size=64)
    loader = Loader(data, "train", 6, 0, torch.device("cpu"), train=True, workers=workers)
    with pytest.raises(DsnasError, match="cannot be read"):
        list(loader)


def test_held_out_streamed_images_use_the_evaluation_crop(tmp_path):
    """Baselines rank candidates on held-out training images: deterministic test-time crops,
    disjoint from the images left for training."""
    from dsnas.data import hold_out

    data = load_data(str(image_folders(tmp_path, per_class=4)), input_size=64)
    kept, held = hold_out(data, 3, seed=0)
    assert len(kept.train) == 5 and len(held.test) == 3
    assert not {p for p, _ in kept.train.samples} & {p for p, _ in held.test.samples}
    assert kept.train.train and not held.test.train  # training keeps its augmentation
    a = next(iter(Loader(held, "test", 3, 0, torch.device("cpu"), train=False)))[0]
    b = next(iter(Loader(held, "test", 3, 0, torch.device("cpu"), train=False)))[0]
    assert torch.equal(a, b)


# --- JPEG decoding on the device ----------------------------------------------------------------
def _photo(rng, width, height, channels=3):
    """Smooth colour fields plus grain, so that JPEG encoding and resampling behave as on photos."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)), 2 * x * y - 1], -1)
    img = (127 + 100 * base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
    return img[..., 0] if channels == 1 else img


def _jpeg_tree(root, per_class=3, channels=3, png_too=False):
    """Photo-like JPEGs of varied sizes; with ``png_too`` one PNG more in every class folder."""
    image_folders(root, per_class=per_class, suffix=".jpg",
                  draw=lambda rng: _photo(rng, int(rng.integers(120, 200)), int(rng.integers(90, 150)), channels))
    if png_too:
        rng = np.random.default_rng(2)
        for folder in sorted(root.glob("*/*")):
            Image.fromarray(_photo(rng, 160, 120, channels)).save(folder / "png.png")
    return root


def _batches(data, split, decode, seed=0, workers=0):
    torch.manual_seed(seed)  # crops and flips come from torch's RNG in the (here: main) process
    loader = Loader(data, split, 4, 0, torch.device("cpu"), train=split == "train", workers=workers, jpeg_decode=decode)
    return [x for x, _ in loader]


@pytest.mark.parametrize("split", ["train", "test"])
def test_device_decoding_matches_the_workers(tmp_path, split):
    """Same crops and flips, same decoded pixels (libjpeg-turbo in both); only the resampler
    differs (PIL against torchvision's antialiased bilinear): a few levels at most, 0.03 on average."""
    data = load_data(str(_jpeg_tree(tmp_path)), input_size=64)
    ref, dev = _batches(data, split, "workers"), _batches(data, split, "device")
    assert len(ref) == len(dev) > 0
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    levels = torch.cat([(a - b).abs() * std * 255 for a, b in zip(ref, dev)])
    assert levels.mean() < 0.1 and levels.max() < 12


@pytest.mark.slow
def test_device_decoding_crops_like_random_resized_crop(tmp_path):
    """The device path draws its boxes from RandomResizedCrop's distribution (area 8-100% of the
    image, aspect 3/4-4/3, compared with torchvision's own draws on the same image sizes), a flip
    half the time; the evaluation box is the centre square that Resize + CenterCrop keeps."""
    from torchvision.transforms import RandomResizedCrop

    from dsnas.images import Encoded

    data = load_data(str(_jpeg_tree(tmp_path, per_class=2)), input_size=64)
    device_train = data.train.decoded_on("device")
    torch.manual_seed(0)
    items = [device_train[i % len(device_train)][0] for i in range(2000)]
    assert all(isinstance(e, Encoded) for e in items)
    sizes = {e.path: Image.open(e.path).size for e in items}
    area = torch.tensor([e.box.width * e.box.height / (sizes[e.path][0] * sizes[e.path][1]) for e in items])
    aspect = torch.tensor([e.box.width / e.box.height for e in items])
    ref = [RandomResizedCrop.get_params(torch.zeros(1, sizes[e.path][1], sizes[e.path][0]), [0.08, 1.0], [3 / 4, 4 / 3])
           for e in items]
    ref_area = torch.tensor([h * w / (sizes[e.path][0] * sizes[e.path][1]) for (_, _, h, w), e in zip(ref, items)])
    ref_aspect = torch.tensor([w / h for _, _, h, w in ref])
    assert 0.079 < area.min() and area.max() <= 1 and (aspect > 0.74).all() and (aspect < 1.35).all()
    assert abs(area.mean() - ref_area.mean()) < 0.02 and abs(area.median() - ref_area.median()) < 0.03
    assert abs(aspect.log().mean() - ref_aspect.log().mean()) < 0.02
    assert abs(sum(e.flip for e in items) / len(items) - 0.5) < 0.04
    e = data.test.decoded_on("device")[0][0]
    w, h = Image.open(e.path).size
    assert e.box.width == e.box.height == round(64 * min(w, h) / 73) and not e.flip


def test_device_decoding_grayscale_and_mixed_formats(tmp_path):
    """Grayscale JPEGs decode to one channel; a PNG among the JPEGs goes through PIL in the worker."""
    from dsnas.images import Encoded

    data = load_data(str(_jpeg_tree(tmp_path, channels=1, png_too=True)), input_size=48)
    assert data.in_channels == 1
    items = [data.train.decoded_on("device")[i][0] for i in range(len(data.train))]
    assert sum(isinstance(x, Encoded) for x in items) == 6 and sum(isinstance(x, torch.Tensor) for x in items) == 2
    for x in _batches(data, "train", "device", workers=1):
        assert x.shape[1:] == (1, 48, 48) and torch.isfinite(x).all()


def test_undecodable_jpeg_on_the_device_is_one_line_error(tmp_path):
    """A file whose header reads as JPEG but whose data does not decode fails the batch decode;
    the error names that file."""
    root = _jpeg_tree(tmp_path)
    bad = root / "val" / "dog" / "1.jpg"
    raw = bytearray(bad.read_bytes())
    sos = raw.index(b"\xff\xda")
    bad.write_bytes(bytes(raw[: sos + 2]) + b"\x00\x03\xff")  # a start-of-scan header cut short
    data = load_data(str(root), input_size=64)
    with pytest.raises(DsnasError, match=r"1\.jpg cannot be read"):
        _batches(data, "test", "device")  # the evaluation split: no image left out of a batch


def test_jpeg_decode_setting_is_checked():
    from dsnas.config import load_config
    from dsnas.plan import check_run

    with pytest.raises(DsnasError, match="jpeg_decode must be one of workers, device"):
        check_run(load_config("demo", ["jpeg_decode=gpu"]))


def test_a_streamed_images_crop_depends_on_the_seed_epoch_and_index_alone(tmp_path):
    """The same batches whatever the number of loader workers and wherever an epoch is entered
    (a resumed run starts mid-epoch), and other crops in another epoch."""
    data = load_data(str(image_folders(tmp_path, per_class=6)), input_size=48)

    def batches(workers: int, epoch: int = 0, start: int = 0) -> list[torch.Tensor]:
        loader = Loader(data, "train", 4, 7, torch.device("cpu"), train=True, workers=workers)
        loader.set_epoch(epoch, start)
        return [x for x, _ in loader]

    alone = batches(0)
    assert len(alone) == 3
    assert all(torch.equal(a, b) for a, b in zip(alone, batches(2)))
    assert all(torch.equal(a, b) for a, b in zip(alone[1:], batches(1, start=1)))
    assert not torch.equal(alone[0], batches(0, epoch=1)[0])
