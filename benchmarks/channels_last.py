"""What keeping channels-last through the ShuffleNet blocks saves: the search step and the child
step, each timed with the channel shuffle that returned NCHW from a channels-last input (so
every block paid two layout copies: the shuffle's, and the next convolution's conversion back)
and with the current one, which keeps the memory format. Both versions run in one process,
interleaved step by step (their order alternating), on the same networks and batches, so a
shared or throttled machine slows both alike and their ratio is the figure to read.

    python benchmarks/channels_last.py [--device cpu|cuda] [--reps N] [--amp auto|off|bf16|fp16] [--no-write]
"""

from __future__ import annotations

import argparse
import json
from statistics import median
from contextlib import contextmanager

import torch

from _report import machine, write_section
from _steps import Pair, amp_name

from dsnas.runtime import autocast_dtype
from dsnas.spaces import shufflenet

SETTINGS = [  # (name, input size, channels, classes, batch on CPU, batch on CUDA)
    ("28 px (small-image space)", 28, 1, 10, 64, 256),
    ("224 px", 224, 3, 1000, 16, 128),
]


def nchw_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """The former `channel_shuffle`: its reshape copies a channels-last input into NCHW."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


@contextmanager
def shuffle(version: str):
    """Run the blocks with the ``before`` (NCHW) or ``after`` (format-keeping) channel shuffle."""
    current = shufflenet.channel_shuffle
    shufflenet.channel_shuffle = nchw_shuffle if version == "before" else current
    try:
        yield
    finally:
        shufflenet.channel_shuffle = current


def measure(pair: Pair, reps: int, warmup: int = 2) -> dict:
    """Median seconds of the search and the child step, before and after, interleaved."""
    steps = {"search": pair.search_step, "child": pair.child_step}
    times = {(kind, version): [] for kind in steps for version in ("before", "after")}
    for rep in range(warmup + reps):
        order = ("before", "after") if rep % 2 == 0 else ("after", "before")
        for kind, step in steps.items():
            for version in order:
                with shuffle(version):
                    t = pair.timed(step)
                if rep >= warmup:
                    times[kind, version].append(t)
    return {f"{kind}_{version}_ms": round(1000 * median(t), 2) for (kind, version), t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=0, help="timed repetitions (default 10 on CPU, 30 on CUDA)")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto",
                   help="autocast of both steps, as the `amp` setting (auto: bf16 on CUDA, off on CPU)")
    p.add_argument("--sizes", type=int, nargs="+", default=[28, 224], help="input sizes to time (28 and/or 224)")
    p.add_argument("--batch", type=int, default=0, help="one batch for every size (default: per size and device)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    reps = args.reps or (30 if cuda else 10)
    amp = autocast_dtype(args.amp, torch.device(args.device))
    results = {}
    for name, size, channels, classes, cpu_batch, cuda_batch in SETTINGS:
        if size not in args.sizes:
            continue
        batch = args.batch or (cuda_batch if cuda else cpu_batch)
        pair = Pair(size, batch, 1.0, classes, channels, device=args.device, amp=amp)
        results[name] = {"batch": batch, **measure(pair, reps)}
        print(json.dumps({name: results[name]}, allow_nan=False), flush=True)
    lines = [f"## Channels-last through the blocks, {args.device} (`benchmarks/channels_last.py`)", "",
             f"Machine: {machine()}.",
             f"Command: `python benchmarks/channels_last.py --device {args.device} --amp {args.amp} --reps {reps}`: "
             f"median of {reps} steps of each kind and version, interleaved in one process (the order of the two "
             f"versions alternating), synthetic data, ShuffleNet space at width 1.0, channels-last, autocast "
             f"{amp_name(amp)}. *Before*: the channel shuffle returned NCHW from a channels-last input; *after*: "
             "it keeps the input's memory format (and the gate reads a channels-last output without a copy).", "",
             "| setting | batch | search step before (ms) | after (ms) | after / before | child step before (ms) | "
             "after (ms) | after / before |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['batch']} | {r['search_before_ms']} | {r['search_after_ms']} | "
                     f"{r['search_after_ms'] / r['search_before_ms']:.3f} | {r['child_before_ms']} | "
                     f"{r['child_after_ms']} | {r['child_after_ms'] / r['child_before_ms']:.3f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(f"channels_last_{'cuda' if cuda else 'cpu'}", text)


if __name__ == "__main__":
    main()
