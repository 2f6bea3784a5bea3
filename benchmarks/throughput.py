"""Images per second of a DSNAS search step and of a training step of the fixed child, at 224 px
with synthetic data, on the CPU and (when present) on a CUDA GPU with bf16 autocast and channels-last;
with bf16 on, also the search step in fp32, as `amp: auto` runs the search stage.

    python benchmarks/throughput.py [--device cpu|cuda] [--amp auto|off|bf16|fp16] [--batch N] [--reps N] [--no-write]
"""

from __future__ import annotations

import argparse
import json
from statistics import median

import torch

from _report import machine, write_section
from _steps import Pair, amp_name

from dsnas.runtime import autocast_dtype


def compiled_child(pair: Pair, reps: int) -> dict:
    """Seconds to compile the child's training step (first call), and the median compiled step."""
    eager = pair.child
    pair.child = torch.compile(eager)
    try:
        compile_s = pair.timed(pair.child_step)
        pair.child_step()
        times = [pair.timed(pair.child_step) for _ in range(reps)]
    finally:
        pair.child = eager
    return {"compile_s": compile_s, "step_s": median(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=0, help="default 32 on CPU, 256 on CUDA")
    p.add_argument("--reps", type=int, default=0, help="default 15 on CPU, 50 on CUDA")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto",
                   help="autocast of both steps, as the `amp` setting (auto: bf16 on CUDA, off on CPU)")
    p.add_argument("--compile", action="store_true", help="also time the child step under torch.compile, "
                   "as `compile: true` runs the finetune stage")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    batch = args.batch or (256 if cuda else 32)
    reps = args.reps or (50 if cuda else 15)
    amp = autocast_dtype(args.amp, torch.device(args.device))
    pair = Pair(224, batch, 1.0, 1000, 3, device=args.device, amp=amp)
    search_t, child_t = pair.interleaved(reps)
    search_ips, child_ips = batch / median(search_t), batch / median(child_t)
    result = {"device": args.device, "batch": batch, "reps": reps, "amp": str(amp), "search_img_s": round(search_ips, 1),
              "child_img_s": round(child_ips, 1), "ratio": round(search_ips / child_ips, 3)}
    fp32_ips = None
    if amp is not None:  # `amp: auto` runs the search stage in fp32 (benchmarks/reward_precision.py)
        pair32 = Pair(224, batch, 1.0, 1000, 3, device=args.device, amp=None)
        fp32_t, _ = pair32.interleaved(reps)
        fp32_ips = batch / median(fp32_t)
        result["search_fp32_img_s"] = round(fp32_ips, 1)
    print(json.dumps(result, allow_nan=False), flush=True)  # the eager figures, kept should compiling not finish in time
    if args.compile:
        compiled = compiled_child(pair, reps)
        result.update(compile_s=round(compiled["compile_s"], 1), child_compiled_img_s=round(batch / compiled["step_s"], 1))
        compiled_ips = batch / compiled["step_s"]
        print(json.dumps(result, allow_nan=False), flush=True)
    lines = [f"## Throughput at 224 px, {args.device} (`benchmarks/throughput.py`)", "", f"Machine: {machine()}.",
             f"Command: `python benchmarks/throughput.py --device {args.device} --amp {args.amp}{' --compile' if args.compile else ''}`: batch {batch}, median of {reps} "
             f"interleaved steps, synthetic data, channels-last, autocast {amp_name(amp)}.", "",
             "| step | images/s |", "|---|---|",
             f"| DSNAS search step (sample, forward, backward, α-gradient, both optimizer steps) | {search_ips:.1f} |",
             f"| fixed child training step | {child_ips:.1f} |", "",
             f"Search / child throughput: **{search_ips / child_ips:.3f}** (target ≥ 0.9)."]
    if fp32_ips is not None:
        lines[-3:-2] = [lines[-3], f"| DSNAS search step in fp32 (what `amp: auto` runs in the search stage) | {fp32_ips:.1f} |"]
        lines.append(f"In fp32 the search step runs at {fp32_ips / child_ips:.3f}x the {amp_name(amp)} child step; "
                     "warm-up, supernet and finetune epochs run in " + amp_name(amp) + ".")
    if args.compile:
        lines.append(f"Under torch.compile the child step runs at {compiled_ips:.1f} images/s, "
                     f"{compiled_ips / child_ips:.3f}x eager (compiling took {compiled['compile_s']:.0f} s, paid once "
                     "when the finetune stage starts).")
    if not args.no_write:
        write_section(f"throughput_{'cuda' if cuda else 'cpu'}", "\n".join(lines))


if __name__ == "__main__":
    main()
