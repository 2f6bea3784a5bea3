"""Paths and values holding newlines or other control characters: every message stays one line
(they are escaped as Python writes them), in the CLI's errors, argparse's and the warnings."""

from __future__ import annotations

import pytest

from conftest import assert_one_line_error, run_cli
from dsnas.errors import DsnasError, one_line


def test_one_line_escapes_only_what_cannot_be_printed():
    assert one_line("plain é ü 日本") == "plain é ü 日本"
    assert one_line("a\nb\r\tc\x1b[1m\udcfc") == "a\\nb\\r\\tc\\x1b[1m\\udcfc"
    assert str(DsnasError("x\ny")) == "x\\ny"


@pytest.mark.parametrize("make_args", [
    lambda d: ["info", "--arch", d / "no\nsuch.yaml"],
    lambda d: ["eval", "--run", d / "a\nrun"],
    lambda d: ["search", "--data", d / "no\ndata", "--out", d / "out"],
    lambda d: ["search", "--config", d / "bad\n.yaml"],
    lambda d: ["search", "--set", "l\nr=1"],
])
def test_a_newline_in_a_path_or_value_keeps_the_error_on_one_line(tmp_path, dsnas_main, make_args):
    (tmp_path / "bad\n.yaml").write_text("a: [\n")
    r = dsnas_main(*make_args(tmp_path))
    assert_one_line_error(r.returncode, r.stderr)
    assert "\\n" in r.stderr


def test_argparse_errors_with_a_newline_are_one_line(tmp_path):
    r = run_cli("info", "--input-size", "1\n2")
    assert_one_line_error(r.returncode, r.stderr)
    assert "'1\\n2'" in r.stderr


def test_an_error_raised_in_a_worker_reaches_the_user_as_its_own_line(tmp_path):
    import torch

    from conftest import dsnas_error
    from dsnas.data import Data, Loader
    from dsnas.images import ImageFiles

    bad = tmp_path / "a\nb.jpg"
    bad.write_bytes(b"not an image")
    files = ImageFiles([(str(bad), 0)] * 4, 32, "RGB")
    data = Data("x", files, files, 2, 3, 32, (0.5,) * 3, (0.25,) * 3)
    msg = dsnas_error(lambda: next(iter(Loader(data, "train", 2, 0, torch.device("cpu"), workers=1))))
    assert msg.startswith(f"image {tmp_path}/a\\nb.jpg cannot be read: ") and "Traceback" not in msg
