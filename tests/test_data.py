"""Data: the embedded Fashion-MNIST subset, IDX folders, ImageFolder trees, batching, augmentation."""

from __future__ import annotations

import gzip
import itertools
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import dsnas_error
from dsnas.data import BatchPlan, Data, Loader, Split, augment, load_data

FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]
CPU = torch.device("cpu")


# --- helpers --------------------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes (as scripts/make_embedded_subset.py writes them), uncompressed."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as IDX; gzipped when ``path`` ends in .gz."""
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)


def make_idx_folder(root: Path, n_train=40, n_test=20, size=12, classes=4, gz=True, seed=0):
    """An IDX folder in Fashion-MNIST's layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % classes).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        arrays[prefix] = (images, labels)
    return arrays


def make_image_tree(root: Path, splits=("train", "val"), classes=("cat", "ant", "bee"), per_class=3, size=16,
                    mode="RGB") -> None:
    """An ImageFolder tree of PNGs; every pixel of image i of class folder c is 40*c_sorted + i,
    so a loaded image tells which class folder it came from."""
    from PIL import Image

    order = sorted(classes)
    for split in splits:
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                value = 40 * order.index(name) + i
                color = value if mode == "L" else (value, value, value)
                Image.new(mode, (size, size), color).save(folder / f"img{i}.png")


@pytest.fixture(scope="module")
def embedded() -> Data:
    return load_data()


# --- the embedded subset ------------------------------------------------------------------------
def test_embedded_shapes_and_classes(embedded):
    d = embedded
    assert d.in_memory
    assert d.num_classes == 10 and d.in_channels == 1 and d.input_size == 28
    assert d.classes == FASHION_NAMES
    for split, n in ((d.train, 12000), (d.test, 3000)):
        assert isinstance(split, Split)
        assert tuple(split.images.shape) == (n, 1, 28, 28)
        assert split.images.dtype == torch.uint8
        assert split.labels.dtype == torch.int64 and tuple(split.labels.shape) == (n,)
        # stratified: every class has the same count
        assert torch.bincount(split.labels, minlength=10).tolist() == [n // 10] * 10
    # real images, not blank: a spread of pixel values
    assert d.train.images.max() == 255 and d.train.images.min() == 0


def test_embedded_stats(embedded):
    d = embedded
    assert len(d.mean) == 1 and len(d.std) == 1
    assert 0 < d.mean[0] < 1 and d.std[0] > 0
    x = d.train.images.float() / 255
    assert d.mean[0] == pytest.approx(x.mean().item(), abs=1e-4)
    assert d.std[0] == pytest.approx(x.std().item(), abs=1e-4)


def test_embedded_is_the_default():
    a, b = load_data(), load_data("embedded")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)


def test_embedded_licence_shipped():
    lic = resources.files("dsnas") / "embedded" / "LICENSE"
    assert lic.is_file()
    assert "Zalando" in lic.read_text()


# --- IDX folders ----------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_idx_folder(tmp_path, gz):
    arrays = make_idx_folder(tmp_path / "mydata", gz=gz)
    d = load_data(str(tmp_path / "mydata"))
    assert d.in_memory
    assert (d.num_classes, d.in_channels, d.input_size) == (4, 1, 12)
    assert d.classes == ["0", "1", "2", "3"]
    for split, prefix in ((d.train, "train"), (d.test, "t10k")):
        images, labels = arrays[prefix]
        assert split.images.dtype == torch.uint8 and tuple(split.images.shape) == (len(images), 1, 12, 12)
        assert torch.equal(split.images[:, 0], torch.from_numpy(images))
        assert torch.equal(split.labels, torch.from_numpy(labels.astype(np.int64)))
    x = torch.from_numpy(arrays["train"][0]).float() / 255
    assert d.mean[0] == pytest.approx(x.mean().item(), abs=1e-4)
    assert 0 < d.std[0]


def test_idx_truncated_gzip_payload(tmp_path):
    """Valid gzip, but fewer bytes than the header's shape says."""
    make_idx_folder(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    raw = idx_bytes(np.zeros((40, 12, 12), np.uint8))[:-5]
    bad.write_bytes(gzip.compress(raw))
    msg = dsnas_error(load_data, str(tmp_path))
    assert "train-images-idx3-ubyte.gz" in msg and "truncated or corrupt" in msg


def test_idx_not_gzip(tmp_path):
    make_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip data at all")
    msg = dsnas_error(load_data, str(tmp_path))
    assert "t10k-labels-idx1-ubyte.gz" in msg and "cannot be read" in msg


def test_idx_cut_gzip_stream(tmp_path):
    make_idx_folder(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    msg = dsnas_error(load_data, str(tmp_path))
    assert "train-labels-idx1-ubyte.gz" in msg


def test_idx_not_idx(tmp_path):
    make_idx_folder(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"hello world, not idx"))
    msg = dsnas_error(load_data, str(tmp_path))
    assert "train-images-idx3-ubyte.gz" in msg and "IDX" in msg


def test_idx_count_mismatch(tmp_path):
    make_idx_folder(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8))
    msg = dsnas_error(load_data, str(tmp_path))
    assert "train" in msg and "do not match" in msg and "39" in msg


def test_idx_missing_test_split(tmp_path):
    make_idx_folder(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    msg = dsnas_error(load_data, str(tmp_path))
    assert "t10k-images-idx3-ubyte" in msg


# --- ImageFolder trees ----------------------------------------------------------------------------
def _check_tree_labels(d: Data, channels: int, per_class: int, n_classes: int = 3):
    for split in (d.train, d.test):
        assert isinstance(split, Split)
        assert split.images.dtype == torch.uint8
        assert tuple(split.images.shape) == (n_classes * per_class, channels, 16, 16)
        # pixel value 40*class + i (see make_image_tree): the label must match the folder
        assert torch.equal(split.images[:, 0, 0, 0].long() // 40, split.labels)
        assert torch.bincount(split.labels).tolist() == [per_class] * n_classes


def test_image_folder_rgb(tmp_path):
    root = tmp_path / "tree"
    make_image_tree(root, per_class=3)
    d = load_data(str(root))
    assert d.in_memory
    assert (d.num_classes, d.in_channels, d.input_size) == (3, 3, 16)
    assert d.classes == ["ant", "bee", "cat"]
    _check_tree_labels(d, 3, 3)
    assert len(d.mean) == 3 and all(0 < m < 1 for m in d.mean) and all(s > 0 for s in d.std)


def test_image_folder_grayscale(tmp_path):
    make_image_tree(tmp_path, mode="L", per_class=2)
    d = load_data(str(tmp_path))
    assert (d.num_classes, d.in_channels, d.input_size) == (3, 1, 16)
    _check_tree_labels(d, 1, 2)


def test_image_folder_test_split(tmp_path):
    make_image_tree(tmp_path, splits=("train", "test"), per_class=2)
    d = load_data(str(tmp_path))
    assert (d.num_classes, d.in_channels, d.input_size) == (3, 3, 16)
    assert d.classes == ["ant", "bee", "cat"]
    _check_tree_labels(d, 3, 2)


@pytest.mark.parametrize("where", ["train/ant/a0.png", "val/cat/zz.png"])
def test_image_folder_unreadable_image(tmp_path, where):
    make_image_tree(tmp_path, per_class=2)
    (tmp_path / where).write_bytes(b"\x00garbage, not a PNG\xff" * 10)
    msg = dsnas_error(load_data, str(tmp_path))
    assert Path(where).name in msg and "cannot be read" in msg


def test_image_folder_val_classes_differ(tmp_path):
    make_image_tree(tmp_path, splits=("train",), per_class=2)
    make_image_tree(tmp_path, splits=("val",), classes=("cat", "ant", "dog"), per_class=2)
    msg = dsnas_error(load_data, str(tmp_path))
    assert "val" in msg and "dog" in msg and "bee" in msg


# --- path errors ----------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    msg = dsnas_error(load_data, str(tmp_path / "nope"))
    assert "nope" in msg and "does not exist" in msg


def test_file_not_folder(tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("hello")
    msg = dsnas_error(load_data, str(f))
    assert "data.txt" in msg and "not a folder" in msg


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    msg = dsnas_error(load_data, str(tmp_path / "empty"))
    assert "empty" in msg


@pytest.mark.parametrize("layout", ["junk", "train_only"])
def test_folder_neither_idx_nor_tree(tmp_path, layout):
    root = tmp_path / "thing"
    root.mkdir()
    if layout == "junk":
        (root / "readme.txt").write_text("hi")
    else:
        make_image_tree(root, splits=("train",), per_class=1)
    msg = dsnas_error(load_data, str(root))
    assert "thing" in msg and "IDX" in msg and "train/" in msg and "val/" in msg


# --- BatchPlan ------------------------------------------------------------------------------------
def test_batch_plan_ranks_disjoint():
    n, bs = 103, 10
    plans = [BatchPlan(n, bs, seed=5, rank=r, world=2) for r in range(2)]
    for p in plans:
        p.set_epoch(3)
    batches = [list(p) for p in plans]
    assert len(plans[0]) == len(plans[1]) == (n // 2) // bs
    assert len(batches[0]) == len(batches[1]) == len(plans[0])
    assert all(len(b) == bs for bb in batches for b in bb)
    flat = [[i for b in bb for i in b] for bb in batches]
    assert not set(flat[0]) & set(flat[1])
    for f in flat:
        assert len(set(f)) == len(f) and all(0 <= i < n for i in f)


def test_batch_plan_order_seeded():
    def order(seed, epoch, start=0):
        p = BatchPlan(50, 8, seed=seed)
        p.set_epoch(epoch, start)
        return list(p)

    assert order(1, 2) == order(1, 2)
    assert order(1, 2) != order(1, 3)
    assert order(1, 2) != order(2, 2)
    full = order(1, 2)
    assert len(full) == 6 and sorted(i for b in full for i in b) != list(range(48))  # drops the tail
    for k in range(len(full) + 1):
        assert order(1, 2, start=k) == full[k:]


def test_batch_plan_set_epoch_resets_start():
    p = BatchPlan(50, 8, seed=1)
    p.set_epoch(0, 4)
    assert len(list(p)) == 2
    p.set_epoch(1)
    assert len(list(p)) == 6


def test_batch_plan_unshuffled_keeps_tail():
    p = BatchPlan(25, 10, seed=0, shuffle=False, drop_last=False)
    assert len(p) == 3
    assert list(p) == [list(range(10)), list(range(10, 20)), list(range(20, 25))]


def test_loader_eval_uneven_ranks():
    """513 test images on 2 ranks with batch 256: rank 1 holds 256 images, one full batch."""
    images = torch.zeros(513, 1, 4, 4, dtype=torch.uint8)
    labels = torch.zeros(513, dtype=torch.int64)
    d = Data("x", Split(images, labels), Split(images, labels), 1, 1, 4, (0.5,), (0.25,))
    seen = 0
    for rank in range(2):
        loader = Loader(d, "test", 256, 0, CPU, rank=rank, world=2, train=False)
        sizes = [len(y) for _, y in loader]
        assert all(sizes)
        seen += sum(sizes)
    assert seen == 513


# --- Loader ---------------------------------------------------------------------------------------
def _normalize(images: torch.Tensor, d: Data) -> torch.Tensor:
    mean = torch.tensor(d.mean).view(1, -1, 1, 1)
    std = torch.tensor(d.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def test_loader_train_deterministic(embedded):
    a = Loader(embedded, "train", 64, seed=7, device=CPU)
    b = Loader(embedded, "train", 64, seed=7, device=CPU)
    a.set_epoch(2)
    b.set_epoch(2)
    xa, xb = _take(a, 3), _take(b, 3)
    for (x1, y1), (x2, y2) in zip(xa, xb):
        assert x1.shape == (64, 1, 28, 28) and x1.dtype == torch.float32
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    b.set_epoch(3)
    assert not torch.equal(xa[0][0], _take(b, 1)[0][0])


def test_loader_train_is_augmented(embedded):
    loader = Loader(embedded, "train", 64, seed=7, device=CPU)
    loader.set_epoch(1)
    idx = next(iter(loader.plan))
    x, y = _take(loader, 1)[0]
    assert torch.equal(y, embedded.train.labels[idx])
    plain = _normalize(embedded.train.images[idx], embedded)
    assert not torch.allclose(x, plain)
    # ... of the same images: each is a 2-px padded crop (maybe flipped) of its source
    raw = x * torch.tensor(embedded.std).view(1, -1, 1, 1) + torch.tensor(embedded.mean).view(1, -1, 1, 1)
    padded = torch.nn.functional.pad(embedded.train.images[idx].float() / 255, (2, 2, 2, 2))
    for r, p in zip(raw[:16], padded[:16]):
        crops = [p[:, dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)]
        assert any(torch.allclose(r, c, atol=1e-5) or torch.allclose(r, c.flip(-1), atol=1e-5) for c in crops)


def test_loader_start_mid_epoch(embedded):
    k, epoch = 4, 1
    full = Loader(embedded, "train", 100, seed=3, device=CPU)
    full.set_epoch(epoch)
    ref = _take(full, k + 2)
    started = Loader(embedded, "train", 100, seed=3, device=CPU)
    started.set_epoch(epoch, k)
    got = _take(started, 2)
    for (x1, y1), (x2, y2) in zip(ref[k:], got):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_loader_test_covers_each_image_once(embedded):
    bs = 256
    loader = Loader(embedded, "test", bs, seed=0, device=CPU, train=False)
    n = len(embedded.test)
    assert len(loader) == -(-n // bs)
    for epoch in (0, 5):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader)
        assert [len(y) for _, y in batches[:-1]] == [bs] * (len(batches) - 1)
        assert len(batches[-1][1]) == n - bs * (len(batches) - 1)
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        # order-independent: each yielded image is an un-augmented source image, each exactly once
        expected = _normalize(embedded.test.images, embedded)
        v = torch.randn(28 * 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        key_got = x.flatten(1).double() @ v + 1e4 * y.double()
        key_exp = expected.flatten(1).double() @ v + 1e4 * embedded.test.labels.double()
        assert torch.allclose(key_got.sort().values, key_exp.sort().values, atol=1e-6, rtol=0)


# --- augment --------------------------------------------------------------------------------------
def test_augment_shape_and_determinism():
    x = torch.rand(6, 3, 8, 10)
    out = augment(x, 2, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, augment(x, 2, torch.Generator().manual_seed(1)))


def test_augment_no_pad_is_identity_up_to_flip():
    x = torch.rand(64, 2, 7, 7)
    out = augment(x, 0, torch.Generator().manual_seed(0))
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    assert all(s or f for s, f in zip(same, flipped))
    assert any(same) and any(flipped)


def test_augment_is_padded_crop():
    pad, h, w = 2, 6, 5
    x = torch.rand(16, 3, h, w) + 1  # no zeros in the source: padding shows as 0
    out = augment(x, pad, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = set()
    for o, p in zip(out, padded):
        matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   for cand in (p[:, dy:dy + h, dx:dx + w],) if torch.equal(o, cand) or torch.equal(o, cand.flip(-1))]
        assert matches, "output is not a (flipped) crop of the padded input"
        offsets.update(matches)
    assert len(offsets) > 1  # the crops move
