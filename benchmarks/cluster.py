"""What preemption and restarts cost a run under torchrun (2 gloo ranks on this machine's CPU).

- **signal to checkpoint**: SIGTERM to the launcher, as SLURM or a preempting scheduler sends it,
  at a step of the first epoch; the time until every process has exited with the step it reached
  checkpointed (what must fit in the scheduler's grace period), and the steps lost (none: the
  resumed run continues at the step after the checkpointed one).
- **restart to first step**: `--out DIR --resume` on that checkpoint; the time from the launch
  until the first step is trained again, split into the interpreter's start (python, torch and
  dsnas imported), the group's rendezvous and the run's setup (data, supernet, checkpoint).

Two settings: the demo preset (28 px, in-memory data) and 224 px images streamed from an
ImageFolder (ShuffleNet at width 0.25, as a small ImageNet run would start).

    python benchmarks/cluster.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import machine, write_section  # noqa: E402

# A step counter written by each rank as it trains: the benchmark reads it to time the first step.
STEPPING = """
import os, sys, time
import dsnas.train as train
real, mark = train.train_step, os.environ["STEP_MARK"]
def stepping(*args, **kwargs):
    out = real(*args, **kwargs)
    if os.environ.get("RANK") == "0":
        with open(mark, "a") as f:
            f.write(f"{time.time()}\\n")
    return out
train.train_step = stepping
from dsnas.cli import main
sys.exit(main(sys.argv[1:]))
"""

SETTINGS = {
    "demo (28 px, in memory)": ["--set", "train_limit=4096", "--set", "test_limit=512", "--set", "epochs=2",
                                "--set", "search_epochs=1", "--set", "eval_bn_recalibrate=256"],
    "224 px, streamed (ImageFolder)": ["--set", "space.width=0.25", "--set", "batch_size=16", "--set", "epochs=2",
                                       "--set", "search_epochs=1", "--set", "eval_bn_recalibrate=32",
                                       "--set", "workers=2", "--set", "budget_mflops=0"],
}


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _images(folder: Path, per_class: int = 48) -> Path:
    """A small ImageFolder of 256 px JPEGs in 4 classes (random pixels: the timing is what counts)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 8)):
        for c in range(4):
            (folder / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(
                    folder / split / f"c{c}" / f"{i}.jpg", quality=90)
    return folder


def _launch(args: list[str], work: Path, mark: Path) -> subprocess.Popen:
    script = work / "stepping.py"
    script.write_text(STEPPING)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "STEP_MARK": str(mark)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", _port(),
           "--max-restarts", "0", str(script), "search", "--quiet", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _steps(mark: Path) -> list[float]:
    return [float(t) for t in mark.read_text().split()] if mark.exists() else []


def preempt_and_resume(args: list[str], work: Path, at_step: int) -> dict:
    """SIGTERM to the launcher after ``at_step`` steps; then the resume, timed to its first step."""
    out, mark = work / "run", work / "steps"
    job = _launch([*args, "--out", str(out), "--resume"], work, mark)
    while len(_steps(mark)) < at_step and job.poll() is None:
        time.sleep(0.02)
    trained, signalled = len(_steps(mark)), time.time()
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=300)
    stopped = time.time() - signalled
    said = [line for line in err.splitlines() if "stopped before step" in line]
    assert said and (out / "checkpoints" / "last.pt").exists(), err[-2000:]
    checkpointed = len(_steps(mark))  # the steps trained before the ranks stopped: all are in the checkpoint
    mark.unlink()
    started = time.time()
    job = _launch([*args, "--out", str(out), "--resume"], work, mark)
    while not _steps(mark) and job.poll() is None:
        time.sleep(0.01)
    first = _steps(mark)[0] - started
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=300)
    return {"stop_s": stopped, "first_step_s": first, "signalled_at": trained, "checkpointed": checkpointed}


def interpreter_start() -> float:
    """Seconds for python to import torch and the training loop, the part of a restart no run can save."""
    t0 = time.time()
    subprocess.run([sys.executable, "-c", "import dsnas.train"], env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                   check=True)
    return time.time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--at-step", type=int, default=12, help="steps of the first epoch trained before the signal")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = _images(tmp / "images")
        starts = [interpreter_start() for _ in range(args.repeats)]
        for name, settings in SETTINGS.items():
            data = ["--data", str(folder)] if "224" in name else []
            found = []
            for i in range(args.repeats):
                work = tmp / f"{len(rows)}-{i}"
                work.mkdir()
                found.append(preempt_and_resume([*settings, *data, "--set", f"seed={i}"], work, args.at_step))
                print(name, found[-1], flush=True)
            rows.append((name, found))
    lines = ["## Preemption and restart under torchrun (`benchmarks/cluster.py`)", "",
             f"Machine: {machine()}. Two gloo ranks, one thread each; SIGTERM to the launcher after "
             f"{args.at_step} steps of the first epoch, then `--out DIR --resume` on the checkpoint; "
             f"median of {args.repeats} runs (min-max).", "",
             "| setting | signal to every rank stopped, step checkpointed | steps lost | restart to first step |",
             "|---|---|---|---|"]
    for name, found in rows:
        stop = [f["stop_s"] for f in found]
        first = [f["first_step_s"] for f in found]
        lost = [f["checkpointed"] - f["signalled_at"] for f in found]  # steps past the signal, all kept
        lines.append(f"| {name} | {statistics.median(stop):.2f} s ({min(stop):.2f}-{max(stop):.2f}) | 0 "
                     f"(stopped {min(lost)}-{max(lost)} step(s) after the signal, each checkpointed) | "
                     f"{statistics.median(first):.1f} s ({min(first):.1f}-{max(first):.1f}) |")
    lines += ["", f"Of a restart's time, starting python and importing torch and dsnas takes "
              f"{statistics.median(starts):.1f} s on this machine (once per process; torchrun's rendezvous "
              "and the run's setup, data, supernet and checkpoint, make up the rest). A scheduler's grace "
              "period (SLURM's `--signal=B:USR1@180` in scripts/slurm_search.sh, torchrun's 30 s before it "
              "kills) needs to cover the first column."]
    write_section("cluster_cpu", "\n".join(lines))


if __name__ == "__main__":
    main()
