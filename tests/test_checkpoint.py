"""Checkpoints are read without unpickling code, fall back to the previous one, and are checked
against the format and the space settings; a run's checkpoint restores every part of the run.
(Killing a run and resuming it is test_resume.py's.)"""

import os

import pytest
import torch
from torch import nn

from conftest import RunsCode
from dsnas import DSNAS, Choice, DsnasError
from dsnas.checkpoint import (FORMAT, RUN_KEYS, STATEFUL, RunState, load_checkpoint, restore_run, run_payload,
                              save_checkpoint)

SETTINGS = {"num_classes": 10, "in_channels": 1, "input_size": 28, "width": 0.25, "small_input": True}


def test_round_trip_and_rotation(tmp_path):
    save_checkpoint(tmp_path, {"step": torch.tensor(1)}, SETTINGS)
    save_checkpoint(tmp_path, {"step": torch.tensor(2)}, SETTINGS)
    assert int(load_checkpoint(tmp_path, SETTINGS)["step"]) == 2
    assert int(torch.load(tmp_path / "prev.pt", weights_only=True)["step"]) == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_pickled_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": FORMAT, "settings": SETTINGS, "evil": RunsCode(str(marker))}, tmp_path / "last.pt")
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


def test_checkpoint_lacking_model_falls_back_to_prev(tmp_path, capfd):
    full = {k: {"x": 1} for k in RUN_KEYS}
    save_checkpoint(tmp_path, full, {"s": 1})
    save_checkpoint(tmp_path, {k: v for k, v in full.items() if k != "model"}, {"s": 1})
    ckpt = load_checkpoint(tmp_path, {"s": 1}, required=RUN_KEYS)
    assert "model" in ckpt
    err = capfd.readouterr().err
    assert "lacks model" in err and "prev.pt" in err  # the warning goes to stderr


def _parts(seed: int) -> dict:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), Choice([nn.Identity(), nn.ReLU()]))
    search = DSNAS(model, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    arch_optimizer = torch.optim.Adam(search.alphas, lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (s + 1))
    return {"model": model, "search": search, "optimizer": optimizer, "arch_optimizer": arch_optimizer,
            "scheduler": scheduler, "scaler": torch.amp.GradScaler("cpu", enabled=False)}


def _train_a_little(parts: dict) -> None:
    for _ in range(3):
        parts["search"].sample()
        loss = parts["model"](torch.randn(2, 1, 5, 5)).square().mean()
        parts["optimizer"].zero_grad()
        loss.backward()
        parts["search"].compute_arch_grads()
        parts["arch_optimizer"].step()
        parts["optimizer"].step()
        parts["scheduler"].step()


def test_run_checkpoint_round_trip(tmp_path):
    a = _parts(0)
    _train_a_little(a)
    a["search"].choices[0].fix(1)
    state = RunState(epoch=2, step=5, global_step=17, history=[{"epoch": 1, "top1": 50.0}],
                     alpha_rows=[{"epoch": 0, "block": 0}], epoch_loss=torch.tensor(3.5), epoch_seen=5,
                     selection={"method": "spos"}, elapsed=12.5)
    payload = run_payload(a, state, [a["search"].generator.get_state()], None, {"seed": 0})
    assert set(STATEFUL) <= set(payload)
    save_checkpoint(tmp_path, payload, {"space": "toy"})

    b = _parts(1)  # different weights, optimizer state and generators
    restored = restore_run(load_checkpoint(tmp_path, {"space": "toy"}), b, rank=0)
    assert restored == state
    for k, v in a["model"].state_dict().items():
        assert torch.equal(v, b["model"].state_dict()[k]), k
    assert b["search"].fixed() == [1]
    assert torch.equal(b["search"].alphas[0], a["search"].alphas[0])
    assert b["scheduler"].state_dict()["last_epoch"] == 3
    # the next steps are the same: optimizers and every generator continue where they were
    _train_a_little(a)
    restore_run(load_checkpoint(tmp_path, {"space": "toy"}), b, rank=0)
    _train_a_little(b)
    for k, v in a["model"].state_dict().items():
        assert torch.equal(v, b["model"].state_dict()[k]), k


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default(tmp_path):
    """A space setting added later (nb201's ``bn_affine``) is missing from older checkpoints: they
    resume as if they held its default, and another value of a setting they do hold is refused."""
    from dsnas.checkpoint import FORMAT, LAST, load_checkpoint
    from dsnas.errors import DsnasError
    from dsnas.spaces import settings_of

    now = settings_of("nb201", {"channels": 8, "cells_per_stage": 1}).as_dict()
    older = {k: v for k, v in now.items() if k != "bn_affine"}
    torch.save({"format": FORMAT, "space": "nb201", "settings": older}, tmp_path / LAST)
    assert load_checkpoint(tmp_path, now, space="nb201")["settings"] == older
    with pytest.raises(DsnasError, match="is for space settings"):
        load_checkpoint(tmp_path, {**now, "bn_affine": False}, space="nb201")
    with pytest.raises(DsnasError, match="is for space settings"):
        load_checkpoint(tmp_path, {**now, "channels": 16}, space="nb201")
