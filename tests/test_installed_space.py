"""A space from a package of its own (examples/tiny_space): installed beside dsnas with its entry
point, every command finds it by name; a broken one is a one-line error that leaves dsnas's own
spaces working."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import assert_one_line_error, cli_env

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_space"


def _install(site: Path, module: str | None = None) -> dict:
    """The example package installed into ``site`` as pip would leave it (its module, and a
    dist-info folder with the metadata and entry points its pyproject.toml declares); returns the
    environment of a process that has ``site`` on its path. ``module`` replaces the module's code."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    site.mkdir(parents=True, exist_ok=True)
    if module is None:
        shutil.copy(EXAMPLE / "tiny_space.py", site / "tiny_space.py")
    else:
        (site / "tiny_space.py").write_text(module)
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in entries.items())
        for group, entries in project["entry-points"].items()))
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(site)])
    return env


def _dsnas(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsnas", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_an_installed_space_is_listed_and_described(tmp_path):
    env = _install(tmp_path / "site")
    listed = _dsnas(env, "info", "--spaces")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert list(lines) == ["shufflenet", "nb201", "mobilenet", "tiny"]
    assert "example space from another package" in lines["tiny"] and "tiny_space" in lines["tiny"]
    described = _dsnas(env, "info", "--space", "tiny", "--json")
    assert described.returncode == 0, described.stderr
    facts = json.loads(described.stdout)
    assert (facts["space"], facts["blocks"], facts["candidates"]) == ("tiny", 2, ["conv3x3", "conv1x1", "skip"])


def test_a_broken_installed_space_is_one_line_and_leaves_the_others_working(tmp_path):
    env = _install(tmp_path / "site", module="raise ImportError('no module named torchvision_nightly')\n")
    r = _dsnas(env, "search", "--set", "space=tiny", "--out", tmp_path / "run")
    line = assert_one_line_error(r.returncode, r.stderr)
    assert "tiny space of dsnas-tiny-space" in line and "torchvision_nightly" in line
    assert not (tmp_path / "run").exists()
    assert _dsnas(env, "info", "--space", "nb201").returncode == 0  # a known space never loads the others
    env = _install(tmp_path / "other", module="class TinySpace:\n    pass\n")  # imports, registers nothing
    line = assert_one_line_error(*(lambda r: (r.returncode, r.stderr))(_dsnas(env, "info", "--spaces")))
    assert "registers no space named 'tiny'" in line


@pytest.mark.slow
def test_an_installed_space_is_searched_evaluated_and_exported_through_the_cli(tmp_path):
    env = _install(tmp_path / "site")
    run = tmp_path / "run"
    r = _dsnas(env, "search", "--set", "space=tiny", "--set", "space.channels=8", "--set", "train_limit=512",
               "--set", "test_limit=128", "--set", "epochs=2", "--set", "search_epochs=1", "--set", "init=torch",
               "--set", "eval_bn_recalibrate=64", "--quiet", "--out", run)
    assert r.returncode == 0, r.stderr
    assert "space: tiny" in (run / "arch.yaml").read_text() and (run / "alpha.csv").exists()
    assert set(load_file(run / "child.safetensors")) >= {"stem.0.weight", "classifier.weight"}
    e = _dsnas(env, "eval", "--run", run, "--json")
    assert e.returncode == 0, e.stderr
    evaluated = json.loads(e.stdout)  # the run's data, every test image (the run held out all but 128)
    assert evaluated["images"] == 3000 and 0 <= evaluated["top1"] <= 100
    x = _dsnas(env, "export", "--run", run, "--onnx", tmp_path / "child.onnx")
    assert x.returncode == 0 and "onnxruntime matches PyTorch" in x.stdout, x.stderr
    resumed = _dsnas(env, "search", "--set", "space=tiny", "--set", "space.channels=8", "--set", "train_limit=512",
                     "--set", "test_limit=128", "--set", "epochs=2", "--set", "search_epochs=1", "--set", "init=torch",
                     "--set", "eval_bn_recalibrate=64", "--quiet", "--out", run, "--resume")
    assert resumed.returncode == 0 and "finished run" in resumed.stdout, resumed.stderr
