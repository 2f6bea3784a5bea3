"""Importing published checkpoints: each layout rebuilt from its key list, imported, and its child
compared with the logits of the authors' own network on the same images."""

import pickle

import pytest
import torch

from conftest import assert_one_line_error, dsnas_error, rel_error
from dsnas.arch import load_arch
from dsnas.export import load_child
from dsnas.published import import_checkpoint, to_input
from published_checkpoints import checkpoint, fixture, images

FORMATS = ["dsnas-child", "dsnas-supernet", "spos-supernet", "spos-child"]


def _save(tmp_path, fx, name="ckpt.pth"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    torch.save(checkpoint(fx), path)
    return path


def _logits(out, convention=None):
    arch = load_arch(out / "arch.yaml")
    child = load_child(arch, out / "child.safetensors").eval()
    with torch.no_grad():
        return child(to_input(images(0), convention or arch.metadata["input_convention"]))


def _import(tmp_path, fmt, **kwargs):
    fx = fixture(fmt)
    path = _save(tmp_path, fx)
    kwargs.setdefault("bn_eps", fx["bn_eps"] if fmt.startswith("dsnas") else None)
    if fmt == "spos-supernet":
        kwargs.setdefault("arch", ",".join(map(str, fx["arch"])))
    out = tmp_path / "run"
    return fx, import_checkpoint(path, out, **kwargs), out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_import_matches_the_authors_network(tmp_path, fmt):
    fx, res, out = _import(tmp_path, fmt)
    assert res["format"] == fmt
    want = torch.tensor(fx["logits"])
    got = _logits(out)
    assert rel_error(got, want) <= 1e-4
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    from dsnas.spaces.shufflenet import OPS

    assert load_arch(out / "arch.yaml").choices == [OPS[i] for i in fx["arch"]]
    if fmt.endswith("supernet"):
        assert (out / "supernet.safetensors").exists()


@pytest.mark.slow
def test_wrong_eps_convention_or_architecture_is_caught(tmp_path):
    fx, _, out = _import(tmp_path, "dsnas-child", bn_eps=1e-5)  # the file's network uses 0.01
    want = torch.tensor(fx["logits"])
    assert rel_error(_logits(out), want) > 1e-3
    fx, _, out = _import(tmp_path / "b", "spos-child")
    assert rel_error(_logits(out, "dsnas"), torch.tensor(fx["logits"])) > 1e-2
    flipped = to_input(images(0), "spos").flip(1)  # RGB where the network wants BGR
    child = load_child(load_arch(out / "arch.yaml"), out / "child.safetensors").eval()
    with torch.no_grad():
        assert rel_error(child(flipped), torch.tensor(fx["logits"])) > 1e-2
    fx, _, out = _import(tmp_path / "c", "spos-supernet", arch=",".join(["0"] * 20))
    assert rel_error(_logits(out), torch.tensor(fx["logits"])) > 1e-2


@pytest.mark.slow
def test_missing_extra_or_misshapen_keys_are_refused(tmp_path):
    fx = fixture("spos-child")
    base = checkpoint(fx)
    state = base["state_dict"]
    key = "module.features.3.branch_main.0.weight"
    cases = {"missing": {k: v for k, v in state.items() if k != key},
             "extra": {**state, "module.features.3.branch_main.99.weight": torch.zeros(1)},
             "shape": {**state, key: torch.zeros(3, 3, 1, 1)}}
    for name, sd in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save({**base, "state_dict": sd}, path)
        msg = dsnas_error(import_checkpoint, path, tmp_path / name)
        assert ("branch_main.99" if name == "extra" else "features.3.branch_main.0.weight") in msg, msg


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_refused_in_one_line(tmp_path, dsnas_main, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    res = dsnas_main("import", path, "--out", tmp_path / "run")
    assert_one_line_error(res.returncode, res.stderr)
    assert "needs code" in res.stderr and "pickled code ran" not in res.stdout


@pytest.mark.slow
def test_dsnas_file_without_eps_needs_the_flag(tmp_path, dsnas_main):
    path = _save(tmp_path, fixture("dsnas-child"))
    res = dsnas_main("import", path, "--out", tmp_path / "run")
    assert_one_line_error(res.returncode, res.stderr)
    assert "--bn-eps" in res.stderr
    res = dsnas_main("import", path, "--out", tmp_path / "run", "--bn-eps", "0.01")
    assert res.returncode == 0, res.stderr
    assert dsnas_main("info", "--arch", tmp_path / "run" / "arch.yaml").returncode == 0


def test_mmrazor_subnet_keys_round_trip(tmp_path):
    """MMRazor's subnet keys (as its ShuffleBlock / ShuffleXception / ConvModule name them) import
    back into the same network, with the eps of the config text in ``meta``."""
    from dsnas.published import _child_key
    from dsnas.spaces import build_child
    from dsnas.spaces.shufflenet import OPS

    arch = [OPS[i] for i in fixture("spos-child")["arch"]]
    child = build_child("shufflenet", arch, {"bn_eps": 1e-5, "num_classes": 10}, init="kaiming").eval()
    state = {"architecture." + _child_key(k, "mmrazor", child, arch): v for k, v in child.state_dict().items()}
    assert "architecture.backbone.layers.2.3._candidates.shuffle_xception.branch2.1.pointwise_conv.bn.weight" in state
    path = tmp_path / "mmrazor.pth"
    torch.save({"meta": {"cfg": "norm_cfg = dict(type='BN', eps=1e-05)"}, "state_dict": state, "message_hub": {}}, path)
    res = import_checkpoint(path, tmp_path / "run")
    assert res["format"] == "mmrazor" and res["settings"]["bn_eps"] == 1e-5
    x = images(0, 64)
    imported = load_child(load_arch(tmp_path / "run" / "arch.yaml"), tmp_path / "run" / "child.safetensors").eval()
    with torch.no_grad():
        assert torch.equal(imported(x), child(x))
