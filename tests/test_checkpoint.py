"""Checkpoints are read without unpickling code, fall back to the previous one, and are checked
against the format and the space settings."""

import os

import pytest
import torch

from dsnas import DsnasError
from dsnas.checkpoint import FORMAT, load_checkpoint, save_checkpoint

SETTINGS = {"num_classes": 10, "in_channels": 1, "input_size": 28, "width": 0.25, "small_input": True}


class Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip_and_rotation(tmp_path):
    save_checkpoint(tmp_path, {"step": torch.tensor(1)}, SETTINGS)
    save_checkpoint(tmp_path, {"step": torch.tensor(2)}, SETTINGS)
    assert int(load_checkpoint(tmp_path, SETTINGS)["step"]) == 2
    assert int(torch.load(tmp_path / "prev.pt", weights_only=True)["step"]) == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_pickled_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": FORMAT, "settings": SETTINGS, "evil": Payload(str(marker))}, tmp_path / "last.pt")
    with pytest.raises(DsnasError, match="refusing"):
        load_checkpoint(tmp_path, SETTINGS)
    assert not marker.exists()


def test_corrupt_last_falls_back_to_previous(tmp_path):
    save_checkpoint(tmp_path, {"step": torch.tensor(1)}, SETTINGS)
    save_checkpoint(tmp_path, {"step": torch.tensor(2)}, SETTINGS)
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 3])  # truncated
    warnings = []
    ckpt = load_checkpoint(tmp_path, SETTINGS, warn=warnings.append)
    assert int(ckpt["step"]) == 1
    assert warnings and "prev.pt" in warnings[0]


def test_both_corrupt_is_an_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DsnasError, match="corrupt"):
        load_checkpoint(tmp_path, SETTINGS)
    os.remove(tmp_path / "last.pt")
    with pytest.raises(DsnasError, match="no checkpoint"):
        load_checkpoint(tmp_path, SETTINGS)


def test_other_space_or_format_is_refused(tmp_path):
    save_checkpoint(tmp_path, {"step": torch.tensor(1)}, SETTINGS)
    with pytest.raises(DsnasError, match="space settings"):
        load_checkpoint(tmp_path, {**SETTINGS, "width": 0.5})
    torch.save({"format": "something/9"}, tmp_path / "last.pt")
    os.remove(tmp_path / "prev.pt") if (tmp_path / "prev.pt").exists() else None
    with pytest.raises(DsnasError, match="format"):
        load_checkpoint(tmp_path, SETTINGS)


def test_global_rng_states_round_trip(tmp_path):
    import random

    import numpy as np

    from dsnas.checkpoint import global_rng_states, set_global_rng_states

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path, global_rng_states(), SETTINGS)
    want = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_global_rng_states(load_checkpoint(tmp_path, SETTINGS))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == want
