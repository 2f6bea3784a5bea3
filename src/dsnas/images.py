"""Large images streamed from files, with the ImageNet crops.

Two decoders share one definition of the crops:

- ``workers``: DataLoader workers decode with PIL and crop and resize in one pass;
- ``device``: workers only read a JPEG's bytes and draw its crop; the loader decodes the whole
  batch on the training device (nvJPEG on a GPU) and crops there. This keeps a GPU fed when
  the CPU cores cannot decode fast enough. Files that are not JPEGs still go through PIL.

Either way the loader receives uint8 tensors and normalises whole batches on the device, so the
workers do no float work and move a quarter of the bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .errors import DsnasError

DECODERS = ("workers", "device")
CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # RandomResizedCrop's defaults, as in the ImageNet recipe
RESIZE_FOR_CROP = 256 / 224  # evaluation: shorter side to this times the crop size, then a centre crop


class Box(NamedTuple):
    """A crop in source pixels."""

    top: int
    left: int
    height: int
    width: int


class Encoded(NamedTuple):
    """A JPEG's bytes and how to crop it, decoded later on the training device."""

    data: torch.Tensor
    box: Box
    flip: bool
    path: str


def train_box(width: int, height: int) -> Box:
    """A RandomResizedCrop box (scale 0.08-1 of the area, aspect 3/4-4/3), from torch's RNG."""
    from torchvision.transforms import RandomResizedCrop

    size_only = torch.empty(1, 1, 1).expand(1, height, width)  # get_params reads the size alone
    return Box(*RandomResizedCrop.get_params(size_only, list(CROP_SCALE), list(CROP_RATIO)))


def eval_box(width: int, height: int, size: int) -> Box:
    """The region that Resize(size * 256/224) followed by CenterCrop(size) keeps."""
    short = min(width, height)
    side = min(short, round(size * short / round(size * RESIZE_FOR_CROP)))
    return Box((height - side) // 2, (width - side) // 2, side, side)


IMAGE_MAX_PIXELS = 1 << 26  # 8192 x 8192: the most pixels decoded from one file
IMAGE_MAX_BYTES = 256 << 20  # no image file of a training set is this large
_ROWS = 256  # rows converted at a time from 16 or 32 bits to 8


def pil_open(source):
    """``PIL.Image.open`` refusing, before any pixel is decoded, an image of more than
    `IMAGE_MAX_PIXELS` (a 300 kB PNG can hold 12000 x 12000 pixels): PIL's own bomb check
    raises its warning as an error, and the size in the header is checked against ours."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(source)
    if im.width * im.height > IMAGE_MAX_PIXELS:
        im.close()
        raise ValueError(f"it has {im.width} x {im.height} pixels, over the limit of {IMAGE_MAX_PIXELS} "
                         "(a decompression bomb?)")
    return im


def read_image_bytes(path) -> bytes:
    """An image file's bytes, refusing a file larger than any image (`IMAGE_MAX_BYTES`)."""
    size = Path(path).stat().st_size
    if size > IMAGE_MAX_BYTES:
        raise ValueError(f"it is {size >> 20} MiB, over the {IMAGE_MAX_BYTES >> 20} MiB of any training image")
    return Path(path).read_bytes()


def to_8bit(im):
    """16- and 32-bit grayscale images rescaled to 8 bits (PIL's convert would clip them), in
    integer arithmetic a few rows at a time: the transient memory is that of a few rows, not
    of float64 copies of the whole image."""
    from PIL import Image

    if not im.mode.startswith("I"):
        return im
    a = np.asarray(im)
    top = 65535 if im.mode.startswith("I;16") or a.max() > 255 else 255
    out = np.empty(a.shape, dtype=np.uint8)
    for r in range(0, len(a), _ROWS):  # round(v * 255 / top): top is odd, so no value falls on a half
        rows = np.clip(a[r: r + _ROWS], 0, top).astype(np.uint32)
        out[r: r + _ROWS] = (rows * 255 + top // 2) // top
    return Image.fromarray(out, "L")


def _image_errors() -> tuple:
    """What PIL raises for a file it cannot (or, past the bomb limit, will not) decode."""
    from PIL import Image

    return OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning


def open_image(path: Path, mode: str | None = None):
    """A decoded image, 8 bits per channel, converted to ``mode`` when given; an unreadable,
    oversized or inconvertible file is a DsnasError naming it."""
    try:
        with pil_open(path) as im:
            im.load()
            im = to_8bit(im)
            return im.convert(mode) if mode else im.copy()
    except _image_errors() as e:
        raise DsnasError(f"image {path} cannot be read: {e}") from None


@dataclasses.dataclass
class ImageFiles(torch.utils.data.Dataset):
    """(path, label) samples cropped to ``size``: random crop and flip when ``train``, else the
    centre crop; each item is a uint8 (C, size, size) tensor, or an `Encoded` JPEG when
    ``decode`` is ``device``."""

    samples: list[tuple[str, int]]
    size: int
    mode: str  # "RGB" or "L"
    train: bool = True
    decode: str = "workers"

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices) -> ImageFiles:
        return dataclasses.replace(self, samples=[self.samples[i] for i in indices])

    def evaluation(self) -> ImageFiles:
        return dataclasses.replace(self, train=False)

    def decoded_on(self, where: str) -> ImageFiles:
        if where not in DECODERS:
            raise DsnasError(f"jpeg_decode must be one of {', '.join(DECODERS)}, got {where!r}")
        return dataclasses.replace(self, decode=where)

    def __getitem__(self, key: int | tuple[int, int]):
        """Image ``key`` (an index, or an (index, seed) pair whose seed draws its crop and flip)."""
        from PIL import Image

        i, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[i]
        try:
            raw = read_image_bytes(path)
            with pil_open(io.BytesIO(raw)) as im:
                box, flip = self._draws(im.size, seed)
                if self.decode == "device" and im.format == "JPEG" and im.mode in ("L", "RGB"):
                    return Encoded(torch.frombuffer(bytearray(raw), dtype=torch.uint8), box, flip, path), label
                im.load()
                pixels = self._crop(to_8bit(im).convert(self.mode), box)
        except _image_errors() as e:
            raise DsnasError(f"image {path} cannot be read: {e}") from None
        if flip:
            pixels = pixels.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.array(pixels, dtype=np.uint8))
        return (t[None] if t.ndim == 2 else t.permute(2, 0, 1)), label

    def _draws(self, size: tuple[int, int], seed: int | None) -> tuple[Box, bool]:
        """The crop box and flip of an image of ``size``: random when training, from ``seed``
        where given (else from the worker's RNG), the centre crop otherwise."""
        if not self.train:
            return eval_box(*size, self.size), False
        if seed is None:
            return train_box(*size), bool(torch.rand(()) < 0.5)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return train_box(*size), bool(torch.rand(()) < 0.5)

    def _crop(self, im, box: Box):
        from PIL import Image

        region = (box.left, box.top, box.left + box.width, box.top + box.height)
        return im.resize((self.size, self.size), Image.Resampling.BILINEAR, box=region)  # crop and resize in one pass


def collate(batch: list) -> tuple:
    """A stacked uint8 batch, or, when JPEGs wait to be decoded on the device, the list of items."""
    items, labels = zip(*batch)
    labels = torch.tensor(labels, dtype=torch.int64)
    if all(isinstance(x, torch.Tensor) for x in items):
        return torch.stack(items), labels
    return list(items), labels


def decode_batch(items: list, mode: str, size: int, device: torch.device) -> torch.Tensor:
    """uint8 (N, C, size, size) on ``device`` from `Encoded` JPEGs (decoded there, in one call)
    and tensors the workers already cropped."""
    from torchvision.transforms.v2.functional import resized_crop

    out = torch.empty(len(items), 1 if mode == "L" else 3, size, size, dtype=torch.uint8, device=device)
    jpegs = [i for i, x in enumerate(items) if isinstance(x, Encoded)]
    for i, x in enumerate(items):
        if not isinstance(x, Encoded):
            out[i] = x.to(device, non_blocking=True)
    for i, image in zip(jpegs, _decode_jpegs([items[i] for i in jpegs], mode, device)):
        top, left, height, width = items[i].box
        crop = resized_crop(image, top, left, height, width, [size, size], antialias=True)
        out[i] = crop.flip(-1) if items[i].flip else crop
    return out


def _decode_jpegs(encoded: list[Encoded], mode: str, device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    if not encoded:
        return []
    read_mode = ImageReadMode.GRAY if mode == "L" else ImageReadMode.RGB
    with warnings.catch_warnings():  # torchvision 0.29 names TorchCodec as its decoders' successor
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            if device.type == "cuda":
                return _decode_on_side_stream([e.data for e in encoded], read_mode, device)
            return decode_jpeg([e.data for e in encoded], mode=read_mode, device=device)
        except RuntimeError:  # one bad file fails the batch: find it, decoding one by one on the CPU
            images = []
            for e in encoded:
                try:
                    images.append(decode_jpeg(e.data, mode=read_mode).to(device))
                except RuntimeError as err:
                    reason = str(err).splitlines()[0].rsplit(", ", 1)[-1]  # after torchvision's source location
                    raise DsnasError(f"image {e.path} cannot be read: {reason}") from None
            return images


@functools.cache
def _decode_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


def _decode_on_side_stream(data: list[torch.Tensor], read_mode, device: torch.device) -> list[torch.Tensor]:
    """Decode on the GPU without writing into memory that queued kernels still use.

    torchvision allocates the outputs on the caller's stream and nvJPEG writes them from a stream
    of its own, without waiting for the work queued on the caller's (torchvision PR #9606). The
    caching allocator hands a block out again as soon as its last user is queued on its stream,
    so the decoder could overwrite memory that the previous step's kernels, still queued, read.
    So the outputs come from a side stream that no training kernel uses: wait for that stream's
    previous decode (long finished, unlike the training step), decode there, make the caller's
    stream wait for the images, and record that it uses them, so that their memory is not handed
    out again before its kernels are done."""
    from torchvision.io import decode_jpeg

    side, current = _decode_stream(device), torch.cuda.current_stream(device)
    side.synchronize()
    with torch.cuda.stream(side):
        images = decode_jpeg(data, mode=read_mode, device=device)
    current.wait_stream(side)
    for image in images:
        image.record_stream(current)
    return images
