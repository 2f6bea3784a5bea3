"""The default demo (`dsnas search` on the embedded Fashion-MNIST subset), repeated over seeds:
wall time, child top-1/top-5, MFLOPs, and how the search stage went (top-1 of the argmax child
with the supernet's weights at the end of the search stage, blocks fixed by early fix, mean
entropy of alpha over the open blocks). With ``--random-pick`` every seed also runs the same
preset with one architecture drawn uniformly within the budget instead of the DSNAS search
(`--method random --set candidates=1`: same epochs, same finetune), the pick DSNAS has to beat.
Writes the `demo` section of BENCHMARKS.md.

    python benchmarks/demo.py [--seeds 0 1 2] [--random-pick] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _report import machine, write_section
from _runs import overrides, run_dsnas


def run(args, seed: int, extra: list[str]) -> dict:
    """One `dsnas search` of the preset with ``seed``; its metrics.json (a finished run kept under
    ``--keep`` is read, not rerun)."""
    with tempfile.TemporaryDirectory() as tmp:
        name = f"seed{seed}" + ("-" + extra[1] if extra else "")
        out = Path(args.keep) / name if args.keep else Path(tmp) / "run"
        return run_dsnas(["search", "--quiet", *overrides([f"seed={seed}"]), *extra, *overrides(args.set)], out)


def search_stage(metrics: dict) -> dict:
    """Adds the last search epoch's top-1, fixed blocks and entropy to ``metrics``."""
    last = [h for h in metrics["history"] if h["stage"] == "search"][-1]
    return {**metrics, "search_top1": last["top1"], "search_fixed": last["fixed"], "search_entropy": last["entropy"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    p.add_argument("--keep", help="keep the run directories under this folder (one per seed); finished ones are reused")
    p.add_argument("--random-pick", action="store_true", help="also run one uniformly drawn architecture per seed")
    p.add_argument("--section", default="demo", help="BENCHMARKS.md section (another name for the preset on other data)")
    args = p.parse_args()
    rows, picks = [], []
    for seed in args.seeds:
        rows.append(search_stage(run(args, seed, [])))
        m = rows[-1]
        print(f"seed {seed}: top1 {m['top1']:.2f}%  search-stage top1 {m['search_top1']:.2f}%  fixed "
              f"{m['search_fixed']}  H {m['search_entropy']:.3f}  {m['mflops']:.2f} MFLOPs  {m['wall_s']:.0f} s", flush=True)
        if args.random_pick:
            picks.append(run(args, seed, ["--method", "random", "--set", "candidates=1"]))
            print(f"seed {seed} random pick: top1 {picks[-1]['top1']:.2f}%  {picks[-1]['mflops']:.2f} MFLOPs", flush=True)

    def stat(key, table=rows):
        vals = [r[key] for r in table]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.2f} ± {sd:.2f}"

    pick_head = " random pick top-1 (%) | random pick MFLOPs |" if picks else ""
    title = "Default demo (`dsnas search`)" if args.section == "demo" else \
        f"The demo preset on {rows[0]['data']} (`benchmarks/demo.py`)"
    lines = [f"## {title}", "",
             f"Machine: {machine()}.",
             f"Command: `python benchmarks/demo.py --seeds {' '.join(map(str, args.seeds))}"
             + (" --random-pick" if picks else "") + "".join(f" --set {s}" for s in args.set)
             + ("" if args.section == "demo" else f" --section {args.section}")
             + "` (each seed runs `dsnas search --set seed=N`).", "",
             f"| seed | top-1 (%) | top-5 (%) | search-stage top-1 (%) | fixed at switch | H(α) at switch | MFLOPs | "
             f"params (M) | wall (s) |{pick_head}",
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if picks else "")]
    for i, (s, r) in enumerate(zip(args.seeds, rows)):
        pick = f" {picks[i]['top1']:.2f} | {picks[i]['mflops']:.2f} |" if picks else ""
        lines.append(f"| {s} | {r['top1']:.2f} | {r['top5']:.2f} | {r['search_top1']:.2f} | {r['search_fixed']}/20 | "
                     f"{r['search_entropy']:.3f} | {r['mflops']:.2f} | {r['params_m']:.3f} | {r['wall_s']:.0f} |{pick}")
    pick_mean = f" {stat('top1', picks)} | {stat('mflops', picks)} |" if picks else ""
    lines += [f"| mean ± sd | {stat('top1')} | {stat('top5')} | {stat('search_top1')} | {stat('search_fixed')} | "
              f"{stat('search_entropy')} | {stat('mflops')} | {stat('params_m')} | {stat('wall_s')} |{pick_mean}",
              "", "*Search-stage top-1*: the argmax child with the supernet's weights (BN re-estimated) at the end of "
              "the last search epoch; *fixed at switch* and *H(α) at switch*: blocks fixed by early fix, and the mean "
              "entropy (nats, at most ln 4 = 1.386) of the open blocks, when the child is fixed."
              + (" *Random pick*: the same preset with the architecture drawn uniformly within the budget "
                 "(`--method random --set candidates=1`), finetuned for the same epochs." if picks else ""),
              "", f"Targets: wall ≤ 180 s, final top-1 ≥ 88 %, search-stage top-1 ≥ 70 %, at least half of the blocks "
              f"fixed or H(α) ≤ 0.9 at the switch, on the embedded test split ({rows[0]['test_images']} images)."
              if args.section == "demo" else f"Test split: {rows[0]['test_images']} images; "
              f"{rows[0]['train_images']} training images."]
    print("\n".join(lines))
    if not args.no_write:
        write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
