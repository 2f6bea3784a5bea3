"""SIGTERM during an export or a run's final writes: every temporary is removed and the command
ends with exit code 143 and one line; temporaries that a killed writer left are cleaned up by
the next write of the same file."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

from conftest import SMALL, cli_env, random_arch
from dsnas import Architecture, ShuffleNetChild, save_arch
from dsnas.export import save_weights
from dsnas.files import write_text
from dsnas.spaces import ShuffleNetSettings


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=cli_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_sigterm_during_an_onnx_export_leaves_no_temporary(tmp_path):
    arch = Architecture(random_arch(2), settings=SMALL)
    save_arch(arch, tmp_path / "arch.yaml")
    save_weights(ShuffleNetChild(arch.choices, ShuffleNetSettings(**SMALL)), tmp_path / "w.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    p = _python(f"""
        import os, signal, sys, time
        import torch
        real = torch.onnx.export

        def export(*args, **kwargs):  # the temporary is written, then the signal comes
            real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)

        torch.onnx.export = export
        from dsnas.cli import main
        sys.exit(main(["export", "--arch", {str(tmp_path / "arch.yaml")!r}, "--weights",
                       {str(tmp_path / "w.safetensors")!r}, "--onnx", {str(out / "c.onnx")!r}]))
    """)
    assert p.returncode == 143, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1] == "dsnas: terminated"
    assert list(out.iterdir()) == []


def test_sigterm_during_the_final_writes_leaves_no_temporary(tmp_path):
    p = _python(f"""
        import os, signal, time
        from pathlib import Path
        import dsnas.export
        from dsnas import Architecture, ShuffleNetChild
        from dsnas.files import Terminated, sigterm_unwinds
        from dsnas.report import write_results
        from dsnas.spaces import ShuffleNetSettings
        real = dsnas.export.save

        def save(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)

        dsnas.export.save = save
        arch = Architecture(["shuffle_3x3"] * 20, settings={SMALL!r})
        try:
            with sigterm_unwinds():
                write_results(Path({str(tmp_path)!r}), arch, ShuffleNetChild(arch.choices, ShuffleNetSettings(**{SMALL!r})),
                              {{"top1": 1.0}}, None, "")
        except Terminated:
            print("terminated")
    """)
    assert p.stdout.strip() == "terminated", p.stderr[-2000:]
    assert sorted(q.name for q in tmp_path.iterdir()) == ["arch.yaml"]  # written before the signal


def test_a_forked_worker_still_dies_by_sigterm():
    p = _python("""
        import os, signal, time
        from dsnas.files import sigterm_unwinds
        with sigterm_unwinds():
            pid = os.fork()
            if pid == 0:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
        print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)
    """)
    assert p.stdout.strip() == "True", p.stderr


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid now runs no process
    alive = subprocess.Popen(["sleep", "30"])
    host = socket.gethostname()
    try:
        stale = tmp_path / f".m.yaml.{host}-{dead.pid}.abc123.tmp"
        live = tmp_path / f".m.yaml.{host}-{alive.pid}.def456.tmp"
        other_host = tmp_path / f".m.yaml.elsewhere-{dead.pid}.ghi789.tmp"
        other_file = tmp_path / f".n.yaml.{host}-{dead.pid}.jkl000.tmp"
        for f in (stale, live, other_host, other_file):
            f.write_text("partial")
        write_text(tmp_path / "m.yaml", "done")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["m.yaml", live.name, other_host.name, other_file.name])
    finally:
        alive.kill()
        alive.wait()
