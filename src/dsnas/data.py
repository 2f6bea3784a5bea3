"""Data: the embedded Fashion-MNIST subset, IDX folders, ImageFolder trees; batching and augmentation.

Small images (the embedded set, any IDX folder, CIFAR-10, an ImageFolder of images up to 64 px) are held in
memory as uint8 tensors and batched by index, with augmentation (padded random crop, horizontal
flip) applied to whole batches. Larger ImageFolder images stream through a DataLoader with the
standard ImageNet crops (`images.py`), decoded in the workers or on the device. Both are ordered
by `BatchPlan`, which shards a seeded per-epoch permutation across ranks and can start mid-epoch
(for resume).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import os
import pickle
import pickletools
import shutil
import signal
import sys
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .errors import DsnasError, quote
from .images import ImageFiles, collate, decode_batch, open_image

EMBEDDED = "embedded"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# How published networks expect their input: the channel order, and mean/std on images in [0, 1]
# (an RGB 0-255 image x is fed as (x[order] / 255 - mean) / std, mean and std in the fed order).
INPUT_CONVENTIONS = {
    "dsnas": {"channels": "rgb", "mean": IMAGENET_MEAN, "std": IMAGENET_STD},  # ToTensor + Normalize
    "spos": {"channels": "bgr", "mean": (0.0, 0.0, 0.0), "std": (1 / 255,) * 3},  # BGR float 0-255
    "mmrazor": {"channels": "rgb", "mean": tuple(m / 255 for m in (123.675, 116.28, 103.53)),
                "std": tuple(s / 255 for s in (58.395, 57.12, 57.375))},
}
SMALL_IMAGE_MAX = 64  # ImageFolder images up to this size are loaded into memory
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class Split:
    """An in-memory split: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def limit(self, n: int | None, seed: int = 0) -> "Split":
        """A seeded random subset of at most ``n`` images."""
        if not n or n >= len(self):
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return Split(self.images[keep], self.labels[keep])


@dataclass
class Data:
    """A dataset ready for training: splits (in-memory `Split` or a torchvision dataset) and its shape."""

    name: str
    train: object
    test: object
    num_classes: int
    in_channels: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] = field(default_factory=list)
    channel_order: str = "rgb"         # the order the network is fed (the images themselves are RGB)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, Split)

    def with_convention(self, convention: str) -> "Data":
        """The same images, fed as a network of input convention ``convention`` (INPUT_CONVENTIONS)
        expects them instead of normalised by the data's own statistics."""
        if convention not in INPUT_CONVENTIONS:
            raise DsnasError(f"unknown input convention {quote(convention)} (known: {', '.join(INPUT_CONVENTIONS)})")
        if self.in_channels != 3:
            raise DsnasError(f"input convention {convention} is for RGB images; {self.name} has {self.in_channels} "
                             "channel(s)")
        c = INPUT_CONVENTIONS[convention]
        return dataclasses.replace(self, mean=tuple(c["mean"]), std=tuple(c["std"]), channel_order=c["channels"])


def to_input(images: torch.Tensor, convention: str) -> torch.Tensor:
    """RGB images in [0, 1] (N x 3 x H x W) as a network of input convention ``convention`` expects them."""
    c = INPUT_CONVENTIONS[convention]
    mean = torch.tensor(c["mean"], dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(c["std"], dtype=images.dtype).view(1, 3, 1, 1)
    return normalise(images, mean, std, c["channels"])


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channel_order: str = "rgb") -> torch.Tensor:
    """Images in [0, 1], in the data's channel order (RGB), as a network fed in ``channel_order``
    with ``mean`` and ``std`` (in that order) expects them."""
    x = images.flip(1) if channel_order == "bgr" else images
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------
# reading
IDX_MAX_DIMS = 3             # images (N, H, W) and labels (N,)
IDX_MAX_RATIO = 16           # image sets gzip 2-5x; a file claiming more is a bomb (deflate reaches 1032x)
IDX_UNCHECKED_BYTES = 64 << 20  # claims up to this size are read whatever the ratio
_CHUNK = 1 << 20


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes. The header is read first and
    the size it claims checked against the file's, so that no more than that size plus one
    chunk is ever inflated or allocated."""
    gz = path.suffix == ".gz"
    try:
        stored = path.stat().st_size
        with (gzip.open if gz else open)(path, "rb") as f:
            shape = _idx_shape(f, path)
            size, header = math.prod(shape), 4 + 4 * len(shape)
            if not gz and size != stored - header:
                raise DsnasError(f"{path} is truncated or corrupt (header says {shape}, {stored - header} bytes "
                                 "of data)")
            if gz and size > max(IDX_UNCHECKED_BYTES, IDX_MAX_RATIO * stored):
                raise DsnasError(f"{path} claims {shape} ({size} bytes) from {stored} compressed bytes, over "
                                 f"{IDX_MAX_RATIO}x; image sets compress far less (gunzip it to read it anyway)")
            data = np.empty(size, dtype=np.uint8)
            got = _read_into(f, memoryview(data))
            if got != size or f.read(1):
                more = "more than " if got == size else ""
                raise DsnasError(f"{path} is truncated or corrupt (header says {shape}, {more}{got} bytes of data)")
    except (OSError, EOFError, zlib.error) as e:
        raise DsnasError(f"{path} cannot be read: {e}") from None
    return data.reshape(shape)


def _idx_shape(f, path: Path) -> list[int]:
    magic = f.read(4)
    if len(magic) < 4 or magic[:3] != b"\x00\x00\x08" or magic[3] < 1:
        raise DsnasError(f"{path} is not an IDX file of unsigned bytes")
    if magic[3] > IDX_MAX_DIMS:
        raise DsnasError(f"{path} is an IDX file of {magic[3]} dimensions; images have 3 and labels 1")
    dims = f.read(4 * magic[3])
    if len(dims) < 4 * magic[3]:
        raise DsnasError(f"{path} is truncated or corrupt (its header ends early)")
    return [int.from_bytes(dims[i: i + 4], "big") for i in range(0, len(dims), 4)]


def _read_into(f, view: memoryview) -> int:
    """Fill ``view`` from ``f`` a chunk at a time (a gzip stream has no direct ``readinto``);
    returns the bytes read."""
    pos = 0
    while pos < len(view):
        n = f.readinto(view[pos: pos + _CHUNK])
        if not n:
            break
        pos += n
    return pos


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_idx_split(folder: Path, prefix: str) -> Split:
    img_path = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    lab_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lab_path is None:
        raise DsnasError(f"{folder} lacks {prefix}-images-idx3-ubyte[.gz] or {prefix}-labels-idx1-ubyte[.gz]")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DsnasError(f"{folder}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    if len(labels) == 0:
        raise DsnasError(f"{folder}: the {prefix} split is empty")
    if 0 in images.shape[1:]:
        raise DsnasError(f"{folder}: the {prefix} images are {images.shape[1]}x{images.shape[2]} pixels")
    return Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickled batches: numpy arrays and plain containers only, never other code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {quote(f'{module}.{name}')}")


def _cifar_folder(root: Path) -> Path | None:
    for candidate in (root, root / "cifar-10-batches-py", root / "cifar-10-batches-bin"):
        if (candidate / "data_batch_1").is_file() or (candidate / "data_batch_1.bin").is_file():
            return candidate
    return None


CIFAR_BATCH_MAX_BYTES = 256 << 20  # a CIFAR-10 batch is 31 MB


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        size = path.stat().st_size
        if size > CIFAR_BATCH_MAX_BYTES:
            raise DsnasError(f"{path} is {size >> 20} MiB; a CIFAR-10 batch is 31 MB")
        if path.suffix == ".bin":
            raw = np.fromfile(path, dtype=np.uint8)
            if raw.size == 0 or raw.size % 3073:
                raise DsnasError(f"{path} is not a CIFAR-10 binary batch ({raw.size} bytes)")
            records = raw.reshape(-1, 3073)
            images, labels = records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)
        else:
            raw = path.read_bytes()
            _check_pickle_lengths(raw)
            batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
            images = _whole_numbers(batch[b"data"], "pixel values", 255).astype(np.uint8, copy=False).reshape(-1, 3, 32, 32)
            labels = _whole_numbers(batch[b"labels"], "labels", None).astype(np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise DsnasError(f"{path} cannot be read as a CIFAR-10 batch: {e}") from None
    if labels.ndim != 1 or len(labels) != len(images):
        raise DsnasError(f"{path} holds {len(images)} images and {labels.size} labels")
    if len(labels) == 0:
        raise DsnasError(f"{path} holds no images")
    check_labels(labels, 10, str(path))
    return images, labels


def _check_pickle_lengths(raw: bytes) -> None:
    """Walk a pickle's opcodes before unpickling it: the unpickler allocates whatever a length
    field claims (2**62 bytes for a BINBYTES8) before it finds the data missing, while
    `pickletools` reads only the bytes that are there and stops at the first short one."""
    for op, arg, pos in pickletools.genops(raw):
        if op.name == "FRAME" and arg > len(raw) - pos:
            raise ValueError(f"a frame of {arg} bytes at byte {pos} of {len(raw)}")


def _whole_numbers(value, what: str, top: int | None) -> np.ndarray:
    """``value`` as an array of integers (in 0..``top`` when given), refusing what a cast would
    wrap or overflow: pixel values above 255, labels past 64 bits."""
    a = np.asarray(value)
    if a.dtype.kind not in "iu" and a.size:  # np.asarray([]) is float64
        raise ValueError(f"{what} must be integers that fit in 64 bits, got {a.dtype} values")
    if top is not None and a.size and (a.min() < 0 or a.max() > top):
        raise ValueError(f"{what} must be in 0..{top}, found {a.min() if a.min() < 0 else a.max()}")
    return a


def check_labels(labels: np.ndarray, num_classes: int, source: str) -> None:
    """Labels are class indices: whole numbers in [0, num_classes)."""
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise DsnasError(f"{source}: label {bad} is outside 0..{num_classes - 1}")


def _load_cifar10(folder: Path) -> Data:
    suffix = ".bin" if (folder / "data_batch_1.bin").is_file() else ""
    parts = [_load_cifar_batch(folder / f"data_batch_{i}{suffix}") for i in range(1, 6)
             if (folder / f"data_batch_{i}{suffix}").is_file()]
    test_path = folder / f"test_batch{suffix}"
    if not test_path.is_file():
        raise DsnasError(f"{folder} has no test_batch{suffix}")
    test = _load_cifar_batch(test_path)
    train = Split(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                  torch.from_numpy(np.concatenate([p[1] for p in parts])))
    return _with_stats(Data("cifar10", train, Split(torch.from_numpy(test[0].copy()), torch.from_numpy(test[1])),
                            10, 3, 32, (), (), list(CIFAR10_CLASSES)))


def _is_idx_folder(path: Path) -> bool:
    return _idx_file(path, "train-images-idx3-ubyte") is not None


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _image_folder_splits(root: Path) -> tuple[Path, Path]:
    train = root / "train"
    for name in ("val", "test"):
        if (root / name).is_dir() and train.is_dir():
            return train, root / name
    raise DsnasError(f"{root} is neither an IDX folder (train-images-idx3-ubyte.gz, ...) nor an image "
                     "tree with train/ and val/ (or test/) folders of class subfolders")


def _scan_image_folder(split: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    found = _class_folders(split)
    names = [p.name for p in found]
    if classes is not None and names != classes:
        raise DsnasError(f"{split} has classes {names}, the train split has {classes}")
    files = [_image_files(folder) for folder in found]
    if not any(files):
        raise DsnasError(f"{split} holds no images in class subfolders")
    if classes is None and len(found) < 2:
        raise DsnasError(f"{split} has one class folder ({names[0]}); a classifier needs at least two classes")
    empty = [folder.name for folder, f in zip(found, files) if not f]
    if empty and classes is None:
        raise DsnasError(f"{split}: class folder {empty[0]} holds no images")
    return names, [(f, i) for i, fs in enumerate(files) for f in fs]


def _load_small_images(samples: list[tuple[Path, int]], mode: str, size: int) -> Split:
    arrays = []
    for path, _ in samples:
        im = open_image(path, mode)
        if im.size != (size, size):
            raise DsnasError(f"image {path} is {im.size[0]}x{im.size[1]}, the others are {size}x{size}")
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return Split(torch.from_numpy(np.stack(arrays)), torch.tensor([y for _, y in samples], dtype=torch.int64))


def _load_image_folder(root: Path, input_size: int | None) -> Data:
    train_dir, test_dir = _image_folder_splits(root)
    classes, train_samples = _scan_image_folder(train_dir, None)
    _, test_samples = _scan_image_folder(test_dir, classes)
    first = open_image(train_samples[0][0])
    mode = "L" if first.mode in ("L", "1", "I;16", "I") else "RGB"
    channels = 1 if mode == "L" else 3
    if max(first.size) <= SMALL_IMAGE_MAX and not input_size:
        size = first.size[0]
        if first.size[0] != first.size[1]:
            raise DsnasError(f"image {train_samples[0][0]} is not square ({first.size[0]}x{first.size[1]})")
        train, test = _load_small_images(train_samples, mode, size), _load_small_images(test_samples, mode, size)
        return _with_stats(Data(root.name, train, test, len(classes), channels, size, (), (), classes))
    size = input_size or 224
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.25,))
    train = ImageFiles([(str(p), y) for p, y in train_samples], size, mode, train=True)
    test = ImageFiles([(str(p), y) for p, y in test_samples], size, mode, train=False)
    return Data(root.name, train, test, len(classes), channels, size, mean, std, classes)


def _with_stats(data: Data) -> Data:
    x = data.train.images[:20000].float() / 255
    data.mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
    data.std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    return data


def load_data(spec: str = EMBEDDED, input_size: int | None = None) -> Data:
    """``embedded`` (the shipped Fashion-MNIST subset), an IDX folder in Fashion-MNIST's layout,
    a local CIFAR-10 folder (torchvision's python batches or the binary version; never
    downloaded), or an ImageFolder tree with ``train/`` and ``val/`` (or ``test/``)."""
    if spec in (EMBEDDED, "", None):
        folder = Path(str(resources.files("dsnas") / "embedded" / "fashion_mnist"))
        data = Data("fashion-mnist-embedded", _load_idx_split(folder, "train"), _load_idx_split(folder, "t10k"),
                    10, 1, 28, (), (), list(FASHION_MNIST_CLASSES))
        return _with_stats(data)
    root = Path(spec).expanduser()
    if not root.exists():
        raise DsnasError(f"data path {root} does not exist")
    if not root.is_dir():
        raise DsnasError(f"data path {root} is not a folder")
    if not any(root.iterdir()):
        raise DsnasError(f"data folder {root} is empty")
    cifar = _cifar_folder(root)
    if cifar is not None:
        return _load_cifar10(cifar)
    if _is_idx_folder(root):
        train, test = _load_idx_split(root, "train"), _load_idx_split(root, "t10k")
        if train.images.shape[1:] != test.images.shape[1:]:
            raise DsnasError(f"{root}: train images are {tuple(train.images.shape[2:])}, test images "
                             f"{tuple(test.images.shape[2:])}")
        h, w = train.images.shape[2:]
        if h != w:
            raise DsnasError(f"{root}: images are {h}x{w}; square images are expected")
        num_classes = int(max(train.labels.max(), test.labels.max())) + 1
        if num_classes < 2:
            raise DsnasError(f"{root}: every label is 0; a classifier needs at least two classes")
        fmnist = num_classes == 10 and "fashion" in root.name.lower()
        classes = list(FASHION_MNIST_CLASSES) if fmnist else [str(i) for i in range(num_classes)]
        return _with_stats(Data(root.name, train, test, num_classes, 1, h, (), (), classes))
    return _load_image_folder(root, input_size)


def hold_out(data: Data, n: int, seed: int = 0) -> tuple[Data, Data]:
    """Split ``n`` seeded random training images off ``data``: (data without them, data whose
    test split is them). Held-out images of a streamed dataset get the evaluation crop."""
    source = data.train
    if n >= len(source):
        raise DsnasError(f"config: select_images ({n}) must be smaller than the {len(source)} training images")
    if n < 1:  # candidates ranked on no image would all score 0%
        raise DsnasError(f"config: {len(source)} training images leave no image to hold out for ranking candidates "
                         "(the default is a tenth of them); set select_images")
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed + 7))
    held, rest = order[:n].sort().values, order[n:].sort().values
    if isinstance(source, Split):
        kept, out = Split(source.images[rest], source.labels[rest]), Split(source.images[held], source.labels[held])
    else:
        kept, out = source.subset(rest.tolist()), source.evaluation().subset(held.tolist())
    return dataclasses.replace(data, train=kept), dataclasses.replace(data, name=f"{data.name}-held-out", test=out)


# ---------------------------------------------------------------------------------------------
# batching
class BatchPlan:
    """Batches of indices for one rank: a seeded permutation per epoch (shared by all ranks),
    dealt out round-robin, ``drop_last`` so every rank takes the same number of steps."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 shuffle: bool = True, drop_last: bool = True):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.shuffle, self.drop_last = rank, world, shuffle, drop_last
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        per_rank = self.n // self.world if self.drop_last else math.ceil(self.n / self.world)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        else:
            order = torch.arange(self.n)
        if self.drop_last:
            order = order[: (self.n // self.world) * self.world]
        mine = order[self.rank:: self.world]
        for b in range(self.start, len(self)):
            batch = mine[b * self.batch_size: (b + 1) * self.batch_size].tolist()
            if batch:  # without drop_last a rank's share can end exactly on a batch boundary
                yield batch


class SeededBatches:
    """The batches of a `BatchPlan`, each index paired with the seed of its image's augmentation,
    drawn from (run seed, epoch, index) alone: a streamed image gets the same crop and flip in a
    run resumed mid-epoch, under any number of loader workers, on any rank."""

    MIX = 0x9E3779B97F4A7C15  # an odd 64-bit constant: neighbouring epochs' seeds do not collide

    def __init__(self, plan: BatchPlan):
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self):
        base = (self.plan.seed * 100_003 + self.plan.epoch) * self.MIX
        for batch in self.plan:
            yield [(i, (base + i) % (1 << 63)) for i in batch]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``, without waiting for it: a copy from pageable host memory to a GPU
    blocks until every kernel already queued has run (a host-device sync per batch), so a CPU
    tensor goes to a GPU through pinned memory, asynchronously."""
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def augment(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Padded random crop and horizontal flip for a float batch (N, C, H, W). The draws come from
    ``generator`` (a CPU one), so a seed gives the same crops on every device."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    offsets = to_device(torch.randint(0, 2 * pad + 1, (2, n), generator=generator), images.device)
    rows = (offsets[0][:, None] + torch.arange(h, device=images.device))[:, :, None]
    cols = (offsets[1][:, None] + torch.arange(w, device=images.device))[:, None, :]
    out = padded.permute(0, 2, 3, 1)[torch.arange(n, device=images.device)[:, None, None], rows, cols]
    out = out.permute(0, 3, 1, 2)
    flip = to_device(torch.rand(n, generator=generator) < 0.5, images.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out).contiguous()


DEVICE_SPLIT_BYTES = 2 << 30  # an in-memory split up to this size is copied to the GPU once
SHM = "/dev/shm"  # the shared memory through which DataLoader workers hand their batches over
PREFETCH = 2  # batches each worker prepares ahead (DataLoader's prefetch_factor)
SHM_SHARE = 0.5  # the part of /dev/shm's free space that one machine's loaders may plan to fill


def shm_free_bytes() -> int | None:
    """Free bytes in /dev/shm (None where there is none)."""
    try:
        return shutil.disk_usage(SHM).free
    except OSError:
        return None


def workers_that_fit(workers: int, batch_bytes: int, rank: int = 0) -> int:
    """``workers``, or fewer when the batches they keep in flight (`PREFETCH` each, and one being
    handed over) would not fit in their share of /dev/shm: filling it kills a worker with a bus
    error. The ranks of one machine share it. Says so on stderr when it lowers the count."""
    free = shm_free_bytes()
    if not workers or free is None:
        return workers
    room = free * SHM_SHARE / int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    fit = min(workers, max(0, int((room / batch_bytes - 1) // PREFETCH)))
    if fit < workers and rank == 0:
        need = (workers * PREFETCH + 1) * batch_bytes
        print(f"dsnas: warning: /dev/shm has {free / 2**20:.0f} MiB free, too little for {workers} loader workers "
              f"(~{need / 2**20:.0f} MiB of batches in flight); using {fit or 'none (loading in the main process)'}. "
              "Give the machine or container more shared memory (docker run --shm-size=8g) or lower workers or "
              "batch_size", file=sys.stderr)
    return fit


def leave_stop_signals_to_the_run(_worker: int) -> None:
    """A loader worker ignores SIGTERM and SIGUSR1. torchrun and SLURM signal a rank's whole
    process group, and a worker that died of it would fail the step in progress; the run's own
    process checkpoints that step and stops, and shuts its workers down as it exits (a worker
    whose run has died exits by itself)."""
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


class Loader:
    """Iterates normalised (images, labels) batches on ``device`` for one split and one rank.

    In-memory splits are augmented here (train) from a generator seeded per (seed, epoch, step,
    rank), so a run resumed mid-epoch sees exactly the batches it would have seen. Streamed
    images come from DataLoader workers as uint8, their JPEGs decoded on ``device`` when
    ``jpeg_decode`` is ``device``.
    """

    def __init__(self, data: Data, split: str, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1, train: bool = True, workers: int = 0, pad: int = 2,
                 jpeg_decode: str = "workers"):
        self.data, self.device, self.train, self.pad, self.seed, self.rank = data, device, train, pad, seed, rank
        self.source = getattr(data, split)
        self.plan = BatchPlan(len(self.source), batch_size, seed, rank, world, shuffle=train, drop_last=train)
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        self.loader = None
        if isinstance(self.source, Split):  # small images, uint8: kept on the device when they fit comfortably
            store = device if self.source.images.nbytes <= DEVICE_SPLIT_BYTES else torch.device("cpu")
            self.images, self.labels = self.source.images.to(store), self.source.labels.to(store)
        else:
            self.source = self.source.decoded_on(jpeg_decode)
            channels = 1 if self.source.mode == "L" else 3
            workers = workers_that_fit(workers, batch_size * channels * self.source.size ** 2, rank)
            self.loader = torch.utils.data.DataLoader(self.source, batch_sampler=SeededBatches(self.plan),
                                                      num_workers=workers,
                                                      collate_fn=collate, pin_memory=device.type == "cuda",
                                                      persistent_workers=workers > 0,
                                                      worker_init_fn=leave_stop_signals_to_the_run)

    def __len__(self) -> int:
        return len(self.plan)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.plan.set_epoch(epoch, start)

    def __iter__(self):
        if self.loader is not None:
            yield from self._streamed()
            return
        for step, idx in enumerate(self.plan, start=self.plan.start):
            index = to_device(torch.tensor(idx), self.images.device)
            x = to_device(self.images[index], self.device).float().div_(255)
            y = to_device(self.labels[index], self.device)
            if self.train and self.pad:  # pad=0: no augmentation
                g = torch.Generator().manual_seed(hash((self.seed, self.plan.epoch, step, self.rank)) & 0xFFFFFFFF)
                x = augment(x, self.pad, g)
            yield self._normalised(x), y

    def _streamed(self):
        batches = iter(self.loader)
        while True:
            try:
                x, y = next(batches)
            except StopIteration:
                return
            except DsnasError as e:  # raised in a worker: torch's message is its traceback (made one line), ours last
                raise DsnasError(str(e).rsplit("DsnasError: ", 1)[-1].removesuffix("\\n")) from None
            if isinstance(x, list):
                x = decode_batch(x, self.source.mode, self.source.size, self.device)
            x = x.to(self.device, non_blocking=True).float().div_(255)
            yield self._normalised(x), y.to(self.device, non_blocking=True)

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        return normalise(x, self.mean, self.std, self.data.channel_order)
