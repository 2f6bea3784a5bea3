"""A published child is fed as its authors fed it: `dsnas eval` applies the input convention that
`dsnas import` recorded (channel order and mean/std), and `dsnas export` writes it into the ONNX
metadata. Fed any other way, the same child gives other logits."""

import dataclasses
import json

import pytest
import torch
import yaml

from conftest import assert_one_line_error, rel_error
from dsnas.arch import load_arch
from dsnas.data import Loader, load_data, to_input
from dsnas.export import load_child
from dsnas.published import import_checkpoint
from published_checkpoints import checkpoint, fixture, image_tree, with_classes

pytestmark = pytest.mark.slow  # each test imports a full-size 224 px network


def _import(folder, fx, bn_eps=None):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint(fx), folder / "ckpt.pth")
    import_checkpoint(folder / "ckpt.pth", folder / "run", bn_eps=bn_eps)
    return folder / "run"


def _child(run):
    return load_child(load_arch(run / "arch.yaml"), run / "child.safetensors").eval()


def _fed(data) -> torch.Tensor:
    """The evaluation batch of ``data``'s val split, as the eval loader feeds it."""
    (x, _), = Loader(data, "test", 256, 0, torch.device("cpu"), train=False)
    return x


@pytest.mark.parametrize("fmt", ["spos-child", "dsnas-child"])
def test_the_eval_data_with_the_recorded_convention_gives_the_authors_logits(tmp_path, fmt):
    fx = fixture(fmt)
    run = _import(tmp_path, fx, fx["bn_eps"] if fmt.startswith("dsnas") else None)
    convention = load_arch(run / "arch.yaml").metadata["input_convention"]
    image_tree(tmp_path / "images", 2)  # the fixture's two images, through the evaluation crop
    data = load_data(str(tmp_path / "images"), 224)
    child, want = _child(run), torch.tensor(fx["logits"])
    with torch.no_grad():
        assert rel_error(child(_fed(data.with_convention(convention))), want) <= 1e-4
        other = "dsnas" if convention == "spos" else "spos"
        assert rel_error(child(_fed(data.with_convention(other))), want) > 1e-2
        if convention != "dsnas":  # a large-image folder's own normalisation is ImageNet mean/std
            assert rel_error(child(_fed(data)), want) > 1e-2
        if convention == "spos":  # the right mean/std in RGB order: BGR/RGB swapped
            swapped = dataclasses.replace(data.with_convention("spos"), channel_order="rgb")
            assert rel_error(child(_fed(swapped)), want) > 1e-2


@pytest.fixture(scope="module")
def spos_run(tmp_path_factory):
    """A SPOS child with a 10-class classifier, imported, and 10 images (one per class)."""
    root = tmp_path_factory.mktemp("spos")
    run = _import(root, with_classes(fixture("spos-child"), 10))
    shown = image_tree(root / "images", 10)
    return run, root / "images", shown


def _eval(dsnas_main, *args) -> dict:
    res = dsnas_main("eval", *args, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _loss(run, shown, convention) -> float:
    with torch.no_grad():
        logits = _child(run)(to_input(shown, convention))
    return float(torch.nn.functional.cross_entropy(logits, torch.arange(len(shown))))


def test_eval_applies_the_recorded_convention_and_the_flag_overrides_it(spos_run, dsnas_main):
    run, images, shown = spos_run
    recorded = _eval(dsnas_main, "--run", run, "--data", images)
    assert recorded["input_convention"] == "spos" and recorded["images"] == 10
    assert recorded["loss"] == pytest.approx(_loss(run, shown, "spos"), abs=2e-4)
    by_files = _eval(dsnas_main, "--arch", run / "arch.yaml", "--weights", run / "child.safetensors", "--data", images)
    assert by_files["loss"] == recorded["loss"]
    for other in ("dsnas", "mmrazor"):
        overridden = _eval(dsnas_main, "--run", run, "--data", images, "--input-convention", other)
        assert overridden["input_convention"] == other
        assert overridden["loss"] == pytest.approx(_loss(run, shown, other), abs=2e-4)
        assert abs(overridden["loss"] - recorded["loss"]) > 1e-2
    assert _eval(dsnas_main, "--run", run, "--data", images, "--input-convention", "data")["input_convention"] is None


def test_the_weights_metadata_names_the_convention_when_the_arch_file_does_not(spos_run, dsnas_main, tmp_path):
    run, images, _ = spos_run
    arch = yaml.safe_load((run / "arch.yaml").read_text())
    del arch["metadata"]["input_convention"]
    (tmp_path / "arch.yaml").write_text(yaml.safe_dump(arch))
    got = _eval(dsnas_main, "--arch", tmp_path / "arch.yaml", "--weights", run / "child.safetensors", "--data", images)
    assert got["input_convention"] == "spos"
    arch["metadata"]["input_convention"] = "bgr-ish"
    (tmp_path / "arch.yaml").write_text(yaml.safe_dump(arch))
    res = dsnas_main("eval", "--arch", tmp_path / "arch.yaml", "--weights", run / "child.safetensors", "--data", images)
    assert "bgr-ish" in assert_one_line_error(res.returncode, res.stderr)


def test_onnx_export_records_the_convention(spos_run, dsnas_main, tmp_path):
    onnx = pytest.importorskip("onnx")
    run, _, _ = spos_run
    res = dsnas_main("export", "--run", run, "--onnx", tmp_path / "child.onnx", "--no-check")
    assert res.returncode == 0, res.stderr
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "child.onnx")).metadata_props}
    assert props["input_convention"] == "spos" and props["input_channel_order"] == "bgr"
    assert [float(v) for v in props["input_std"].split(",")] == pytest.approx([1 / 255] * 3)
