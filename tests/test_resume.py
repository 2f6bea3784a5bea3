"""Kill a search with SIGKILL at several points (mid-epoch, inside a checkpoint write, between
the renames of a checkpoint rotation, at the finetune switch), resume it, and get bitwise the
same architecture, alpha and child weights as a run that was never interrupted."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, set_flags

pytestmark = pytest.mark.slow  # every test runs whole searches in child processes

SRC = str(Path(__file__).resolve().parents[1] / "src")
SETTINGS = [*TINY, "epochs=3", "warmup_epochs=1", "search_epochs=2", "lr_warmup_epochs=1", "arch_lr=0.05",
            "checkpoint_every=2", "seed=11", "early_fix=0.05"]

# Runs `dsnas search` in a child process that SIGKILLs itself at the chosen point.
KILLER = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    import dsnas.train as train
    import dsnas.checkpoint as ck
    mode, k = sys.argv[1], int(sys.argv[2])
    calls = {"save": 0, "write": 0, "replace": 0}
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    real_save, real_torch_save, real_replace = train.save_checkpoint, torch.save, os.replace

    def save_then_die(*a, **kw):
        out = real_save(*a, **kw)
        calls["save"] += 1
        if mode == "after_save" and calls["save"] == k:
            die()
        return out

    def half_write(obj, f, *a, **kw):
        calls["write"] += 1
        if calls["write"] == k:
            buf = io.BytesIO()
            real_torch_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            die()
        return real_torch_save(obj, f, *a, **kw)

    def rotate_then_die(src, dst):
        real_replace(src, dst)
        if str(src).endswith("last.pt"):
            calls["replace"] += 1
            if calls["replace"] == k:
                die()

    train.save_checkpoint = save_then_die
    if mode == "mid_write":
        ck.torch.save = half_write
    if mode == "between_renames":
        ck.os.replace = rotate_then_die
    from dsnas.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _run(args, kill=None, check=True, threads=1):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": str(threads)}
    if kill is None:
        cmd = [sys.executable, "-m", "dsnas", *args]
    else:
        cmd = [sys.executable, "-c", KILLER, kill[0], str(kill[1]), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check:
        assert res.returncode == 0, res.stderr[-2000:]
    return res


def _search_args(out, settings=SETTINGS):
    return ["search", "--quiet", "--out", str(out), *set_flags(settings)]


def _reference_and_resumed(tmp_path, settings, kill):
    """Run ``settings`` once uninterrupted (ref) and once killed at ``kill`` (run, not yet resumed)."""
    ref, out = tmp_path / "ref", tmp_path / "run"
    _run(_search_args(ref, settings))
    res = _run(_search_args(out, settings), kill=kill, check=False)
    assert res.returncode == -9, res.stderr[-1000:]
    return ref, out


def _result(out: Path):
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    return ((out / "arch.yaml").read_text().split("metadata:")[0], ckpt["search"],
            load_file(str(out / "child.safetensors")), ckpt["progress"]["history"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    _run(_search_args(out))
    return _result(out)


# 4 steps per epoch, checkpoints every 2 steps and at epoch ends: saves 1, 2 in epoch 1,
# 3, 4 in epoch 2 (search), 5, 6 in epoch 3 (finetune); save 4 ends the search stage.
@pytest.mark.parametrize("kill", [("after_save", 1), ("after_save", 3), ("mid_write", 4),
                                  ("between_renames", 3), ("after_save", 4)],
                         ids=["mid-epoch-1", "mid-epoch-2", "inside-checkpoint-write",
                              "between-checkpoint-renames", "at-finetune-switch"])
def test_kill_and_resume_is_exact(reference, tmp_path, kill):
    out = tmp_path / "run"
    res = _run(_search_args(out), kill=kill, check=False)
    assert res.returncode == -9, (res.returncode, res.stderr[-1000:])
    assert not (out / "child.safetensors").exists()
    _run(["search", "--quiet", "--resume", str(out)])
    arch, search, child, history = _result(out)
    ref_arch, ref_search, ref_child, ref_history = reference
    assert arch == ref_arch
    assert search["fixed"] == ref_search["fixed"]
    assert search["alphas"].keys() == ref_search["alphas"].keys()
    for label in ref_search["alphas"]:
        assert torch.equal(search["alphas"][label], ref_search["alphas"][label]), label
    assert child.keys() == ref_child.keys()
    for key in child:
        assert torch.equal(child[key], ref_child[key]), key
    assert [h["top1"] for h in history] == [h["top1"] for h in ref_history]
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in ref_history]


def test_resume_of_finished_or_missing_run(tmp_path):
    res = _run(["search", "--resume", str(tmp_path / "nothing")], check=False)
    assert res.returncode == 2 and "dsnas: error:" in res.stderr and "Traceback" not in res.stderr


def test_spos_killed_at_the_selection_resumes_to_the_same_winner(tmp_path):
    """Killed right after the supernet's last checkpoint, an SPOS run ranks its candidates again
    on resume and ends exactly where an uninterrupted run ends."""
    spos = [s for s in SETTINGS if not s.startswith(("warmup_epochs", "early_fix"))] + [
        "method=spos", "train_limit=384", "select_images=128", "candidates=4", "population=2"]

    ref, out = _reference_and_resumed(tmp_path, spos, ("after_save", 4))
    assert not (out / "candidates.csv").exists()
    _run(["search", "--quiet", "--resume", str(out)])
    assert (out / "candidates.csv").read_text() == (ref / "candidates.csv").read_text()
    arch, _, child, history = _result(out)
    ref_arch, _, ref_child, ref_history = _result(ref)
    assert arch == ref_arch and [h["top1"] for h in history] == [h["top1"] for h in ref_history]
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in ref_history]
    assert all(torch.equal(child[k], ref_child[k]) for k in ref_child)
    a, b = (json.loads((d / "metrics.json").read_text())["selection"] for d in (out, ref))
    assert {k: v for k, v in a.items() if k != "wall_s"} == {k: v for k, v in b.items() if k != "wall_s"}


def test_fp16_run_resumes_with_its_loss_scale(tmp_path):
    """Under fp16 the gradient scaler's state (scale, growth tracker) is part of the checkpoint: a
    run killed mid-search resumes to the same alpha, weights and scale as an uninterrupted one."""
    fp16 = SETTINGS + ["amp=fp16", "epochs=2"]  # warm-up and search: save 3 is mid-search, the rest is resumed
    ref, out = _reference_and_resumed(tmp_path, fp16, ("after_save", 3))
    _run(["search", "--quiet", "--resume", str(out)])
    arch, search, child, history = _result(out)
    ref_arch, ref_search, ref_child, ref_history = _result(ref)
    assert arch == ref_arch and search["fixed"] == ref_search["fixed"]
    assert search["alphas"].keys() == ref_search["alphas"].keys()
    assert all(torch.equal(search["alphas"][k], ref_search["alphas"][k]) for k in ref_search["alphas"])
    assert all(torch.equal(child[k], ref_child[k]) for k in ref_child)
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in ref_history]
    scale = [torch.load(d / "checkpoints" / "last.pt", weights_only=True)["scaler"] for d in (out, ref)]
    assert scale[0] == scale[1] and scale[0]["scale"] > 0


# --- one command line that starts or resumes (--out DIR --resume) ------------------------------
def _here_args(out, settings=SETTINGS):
    return [*_search_args(out, settings), "--resume"]


def test_the_same_command_line_starts_resumes_and_then_leaves_the_run_alone(reference, tmp_path):
    out = tmp_path / "run"
    res = _run(_here_args(out), kill=("after_save", 3), check=False)  # the first start dies mid-epoch 2
    assert res.returncode == -9, res.stderr[-1000:]
    _run(_here_args(out))  # the same line resumes it
    arch, search, child, _ = _result(out)
    assert arch == reference[0]
    assert all(torch.equal(search["alphas"][k], reference[1]["alphas"][k]) for k in reference[1]["alphas"])
    assert all(torch.equal(child[k], reference[2][k]) for k in reference[2])
    stamp = (out / "child.safetensors").stat().st_mtime_ns
    again = _run(_here_args(out))  # and once it is finished, leaves it as it is
    assert "finished run" in again.stdout and (out / "child.safetensors").stat().st_mtime_ns == stamp


def test_a_start_that_died_before_its_first_checkpoint_starts_again(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("epochs: 1\n")  # what such a start leaves: its config and events
    (out / "tensorboard").mkdir()
    settings = [s for s in SETTINGS if not s.startswith(("epochs", "search_epochs", "warmup"))] + \
        ["epochs=1", "search_epochs=1", "warmup_epochs=0"]
    _run(_here_args(out, settings))
    assert (out / "metrics.json").is_file()


def test_start_or_resume_refuses_another_configuration_and_a_missing_out(tmp_path):
    out = tmp_path / "run"
    res = _run(_here_args(out), kill=("after_save", 1), check=False)
    assert res.returncode == -9
    changed = _run(_here_args(out, [*SETTINGS, "lr=0.3"]), check=False)
    assert changed.returncode == 2 and "lr=" in changed.stderr and len(changed.stderr.strip().splitlines()) == 1
    bare = _run(["search", "--quiet", "--resume"], check=False)
    assert bare.returncode == 2 and "--out" in bare.stderr


def test_a_run_resumes_only_on_the_process_count_it_started_on(tmp_path):
    import yaml

    out = tmp_path / "run"
    res = _run(_search_args(out), kill=("after_save", 1), check=False)
    assert res.returncode == -9
    saved = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump({**saved, "world_size": 2}))
    refused = _run(["search", "--quiet", "--resume", str(out)], check=False)
    assert refused.returncode == 2 and "2 process" in refused.stderr and "has 1" in refused.stderr


def test_a_resume_keeps_the_thread_count_the_run_started_with(reference, tmp_path):
    import yaml

    out = tmp_path / "run"
    res = _run(_search_args(out), kill=("after_save", 3), check=False)  # started with one thread
    assert res.returncode == -9
    assert yaml.safe_load((out / "config.yaml").read_text())["threads"] == 1
    _run(["search", "--quiet", "--resume", str(out)], threads=2)  # resumed where the launcher gives two
    arch, search, child, _ = _result(out)
    assert arch == reference[0] and all(torch.equal(child[k], reference[2][k]) for k in reference[2])


# --- preemption: SIGTERM / SIGUSR1 checkpoint the step reached -----------------------------------
SIGNALLER = textwrap.dedent("""
    import os, signal, sys
    import dsnas.train as train
    name, k = sys.argv[1], int(sys.argv[2])
    real, calls = train.train_step, {"n": 0}
    def step_then_signal(*a, **kw):
        out = real(*a, **kw)
        calls["n"] += 1
        if calls["n"] == k:  # as SLURM or torchrun would send it, from outside, mid-step
            os.kill(os.getpid(), getattr(signal, name))
        return out
    train.train_step = step_then_signal
    from dsnas.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("name, code, at", [("SIGTERM", 143, 3), ("SIGUSR1", 138, 5), ("SIGTERM", 143, 4)],
                         ids=["sigterm-mid-epoch", "sigusr1-mid-epoch", "sigterm-at-an-epoch-end"])
def test_a_preempted_run_checkpoints_the_step_it_reached_and_resumes_exactly(reference, tmp_path, name, code, at):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", SIGNALLER, name, str(at), *_search_args(out)], capture_output=True,
                         text=True, env=env)
    assert res.returncode == code, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()
    assert len(line) == 1 and name in line[0] and f"--resume {out}" in line[0], res.stderr
    progress = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["progress"]
    assert progress["global_step"] == at  # no step's work is lost (4 steps an epoch)
    _run(["search", "--quiet", "--resume", str(out)])
    arch, search, child, _ = _result(out)
    assert arch == reference[0] and all(torch.equal(child[k], reference[2][k]) for k in reference[2])
    assert all(torch.equal(search["alphas"][k], reference[1]["alphas"][k]) for k in reference[1]["alphas"])


# The launcher's way: the signal reaches the rank's whole process group, its loader workers included.
GROUP_SIGNALLER = SIGNALLER.replace("os.kill(os.getpid(), getattr(signal, name))",
                                    "os.killpg(os.getpgid(0), getattr(signal, name))")
STREAMED = ["space.width=0.25", "batch_size=16", "epochs=2", "warmup_epochs=0", "search_epochs=1",
            "eval_bn_recalibrate=16", "workers=2", "budget_mflops=0", "seed=3"]


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGUSR1", 138)])
def test_a_run_on_streamed_images_checkpoints_when_its_whole_process_group_is_signalled(tmp_path, name, code):
    """torchrun and SLURM signal a rank's process group: the loader's workers must leave the stop to
    the run, which checkpoints the step it reached and resumes to an uninterrupted run's result."""
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 4)):
        for c in range(2):
            (tmp_path / "images" / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(
                    tmp_path / "images" / split / f"c{c}" / f"{i}.jpg")
    settings = [*STREAMED, f"data={tmp_path / 'images'}"]
    _run(_search_args(tmp_path / "ref", settings))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", GROUP_SIGNALLER, name, "1", *_search_args(out, settings)],
                         capture_output=True, text=True, env=env, start_new_session=True)
    assert res.returncode == code, res.stderr[-2000:]
    assert "DataLoader worker" not in res.stderr and f"--resume {out}" in res.stderr, res.stderr[-2000:]
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["progress"]["global_step"] == 1
    _run(["search", "--quiet", "--resume", str(out)])
    arch, search, child, _ = _result(out)
    ref = _result(tmp_path / "ref")
    assert arch == ref[0] and all(torch.equal(child[k], ref[2][k]) for k in ref[2])
