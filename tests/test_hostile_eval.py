"""`eval --bn-recalibrate N` on data with fewer than one batch of training images: the statistics
are re-estimated on all of them (not reset to 0/1 by a loader that yields nothing), and the
output reports the images actually used."""

from __future__ import annotations

import gzip

import numpy as np
import torch

from conftest import SMALL, dsnas_error
from dsnas import ShuffleNetChild
from dsnas.arch import Architecture
from dsnas.evaluate import evaluate_child, recalibrate_bn
from dsnas.spaces import ShuffleNetSettings


def _idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _small_idx_folder(root, n_train: int, n_test: int = 20):
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def test_recalibration_on_fewer_images_than_a_batch_uses_them_all(tmp_path):
    data = _small_idx_folder(tmp_path / "tiny", 100)
    arch = Architecture(["shuffle_3x3"] * 20, settings=SMALL)
    child = ShuffleNetChild(arch.choices, ShuffleNetSettings(**SMALL))
    out = evaluate_child(arch, child, str(data), bn_recalibrate=500)
    assert out["bn_recalibrate"] == 100 and out["images"] == 20
    stem_bn = next(m for m in child.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.equal(stem_bn.running_mean, torch.zeros_like(stem_bn.running_mean))
    assert stem_bn.num_batches_tracked == 1


def test_a_loader_with_no_batch_leaves_the_statistics_alone():
    bn = torch.nn.BatchNorm2d(3)
    bn.running_mean.fill_(0.5)
    assert "no batch of training images" in dsnas_error(recalibrate_bn, bn, [], 10)
    assert torch.all(bn.running_mean == 0.5)
