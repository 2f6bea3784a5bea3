"""CIFAR-10 from a local folder, in torchvision's python format and the binary format; the
pickled batches are read without running any code other than numpy's array reconstruction."""

import pickle

import numpy as np
import pytest

from conftest import RunsCode
from dsnas import DsnasError
from dsnas.data import load_data


def _batch(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()


def _write_py(folder, n=20):
    folder.mkdir(parents=True)
    for name, seed in [(f"data_batch_{i}", i) for i in range(1, 6)] + [("test_batch", 9)]:
        data, labels = _batch(n, seed)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f, protocol=2)
    return folder


def test_python_batches(tmp_path):
    folder = _write_py(tmp_path / "cifar-10-batches-py")
    data = load_data(str(tmp_path))  # the parent folder, as torchvision lays it out
    assert (data.num_classes, data.in_channels, data.input_size) == (10, 3, 32)
    assert len(data.train) == 100 and len(data.test) == 20
    want, labels = _batch(20, 1)
    assert np.array_equal(data.train.images[:20].numpy().reshape(20, -1), want)
    assert data.train.labels[:20].tolist() == labels
    assert load_data(str(folder)).classes[0] == "airplane"


def test_binary_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name, seed in [(f"data_batch_{i}.bin", i) for i in range(1, 6)] + [("test_batch.bin", 9)]:
        data, labels = _batch(10, seed)
        np.concatenate([np.array(labels, dtype=np.uint8)[:, None], data], axis=1).tofile(folder / name)
    data = load_data(str(tmp_path))
    assert len(data.train) == 50 and data.test.images.shape == (10, 3, 32, 32)
    assert data.test.labels.tolist() == _batch(10, 9)[1]


def test_pickled_code_in_a_batch_is_refused(tmp_path):
    folder = _write_py(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "ran"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": RunsCode(str(marker)), b"labels": [0]}, f)
    with pytest.raises(DsnasError, match="refusing"):
        load_data(str(tmp_path))
    assert not marker.exists()
