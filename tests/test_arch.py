"""Architecture files: dsnas arch.yaml and MMRazor subnet YAML, round trips, and bad files
reported by the CLI as one clean error line."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import BLOCK_KEYS, assert_one_line_error, random_arch, run_cli_many
from dsnas import Architecture, DsnasError, load_arch, save_arch

# MMRazor's published DSNAS subnet for ShuffleNetV2 (configs/nas/mmcls/dsnas, DSNAS_SUBNET_IMAGENET_PAPER_ALIAS).
MMRAZOR_DSNAS_SUBNET = """\
backbone.layers.0.0: shuffle_3x3
backbone.layers.0.1: shuffle_3x3
backbone.layers.0.2: shuffle_xception
backbone.layers.0.3: shuffle_3x3
backbone.layers.1.0: shuffle_xception
backbone.layers.1.1: shuffle_7x7
backbone.layers.1.2: shuffle_3x3
backbone.layers.1.3: shuffle_3x3
backbone.layers.2.0: shuffle_xception
backbone.layers.2.1: shuffle_xception
backbone.layers.2.2: shuffle_7x7
backbone.layers.2.3: shuffle_xception
backbone.layers.2.4: shuffle_xception
backbone.layers.2.5: shuffle_xception
backbone.layers.2.6: shuffle_7x7
backbone.layers.2.7: shuffle_3x3
backbone.layers.3.0: shuffle_3x3
backbone.layers.3.1: shuffle_xception
backbone.layers.3.2: shuffle_xception
backbone.layers.3.3: shuffle_3x3
"""
MMRAZOR_DSNAS_CHOICES = [line.split(": ")[1] for line in MMRAZOR_DSNAS_SUBNET.splitlines()]


# --- round trips ----------------------------------------------------------------------------

def test_dsnas_format_round_trip(tmp_path):
    a = Architecture(random_arch(1), settings={"num_classes": 10, "in_channels": 1, "input_size": 28, "width": 0.5},
                     metadata={"mflops": 12.5, "created_by": "test"})
    assert a.settings["small_input"] is True  # filled in from input_size
    p = tmp_path / "arch.yaml"
    save_arch(a, p)
    raw = yaml.safe_load(p.read_text())
    assert raw["format"] == "dsnas-arch/2" and raw["choices"] == dict(zip(BLOCK_KEYS, a.choices))
    b = load_arch(p)
    assert b.choices == a.choices
    assert b.settings == a.settings
    assert b.metadata == a.metadata
    assert b.space == "shufflenet"
    assert b == a


def test_default_settings_round_trip(tmp_path):
    a = Architecture(["shuffle_7x7"] * 20)
    save_arch(a, tmp_path / "a.yaml")
    b = load_arch(tmp_path / "a.yaml")
    assert b.settings == {"num_classes": 1000, "in_channels": 3, "input_size": 224, "width": 1.0,
                          "small_input": False}
    assert b.choices == ["shuffle_7x7"] * 20


def test_mmrazor_round_trip(tmp_path):
    a = Architecture(random_arch(2))
    p = tmp_path / "subnet.yaml"
    save_arch(a, p, mmrazor=True)
    raw = yaml.safe_load(p.read_text())
    assert list(raw) == BLOCK_KEYS  # MMRazor's keys, in order
    assert raw[BLOCK_KEYS[0]] == {"chosen": a.choices[0]}
    assert load_arch(p).choices == a.choices


def _mmrazor_text(choices, form: str) -> str:
    lines = []
    for key, op in zip(BLOCK_KEYS, choices):
        if form == "plain":
            lines.append(f"{key}: {op}")
        elif form == "chosen":
            lines.append(f"{key}:\n  chosen: {op}")
        elif form == "prefixed":
            lines.append(f"architecture.{key}: {op}")
        elif form == "prefixed_chosen":
            lines.append(f"architecture.{key}: {{chosen: {op}}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("form", ["plain", "chosen", "prefixed", "prefixed_chosen"])
def test_mmrazor_forms_load(tmp_path, form):
    choices = random_arch(3)
    p = tmp_path / f"{form}.yaml"
    p.write_text(_mmrazor_text(choices, form))
    assert load_arch(p).choices == choices


def test_mmrazor_keys_in_any_order(tmp_path):
    choices = random_arch(4)
    lines = _mmrazor_text(choices, "plain").splitlines()
    (tmp_path / "r.yaml").write_text("\n".join(reversed(lines)) + "\n")
    assert load_arch(tmp_path / "r.yaml").choices == choices


def test_published_subnet_loads(tmp_path):
    p = tmp_path / "dsnas_subnet.yaml"
    p.write_text(MMRAZOR_DSNAS_SUBNET)
    a = load_arch(p)
    assert a.choices == MMRAZOR_DSNAS_CHOICES
    assert a.choices.count("shuffle_xception") == 9 and a.choices.count("shuffle_7x7") == 3


def test_load_errors_in_process(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("backbone.layers.4.0: shuffle_3x3\n" + _mmrazor_text(random_arch(0), "plain"))
    with pytest.raises(DsnasError, match=r"backbone\.layers\.4\.0"):
        load_arch(p)
    p.write_text("- shuffle_3x3\n- shuffle_5x5\n")
    with pytest.raises(DsnasError, match="mapping"):
        load_arch(p)
    with pytest.raises(DsnasError, match="unknown op"):
        Architecture(["shuffle_3x3"] * 19 + ["conv"])


# --- the CLI: the published subnet and bad files ------------------------------------------------

def _dsnas_file(choices, **extra) -> str:
    doc = {"format": "dsnas-arch/1", "space": "shufflenet", "choices": list(choices), **extra}
    return yaml.safe_dump(doc, sort_keys=False)


# name -> (file text or None for "no file", what stderr must contain)
BAD_FILES = {
    "19_blocks_dsnas": (_dsnas_file(["shuffle_3x3"] * 19), ["19", "20"]),
    "19_blocks_mmrazor": ("".join(MMRAZOR_DSNAS_SUBNET.splitlines(keepends=True)[:19]), ["19", "20"]),
    "unknown_op": (_dsnas_file(["shuffle_3x3"] * 7 + ["shuffle_9x9"] + ["shuffle_3x3"] * 12),
                   ["shuffle_9x9", "block 7"]),
    "unknown_op_mmrazor": (MMRAZOR_DSNAS_SUBNET.replace("layers.2.6: shuffle_7x7", "layers.2.6: mobilenet_k3"),
                           ["mobilenet_k3"]),
    "unknown_format": ("format: something/9\nchoices: []\n", ["something/9", "format"]),
    "invalid_yaml": ("format: dsnas-arch/1\nchoices: [shuffle_3x3, shuffle_5x5\n", ["YAML"]),
    "missing_file": (None, ["does not exist"]),
    "empty_file": ("", ["is empty"]),
}


# The cases the CLI is run on as a real subprocess (each costs a fresh interpreter and a torch
# import, ~4 CPU-seconds); every case also runs in-process through `dsnas.cli.main`.
SUBPROCESS_CASES = ["19_blocks_dsnas", "unknown_op", "unknown_format", "invalid_yaml", "missing_file", "empty_file"]


def _write_case(directory, name):
    path = directory / f"{name}.yaml"
    text = BAD_FILES[name][0]
    if text is not None:
        path.write_text(text)
    return path


def _assert_one_clean_error_line(r, path, case):
    line = assert_one_line_error(r.returncode, r.stderr, r.stdout)
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.endswith("\n"), r.stderr  # no blank lines either
    assert r.stderr.startswith("dsnas: error: ")
    assert str(path) in line  # names the file
    for needle in BAD_FILES[case][1]:
        assert needle in line, (needle, line)


@pytest.fixture(scope="module")
def subprocess_results(tmp_path_factory):
    """Run the subprocess cases all at once; {case: (path, CliResult)}."""
    d = tmp_path_factory.mktemp("arch_cli")
    paths = [_write_case(d, name) for name in SUBPROCESS_CASES]
    results = run_cli_many([["info", "--arch", p] for p in paths])
    return dict(zip(SUBPROCESS_CASES, zip(paths, results)))


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_file_subprocess(subprocess_results, case):
    path, r = subprocess_results[case]
    _assert_one_clean_error_line(r, path, case)


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_in_process(tmp_path, dsnas_main, case):
    path = _write_case(tmp_path, case)
    _assert_one_clean_error_line(dsnas_main("info", "--arch", path), path, case)


def test_published_subnet_costs_via_cli(tmp_path, dsnas_main):
    p = tmp_path / "dsnas_subnet.yaml"
    p.write_text(MMRAZOR_DSNAS_SUBNET)
    r = dsnas_main("info", "--arch", p, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # What MMRazor's ResourceEstimator rules give for this structure at 224 px, 1000 classes.
    # (MMRazor's README lists 0.299 GFLOPs / 3.33 M params for this subnet.)
    assert out["mflops"] == 335.256
    assert out["macs_m"] == 322.32288  # MACs keep every digit
    assert out["params_m"] == 3.549
    assert out["choices"] == MMRAZOR_DSNAS_CHOICES
    assert out["settings"]["input_size"] == 224 and out["settings"]["num_classes"] == 1000


# Bad space settings in an arch file (including non-integer and non-finite values) are one line.


@pytest.mark.parametrize("setting", [
    "num_classes: 10.5",
    "in_channels: 2.5",
    "width: .inf",
    "num_classes: 0",
    "width: -1.0",
    "input_size: abc",
    "colour: red",
])
def test_bad_settings_are_one_clean_error_line(tmp_path, dsnas_main, setting):
    p = tmp_path / "a.yaml"
    p.write_text(f"format: dsnas-arch/1\nsettings: {{{setting}}}\nchoices: [{', '.join(['shuffle_3x3'] * 20)}]\n")
    r = dsnas_main("info", "--arch", p, "--json")
    assert_one_line_error(r.returncode, r.stderr, r.stdout)
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("dsnas: error: ")
    assert setting.split(":")[0] in r.stderr or "setting" in r.stderr
