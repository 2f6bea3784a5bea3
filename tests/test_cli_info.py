"""`dsnas info`: costs of the space and of an architecture file, as JSON."""

from __future__ import annotations

import json

import pytest

from conftest import random_arch
from dsnas import Architecture, save_arch
from dsnas.spaces.shufflenet import OPS


# These call `dsnas.cli.main` in-process: a subprocess costs a fresh torch import (~4 CPU-s), and
# the real `python -m dsnas` entry point is already exercised by test_arch's bad-file cases.

def test_info_json(dsnas_main):
    """`dsnas info --json` prints exactly one JSON object."""
    r = dsnas_main("info", "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert len(r.stdout.strip().splitlines()) == 1
    out = json.loads(r.stdout)
    assert isinstance(out, dict)
    assert out["blocks"] == 20
    assert out["candidates"] == list(OPS)
    assert out["candidates_per_block"] == [4] * 20
    for m in ("mflops", "macs_m", "params_m"):
        b = out[m]
        assert b["min"] <= b["mean"] <= b["max"]
        assert b["min"] < b["max"]
    assert out["mflops"]["min"] > 200 and out["mflops"]["max"] < 500  # 224 px ShuffleNetV2 scale
    assert out["supernet_params_m"] > out["params_m"]["max"]


def test_info_arch_json(tmp_path, dsnas_main, table_224):
    choices = random_arch(31)
    save_arch(Architecture(choices), tmp_path / "a.yaml")
    r = dsnas_main("info", "--arch", tmp_path / "a.yaml", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for m in ("mflops", "macs_m", "params_m"):
        assert isinstance(out[m], float) and out[m] > 0
        assert out[m] == round(table_224.total(choices, m), 6 if m == "macs_m" else 3)  # MACs: every digit
    assert out["mflops"] > out["macs_m"] > out["params_m"]
    assert out["choices"] == choices


@pytest.mark.slow
def test_info_arch_uses_the_files_settings(tmp_path, dsnas_main):
    choices = random_arch(32)
    save_arch(Architecture(choices), tmp_path / "big.yaml")
    save_arch(Architecture(choices, settings={"num_classes": 10, "input_size": 32}), tmp_path / "small.yaml")
    big = json.loads(dsnas_main("info", "--arch", tmp_path / "big.yaml", "--json").stdout)
    small = json.loads(dsnas_main("info", "--arch", tmp_path / "small.yaml", "--json").stdout)
    assert small["settings"]["input_size"] == 32 and small["settings"]["small_input"] is True
    assert small["mflops"] < big["mflops"]
    # overriding the input size on the command line re-derives small_input
    over = json.loads(dsnas_main("info", "--arch", tmp_path / "small.yaml", "--input-size", "224",
                                 "--num-classes", "1000", "--json").stdout)
    assert over["settings"]["small_input"] is False
    assert over["mflops"] == big["mflops"]


@pytest.mark.slow
def test_info_small_gray_images_cost_less(dsnas_main):
    r = dsnas_main("info", "--input-size", "28", "--num-classes", "10", "--in-channels", "1", "--json")
    assert r.returncode == 0, r.stderr
    small = json.loads(r.stdout)
    big = json.loads(dsnas_main("info", "--json").stdout)
    assert small["settings"] == {"num_classes": 10, "in_channels": 1, "input_size": 28, "width": 1.0,
                                 "small_input": True}
    for k in ("min", "mean", "max"):
        assert small["mflops"][k] < big["mflops"][k]
    assert small["mflops"]["min"] <= small["mflops"]["mean"] <= small["mflops"]["max"]
    # fewer classes: a smaller classifier
    assert small["params_m"]["min"] < big["params_m"]["min"]


@pytest.mark.slow
def test_info_text_output(tmp_path, dsnas_main):
    r = dsnas_main("info")
    assert r.returncode == 0
    assert "20 blocks x 4 candidates" in r.stdout and "MFLOPs" in r.stdout
    save_arch(Architecture(["shuffle_5x5"] * 20), tmp_path / "a.yaml")
    r = dsnas_main("info", "--arch", tmp_path / "a.yaml")
    assert r.returncode == 0
    assert r.stdout.count("shuffle_5x5") == 20


def test_info_bad_setting_is_argparse_error(dsnas_main, capsys):
    with pytest.raises(SystemExit) as e:
        dsnas_main("info", "--input-size", "0")
    assert e.value.code == 2
    assert "positive integer" in capsys.readouterr().err
