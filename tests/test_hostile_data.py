"""Malformed data files: IDX headers and gzip streams, images PIL cannot convert. Each is a
one-line error naming the file."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest

from conftest import cifar_folder, dsnas_error
from dsnas.data import load_data, read_idx


def idx_header(*shape: int) -> bytes:
    return bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("raw, expected", [
    (bytes([0, 0, 8, 65]) + bytes(4 * 65), "of 65 dimensions"),
    (bytes([0, 0, 8, 4]) + bytes(16), "of 4 dimensions"),
    (bytes([0, 0, 8, 3]) + bytes(6), "its header ends early"),
    (idx_header(2, 4, 4) + bytes(31), "header says [2, 4, 4], 31 bytes"),
    (idx_header(2, 4, 4) + bytes(33), "header says [2, 4, 4]"),
    (bytes([0, 0, 9, 1]) + bytes(8), "not an IDX file of unsigned bytes"),
])
def test_idx_headers_are_checked_before_the_data(tmp_path, gz, raw, expected):
    path = tmp_path / ("x-idx.gz" if gz else "x-idx")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    msg = dsnas_error(read_idx, path)
    assert expected in msg and str(path) in msg


def test_a_corrupt_deflate_body_behind_a_valid_gzip_header(tmp_path):
    good = gzip.compress(idx_header(2, 4, 4) + bytes(range(32)))
    path = tmp_path / "x-idx.gz"
    path.write_bytes(good[:10] + bytes([0xFF] * 8) + good[18:])  # the deflate stream, trampled
    with pytest.raises(zlib.error):
        gzip.decompress(path.read_bytes())
    assert "cannot be read" in dsnas_error(read_idx, path)


def test_idx_data_reads_back_exactly(tmp_path):
    data = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    for name, raw in (("a-idx", idx_header(2, 5, 3) + data.tobytes()),
                      ("a-idx.gz", gzip.compress(idx_header(2, 5, 3) + data.tobytes()))):
        (tmp_path / name).write_bytes(raw)
        got = read_idx(tmp_path / name)
        assert got.flags.writeable and np.array_equal(got, data)


def _gray_tree(root, odd):
    """train/ and val/ of two classes of 8x8 grayscale PNGs, plus ``odd`` (a PIL image) in train/b."""
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.new("L", (8, 8)).save(root / split / cls / "0.png")
    odd.save(root / "train" / "b" / "1.tif")
    return root


def test_an_image_pil_cannot_convert_is_an_error_naming_it(tmp_path):
    from PIL import Image

    lab = Image.new("LAB", (8, 8))
    with pytest.raises(ValueError):
        lab.convert("L")
    msg = dsnas_error(load_data, str(_gray_tree(tmp_path / "tree", lab)))
    assert "1.tif cannot be read" in msg


def test_16_bit_conversion_rounds_as_before(tmp_path):
    """Integer rescaling gives exactly round(v * 255 / top), the float formula it replaces."""
    from PIL import Image

    from dsnas.images import to_8bit

    values = np.arange(0, 65536, dtype=np.uint16).reshape(256, 256)
    got = np.asarray(to_8bit(Image.fromarray(values)))
    assert np.array_equal(got, np.rint(values / 65535.0 * 255).astype(np.uint8))
    small = np.arange(-5, 251, dtype=np.int32).reshape(16, 16)
    got = np.asarray(to_8bit(Image.fromarray(small)))
    assert np.array_equal(got, np.clip(small, 0, 255).astype(np.uint8))


def test_a_streamed_image_file_larger_than_any_image_is_not_read(tmp_path):
    from dsnas.images import IMAGE_MAX_BYTES, ImageFiles

    path = tmp_path / "huge.jpg"
    with open(path, "wb") as f:
        f.truncate(IMAGE_MAX_BYTES + 1)  # sparse: nothing is written
    msg = dsnas_error(ImageFiles([(str(path), 0)], 32, "RGB").__getitem__, 0)
    assert "huge.jpg cannot be read" in msg and "MiB" in msg


def _cifar(folder, data, labels):
    """A CIFAR-10 python folder: one training batch, hostile, and a good test batch."""
    return cifar_folder(folder, data, labels, test=(np.zeros((2, 3072), np.uint8), [0, 1]))


@pytest.mark.parametrize("data, labels, expected", [
    (np.full((2, 3072), 300, np.int64), [0, 1], "pixel values must be in 0..255, found 300"),
    (np.full((2, 3072), -1, np.int16), [0, 1], "pixel values must be in 0..255, found -1"),
    ([[300] * 3072] * 2, [0, 1], "found 300"),
    (np.zeros((2, 3072), np.float32), [0, 1], "pixel values must be integers"),
    (np.zeros((2, 3072), np.uint8), [0, 2**70], "labels must be integers that fit in 64 bits"),
    (np.zeros((2, 3072), np.uint8), np.array([0, 2**63 + 5], np.uint64), "is outside 0..9"),
    (np.zeros((2, 3072), np.uint8), ["a", "b"], "labels must be integers"),
    (np.zeros((0, 3072), np.uint8), [], "holds no images"),
])
def test_cifar_values_that_a_cast_would_wrap(tmp_path, data, labels, expected):
    folder = _cifar(tmp_path / "cifar", data, labels)
    msg = dsnas_error(load_data, str(folder))
    assert expected in msg and "data_batch_1" in msg


def test_an_empty_cifar_batch_warns_nothing(tmp_path, recwarn):
    folder = _cifar(tmp_path / "cifar", np.zeros((0, 3072), np.uint8), [])
    dsnas_error(load_data, str(folder))
    assert not recwarn.list


def test_an_image_past_our_pixel_limit_but_under_pils_is_refused_from_its_header(tmp_path):
    from dsnas.images import IMAGE_MAX_PIXELS, open_image
    from test_hostile_memory import png

    side = int(IMAGE_MAX_PIXELS ** 0.5)
    (tmp_path / "tall.png").write_bytes(png(side, side + 16, bit_depth=8))
    msg = dsnas_error(open_image, tmp_path / "tall.png")
    assert f"{side} x {side + 16} pixels, over the limit of {IMAGE_MAX_PIXELS}" in msg
