"""Shared by the benchmark scripts that measure whole runs: `dsnas` in a child process, as a user
runs it, and the run's metrics.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from _report import ROOT


def overrides(sets: list[str]) -> list[str]:
    """``--set key=value`` for each item of ``sets``, in order (a later one wins)."""
    return [arg for s in sets for arg in ("--set", s)]


def run_dsnas(args: list[str], out: Path, threads: int | None = None, log: Path | None = None) -> dict:
    """``python -m dsnas ARGS --out OUT`` from the repository root, with this environment (so the
    same dsnas as this process); returns the run's metrics.json. A finished run in ``out`` is read,
    not rerun; an unfinished one is started again. ``threads`` sets the child's OpenMP/MKL
    threads; ``log`` takes its output, which otherwise goes to this terminal."""
    out = Path(out)
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    if out.exists():  # interrupted: dsnas refuses a non-empty folder that is not resumed
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "dsnas", *map(str, args), "--out", str(out)]
    if log is None:
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    else:
        with open(log, "w") as f:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"dsnas {args[0]} --out {out} failed (exit {rc})" + (f"; see {log}" if log else ""))
    return json.loads((out / "metrics.json").read_text())


def uniform_architecture(like: Path, budget: float, seed: int, out: Path) -> Path:
    """Draw one architecture uniformly among those of ``like``'s space and settings within ``budget``
    MFLOPs (0: the whole space), the draw the random-search baseline makes, and save it to ``out``
    (kept if it exists, so a rerun trains the same draw)."""
    from dsnas import spaces
    from dsnas.arch import Architecture, load_arch, save_arch
    from dsnas.select import random_search

    out = Path(out)
    if not out.exists():
        ref = load_arch(like)
        costs = spaces.build(ref.space, ref.settings).costs
        sizes = [len(names) for _, names in ref.decisions]
        pick = random_search(sizes, lambda a: costs.total(a, "mflops"), budget or None, lambda a: 0.0, 1, seed)[0]
        names = [names[i] for (_, names), i in zip(ref.decisions, pick.choices)]
        out.parent.mkdir(parents=True, exist_ok=True)
        save_arch(Architecture(names, ref.space, ref.settings, {"source": f"uniform draw, seed {seed}"}), out)
    return out
