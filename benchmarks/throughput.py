"""Images per second of a DSNAS search step and of a training step of the fixed child, at 224 px
with synthetic data, on the CPU and (when present) on a CUDA GPU with AMP and channels-last.

    python benchmarks/throughput.py [--device cpu|cuda] [--batch N] [--reps N] [--no-write]
"""

from __future__ import annotations

import argparse
import json

import torch

from _report import machine, write_section
from _steps import Pair, median


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=0, help="default 32 on CPU, 256 on CUDA")
    p.add_argument("--reps", type=int, default=0, help="default 15 on CPU, 50 on CUDA")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    batch = args.batch or (256 if cuda else 32)
    reps = args.reps or (50 if cuda else 15)
    amp = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    pair = Pair(224, batch, 1.0, 1000, 3, device=args.device, amp=amp)
    search_t, child_t = pair.interleaved(reps)
    search_ips, child_ips = batch / median(search_t), batch / median(child_t)
    result = {"device": args.device, "batch": batch, "reps": reps, "amp": str(amp), "search_img_s": round(search_ips, 1),
              "child_img_s": round(child_ips, 1), "ratio": round(search_ips / child_ips, 3)}
    print(json.dumps(result))
    lines = [f"## Throughput at 224 px, {args.device} (`benchmarks/throughput.py`)", "", f"Machine: {machine()}.",
             f"Command: `python benchmarks/throughput.py --device {args.device}`: batch {batch}, median of {reps} "
             f"interleaved steps, synthetic data, channels-last, AMP {amp or 'off'}.", "",
             "| step | images/s |", "|---|---|",
             f"| DSNAS search step (sample, forward, backward, α-gradient, both optimizer steps) | {search_ips:.1f} |",
             f"| fixed child training step | {child_ips:.1f} |", "",
             f"Search / child throughput: **{search_ips / child_ips:.3f}** (target ≥ 0.9)."]
    if not args.no_write:
        write_section(f"throughput_{'cuda' if cuda else 'cpu'}", "\n".join(lines))


if __name__ == "__main__":
    main()
