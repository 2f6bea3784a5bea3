"""`deterministic: true` asks for deterministic algorithms only (what makes CUDA runs repeat
bitwise): the setting is accepted, applied process-wide by the run (cuDNN deterministic and not
benchmarking, torch's deterministic mode, cuBLAS's fixed workspace), and on the CPU, where runs
already repeat, it changes no result."""

import os

import pytest
import torch

from dsnas.config import load_config
from dsnas.runtime import setup_runtime
from dsnas.train import run_search

from conftest import assert_one_line_error, tiny_config, without_figures


@pytest.fixture(autouse=True)
def restore_switches(monkeypatch):
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # restored afterwards, whatever the run sets
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]


def test_the_setting_is_applied():
    assert load_config(None, []).deterministic is False
    setup_runtime("cpu")
    assert not torch.are_deterministic_algorithms_enabled()
    torch.backends.cudnn.benchmark = True
    setup_runtime("cpu", deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_a_value_that_is_not_a_bool_is_refused(dsnas_main):
    r = dsnas_main("search", "--set", "deterministic=sometimes")
    assert_one_line_error(r.returncode, r.stderr)
    assert "deterministic" in r.stderr


def _run(tmp_path, name, *extra):
    cfg = tiny_config("seed=3", *extra)
    return run_search(cfg, tmp_path / name, quiet=True)


def test_a_deterministic_cpu_run_gives_the_same_result(tmp_path):
    with without_figures():  # the run compared with
        plain = _run(tmp_path, "plain")
    det = _run(tmp_path, "det", "deterministic=true")
    assert torch.are_deterministic_algorithms_enabled()
    assert det.metrics["history"][-1]["train_loss"] == plain.metrics["history"][-1]["train_loss"]
    for a, b in zip(det.search.alphas, plain.search.alphas):
        assert torch.equal(a, b)
    for a, b in zip(det.space.state_dict().values(), plain.space.state_dict().values()):
        assert torch.equal(a, b)
