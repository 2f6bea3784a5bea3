"""The official (Megvii SPOS / DSNAS authors') block design of the ShuffleNet space: its settings,
its unit, its costs as the authors count them, and every run feature working in it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_one_line_error, dsnas_error, run_cli, set_flags
from dsnas.arch import Architecture, load_arch, save_arch
from dsnas.spaces import build, settings_of
from dsnas.spaces.shufflenet import OPS, ShuffleNetSettings, ShuffleUnit

DSNAS_SEARCH240 = [0, 0, 3, 0, 3, 2, 0, 0, 3, 3, 2, 3, 3, 3, 2, 0, 0, 3, 3, 0]
SPOS_PAPER = [2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3]
RUN = ["width=0.5", "train_limit=64", "test_limit=32", "batch_size=32", "epochs=2", "warmup_epochs=0",
        "search_epochs=1", "lr_warmup_epochs=0", "seed=3", "budget_mflops=0", "design=official", "bn_eps=1e-5", "dropout=0.1"]


def test_default_settings_write_no_design_keys():
    s = ShuffleNetSettings()
    assert s.as_dict() == {"num_classes": 1000, "in_channels": 3, "input_size": 224, "width": 1.0,
                           "small_input": False}
    official = ShuffleNetSettings(design="official", bn_eps=1e-5)
    assert official.classifier_bias is False
    assert official.as_dict()["design"] == "official" and official.as_dict()["bn_eps"] == 1e-5
    assert "classifier_bias" not in official.as_dict()
    assert ShuffleNetSettings.from_mapping(official.as_dict()) == official
    assert ShuffleNetSettings(classifier_bias=False).as_dict()["classifier_bias"] is False


@pytest.mark.parametrize("bad", [{"design": "megvii"}, {"bn_eps": 0}, {"bn_eps": -1e-5}, {"bn_eps": "x"},
                                 {"dropout": 1.0}, {"dropout": -0.1}, {"bn_affine": "yes"},
                                 {"classifier_bias": 1}, {"design": "official", "width": 0.25}])
def test_bad_design_settings_are_one_line_errors(bad):
    assert "bad space settings" in dsnas_error(settings_of, "shufflenet", bad)


def test_design_settings_reach_every_layer():
    net = build("shufflenet", {"design": "official", "bn_affine": False, "bn_eps": 1e-5, "dropout": 0.1})
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.eps == 1e-5 and not bn.affine for bn in bns)
    assert net.classifier.bias is None and net.dropout.p == 0.1
    assert isinstance(build("shufflenet").dropout, torch.nn.Identity)


def test_official_units():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 8, 8)
    unit = ShuffleUnit(32, 32, 1, kernel=5, official=True).eval()
    y = unit(x)
    # the even channels pass unchanged, the odd ones go through the main branch, no shuffle after
    assert torch.equal(y[:, :16], x[:, 0::2])
    assert torch.equal(y[:, 16:], unit.branch_b(x[:, 1::2]))
    down = ShuffleUnit(16, 64, 2, xception=True, official=True)
    assert down.branch_a[-1][0].out_channels == 16 and down.branch_b[-1][0].out_channels == 48
    assert down.branch_b[0][0].groups == 16  # Xception starts with a depthwise 3x3
    assert down(torch.randn(1, 16, 8, 8)).shape == (1, 64, 4, 4)


@pytest.mark.parametrize("arch, macs", [(DSNAS_SEARCH240, 323.3264), (SPOS_PAPER, 322.91872)])
def test_info_reports_macs_as_the_official_code_counts_them(tmp_path, dsnas_main, arch, macs):
    path = tmp_path / "arch.yaml"
    save_arch(Architecture([OPS[i] for i in arch], "shufflenet", {"design": "official"}), path)
    res = dsnas_main("info", "--arch", path, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["macs_m"] == macs
    assert "multiply-accumulates" in out["conventions"]["macs_m"]
    text = dsnas_main("info", "--arch", path).stdout
    assert f"MACs {macs} M" in text and "MMRazor ResourceEstimator" in text


def test_official_child_equals_supernet_path():
    space = build("shufflenet", {"design": "official", "input_size": 32, "num_classes": 10, "width": 0.5})
    space.eval()
    arch = [OPS[i] for i in SPOS_PAPER]
    child = space.child(arch).eval()
    for choice, op in zip(space.choices, arch):
        choice.active = choice.index(op)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(space(x), child(x), atol=1e-6)


@pytest.mark.slow
def test_tiny_search_eval_export_in_the_official_design(tmp_path):
    out = tmp_path / "run"
    res = run_cli("search", "--quiet", "--out", out, *set_flags(RUN), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    arch = load_arch(out / "arch.yaml")
    assert arch.settings["design"] == "official" and arch.settings["bn_eps"] == 1e-5
    assert "classifier.bias" not in load_file(str(out / "child.safetensors"))
    res = run_cli("eval", "--run", out)
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli("export", "--run", out, "--onnx", tmp_path / "child.onnx")
    assert res.returncode == 0, res.stderr[-2000:]
    # a run of the default design refuses the official architecture, naming the setting
    res = run_cli("search", "--quiet", "--out", tmp_path / "fixed", "--set", "method=fixed",
                  "--set", f"arch={out / 'arch.yaml'}", "--set", "width=0.5", "--set", "epochs=1",
                  "--set", "search_epochs=0", "--set", "warmup_epochs=0", "--set", "lr_warmup_epochs=0")
    assert_one_line_error(res.returncode, res.stderr)
    assert "design" in res.stderr
