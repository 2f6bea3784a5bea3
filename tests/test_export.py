"""Child weights (safetensors), ONNX export with its onnxruntime parity check, and `dsnas export`."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import random_arch
from dsnas import Architecture, DsnasError, ShuffleNetChild, load_arch, save_arch
from dsnas.export import export_onnx, load_child, save_weights
from dsnas.spaces import ShuffleNetSettings

SMALL = {"num_classes": 10, "in_channels": 3, "input_size": 32, "width": 0.25}
ONNX_ATOL = 1e-4  # PyTorch vs onnxruntime, float32 on the CPU


def _trained_like_child(choices, seed: int = 0) -> ShuffleNetChild:
    """A small child with random weights and BN running stats moved off their 0/1 defaults."""
    torch.manual_seed(seed)
    child = ShuffleNetChild(choices, ShuffleNetSettings(**SMALL))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in child.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
        child.train()
        for _ in range(2):
            child(torch.randn(4, 3, 32, 32, generator=g) + 0.3)
    return child.eval()


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_safetensors_round_trip(tmp_path):
    choices = random_arch(21)
    child = _trained_like_child(choices)
    p = tmp_path / "child.safetensors"
    save_weights(child, p, metadata={"mflops": 1.5})
    loaded = load_child(Architecture(choices, settings=SMALL), p)
    assert loaded.choices == choices
    for (k, v), (k2, v2) in zip(child.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    x = _images(3)
    with torch.no_grad():
        want, got = child(x), loaded.eval()(x)
    assert torch.equal(want, got)
    # and the loaded weights are not just a fresh init
    with torch.no_grad():
        fresh = ShuffleNetChild(choices, ShuffleNetSettings(**SMALL)).eval()(x)
    assert not torch.allclose(fresh, got)


def test_loading_another_architectures_weights_fails(tmp_path):
    p = tmp_path / "child.safetensors"
    save_weights(_trained_like_child(["shuffle_3x3"] * 20), p)
    with pytest.raises(DsnasError, match="does not match"):
        load_child(Architecture(["shuffle_xception"] * 20, settings=SMALL), p)
    # same ops, other settings: shapes differ too
    with pytest.raises(DsnasError, match="does not match"):
        load_child(Architecture(["shuffle_3x3"] * 20, settings={**SMALL, "num_classes": 11}), p)
    # same key set, different kernel size: a shape mismatch, reported with the tensor's name
    with pytest.raises(DsnasError, match=r"does not match.*shape"):
        load_child(Architecture(["shuffle_5x5"] + ["shuffle_3x3"] * 19, settings=SMALL), p)


def test_load_child_missing_or_corrupt_weights(tmp_path):
    arch = Architecture(["shuffle_3x3"] * 20, settings=SMALL)
    with pytest.raises(DsnasError, match="does not exist"):
        load_child(arch, tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    with pytest.raises(DsnasError, match="safetensors"):
        load_child(arch, bad)


@pytest.mark.slow
def test_onnx_parity(tmp_path):
    child = _trained_like_child(random_arch(22), seed=3)
    p = tmp_path / "child.onnx"
    diff = export_onnx(child, p, input_size=32, in_channels=3)
    assert diff is not None and 0 <= diff <= ONNX_ATOL
    onnx.checker.check_model(onnx.load(str(p)))

    # an independent onnxruntime run, on a batch size the export did not use (dynamic batch)
    x = _images(3, seed=7)
    session = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = child(x).numpy()
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got, want, rtol=0, atol=ONNX_ATOL)
    assert np.abs(want).max() > 10 * ONNX_ATOL  # outputs are not all ~0


@pytest.mark.slow
def test_export_onnx_without_check(tmp_path):
    p = tmp_path / "sub" / "c.onnx"
    assert export_onnx(_trained_like_child(["shuffle_7x7"] * 20), p, 32, 3, check=False) is None
    assert p.stat().st_size > 0


# --- the CLI ----------------------------------------------------------------------------------

@pytest.fixture
def arch_and_weights(tmp_path):
    choices = random_arch(23)
    arch = Architecture(choices, settings=SMALL)
    save_arch(arch, tmp_path / "arch.yaml")
    save_weights(_trained_like_child(choices), tmp_path / "child.safetensors")
    return arch, tmp_path / "arch.yaml", tmp_path / "child.safetensors"


@pytest.mark.slow
def test_cli_export_onnx(tmp_path, dsnas_main, arch_and_weights):
    arch, a, w = arch_and_weights
    out = tmp_path / "out" / "child.onnx"
    r = dsnas_main("export", "--arch", a, "--weights", w, "--onnx", out)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and out.stat().st_size > 0
    assert str(out) in r.stdout
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": _images(2).numpy()})
    assert logits.shape == (2, 10)
    # no leftover temporary files next to the output
    assert sorted(x.name for x in out.parent.iterdir()) == ["child.onnx"]


def test_cli_export_mmrazor(tmp_path, dsnas_main, arch_and_weights):
    arch, a, w = arch_and_weights
    out = tmp_path / "subnet.yaml"
    r = dsnas_main("export", "--arch", a, "--weights", w, "--mmrazor", out)
    assert r.returncode == 0, r.stderr
    assert load_arch(out).choices == arch.choices
    assert "backbone.layers.0.0" in out.read_text()


def test_cli_export_errors(tmp_path, dsnas_main, arch_and_weights):
    arch, a, w = arch_and_weights
    r = dsnas_main("export", "--arch", a, "--weights", w)
    assert r.returncode == 2 and "nothing to export" in r.stderr
    r = dsnas_main("export", "--arch", a, "--onnx", tmp_path / "x.onnx")
    assert r.returncode == 2 and "--weights" in r.stderr
    r = dsnas_main("export", "--run", tmp_path / "no_such_run", "--onnx", tmp_path / "x.onnx")
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not (tmp_path / "x.onnx").exists()
