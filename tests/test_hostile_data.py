"""Malformed data files: IDX headers and gzip streams. Each is a one-line error naming the file."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest

from conftest import dsnas_error
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
