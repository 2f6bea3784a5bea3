"""Every numeric config key has a declared range (`config.RANGES`), checked by `Config.validate`;
optional keys (``int | None``) coerce like the others."""

from __future__ import annotations

import pytest

from conftest import dsnas_error
from dsnas import config
from dsnas.config import RANGES, Config, Range


def _numeric_keys() -> set[str]:
    return {f.name for f in config.fields(Config) if config._kind(config._HINTS[f.name])[0] in (int, float)}


def test_every_numeric_key_has_a_range_and_no_other_key_does():
    assert set(RANGES) == _numeric_keys()


def test_every_default_is_in_its_range():
    for key, r in RANGES.items():
        assert getattr(Config(), key) in r, key


def test_ranges_read_as_they_check():
    assert str(Range(1)) == ">= 1" and str(Range(0, open_low=True)) == "> 0"
    assert str(Range(0, 1, open_high=True)) == "in [0, 1)" and str(Range(0, 8, open_low=True)) == "in (0, 8]"
    assert 0 not in Range(0, open_low=True) and 1 not in Range(0, 1, open_high=True) and 1 in Range(0, 1)


def test_a_value_out_of_its_range_names_the_range(monkeypatch):
    msg = dsnas_error(config.load_config, None, ["arch_beta2=1"])
    assert "arch_beta2 must be in [0, 1), got 1.0" in msg


def test_optional_keys_coerce():
    assert config.coerce("maybe", int | None, None) is None
    assert config.coerce("maybe", int | None, 3) == 3 and config.coerce("maybe", int | None, "4") == 4
    assert "maybe must be int" in dsnas_error(config.coerce, "maybe", int | None, "four")
    assert "epochs must be int" in dsnas_error(config.coerce, "epochs", int, None)


def test_every_numeric_key_is_bounded_on_both_sides():
    for key, r in RANGES.items():
        assert r.low > -float("inf") and r.high < float("inf"), key


@pytest.mark.parametrize("key", ["lr", "weight_decay", "arch_lr", "penalty", "momentum", "budget_mflops",
                                 "lr_warmup_epochs", "mutation_prob"])
def test_a_huge_float_is_refused_before_the_run_folder_exists(tmp_path, dsnas_main, key):
    from conftest import assert_one_line_error

    r = dsnas_main("search", "--set", f"{key}=1e300", "--set", "epochs=2", "--out", tmp_path / "run")
    assert_one_line_error(r.returncode, r.stderr)
    assert f"{key} must be in" in r.stderr and not (tmp_path / "run").exists()
