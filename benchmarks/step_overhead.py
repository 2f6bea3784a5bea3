"""What a DSNAS search step costs against a training step of the fixed child on the same path.

A search step = sample a path, forward, backward, alpha-gradient (with the resource term), the
alpha (Adam) step and the weight (SGD) step; a child step = forward, backward, SGD step of the
plain child network. The two are interleaved, many repetitions, median time. Memory, on the child's
path for both: the bytes autograd keeps for backward in one forward (CPU), or the peak allocated
memory of a whole step (CUDA).

    python benchmarks/step_overhead.py [--space shufflenet|mobilenet] [--reps 40] [--batch N] [--json] [--no-write]
"""

from __future__ import annotations

import argparse
import json
from statistics import median

import torch

from _report import machine, write_section
from _steps import Pair, saved_activation_bytes

SETTINGS = [  # (note, input size, batch, width, classes, channels)
    (" (small-image space)", 28, 64, 1.0, 10, 1),
    ("", 224, 16, 1.0, 1000, 3),
]


def measure(input_size, batch, width, classes, channels, reps, device, space="shufflenet", same_path=False):
    pair = Pair(input_size, batch, width, classes, channels, device=device, space=space)
    search_t, child_t = pair.interleaved(reps, same_path=same_path)
    if pair.device.type == "cuda":
        peaks = []
        for step in (lambda: pair.search_step(pair.child_path), pair.child_step):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated())
        search_mem, child_mem, mem_kind = peaks[0], peaks[1], "peak allocated"
    else:
        pair.search.arm(pair.child_path)  # the same path as the child, gates armed
        search_mem = saved_activation_bytes(lambda: pair._loss(pair.space))
        child_mem = saved_activation_bytes(lambda: pair._loss(pair.child))
        mem_kind = "saved for backward"
    s, c = median(search_t), median(child_t)
    return {"search_ms": round(1000 * s, 2), "child_ms": round(1000 * c, 2), "time_ratio": round(s / c, 3),
            "search_mib": round(search_mem / 2**20, 2), "child_mib": round(child_mem / 2**20, 2),
            "mem_ratio": round(search_mem / child_mem, 3), "memory": mem_kind, "reps": reps}



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="shufflenet", help="a space with a width setting: shufflenet, mobilenet")
    p.add_argument("--same-path", action="store_true", help="every search step trains the child's path (spaces "
                   "whose candidates differ in cost: a sampled path costs what it costs, not what the child does)")
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=0, help="one batch for every setting (default: each its own)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    results = {f"{size} px, batch {args.batch or batch}{note}": measure(size, args.batch or batch, *rest, args.reps,
                                                                         args.device, args.space, args.same_path)
               for note, size, batch, *rest in SETTINGS}
    if args.json:
        print(json.dumps({"device": args.device, "settings": results}, allow_nan=False))
    where = "" if args.space == "shufflenet" else f", {args.space} space"
    lines = [f"## Search-step overhead{where} (`benchmarks/step_overhead.py`)", "", f"Machine: {machine()}; device {args.device}.",
             f"Command: `python benchmarks/step_overhead.py{f' --space {args.space}' if args.space != 'shufflenet' else ''}"
             f"{' --same-path' if args.same_path else ''} "
             f"--reps {args.reps}{f' --batch {args.batch}' if args.batch else ''}`. Median of {args.reps} interleaved "
             f"repetitions; synthetic data; {args.space} space at width 1.0"
             + ("; each search step samples a path and trains the child's." if args.same_path else "."), "",
             "| setting | search step (ms) | child step (ms) | time ratio | search mem (MiB) | child mem (MiB) | mem ratio |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['search_ms']} | {r['child_ms']} | {r['time_ratio']} | {r['search_mib']} | "
                     f"{r['child_mib']} | {r['mem_ratio']} |")
    lines += ["", f"Memory: {next(iter(results.values()))['memory']} (bytes of one step, on the child's path for both). Target: both ratios ≤ 1.05."]
    if not args.json:
        print("\n".join(lines))
    if not args.no_write:
        name = "step_overhead" if args.space == "shufflenet" else f"step_overhead_{args.space}"
        write_section(f"{name}_{args.device}", "\n".join(lines))


if __name__ == "__main__":
    main()
