"""Child weights whose values only go wrong in the model's dtype: every tensor is cast as loading
casts it, then checked finite; dtypes torch cannot cast or compare are one-line errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from conftest import SMALL, dsnas_error
from dsnas import Architecture, ShuffleNetChild
from dsnas.export import load_child
from dsnas.spaces import ShuffleNetSettings

ARCH = Architecture(["shuffle_5x5"] * 20, settings=SMALL)


def _weights(tmp_path, key: str, tensor_of):
    state = {k: v.contiguous() for k, v in ShuffleNetChild(ARCH.choices, ShuffleNetSettings(**SMALL)).state_dict().items()}
    state[key] = tensor_of(state[key])
    save_file(state, str(tmp_path / "w.safetensors"))
    return tmp_path / "w.safetensors"


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16, torch.float16])
def test_low_precision_float_weights_load_as_float32(tmp_path, dtype):
    path = _weights(tmp_path, "classifier.weight", lambda t: t.to(dtype))
    child = load_child(ARCH, path)
    assert child.classifier.weight.dtype == torch.float32


def test_float64_values_that_overflow_float32_are_refused(tmp_path):
    path = _weights(tmp_path, "classifier.weight", lambda t: torch.full_like(t, 1e300, dtype=torch.float64))
    assert "classifier.weight holds NaN or infinite values as float32" in dsnas_error(load_child, ARCH, path)


def test_float8_nan_is_refused(tmp_path):
    path = _weights(tmp_path, "classifier.bias", lambda t: torch.full_like(t, float("nan")).to(torch.float8_e4m3fn))
    assert "classifier.bias holds NaN or infinite values" in dsnas_error(load_child, ARCH, path)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.uint8])
def test_integer_weights_for_float_parameters_are_refused(tmp_path, dtype):
    path = _weights(tmp_path, "classifier.weight", lambda t: t.to(dtype))
    assert "the architecture needs float32" in dsnas_error(load_child, ARCH, path)
