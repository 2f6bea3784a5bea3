"""Hostile text in the files and arguments dsnas parses: every YAML reader refuses aliases, deep
nesting, oversized files and integers Python cannot convert, as one-line errors that quote at
most a few dozen characters of what the input said."""

from __future__ import annotations

import pytest

from conftest import BLOCK_KEYS, assert_one_line_error, dsnas_error
from dsnas.plan import check_run
from dsnas.arch import load_arch
from dsnas.config import load_config, load_run_config
from dsnas.errors import QUOTE_LIMIT, quote
from dsnas.files import YAML_MAX_BYTES, dump_yaml, parse_yaml, read_yaml
from dsnas.latency import load_latency

READERS = {"config": lambda p: check_run(load_config(str(p))), "arch": load_arch, "latency": load_latency,
           "run config": lambda p: check_run(load_run_config(p.parent))}


def _write(tmp_path, text: str, name: str = "config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("text, expected", [
    ("a: &x [1, 2]\nb: *x\n", "aliases are not allowed"),
    ("[" * 3000 + "]" * 3000 + "\n", "nesting deeper than"),
    ("{a: " * 100 + "1" + "}" * 100 + "\n", "nesting deeper than"),
    ("epochs: " + "7" * 5000 + "\n", "an integer of 5000 characters"),
    ("epochs: 2020-13-01\n", "month must be in 1..12"),
    ("epochs: !!timestamp x\n", "a value cannot be read"),
    ("epochs: !!float abc\n", "could not convert"),
])
def test_every_yaml_reader_refuses_what_would_explode(tmp_path, reader, text, expected):
    msg = dsnas_error(READERS[reader], _write(tmp_path, text))
    assert expected in msg and "not valid YAML" in msg
    assert len(msg) < 400, msg


def test_an_oversized_yaml_file_is_refused_unread(tmp_path):
    path = _write(tmp_path, "# " + "x" * YAML_MAX_BYTES + "\n")
    assert "larger than 1 MiB" in dsnas_error(read_yaml, path, "config file")


def test_set_values_go_through_the_same_bounded_parser():
    assert "epochs must be int" in dsnas_error(load_config, None, ["epochs=" + "9" * 5000])
    assert "epochs must be int" in dsnas_error(load_config, None, ["epochs=&a [1]"])
    assert "epochs must be int" in dsnas_error(load_config, None, ["epochs=" + "[" * 3000])


def test_long_mmrazor_indices_are_unknown_keys(tmp_path):
    lines = [f"{k}: {{chosen: shuffle_3x3}}" for k in BLOCK_KEYS]
    lines[0] = f"? backbone.layers.{'0' * 5000}.0\n: {{chosen: shuffle_3x3}}"  # explicit: a long key
    msg = dsnas_error(load_arch, _write(tmp_path, "\n".join(lines) + "\n", "subnet.yaml"))
    assert "unknown key" in msg and len(msg) < 300


@pytest.mark.parametrize("reader, text", [
    ("config", "epochs: [" + ", ".join(["abcdefgh"] * 20000) + "]\n"),
    ("config", "method: " + "m" * 100000 + "\n"),
    ("config", "x" * 100000 + ": 1\n"),
    ("arch", "format: dsnas-arch/1\nchoices: [" + ", ".join(["conv9" * 1000] * 20) + "]\n"),
    ("arch", "format: " + "f" * 100000 + "\n"),
    ("latency", "format: " + "f" * 100000 + "\n"),
    ("latency", "format: dsnas-latency/1\nsettings: {}\nfixed: {}\nblocks: [{a: {ms: '" + "9" * 100000 + "'}}]\n"),
])
def test_quoted_values_are_cut_to_a_few_dozen_characters(tmp_path, reader, text):
    path = _write(tmp_path, text)
    msg = dsnas_error(READERS[reader], path)
    assert len(msg.replace(str(path), "")) < 180, msg  # its file's name aside, whose length is the test folder's


def test_quote_is_short_and_cheap():
    assert quote("abc") == "'abc'"
    assert len(quote("x" * 10**7)) <= QUOTE_LIMIT
    assert len(quote([[list(range(1000))] * 1000] * 1000)) <= QUOTE_LIMIT
    assert len(quote(10**4000)) <= QUOTE_LIMIT


def test_written_yaml_reads_back_even_with_shared_objects():
    shared = {"ms": 1.5, "spread": 0.1}
    data = {"a": shared, "b": [shared, shared], "c": [1, 2]}
    assert parse_yaml(dump_yaml(data)) == data


def test_cli_refuses_a_bomb_config_in_one_line(tmp_path, dsnas_main):
    r = dsnas_main("search", "--config", _write(tmp_path, "a: &x [1]\nb: *x\n"), "--out", tmp_path / "run")
    assert_one_line_error(r.returncode, r.stderr)
    assert not (tmp_path / "run").exists()
