"""A search under a latency budget, end to end on this CPU: measure a table for the demo's space,
run the demo preset once under its MFLOPs budget and once under a latency budget that binds
(below the mean predicted latency of the space), and time both children end to end. Writes the
`latency_search` section of BENCHMARKS.md.

    python benchmarks/latency_search.py [--seed 0] [--fraction 0.3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _report import machine, write_section
from _runs import overrides, run_dsnas

from dsnas import load_arch, spaces
from dsnas.export import load_child
from dsnas.latency import load_latency, measure_latency, measure_networks, save_latency

DEMO_SPACE = {"num_classes": 10, "in_channels": 1, "input_size": 28, "width": 0.25}  # the demo preset's space


def search(out: Path, sets: list[str]) -> dict:
    return run_dsnas(["search", "--quiet", *overrides(sets)], out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fraction", type=float, default=0.3,
                   help="budget_ms = cheapest + fraction x (mean - cheapest) of the table's predictions")
    p.add_argument("--penalty", type=float, default=1.0)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        space = spaces.build("shufflenet", DEMO_SPACE, init="torch")
        table = measure_latency(space, "cpu", "torch", 1, 1, "fp32", 10, 100)
        save_latency(table, tmp / "lut.yaml")
        rows, base = table.entries([c.names for c in space.choices], space.labels)
        low, mean = base + sum(min(r) for r in rows), base + sum(sum(r) / len(r) for r in rows)
        budget = round(low + args.fraction * (mean - low), 3)
        runs = {"MFLOPs budget (demo preset)": search(tmp / "flops", [f"seed={args.seed}"]),
                f"latency budget {budget} ms": search(tmp / "latency", [
                    f"seed={args.seed}", "cost=latency", f"latency_table={tmp / 'lut.yaml'}", f"budget_ms={budget}",
                    f"penalty={args.penalty}"])}
        lut = load_latency(tmp / "lut.yaml")
        folders = [tmp / "flops", tmp / "latency"]
        archs = [load_arch(f / "arch.yaml") for f in folders]
        children = [load_child(a, f / "child.safetensors") for a, f in zip(archs, folders)]
        measured = measure_networks(children, lut.measured, 10, 200)
        rows_out = []
        for (name, m), arch, timing in zip(runs.items(), archs, measured):
            predicted = space.costs.with_latency(lut).total(arch.choices, "latency_ms")
            rows_out.append(f"| {name} | {m['top1']:.2f} | {m['mflops']:.3f} | {predicted:.3f} | {timing['ms']:.3f} | "
                            f"{m['wall_s']:.0f} |")
    text = "\n".join([
        "## A search under a latency budget (`benchmarks/latency_search.py`)", "",
        f"Machine: {machine()}; children and table timed with 1 thread, batch 1, torch.",
        f"Command: `python benchmarks/latency_search.py --seed {args.seed} --fraction {args.fraction} "
        f"--penalty {args.penalty}`", "",
        f"The demo preset (seed {args.seed}) searched twice on the embedded set: under its 2.5 MFLOPs budget, and with "
        f"`cost=latency` under a budget of {budget} ms, which the table puts below the space's mean "
        f"({mean:.3f} ms; cheapest {low:.3f} ms), with penalty {args.penalty} per ms. The table was measured on this "
        "CPU just before; *measured* is each child timed end to end (median of 200 calls, the two children in "
        "interleaved rounds as the table times its entries).", "",
        "| search | top-1 (%) | MFLOPs | predicted latency (ms) | measured latency (ms) | wall (s) |",
        "|---|---|---|---|---|---|", *rows_out])
    print(text)
    if not args.no_write:
        write_section("latency_search", text)


if __name__ == "__main__":
    main()
