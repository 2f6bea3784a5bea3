"""How well a latency table predicts: for random architectures of the demo's space (plus the
cheapest and the dearest by MFLOPs), the table's sum against the measured end-to-end latency of
the same child, at each batch size and backend. Reports Kendall tau and the median / max relative
error, the same tau for MFLOPs as the predictor, and the error of the table without its per-call
correction (every entry timed alone carries the cost of one call). Writes the `latency_lut`
section of BENCHMARKS.md.

    python benchmarks/latency_lut.py [--archs 30] [--batches 1 32] [--backends torch onnxruntime]
"""

from __future__ import annotations

import argparse
import random
import statistics

import torch
from _report import machine, write_section
from dsnas.agreement import kendall_tau

from dsnas import spaces
from dsnas.latency import measure_latency, measure_networks


def architectures(space: torch.nn.Module, n: int, seed: int) -> list[list[int]]:
    """``n`` uniform draws plus the cheapest and the dearest architecture by MFLOPs."""
    rng = random.Random(seed)
    rows = space.costs.entries["mflops"]
    picks = [[rng.randrange(len(r)) for r in rows] for _ in range(n)]
    return picks + [[min(range(len(r)), key=r.__getitem__) for r in rows],
                    [max(range(len(r)), key=r.__getitem__) for r in rows]]


def study(space: torch.nn.Module, archs, backend: str, batch: int, args) -> dict:
    """Each child predicted with and without the table's calibration and measured end to end
    twice, in two passes over all children, so the measurement's own agreement is known."""
    table = measure_latency(space, args.device, backend, batch, args.threads, "fp32", args.warmup, args.repeats)
    names = [c.names for c in space.choices]
    (rows, base), (raw, raw_base) = table.entries(names, space.labels), table.entries(names, space.labels,
                                                                                      calibrated=False)
    scale = table.measured["scale"]
    out = {"predicted": [], "uncorrected": [], "measured": [], "again": [], "mflops": [], "scale": scale}
    for arch in archs:
        out["predicted"].append(base + sum(r[i] for r, i in zip(rows, arch)))
        out["uncorrected"].append(raw_base + sum(r[i] for r, i in zip(raw, arch)))
        out["mflops"].append(space.costs.total(arch))
    children = [space.child(arch) for arch in archs]
    for key in ("measured", "again"):
        out[key] = [t["ms"] for t in measure_networks(children, table.measured, args.warmup, args.repeats)]
        for predicted, ms in zip(out["predicted"], out[key]):
            print(f"{backend} batch {batch} ({key}): predicted {predicted:.3f} ms, measured {ms:.3f} ms", flush=True)
    return out


def errors(pred: list[float], meas: list[float]) -> tuple[float, float, float]:
    """Median and max |relative error|, and the median signed error (negative: the table predicts too little)."""
    rel = [(p - m) / m for p, m in zip(pred, meas)]
    return 100 * statistics.median(map(abs, rel)), 100 * max(map(abs, rel)), 100 * statistics.median(rel)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", type=int, default=30, help="random architectures (plus cheapest and dearest)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (onnxruntime measures on the CPU only)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--input-size", type=int, default=28)
    p.add_argument("--seed", type=int, default=0, help="the architectures' draw (calibration uses its own)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    space = spaces.build("shufflenet", {"num_classes": 10, "in_channels": 1, "input_size": args.input_size,
                                        "width": args.width}, init="torch").eval()
    archs = architectures(space, args.archs, args.seed)
    cuda = args.device.startswith("cuda")
    lines = [f"## Latency table against measured latency, {'CUDA' if cuda else 'CPU'} (`benchmarks/latency_lut.py`)", "",
             f"Machine: {machine()}; timed with {args.threads} thread(s), median of {args.repeats} calls after "
             f"{args.warmup} untimed.",
             f"Command: `python benchmarks/latency_lut.py --device {args.device} --archs {args.archs} --batches "
             f"{' '.join(map(str, args.batches))} --backends {' '.join(args.backends)} --threads {args.threads} "
             f"--repeats {args.repeats}`", "",
             f"Space: the demo's (width {args.width:g}, {args.input_size} px, 1 channel, 10 classes). "
             f"{args.archs} uniformly drawn architectures plus the cheapest and the dearest by MFLOPs; each is "
             "predicted by the table's sum and measured end to end as one network, twice (two passes over all "
             "children, each pass timing all children in interleaved rounds), on the same backend, batch and threads "
             "as the table. *Scale*: the table's calibration, the median ratio of measured to summed latency over "
             "24 other seeded random children timed end to end when the table is made (parts timed alone run with "
             "a hot cache); *uncorrected*: the same sums without it. The table times all its entries (and its "
             "calibration children) in 5 interleaved rounds, so a slow spell of the machine falls on all of them "
             "alike. Every entry also has the cost of one timed call (measured on an identity, a few µs) taken off "
             "and counted once. *τ repeat*: the two measurement passes against each other, the most any predictor "
             "can agree with one pass.", "",
             "| backend | batch | measured (ms) | scale | τ table | τ MFLOPs | τ repeat | median / max error "
             "(median signed), table | the same, uncorrected |", "|---|---|---|---|---|---|---|---|---|"]
    for backend in args.backends:
        for batch in args.batches:
            r = study(space, archs, backend, batch, args)
            tau = {k: kendall_tau(r[k], r["measured"]) for k in ("predicted", "mflops", "again")}
            err = {k: "{:.1f}% / {:.1f}% ({:+.1f}%)".format(*errors(r[k], r["measured"]))
                   for k in ("predicted", "uncorrected")}
            lines.append(f"| {backend} | {batch} | {min(r['measured']):.3f}-{max(r['measured']):.3f} | {r['scale']:.3f} | "
                         f"{tau['predicted']:.3f} | {tau['mflops']:.3f} | {tau['again']:.3f} | {err['predicted']} | "
                         f"{err['uncorrected']} |")
    lines += ["", "Goals (batch 1, CPU): τ ≥ 0.9 and median error ≤ 5%."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("latency_lut_cuda" if cuda else "latency_lut", text)


if __name__ == "__main__":
    main()
