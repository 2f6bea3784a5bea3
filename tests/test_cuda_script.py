"""benchmarks/cuda.sh returns what the GPU machine lets back: at most 8 files, at most two folders
below the output folder, named in letters, digits, '.', '_' and '-' (it writes two: results.tar
and summary.txt); every step's log and files go into the archive as the step ends, so a step that
fails, or is stopped at its limit, loses only itself; the whole script keeps to its deadline."""

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "cuda.sh"
STEPS = ["throughput", "reward_precision", "channels_last", "input_pipeline", "determinism", "demo",
         "step_overhead", "latency_lut", "demo_compile"]
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
REHEARSAL_DEADLINE = 1200  # the script's own plan for the CPU rehearsal (s)


def _run(out: Path, tmp: Path, python: str, timeout: float, **env) -> subprocess.CompletedProcess:
    env = {**cli_env(), "REHEARSE": "1", "PYTHON": python, "TMPDIR": str(tmp), **env}
    return subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def _check_returned_files(out: Path) -> None:
    files = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    for rel in files:
        assert len(rel.parts) <= 3 and all(NAME.match(part) for part in rel.parts), rel
    assert sorted(map(str, files)) == ["results.tar", "summary.txt"]


def _archived(out: Path) -> list[str]:
    with tarfile.open(out / "results.tar") as tar:
        return tar.getnames()


def test_a_step_that_dies_or_overruns_loses_only_itself(tmp_path):
    """With a stand-in interpreter: throughput fails at once, reward_precision prints a figure and
    hangs until its limit (here the deadline) stops it, and every later step is skipped."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/bash\n"
                    'case "$*" in\n'
                    '  *"import sys, torch"*) echo "torch (stand-in)" ;;\n'
                    '  *throughput.py*) echo "it broke" >&2; exit 3 ;;\n'
                    '  *reward_precision.py*) echo \'{"partial": 1}\'; exec sleep 60 ;;\n'
                    "  *) echo '{\"ok\": 1}' ;;\n"
                    "esac\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    r = _run(out, tmp_path, str(fake), timeout=60, DEADLINE="8", MIN_LEFT="4")
    assert r.returncode == 1, r.stdout + r.stderr
    _check_returned_files(out)
    summary = (out / "summary.txt").read_text()
    assert "== throughput: FAILED (exit 3)" in summary
    assert "== reward_precision: STOPPED at its limit" in summary and '{"partial": 1}' in summary
    assert "== channels_last: skipped" in summary and "== demo_compile: skipped" in summary
    names = _archived(out)
    assert "throughput/log.txt" in names and "reward_precision/log.txt" in names
    with tarfile.open(out / "results.tar") as tar:
        assert b"it broke" in tar.extractfile("throughput/log.txt").read()
    assert not list(tmp_path.glob("dsnas-cuda.*"))  # the scratch folder is gone


@pytest.mark.slow
def test_cpu_rehearsal_returns_every_step_within_its_plan(tmp_path):
    out = tmp_path / "out"
    r = _run(out, tmp_path, sys.executable, timeout=REHEARSAL_DEADLINE + 60)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    _check_returned_files(out)
    summary = (out / "summary.txt").read_text()
    for step in STEPS:
        assert f"== {step}: ok" in summary, summary
    total = int(re.search(r"total (\d+) s", summary).group(1))
    assert total <= REHEARSAL_DEADLINE
    names = _archived(out)
    for step in STEPS:
        assert f"{step}/log.txt" in names
    assert "demo/run/metrics.json" in names and "BENCHMARKS.md" in names
    assert not any(n.endswith(".pt") for n in names)  # checkpoints stay behind
    assert (out / "results.tar").stat().st_size < 16 * 2**20
    assert not list(tmp_path.glob("dsnas-cuda.*"))
