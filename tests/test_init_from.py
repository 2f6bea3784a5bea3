"""Searches that start from a published supernet (``--set init_from=DIR``): the SPOS supernet of
the fixture (official design, BN without affine, 224 px), imported with `dsnas import`, replaces
the initialisation of a DSNAS search and of the baselines; a supernet that does not fit is refused
in one line before anything trains; a run killed and resumed ends bitwise as one never stopped."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_one_line_error, dsnas_error, set_flags
from dsnas import spaces
from dsnas.published import import_checkpoint
from dsnas.warm_start import Source, _all_settings, check_fits, start_from
from published_checkpoints import checkpoint, fixture, image_tree, with_classes
from test_resume import _run

pytestmark = pytest.mark.slow  # full-width supernets at 224 px

# What the imported supernet is (the SPOS layout: official design, BN without affine), and a search of two steps per epoch.
FITS = ["space.width=1", "space.design=official", "space.bn_affine=false", "space.bn_eps=1e-5", "budget_mflops=0"]
SHORT = ["warmup_epochs=0", "search_epochs=1", "epochs=1", "batch_size=4", "lr_warmup_epochs=0", "workers=0",
         "eval_bn_recalibrate=4", "checkpoint_every=1", "init=torch", "seed=3", "arch_lr=0.05"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(the imported SPOS supernet's folder, an image folder of its 10 classes)."""
    root = tmp_path_factory.mktemp("spos")
    fx = with_classes(fixture("spos-supernet"), 10)
    torch.save(checkpoint(fx), root / "ckpt.pth")
    import_checkpoint(root / "ckpt.pth", root / "imported", arch=",".join(map(str, fx["arch"])))
    image_tree(root / "images", 10)
    return root / "imported", root / "images"


def _args(out, init_from, images, *extra, command="search"):
    return [command, "--quiet", "--out", str(out), "--data", str(images),
            *set_flags([*FITS, *SHORT, f"init_from={init_from}", *extra])]


def test_the_supernet_weights_replace_the_initialisation(source):
    imported, _ = source
    settings = {"num_classes": 10, "design": "official", "bn_affine": False, "bn_eps": 1e-5}
    space = spaces.build("shufflenet", settings, init="kaiming")
    fresh = {k: v.clone() for k, v in space.state_dict().items()}
    start_from(space, imported)
    published = load_file(str(imported / "supernet.safetensors"))
    assert space.state_dict().keys() == published.keys()
    for key, value in space.state_dict().items():
        assert torch.equal(value, published[key]), key
    assert not all(torch.equal(fresh[k], published[k]) for k in fresh)


def test_a_supernet_that_does_not_fit_is_refused_before_training(source, tmp_path, dsnas_main):
    imported, images = source
    image_tree(tmp_path / "four", 4)
    cases = {"design": ["--set", "design=mmrazor"], "bn_affine": ["--set", "bn_affine=true"],
             "bn_eps": ["--set", "bn_eps=0.01"], "num_classes 10": ["--data", str(tmp_path / "four")],
             "no such folder": ["--set", f"init_from={tmp_path / 'nothing'}"],
             "neither supernet.safetensors": ["--set", f"init_from={images}"]}
    for i, (expected, change) in enumerate(cases.items()):
        out = tmp_path / f"run{i}"
        res = dsnas_main(*_args(out, imported, images), *change)
        line = assert_one_line_error(res.returncode, res.stderr)
        assert expected in line and "init_from" in line, line
        assert not out.exists()  # nothing written, nothing trained
    official = _all_settings("shufflenet", {"design": "official", "num_classes": 10})
    assert "--set space.design=official" in dsnas_error(
        check_fits, Source(imported, "shufflenet", official, {}),
        spaces.build("shufflenet", {"num_classes": 10}, init="torch"), imported)
    assert "nb201 space" in dsnas_error(check_fits, Source(imported, "nb201", {}, {}),
                                        spaces.build("shufflenet", {"num_classes": 10}, init="torch"), imported)
    res = dsnas_main("train", str(tmp_path / "arch.yaml"), *_args(tmp_path / "fixed", imported, images)[1:])
    assert "method fixed" in assert_one_line_error(res.returncode, res.stderr)


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    """An uninterrupted DSNAS search at 224 px from the imported supernet."""
    imported, images = source
    out = tmp_path_factory.mktemp("ref") / "run"
    _run(_args(out, imported, images))
    return out


def test_a_search_from_the_supernet_resumes_bitwise(source, reference, tmp_path):
    imported, images = source
    copy = tmp_path / "imported"  # removed before the resume: the resume must not read it again
    shutil.copytree(imported, copy)
    out = tmp_path / "run"
    res = _run(_args(out, copy, images), kill=("after_save", 1), check=False)  # killed after step 1 of 2
    assert res.returncode == -9, res.stderr[-1000:]
    shutil.rmtree(copy)
    _run(["search", "--quiet", "--resume", str(out)])
    assert (out / "child.safetensors").read_bytes() == (reference / "child.safetensors").read_bytes()
    assert (out / "alpha.csv").read_bytes() == (reference / "alpha.csv").read_bytes()
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (out, reference))
    assert [h["train_loss"] for h in got["history"]] == [h["train_loss"] for h in want["history"]]
    ours, theirs = (torch.load(d / "checkpoints" / "last.pt", weights_only=True)["model"] for d in (out, reference))
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    assert f"init_from: {copy}" in (out / "config.yaml").read_text()


def test_a_baseline_starts_from_a_dsnas_run(source, reference, tmp_path):
    _, images = source
    out = tmp_path / "spos"
    _run(_args(out, reference, images, "candidates=2", "population=2", "select_images=2",
               "eval_bn_recalibrate=2") + ["--method", "spos"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "spos" and metrics["selection"] is not None
