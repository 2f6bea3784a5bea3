"""The default demo (`dsnas search` on the embedded Fashion-MNIST subset), repeated over seeds:
wall time, child top-1/top-5, MFLOPs. Writes the `demo` section of BENCHMARKS.md.

    python benchmarks/demo.py [--seeds 0 1 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import json
from pathlib import Path

from _report import machine, write_section

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    p.add_argument("--keep", help="keep the run directories under this folder (one per seed)")
    args = p.parse_args()
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(args.keep) / f"seed{seed}" if args.keep else Path(tmp) / "run"
            cmd = [sys.executable, "-m", "dsnas", "search", "--quiet", "--out", str(out), "--set", f"seed={seed}"]
            for s in args.set:
                cmd += ["--set", s]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
            subprocess.run(cmd, check=True, cwd=ROOT, env=env)
            m = json.loads((out / "metrics.json").read_text())
            rows.append(m)
            print(f"seed {seed}: top1 {m['top1']:.2f}%  top5 {m['top5']:.2f}%  {m['mflops']:.2f} MFLOPs  "
                  f"{m['params_m']:.3f} M params  {m['wall_s']:.0f} s", flush=True)
    def stat(key):
        vals = [r[key] for r in rows]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.2f} ± {sd:.2f}"
    lines = ["## Default demo (`dsnas search`)", "",
             f"Machine: {machine()}.",
             f"Command: `python benchmarks/demo.py --seeds {' '.join(map(str, args.seeds))}"
             + "".join(f" --set {s}" for s in args.set) + "` (each seed runs `dsnas search --set seed=N`).", "",
             "| seed | top-1 (%) | top-5 (%) | MFLOPs | params (M) | wall (s) |", "|---|---|---|---|---|---|"]
    lines += [f"| {s} | {r['top1']:.2f} | {r['top5']:.2f} | {r['mflops']:.2f} | {r['params_m']:.3f} | {r['wall_s']:.0f} |"
              for s, r in zip(args.seeds, rows)]
    lines += [f"| mean ± sd | {stat('top1')} | {stat('top5')} | {stat('mflops')} | {stat('params_m')} | {stat('wall_s')} |",
              "", f"Targets: wall ≤ 300 s (aim 180 s), top-1 ≥ 85 % (aim 88 %) on the embedded test split "
              f"({rows[0]['test_images']} images)."]
    print("\n".join(lines))
    if not args.no_write:
        write_section("demo", "\n".join(lines))


if __name__ == "__main__":
    main()
