"""Checkpoints that load but are wrong inside (a tensor of another shape, alpha of the wrong
length, bad generator states, an empty scheduler, progress out of the run's schedule): checked
against the run before any of it is applied; a bad last.pt gives way to a good prev.pt with a
warning, and with neither good the resume is a one-line error that overwrites nothing."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import assert_one_line_error, without_figures

pytestmark = pytest.mark.slow  # each resume trains an epoch of a search

RUN = ["--set", "width=0.25", "--set", "train_limit=64", "--set", "test_limit=32", "--set", "batch_size=32",
       "--set", "epochs=2", "--set", "warmup_epochs=0", "--set", "search_epochs=2", "--set", "lr_warmup_epochs=0",
       "--set", "augment=false", "--quiet"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, request):
    """A finished two-epoch run: last.pt at its end, prev.pt after its first epoch."""
    from dsnas.cli import main

    out = tmp_path_factory.mktemp("payload") / "run"
    with without_figures():
        assert main(["search", *RUN, "--out", str(out)]) == 0
    return out


@pytest.fixture(autouse=True)
def _no_figures():
    """Every resume here finishes its run; what a test looks at is the warning, or the checkpoints."""
    with without_figures():
        yield


def _tamper(ckpt: dict, change) -> dict:
    change(ckpt)
    return ckpt


def _first_key(d: dict):
    return next(iter(d))


TAMPERED = {
    "a model tensor of another shape": lambda c: c["model"].__setitem__(_first_key(c["model"]), torch.zeros(3)),
    "a missing model tensor": lambda c: c["model"].pop(_first_key(c["model"])),
    "a model tensor of another dtype": lambda c: c["model"].__setitem__(
        _first_key(c["model"]), c["model"][_first_key(c["model"])].double()),
    "fixed of 99s": lambda c: c["search"].__setitem__("fixed", {k: 99 for k in c["search"]["fixed"]}),
    "alpha of the wrong length": lambda c: c["search"]["alphas"].__setitem__(
        _first_key(c["search"]["alphas"]), torch.zeros(7)),
    "a torch generator state of bytes": lambda c: c.__setitem__("torch_rng", torch.zeros(5, dtype=torch.uint8)),
    "a numpy generator state of the wrong size": lambda c: c["numpy_rng"].__setitem__("keys", torch.zeros(3)),
    "a python generator state out of range": lambda c: c["python_rng"].__setitem__(
        "internal", torch.full((625,), 1 << 40, dtype=torch.int64)),
    "a sampler state that is not a list": lambda c: c.__setitem__("sampler_rng", "abc"),
    "empty param_groups": lambda c: c["optimizer"].__setitem__("param_groups", []),
    "momentum of another shape": lambda c: c["optimizer"]["state"].__setitem__(0, {"momentum_buffer": torch.ones(2)}),
    "an empty scheduler": lambda c: c.__setitem__("scheduler", {}),
    "a history that is not a list": lambda c: c["progress"].__setitem__("history", "abc"),
    "progress.epoch -3": lambda c: c["progress"].__setitem__("epoch", -3),
    "progress.epoch past the run": lambda c: c["progress"].__setitem__("epoch", 99),
    "progress 'abc'": lambda c: c.__setitem__("progress", "abc"),
    "a step past the epoch": lambda c: c["progress"].__setitem__("step", 10**6),
}


def _copy(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


def _rewrite(path, change) -> None:
    torch.save(_tamper(torch.load(path, weights_only=True), change), path)


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_bad_last_falls_back_to_prev(case, finished, tmp_path, dsnas_main):
    run = _copy(finished, tmp_path)
    _rewrite(run / "checkpoints" / "last.pt", TAMPERED[case])
    r = dsnas_main("search", "--resume", run, "--quiet")
    assert r.returncode == 0, r.stderr
    warning = r.stderr.strip().splitlines()
    assert len(warning) == 1 and "does not fit this run" in warning[0] and "resuming from" in warning[0], r.stderr
    assert "prev.pt" in warning[0]


@pytest.mark.parametrize("case", ["progress.epoch -3", "a missing model tensor", "an empty scheduler"])
def test_neither_good_is_an_error_that_overwrites_nothing(case, finished, tmp_path, dsnas_main):
    run = _copy(finished, tmp_path)
    for name in ("last.pt", "prev.pt"):
        _rewrite(run / "checkpoints" / name, TAMPERED[case])
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    r = dsnas_main("search", "--resume", run, "--quiet")
    assert "does not fit this run" in assert_one_line_error(r.returncode, r.stderr)
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


def test_a_good_checkpoint_resumes_without_a_warning(finished, tmp_path, dsnas_main):
    run = _copy(finished, tmp_path)
    r = dsnas_main("search", "--resume", run, "--quiet")
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
