"""TF32 is set, not inherited: on CUDA a run switches both TF32 switches (cuDNN's, on by default,
and cuBLAS's) to the project's choice, and its precision label names TF32 wherever fp32 math
would run in it. (CUDA is a stand-in here: the switches are plain flags on a CPU build too.)"""

import pytest
import torch

from dsnas import runtime
from dsnas.config import load_config
from dsnas.methods import METHODS
from dsnas.runtime import precision_label, set_tf32, setup_runtime

DSNAS_STAGES = METHODS["dsnas"].stages


@pytest.fixture(autouse=True)
def switches():
    """Both switches on (cuDNN's default, and a user's possible choice for cuBLAS), restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)


def test_a_cuda_run_sets_both_switches_and_says_fp32(monkeypatch):
    _fake_cuda(monkeypatch)
    rt = setup_runtime("cuda")
    assert rt.device.type == "cuda" and rt.amp_dtype is torch.bfloat16
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert rt.tf32 is False
    assert precision_label("auto", rt.amp_dtype, DSNAS_STAGES, rt.tf32) == "bf16, search stage fp32"


def test_if_tf32_is_chosen_the_label_says_so(monkeypatch):
    _fake_cuda(monkeypatch)
    monkeypatch.setattr(runtime, "TF32", True)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    assert set_tf32(torch.device("cuda")) is True
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert precision_label("auto", torch.bfloat16, DSNAS_STAGES, tf32=True) == "bf16, search stage tf32"
    assert precision_label("off", None, DSNAS_STAGES, tf32=True) == "tf32"
    assert precision_label("bf16", torch.bfloat16, DSNAS_STAGES, tf32=True) == "bf16"  # nothing runs in fp32


def test_the_cpu_leaves_the_switches_alone():
    rt = setup_runtime("cpu")
    assert rt.tf32 is False and torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
