"""A ground truth for the nb201 space: architectures trained alone, from scratch, twice each.

The architectures: the best-known NAS-Bench-201 cell, degenerate cells (all none, all skip, all
pooling), and ``--archs`` drawn uniformly from the 15,625 (seeded, without repeats). Each is
trained ``--runs`` times (`dsnas train`, method fixed, seeds 0, 1, ...) with the fmnist preset's
schedule unless told otherwise, and every finished run appends one JSON line to ``--results``
(default benchmarks/nb201_ground_truth.jsonl): its string, kind, run, seed, top-1/top-5, costs,
epochs and wall time. The file is the resume point: a run already in it is skipped, and a run
folder left by an interrupted run resumes from its checkpoint, so a long study can be stopped
and started again and later studies reuse the file.

``--summary`` reads the file and prints what a ranking can be held to, over the uniform draws: the spread of the
architectures' mean accuracy, the run-to-run noise (the standard deviation of the difference
between an architecture's two runs, over sqrt 2) and Kendall tau between run 0 and run 1.

    python benchmarks/nb201_ground_truth.py [--archs 50] [--runs 2] [--set epochs=30 ...]
    python benchmarks/nb201_ground_truth.py --summary
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dsnas.agreement import kendall_tau  # noqa: E402
from dsnas.config import load_config, load_run_config  # noqa: E402
from dsnas.spaces.nb201 import OPS, EDGES, to_string  # noqa: E402
from dsnas.train import run_search  # noqa: E402

BEST_KNOWN = ["nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3", "nor_conv_3x3"]
DEGENERATE = {"all_none": ["none"] * 6, "all_skip": ["skip_connect"] * 6, "all_pool": ["avg_pool_3x3"] * 6}
# The schedule: the fmnist preset's data, with a network and a schedule small enough that the 108 runs fit
# into about two hours of one core of a 2-core CPU (C = 8, N = 1; 6,000 training images, 3 epochs of batch
# 64 = 282 steps; 5,000 test images). --set overrides any of it.
SCHEDULE = ["channels=8", "cells_per_stage=1", "train_limit=6000", "test_limit=5000", "epochs=3", "batch_size=64",
            "lr=0.1", "lr_warmup_epochs=0", "eval_bn_recalibrate=0"]


def uniform_kind(ops=OPS) -> str:
    """The kind of the uniform draws from the candidate set ``ops``: ``uniform`` over the whole
    space, ``uniform_no_none`` over the space without ``none``, and so on."""
    left_out = [op for op in OPS if op not in ops]
    return "uniform" if not left_out else "uniform_no_" + "_".join(left_out)


def architectures(n: int, seed: int, ops=OPS) -> list[tuple[str, list[str]]]:
    """(kind, ops) of every architecture of the study: the fixed ones, then ``n`` uniform draws
    from the candidate set ``ops``."""
    chosen = [("best_known", BEST_KNOWN), *DEGENERATE.items()]
    seen = {tuple(ops) for _, ops in chosen}
    rng, kind = random.Random(seed), uniform_kind(ops)
    while len(chosen) < len(DEGENERATE) + 1 + n:
        cell = [rng.choice(list(ops)) for _ in EDGES]
        if tuple(cell) not in seen:
            seen.add(tuple(cell))
            chosen.append((kind, cell))
    return chosen


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(path: Path, record: dict) -> None:
    with open(path, "a") as f:  # one line per finished run: an interruption loses at most the run in flight
        f.write(json.dumps(record, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def claim(work: Path, string: str, run: int) -> bool:
    """Whether this process may train (string, run): several processes can share one study, each
    taking runs no live process has taken (a claim of a process that has died is taken over)."""
    path = work / f"{run_folder(string, run)}.claim"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            owner = int(path.read_text() or 0)
            os.kill(owner, 0)
            return owner == os.getpid()
        except (ValueError, ProcessLookupError):
            path.write_text(str(os.getpid()))
            return True
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def run_folder(string: str, run: int) -> str:
    return f"{string.replace('|', '').replace('~', '').replace('+', '_')}-run{run}"


def train_one(ops: list[str], run: int, args, work: Path) -> dict:
    """Train one architecture from scratch (resuming its folder if an earlier attempt left one)."""
    string = to_string(ops)
    out = work / run_folder(string, run)
    resume = (out / "checkpoints" / "last.pt").exists()
    if out.exists() and not resume:
        shutil.rmtree(out)  # started but never checkpointed: nothing to keep
    # a fixed architecture trains every epoch: the preset's search stages do not apply
    sets = ["warmup_epochs=0", "search_epochs=0", *SCHEDULE, *args.set, "space=nb201", "method=fixed", f"arch={string}",
            f"seed={run}"]
    t0 = time.time()
    cfg = load_run_config(out) if resume else load_config(args.config, sets)
    result = run_search(cfg, out, resume=resume, quiet=True)
    m = result.metrics
    return {"arch_string": string, "run": run, "seed": run, "top1": m["top1"], "top5": m["top5"],
            "mflops": m["mflops"], "params_m": m["params_m"], "epochs": m["epochs"], "train_images": m["train_images"],
            "test_images": m["test_images"], "data": m["data"], "wall_s": round(time.time() - t0, 1),
            "config": args.config, "set": [*SCHEDULE, *args.set], "resumed": resume}


def uniform_records(records: list[dict], kind: str = "uniform") -> list[dict]:
    """The runs of the uniform draws of ``kind`` (`uniform_kind`): the population a ranking is
    measured on (the file also holds the fixed cells, and the cells a search found, trained the
    same way)."""
    return [r for r in records if r["kind"] == kind]


def summary(records: list[dict]) -> dict:
    """Spread of the architectures against the run-to-run noise, and tau between two runs."""
    by_arch: dict[str, dict[int, float]] = {}
    for r in records:
        by_arch.setdefault(r["arch_string"], {})[r["run"]] = r["top1"]
    pairs = [(runs[0], runs[1]) for runs in by_arch.values() if 0 in runs and 1 in runs]
    means = [statistics.fmean(runs.values()) for runs in by_arch.values()]
    out = {"architectures": len(by_arch), "runs": len(records), "paired": len(pairs)}
    if len(means) > 1:
        out.update(mean_top1=round(statistics.fmean(means), 2), spread_sd=round(statistics.stdev(means), 3),
                   best=round(max(means), 2), worst=round(min(means), 2))
    if len(pairs) > 1:
        out["noise_sd"] = round(statistics.stdev([a - b for a, b in pairs]) / math.sqrt(2), 3)
        tau = kendall_tau([a for a, _ in pairs], [b for _, b in pairs])
        out["tau_run0_run1"] = round(tau, 3) if math.isfinite(tau) else None  # None: too few or tied pairs
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", type=int, default=50, help="architectures drawn uniformly (besides the fixed ones)")
    p.add_argument("--runs", type=int, default=2, help="trainings of each architecture (seeds 0, 1, ...)")
    p.add_argument("--draw-seed", type=int, default=0, help="seed of the uniform draws")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS),
                   help="the candidate set the uniform draws come from (default: all of the space's ops)")
    p.add_argument("--config", default="fmnist", help="preset or YAML file of the schedule (default fmnist)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "nb201_ground_truth.jsonl")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "nb201_ground_truth", help="run folders")
    p.add_argument("--limit", type=int, default=0, help="train at most this many runs now (0: all left)")
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1), help="torch threads (default: all)")
    p.add_argument("--summary", action="store_true", help="only summarise --results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pool_kind = uniform_kind(args.ops)
    if args.summary:
        print(json.dumps(summary(uniform_records(read_results(args.results), pool_kind)), indent=2, allow_nan=False))
        return 0
    done = {(r["arch_string"], r["run"]) for r in read_results(args.results)}
    todo = [(kind, ops, run) for kind, ops in architectures(args.archs, args.draw_seed, args.ops)
            for run in range(args.runs) if (to_string(ops), run) not in done]
    if args.limit:
        todo = todo[:args.limit]
    print(f"{len(done)} runs in {args.results}; training {len(todo)} now", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    for i, (kind, ops, run) in enumerate(todo, 1):
        if (to_string(ops), run) in {(r["arch_string"], r["run"]) for r in read_results(args.results)} or \
                not claim(args.work, to_string(ops), run):
            continue  # finished or taken by another process of the study
        record = {"kind": kind, **train_one(ops, run, args, args.work)}
        append_result(args.results, record)
        print(f"[{i}/{len(todo)}] {kind:<10} run {run}  top1 {record['top1']:.2f}%  {record['mflops']:.2f} MFLOPs  "
              f"{record['wall_s']:.0f}s  {record['arch_string']}", flush=True)
    print(json.dumps(summary(uniform_records(read_results(args.results), pool_kind)), indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
