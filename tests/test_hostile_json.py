"""NaN never reaches a JSON file or a printed JSON line: every writer refuses it (strict JSON),
and the values that could be NaN are checked before, with a clear message."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import SMALL, TESTS_DIR, assert_one_line_error, dsnas_error
from dsnas import Architecture, ShuffleNetChild, save_arch
from dsnas.export import save_weights
from dsnas.files import json_text
from dsnas.spaces import ShuffleNetSettings


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_json_text_refuses_what_json_would_write_as_bare_nan(value):
    assert "NaN or infinite" in dsnas_error(json_text, {"a": [1.0, {"loss": value}]})
    assert json.loads(json_text({"a": 1.5}, indent=2)) == {"a": 1.5}


def _json_calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("dump", "dumps")
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "json"):
            yield node


def test_every_json_writer_in_the_package_and_benchmarks_refuses_nan():
    root = TESTS_DIR.parent
    calls = 0
    for path in [*(root / "src").rglob("*.py"), *(root / "benchmarks").rglob("*.py")]:
        for call in _json_calls(path):
            calls += 1
            allow = {k.arg: k.value for k in call.keywords}.get("allow_nan")
            assert isinstance(allow, ast.Constant) and allow.value is False, f"{path}:{call.lineno}"
    assert calls >= 5


def test_eval_of_weights_that_overflow_together_is_refused(tmp_path, dsnas_main):
    arch = Architecture(["shuffle_3x3"] * 20, settings=SMALL)
    child = ShuffleNetChild(arch.choices, ShuffleNetSettings(**SMALL))
    with torch.no_grad():
        child.classifier.weight.fill_(3e38)  # finite, but the sum over 1024 features is not
    run = tmp_path / "run"
    run.mkdir()
    save_arch(arch, run / "arch.yaml")
    save_weights(child, run / "child.safetensors")
    r = dsnas_main("eval", "--run", run, "--json")
    assert_one_line_error(r.returncode, r.stderr)
    assert "NaN or infinite" in r.stderr and r.stdout == "" and not (run / "eval.json").exists()


def test_run_results_with_a_nan_write_nothing(tmp_path):
    from dsnas.report import write_results

    arch = Architecture(["shuffle_3x3"] * 20, settings=SMALL)
    child = ShuffleNetChild(arch.choices, ShuffleNetSettings(**SMALL))
    msg = dsnas_error(write_results, tmp_path, arch, child, {"top1": math.nan}, None, "")
    assert "NaN" in msg and list(tmp_path.iterdir()) == []
