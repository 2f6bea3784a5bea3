"""How well a latency table predicts what a user measures: in each setting (backend x batch x
threads), a table is measured as `dsnas latency` measures it (lookup entries fitted to children
timed end to end, checked on held-out ones), and random architectures of the space (plus
the cheapest and the dearest by MFLOPs), never used by the table, are timed as a user times
them, in a process of their own (`_user_timing.py`), twice. Reports Kendall tau and the median /
max relative error of the fitted table and of the plain lookup (the parts timed alone, times
the calibration scale) against the first timing, the two timings against each other (the most a
predictor can agree with one of them), the table's own held-out figures and how long the table
took. Writes the `latency_lut` section of BENCHMARKS.md.

    python benchmarks/latency_lut.py [--archs 30] [--batches 1 32] [--backends torch onnxruntime] [--threads 1 N]
    python benchmarks/latency_lut.py --space nb201 [--setting channels=16 --setting cells_per_stage=5]
    python benchmarks/latency_lut.py --quick     # every setting, tiny counts: checks the script, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from _report import machine, write_section

from dsnas import spaces
from dsnas.agreement import agreement
from dsnas.latency import FIT_CHILDREN, HOLDOUT, measure_latency
from dsnas.latency_fit import predict

USER_TIMING = Path(__file__).with_name("_user_timing.py")
# Each space at the size this project searches it on Fashion-MNIST (28 px, one channel, 10 classes).
SPACE_SETTINGS = {"shufflenet": {"width": 0.25}, "nb201": {"channels": 8, "cells_per_stage": 1}}
QUICK = {"archs": 3, "repeats": 3, "warmup": 1, "fit_children": 6, "holdout": 3}


def architectures(space: torch.nn.Module, n: int, seed: int) -> list[list[int]]:
    """``n`` uniform draws plus the cheapest and the dearest architecture by MFLOPs."""
    rng = random.Random(seed)
    rows = space.costs.entries["mflops"]
    picks = [[rng.randrange(len(r)) for r in rows] for _ in range(n)]
    return picks + [[min(range(len(r)), key=r.__getitem__) for r in rows],
                    [max(range(len(r)), key=r.__getitem__) for r in rows]]


def user_times(request: dict) -> list[float]:
    """The children of ``request`` timed by `_user_timing.py` in a fresh process."""
    r = subprocess.run([sys.executable, str(USER_TIMING)], input=json.dumps(request, allow_nan=False), capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        raise SystemExit(f"timing children in a separate process failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout)


def study(space: torch.nn.Module, space_args: dict, archs, backend: str, batch: int, threads: int, args) -> dict:
    """One setting: the table (and how long it took), its predictions and the lookup's for
    ``archs``, and two separate-process timings of them."""
    start = time.perf_counter()
    table = measure_latency(space, args.device, backend, batch, threads, "fp32", args.warmup, args.repeats,
                            fit_children=args.fit_children, holdout=args.holdout)
    seconds = time.perf_counter() - start
    names = [c.names for c in space.choices]
    out = {"table_s": seconds, "fit": table.fit, "validation": table.validation}
    for key, fitted in (("fitted", True), ("lookup", False)):
        rows, base = table.entries(names, space.labels, fitted)
        out[key] = [predict(rows, base, arch) for arch in archs]
    request = {**space_args, "archs": archs, "backend": backend, "device": args.device, "batch": batch,
               "threads": threads, "warmup": args.user_warmup, "repeats": args.user_repeats,
               "rounds": args.user_rounds}
    out["measured"], out["again"] = user_times(request), user_times(request)
    for predicted, ms in zip(out["fitted"], out["measured"]):
        print(f"{backend} batch {batch} threads {threads}: predicted {predicted:.3f} ms, measured {ms:.3f} ms",
              flush=True)
    return out


def _figures(found: dict) -> str:
    tau = "–" if found["tau"] is None or found["tau"] != found["tau"] else f"{found['tau']:.3f}"
    return f"{tau} / {found['median_error_pct']:.1f}% / {found['max_error_pct']:.1f}%"


def row(backend: str, batch: int, threads: int, r: dict) -> str:
    meas = r["measured"]
    held = _figures(r["validation"]) if r["validation"] else "–"
    return (f"| {backend} | {batch} | {threads} | {min(meas):.3f}-{max(meas):.3f} | {r['table_s']:.0f} s "
            f"(ridge {r['fit']['ridge']:g}) | {held} | {_figures(agreement(r['fitted'], meas))} | "
            f"{_figures(agreement(r['lookup'], meas))} | {_figures(agreement(r['again'], meas))} |")


def against_goals(results: dict) -> str:
    """Which settings the fitted table meets the goals in, and the slowest table at batch 1."""
    def met(r: dict) -> bool:
        a = agreement(r["fitted"], r["measured"])
        return a["tau"] is not None and a["tau"] >= 0.9 and a["median_error_pct"] <= 5.0

    good = [k for k, r in results.items() if met(r)]
    slow = max((r["table_s"] for (_, batch, _), r in results.items() if batch == 1), default=None)
    def names(keys) -> str:
        return ", ".join(f"{b} batch {n} × {t} thread(s)" for b, n, t in keys) or "none"

    return (f"**Against the goals.** τ ≥ 0.9 with median error ≤ 5% (fitted table): met in {len(good)} of "
            f"{len(results)} settings ({names(good)}); missed in {names([k for k in results if k not in good])}."
            + (f" The slowest table at batch 1 took {slow:.0f} s (goal 120 s: {'met' if slow <= 120 else 'missed'})."
               if slow is not None else ""))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", type=int, default=30, help="random architectures (plus cheapest and dearest)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (onnxruntime measures on the CPU only)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    p.add_argument("--threads", type=int, nargs="+", help="default: 1 and every core (1 only on CUDA)")
    p.add_argument("--repeats", type=int, default=50, help="the table's timed calls per entry and child")
    p.add_argument("--warmup", type=int, default=10, help="the table's untimed calls first")
    p.add_argument("--fit-children", type=int, default=FIT_CHILDREN, help="the table's fitted children")
    p.add_argument("--holdout", type=int, default=HOLDOUT, help="the table's own held-out children")
    p.add_argument("--user-repeats", type=int, default=60, help="timed calls per child, timed as a user does")
    p.add_argument("--user-warmup", type=int, default=10, help="untimed calls per child first, likewise")
    p.add_argument("--user-rounds", type=int, default=1, help="1: one child after the other, as a user times "
                   "them; more: in interleaved passes, so that the machine's slow spells fall on all alike")
    p.add_argument("--space", choices=sorted(SPACE_SETTINGS), default="shufflenet",
                   help="shufflenet: the demo's; nb201: the scale of its ground truth (C = 8, N = 1)")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                   help="a space setting over those defaults (repeatable), e.g. width=0.5 or channels=16")
    p.add_argument("--seed", type=int, default=0, help="the architectures' draw (the table draws its own)")
    p.add_argument("--section", help="BENCHMARKS.md section (default latency_lut, with _cuda and _SPACE where they "
                   "apply), e.g. to keep another batch size's run beside it")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny counts in every setting; writes nothing")
    args = p.parse_args()
    if args.quick:
        vars(args).update(QUICK, user_repeats=3, user_warmup=1, no_write=True)
    args.settings = {"num_classes": 10, "in_channels": 1, "input_size": 28, **SPACE_SETTINGS[args.space]}
    for item in args.setting:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--setting {item!r}: expected KEY=VALUE")
        args.settings[key] = yaml.safe_load(value)
    if args.threads is None:
        args.threads = [1] if args.device.startswith("cuda") else sorted({1, len(os.sched_getaffinity(0))})
    return args


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    space_args = {"space": args.space, "seed": args.seed, "settings": args.settings}
    space = spaces.build(space_args["space"], space_args["settings"], init="torch").eval()
    archs = architectures(space, args.archs, args.seed)
    cuda = args.device.startswith("cuda")
    title = (f"## Latency table against what a user measures, {'CUDA' if cuda else 'CPU'}"
             + ("" if args.space == "shufflenet" else f", {args.space} space") + " (`benchmarks/latency_lut.py`)")
    lines = [title, "", f"Machine: {machine()}.",
             f"Command: `python benchmarks/latency_lut.py --device {args.device} --archs {args.archs} --batches "
             f"{' '.join(map(str, args.batches))} --backends {' '.join(args.backends)} --threads "
             f"{' '.join(map(str, args.threads))} --repeats {args.repeats} --fit-children {args.fit_children} "
             f"--holdout {args.holdout} --user-repeats {args.user_repeats}"
             + (f" --user-rounds {args.user_rounds}" if args.user_rounds > 1 else "")
             + (f" --section {args.section}" if args.section else "")
             + (f" --space {args.space}" if args.space != "shufflenet" else "")
             + "".join(f" --setting {item}" for item in args.setting) + "`", "",
             f"Space: {args.space} ({', '.join(f'{k} {v}' for k, v in args.settings.items())}). In each setting "
             f"a table is measured as `dsnas latency` does: every part timed alone ({args.repeats} calls after "
             f"{args.warmup} untimed), then fitted to {args.fit_children} random children timed end to end and "
             f"checked on {args.holdout} more (*table's check*: its own held-out τ / median / max error, what "
             f"`dsnas latency` prints). Then {args.archs} other uniformly drawn architectures plus the cheapest and "
             "the dearest by MFLOPs are timed as a user times them, in a separate process: `child.eval()`, "
             f"`inference_mode` (torch) or an onnxruntime session of the exported child, {args.user_warmup} "
             f"untimed calls, the median of {args.user_repeats}, "
             + ("one child after the other" if args.user_rounds == 1 else
                f"in {args.user_rounds} interleaved passes over the children") + ". *Fitted*: the table "
             "against that timing; *lookup*: the same table's parts timed alone times its calibration scale (no "
             "fit); *repeat*: a second separate-process timing of the same children against the first, the "
             "most a predictor can agree with one timing. Each cell: τ / median / max |error|.", "",
             "| backend | batch | threads | measured (ms) | table took | table's check | fitted | lookup | repeat |",
             "|---|---|---|---|---|---|---|---|---|"]
    results = {}
    for backend in args.backends:
        for batch in args.batches:
            for threads in args.threads:
                results[backend, batch, threads] = r = study(space, space_args, archs, backend, batch, threads, args)
                lines.append(row(backend, batch, threads, r))
    lines += ["", "Goals: τ ≥ 0.9 and median error ≤ 5% in every setting; a table with its validation in under "
              "2 minutes for this space at batch 1.", "", against_goals(results)]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        suffix = "" if args.space == "shufflenet" else f"_{args.space}"
        write_section(args.section or ("latency_lut_cuda" if cuda else "latency_lut") + suffix, text)


if __name__ == "__main__":
    main()
