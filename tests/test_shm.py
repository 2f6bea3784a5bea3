"""Streamed batches pass through /dev/shm on their way from the DataLoader workers; when the
workers' batches in flight would not fit there (a small container's 64 MiB, say), the loader
starts fewer workers, or none, and says so in one line, instead of dying with a bus error."""

import pytest
import torch
from PIL import Image

from dsnas import data
from dsnas.data import Loader, load_data

BATCH_BYTES = 2 * 3 * 32 * 32  # a batch of 2 RGB crops of 32 px, uint8


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (80, 80), (60 * i, 100, 200)).save(root / split / c / f"{i}.jpg", "JPEG")
    return load_data(str(root), input_size=32)


def _loader(streamed, monkeypatch, free, workers=2):
    monkeypatch.setattr(data, "shm_free_bytes", lambda: free)
    return Loader(streamed, "train", 2, 0, torch.device("cpu"), workers=workers)


def test_workers_that_fit_are_kept(streamed, monkeypatch, capsys):
    loader = _loader(streamed, monkeypatch, free=10 * 2**20)
    assert loader.loader.num_workers == 2
    assert capsys.readouterr().err == ""
    assert _loader(streamed, monkeypatch, free=None).loader.num_workers == 2  # no /dev/shm: nothing to check


def test_too_little_shared_memory_lowers_the_workers(streamed, monkeypatch, capsys):
    # half of the free space holds 3.3 batches: one worker (2 prefetched batches plus one handed over)
    loader = _loader(streamed, monkeypatch, free=int(6.6 * BATCH_BYTES))
    assert loader.loader.num_workers == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "/dev/shm" in err and "using 1" in err and "--shm-size" in err


def test_ranks_of_one_machine_share_it(streamed, monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert _loader(streamed, monkeypatch, free=int(6.6 * BATCH_BYTES)).loader.num_workers == 0


def test_no_room_at_all_loads_in_the_main_process(streamed, monkeypatch, capsys):
    loader = _loader(streamed, monkeypatch, free=1000)
    assert loader.loader.num_workers == 0
    assert "main process" in capsys.readouterr().err
    x, y = next(iter(loader))
    assert x.shape == (2, 3, 32, 32) and y.shape == (2,)
