"""Latency tables that lie: every number in a table is checked on load (entries, spreads, the
calibration scale, every count and size its timings allocate), and `dsnas latency` checks its
own counts and its output before it measures anything."""

from __future__ import annotations

import math

import pytest

from conftest import assert_one_line_error, dsnas_error
from dsnas.files import dump_yaml, parse_yaml
from dsnas.latency import load_latency, measure_networks
from dsnas.spaces import ShuffleNetSettings
from dsnas.spaces.shufflenet import OPS

SMALL = ShuffleNetSettings(10, 1, 28, 0.25).as_dict()


def table(**measured) -> dict:
    entry = {"ms": 0.1, "spread": 0.01}
    return {"format": "dsnas-latency/1", "space": "shufflenet", "settings": dict(SMALL),
            "measured": {"device": "cpu", "backend": "torch", "threads": 1, "batch": 1, "precision": "fp32",
                         "repeats": 5, "rounds": 1, "scale": 1.2, **measured},
            "fixed": {"stem": dict(entry), "head": dict(entry), "call": dict(entry)},
            "blocks": [{op: dict(entry) for op in OPS} for _ in range(20)]}


def _write(tmp_path, data: dict, name: str = "lut.yaml"):
    path = tmp_path / name
    path.write_text(dump_yaml(data, sort_keys=False))
    return path


def test_a_hand_made_table_loads(tmp_path):
    t = load_latency(_write(tmp_path, table()), SMALL)
    rows, base = t.entries([list(OPS)] * 20, list(t.blocks))
    assert base == pytest.approx(1.2 * 0.3) and rows[0][0] == pytest.approx(0.12)


@pytest.mark.parametrize("scale", ["abc", [1], math.nan, math.inf, -1.0, 0, 1e300, True, None])
def test_the_calibration_scale_must_be_a_plausible_number(tmp_path, scale):
    msg = dsnas_error(load_latency, _write(tmp_path, table(scale=scale)))
    assert "measured.scale a number in 0.001..1000" in msg


@pytest.mark.parametrize("entry", [{"ms": math.nan}, {"ms": math.inf}, {"ms": -0.5}, {"ms": 1e300},
                                   {"ms": "1"}, {"ms": 1, "spread": math.nan}, {"ms": 1, "spread": -1},
                                   {"ms": 1, "spread": "wide"}, 3, None])
def test_every_entry_is_a_finite_number_in_range(tmp_path, entry):
    data = table()
    data["blocks"][7]["shuffle_5x5"] = entry
    assert "finite ms >= 0 and spread >= 0" in dsnas_error(load_latency, _write(tmp_path, data))
    data = table()
    data["fixed"]["head"] = entry
    assert "finite ms >= 0 and spread >= 0" in dsnas_error(load_latency, _write(tmp_path, data))


def test_candidates_are_named_by_strings(tmp_path):
    data = table()
    data["blocks"][0][5] = {"ms": 1.0}
    assert "by op name" in dsnas_error(load_latency, _write(tmp_path, data))


@pytest.mark.parametrize("measured, expected", [
    ({"batch": 65536}, "measured.batch a whole number in 1..1024"),
    ({"batch": 1000}, "an input of at most 67108864 values"),
    ({"threads": 10**6}, "measured.threads"),
    ({"repeats": 10**9}, "measured.repeats"),
    ({"rounds": -1}, "measured.rounds"),
])
def test_every_size_a_table_would_allocate_is_bounded(tmp_path, measured, expected):
    data = table(**measured)
    data["settings"].update(input_size=224, in_channels=3, small_input=False)
    assert expected in dsnas_error(load_latency, _write(tmp_path, data))


def test_end_to_end_timing_checks_the_record_it_is_given():
    from dsnas.spaces import ShuffleNetSpace

    space = ShuffleNetSpace(10, 1, 28, 0.25, init="torch")
    msg = dsnas_error(measure_networks, [space.child([0] * 20)], {"batch": 10**6}, 0, 1)
    assert "measured.batch" in msg


def test_info_measure_refuses_a_huge_batch(tmp_path, dsnas_main):
    from dsnas import Architecture, save_arch

    save_arch(Architecture(["shuffle_3x3"] * 20, settings=SMALL), tmp_path / "arch.yaml")
    lut = _write(tmp_path, table(batch=65536))
    r = dsnas_main("info", "--arch", tmp_path / "arch.yaml", "--latency", lut, "--measure")
    assert_one_line_error(r.returncode, r.stderr)
    assert "measured.batch" in r.stderr


def test_a_latency_search_with_a_nan_scale_is_refused_before_its_folder_exists(tmp_path, dsnas_main):
    lut = _write(tmp_path, table(scale=math.nan))
    assert parse_yaml(lut.read_text())["measured"]["scale"] != parse_yaml(lut.read_text())["measured"]["scale"]
    r = dsnas_main("search", "--set", "cost=latency", "--set", f"latency_table={lut}", "--set", "budget_ms=5",
                   "--set", "epochs=1", "--set", "search_epochs=1", "--set", "warmup_epochs=0",
                   "--out", tmp_path / "run")
    assert_one_line_error(r.returncode, r.stderr)
    assert "measured.scale" in r.stderr and not (tmp_path / "run").exists()


@pytest.fixture
def no_timing(monkeypatch):
    """Measuring anything fails the test: the command had to stop before."""
    import dsnas.latency

    def timer(*args, **kwargs):
        raise AssertionError("measured before checking")

    monkeypatch.setattr(dsnas.latency, "_Timer", timer)


SPACE_FLAGS = ("--num-classes", "10", "--in-channels", "1", "--input-size", "28")


@pytest.mark.parametrize("flags, expected", [
    (("--threads", "1025"), "threads a whole number in 1..1024, got 1025"),
    (("--batch", "2000"), "batch a whole number in 1..1024"),
    (("--repeats", "1000001"), "repeats a whole number"),
])
def test_latency_refuses_what_a_table_may_not_hold_before_measuring(tmp_path, dsnas_main, no_timing, flags,
                                                                    expected):
    r = dsnas_main("latency", "--out", tmp_path / "lut.yaml", *SPACE_FLAGS, *flags, "--quiet")
    assert_one_line_error(r.returncode, r.stderr)
    assert expected in r.stderr and not (tmp_path / "lut.yaml").exists()


def test_latency_checks_that_its_output_folder_takes_files_before_measuring(tmp_path, dsnas_main, no_timing,
                                                                           monkeypatch):
    import tempfile

    locked = tmp_path / "ro"
    locked.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # a read-only folder, as root would not see one
        if str(dir).startswith(str(locked)):
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    r = dsnas_main("latency", "--out", locked / "sub" / "lut.yaml", *SPACE_FLAGS, "--quiet")
    assert_one_line_error(r.returncode, r.stderr)
    assert "Permission denied" in r.stderr and list(locked.iterdir()) == []
