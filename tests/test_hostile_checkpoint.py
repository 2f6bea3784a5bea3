"""Checkpoint archives that would inflate past what the run's model can need: refused from the
zip directory before torch reads a tensor, falling back to prev.pt like a corrupt file."""

from __future__ import annotations

import zipfile

import torch

from conftest import dsnas_error
from dsnas.checkpoint import PICKLE_MAX_BYTES, checkpoint_limits, load_checkpoint, save_checkpoint
from test_hostile_memory import zip64

SETTINGS = {"num_classes": 10, "in_channels": 1, "input_size": 28, "width": 0.25, "small_input": True}
MODEL = torch.nn.Linear(4, 4)  # limits: 1 MiB a member, 64 MiB + 4 x 80 bytes in all


def _deflated(path):
    """Rewrite the torch archive at ``path`` with every member deflated (torch stores them)."""
    with zipfile.ZipFile(path) as z:
        members = [(m.filename, z.read(m)) for m in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)


def test_limits_follow_the_model():
    member, total = checkpoint_limits(torch.nn.Linear(1000, 1000))
    assert member == 4_000_000 and total == 4 * (4_000_000 + 4000) + PICKLE_MAX_BYTES
    assert checkpoint_limits(MODEL)[0] == 1 << 20


def test_an_oversized_deflated_tensor_falls_back_to_prev(tmp_path):
    save_checkpoint(tmp_path, {"model": {"w": torch.ones(4)}}, SETTINGS)
    save_checkpoint(tmp_path, {"model": {"w": torch.zeros(4 << 20)}}, SETTINGS)  # 16 MiB of zeros
    _deflated(tmp_path / "last.pt")
    assert (tmp_path / "last.pt").stat().st_size < 100_000
    warnings = []
    ckpt = load_checkpoint(tmp_path, SETTINGS, warn=warnings.append, limits=checkpoint_limits(MODEL))
    assert torch.equal(ckpt["model"]["w"], torch.ones(4))
    assert "inflates to 16777216 bytes" in warnings[0] and "resuming from" in warnings[0]


def test_members_each_small_but_too_many_in_all(tmp_path):
    save_checkpoint(tmp_path, {"model": {f"w{i}": torch.zeros(1 << 18) for i in range(80)}}, SETTINGS)
    msg = dsnas_error(load_checkpoint, tmp_path, SETTINGS, limits=checkpoint_limits(MODEL))
    assert "it inflates to" in msg and "a checkpoint of this run can take" in msg


def test_an_oversized_pickle_member(tmp_path):
    save_checkpoint(tmp_path, {"model": {"w": torch.ones(4)}}, SETTINGS)
    with zipfile.ZipFile(tmp_path / "last.pt") as z:
        members = {m.filename: z.read(m) for m in z.infolist()}
    pickle = next(name for name in members if name.endswith("data.pkl"))
    (tmp_path / "last.pt").write_bytes(zip64(members, pickle, 1 << 30))
    msg = dsnas_error(load_checkpoint, tmp_path, SETTINGS, limits=checkpoint_limits(MODEL))
    assert "data.pkl" in msg and "inflates to 1073741824 bytes" in msg


def test_a_checkpoint_that_is_not_an_archive(tmp_path):
    torch.save({"model": {}}, tmp_path / "last.pt", _use_new_zipfile_serialization=False)
    msg = dsnas_error(load_checkpoint, tmp_path, SETTINGS, limits=checkpoint_limits(MODEL))
    assert "not a checkpoint archive" in msg
