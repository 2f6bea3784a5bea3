"""Outputs under stress: a full disk at any write (safetensors included) is one line and leaves
nothing; a failed ONNX check leaves what was there; closed stdout, paths that are not text and
one path named twice are refused; a racing writer does not silently replace a new file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import SMALL, assert_one_line_error, cli_env, dsnas_error, random_arch
from dsnas import Architecture, ShuffleNetChild, save_arch
from dsnas.export import export_onnx, save_weights
from dsnas.files import write_text
from dsnas.spaces import ShuffleNetSettings


@pytest.fixture
def child_files(tmp_path):
    arch = Architecture(random_arch(3), settings=SMALL)
    save_arch(arch, tmp_path / "arch.yaml")
    save_weights(ShuffleNetChild(arch.choices, ShuffleNetSettings(**SMALL)), tmp_path / "child.safetensors")
    return tmp_path / "arch.yaml", tmp_path / "child.safetensors"


def test_a_full_disk_at_the_child_weights_is_one_line_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE makes the writes fail as a full disk would, inside safetensors' writer."""
    script = textwrap.dedent(f"""
        import resource, signal
        from dsnas import ShuffleNetChild
        from dsnas.errors import DsnasError
        from dsnas.export import save_weights
        from dsnas.spaces import ShuffleNetSettings
        child = ShuffleNetChild(["shuffle_3x3"] * 20, ShuffleNetSettings(**{SMALL!r}))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            save_weights(child, {str(tmp_path / "child.safetensors")!r})
        except DsnasError as e:
            print(e)
    """)
    p = subprocess.run([sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout.startswith("cannot write") and "File too large" in p.stdout
    assert list(tmp_path.iterdir()) == []


def test_every_output_gets_the_permissions_of_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        save_weights(torch.nn.Linear(2, 2), tmp_path / "w.safetensors")
        export_onnx(ShuffleNetChild(random_arch(2), ShuffleNetSettings(**SMALL)), tmp_path / "c.onnx", 28, 1,
                    check=False)
        write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "w.safetensors": 0o644, "c.onnx": 0o644, "t.txt": 0o644}


def test_a_failed_onnx_check_keeps_the_file_it_would_replace(tmp_path):
    good = tmp_path / "c.onnx"
    good.write_bytes(b"the good export")
    child = ShuffleNetChild(random_arch(1), ShuffleNetSettings(**SMALL)).eval()
    with torch.no_grad():
        child.classifier.weight.fill_(float("nan"))
    assert "differs from PyTorch" in dsnas_error(export_onnx, child, good, 28, 1)
    assert good.read_bytes() == b"the good export" and [p.name for p in tmp_path.iterdir()] == ["c.onnx"]
    assert "differs from PyTorch" in dsnas_error(export_onnx, child, tmp_path / "new.onnx", 28, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["c.onnx"]


def test_export_to_a_closed_stdout(child_files):
    arch, weights = child_files
    r = subprocess.run([sys.executable, "-m", "dsnas", "export", "--arch", str(arch), "--weights", str(weights),
                        "--mmrazor", "-"], env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, timeout=120, preexec_fn=lambda: os.close(1))
    assert_one_line_error(r.returncode, r.stderr)
    assert "stdout" in r.stderr and "closed" in r.stderr


def test_one_path_named_as_two_outputs(child_files, tmp_path, dsnas_main):
    arch, weights = child_files
    out = tmp_path / "x"
    r = dsnas_main("export", "--arch", arch, "--weights", weights, "--onnx", out, "--mmrazor",
                   tmp_path / "." / "x", "--no-check")
    assert_one_line_error(r.returncode, r.stderr)
    assert "named as two outputs" in r.stderr and not out.exists()


def test_a_new_file_made_by_a_racing_writer_is_not_replaced(tmp_path):
    from dsnas.files import atomic_path

    target = tmp_path / "m.yaml"
    with pytest.raises(Exception) as e:
        with atomic_path(target, replace=False) as tmp:
            tmp.write_text("second")
            target.write_text("first")  # the other export finished meanwhile
    assert "already exists; pass --force" in str(e.value)
    assert target.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["m.yaml"]
    with atomic_path(target, replace=True) as tmp:
        tmp.write_text("forced")
    assert target.read_text() == "forced"


def test_a_run_folder_whose_name_is_not_text_is_refused_before_it_is_made(tmp_path):
    """Under LC_ALL=C a Latin-1 byte in --out reaches Python as a surrogate, which TensorBoard
    cannot encode: refused before anything is created."""
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/r\xfcn")
    env = {**cli_env(), "LC_ALL": "C", "PYTHONUTF8": "0"}
    p = subprocess.run([sys.executable, "-m", "dsnas", "search", "--out", os.fsencode(out), "--set", "epochs=1",
                        "--set", "search_epochs=1", "--set", "warmup_epochs=0"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert_one_line_error(p.returncode, p.stderr)
    assert "not valid UTF-8" in p.stderr and list(tmp_path.iterdir()) == []
