"""What `deterministic: true` costs and what it buys on this device: the search step and the
child step at 224 px, timed with torch's default algorithms and with deterministic ones only,
interleaved in one process (the order of the two modes alternating); and whether a few steps
from one saved state repeat bitwise under each mode. Each step runs in the precision a run
gives its stage under ``--amp`` (with ``auto`` on CUDA: the search step fp32, the child bf16).

    python benchmarks/determinism.py [--device cpu|cuda] [--reps N] [--batch N] [--steps N] [--no-write]
"""

from __future__ import annotations

import argparse
import copy
import json
from statistics import median
import os
from contextlib import contextmanager

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: deterministic mode needs it

import torch  # noqa: E402

from _report import machine, write_section  # noqa: E402
from _steps import Pair, amp_name  # noqa: E402

from dsnas.runtime import autocast_dtype, stage_autocast  # noqa: E402

MODES = ("default", "deterministic")


@contextmanager
def mode(name: str):
    """torch's default algorithms, or deterministic ones only (as `deterministic: true` sets them)."""
    on = name == "deterministic"
    torch.backends.cudnn.deterministic = on
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic = False
        torch.use_deterministic_algorithms(False)


def step_times(search: Pair, child: Pair, reps: int, warmup: int = 2) -> dict:
    steps = {"search": (search, search.search_step), "child": (child, child.child_step)}
    times = {(kind, m): [] for kind in steps for m in MODES}
    for rep in range(warmup + reps):
        order = MODES if rep % 2 == 0 else MODES[::-1]
        for kind, (pair, step) in steps.items():
            for m in order:
                with mode(m):
                    t = pair.timed(step)
                if rep >= warmup:
                    times[kind, m].append(t)
    return {f"{kind}_{m}_ms": round(1000 * median(t), 2) for (kind, m), t in times.items()}


def snapshot(pair: Pair) -> dict:
    return copy.deepcopy({"space": pair.space.state_dict(), "child": pair.child.state_dict(),
                          "search": pair.search.state_dict(), "generator": pair.search.generator.get_state(),
                          "opt": pair.opt.state_dict(), "arch_opt": pair.arch_opt.state_dict(),
                          "child_opt": pair.child_opt.state_dict()})


def restore(pair: Pair, saved: dict) -> None:
    saved = copy.deepcopy(saved)
    pair.space.load_state_dict(saved["space"])
    pair.child.load_state_dict(saved["child"])
    pair.search.load_state_dict(saved["search"])
    pair.search.generator.set_state(saved["generator"])
    for name in ("opt", "arch_opt", "child_opt"):
        getattr(pair, name).load_state_dict(saved[name])


def repeats(search: Pair, child: Pair, steps: int, m: str) -> bool:
    """Do ``steps`` search steps and ``steps`` child steps, from the same state, twice give the
    same weights and alpha bit for bit?"""
    saved = [snapshot(search), snapshot(child)]
    prints = []
    for _ in range(2):
        restore(search, saved[0])
        restore(child, saved[1])
        with mode(m):
            for _ in range(steps):
                search.search_step()
                child.child_step()
        tensors = [*search.space.parameters(), *search.search.alphas, *child.child.parameters()]
        prints.append(torch.cat([t.detach().flatten().double() for t in tensors]).cpu())
    restore(search, saved[0])
    restore(child, saved[1])
    return torch.equal(prints[0], prints[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto")
    p.add_argument("--batch", type=int, default=0, help="default 8 on CPU, 128 on CUDA")
    p.add_argument("--reps", type=int, default=0, help="timed steps of each kind and mode (default 5 CPU, 20 CUDA)")
    p.add_argument("--steps", type=int, default=5, help="steps of each kind in a repeatability run")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    batch, reps = args.batch or (128 if cuda else 8), args.reps or (20 if cuda else 5)
    amp = autocast_dtype(args.amp, torch.device(args.device))
    search_amp = stage_autocast(args.amp, amp, "search")
    search = Pair(224, batch, 1.0, 1000, 3, device=args.device, amp=search_amp)
    child = Pair(224, batch, 1.0, 1000, 3, device=args.device, amp=amp)
    result = {"device": args.device, "batch": batch, "reps": reps, **step_times(search, child, reps),
              **{f"repeats_{m}": repeats(search, child, args.steps, m) for m in MODES}}
    print(json.dumps(result, allow_nan=False), flush=True)
    r = result
    lines = [f"## Deterministic algorithms, {args.device} (`benchmarks/determinism.py`)", "",
             f"Machine: {machine()}.",
             f"Command: `python benchmarks/determinism.py --device {args.device} --amp {args.amp} --batch {batch} "
             f"--reps {reps} --steps {args.steps}`: 224 px, ShuffleNet space at width 1.0, synthetic data, "
             f"channels-last; median of {reps} steps of each kind and mode, interleaved in one process. "
             "*Deterministic*: what `deterministic: true` sets (cuDNN deterministic, "
             "`torch.use_deterministic_algorithms(True)`; cuBLAS's workspace fixed in both modes, as it must be "
             f"before cuBLAS starts). *Repeats*: {args.steps} search and {args.steps} child steps from one saved "
             "state, twice, give bitwise the same weights and α.", "",
             "| step | autocast | default (ms) | deterministic (ms) | deterministic / default |", "|---|---|---|---|---|"]
    for kind, dtype in (("search", search_amp), ("child", amp)):
        lines.append(f"| {'DSNAS search step' if kind == 'search' else 'child training step'} | {amp_name(dtype)} | "
                     f"{r[f'{kind}_default_ms']} | {r[f'{kind}_deterministic_ms']} | "
                     f"{r[f'{kind}_deterministic_ms'] / r[f'{kind}_default_ms']:.3f} |")
    lines += ["", f"Repeats bitwise: default {'yes' if r['repeats_default'] else 'no'}, deterministic "
              f"{'yes' if r['repeats_deterministic'] else 'no'}."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(f"determinism_{'cuda' if cuda else 'cpu'}", text)


if __name__ == "__main__":
    main()
