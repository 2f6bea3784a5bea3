"""The default demo (`dsnas search` on the embedded Fashion-MNIST subset), repeated over seeds:
wall time, child top-1/top-5, MFLOPs, and how the search stage went (top-1 of the argmax child
with the supernet's weights at the end of the search stage, blocks fixed by early fix, mean
entropy of alpha over the open blocks). With ``--random-pick`` every seed also runs the same
preset with one architecture drawn uniformly within the budget instead of the DSNAS search
(`--method random --set candidates=1`: same epochs, same finetune), the pick DSNAS has to beat.
With ``--scratch-pick`` every seed also trains one architecture drawn uniformly within the budget
from scratch (`dsnas train`, the same total epochs): the random-search baseline of Li & Talwalkar
at k = 1, which tells an architecture DSNAS found from a space where every architecture trains
alike. Writes the `demo` section of BENCHMARKS.md.

    python benchmarks/demo.py [--seeds 0 1 2] [--random-pick] [--scratch-pick] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

from _report import machine, write_section
from _runs import overrides, run_dsnas, uniform_architecture

from dsnas.arch import load_arch


def run(args, seed: int, extra: list[str], name: str = "") -> dict:
    """One `dsnas search` of the preset with ``seed`` (``extra``: more arguments), in the folder
    seedN[-name] of ``args.work``; its metrics.json (a finished run there is read, not rerun)."""
    out = Path(args.work) / (f"seed{seed}" + (f"-{name}" if name else ""))
    m = run_dsnas(["search", "--quiet", *overrides([f"seed={seed}"]), *extra, *overrides(args.set)], out)
    arch = load_arch(out / "arch.yaml")
    decisions = arch.decisions
    return {**m, "space": arch.space, "blocks": len(decisions), "most_candidates": max(len(c) for _, c in decisions)}


def scratch_pick(args, seed: int, budget: float) -> dict:
    """One architecture drawn uniformly within ``budget``, trained from scratch for the preset's
    epochs (the space's settings are those of the seed's DSNAS run)."""
    work = Path(args.work)
    arch = uniform_architecture(work / f"seed{seed}" / "arch.yaml", budget, seed, work / f"uniform{seed}.yaml")
    return run_dsnas(["train", str(arch), "--quiet", *overrides([f"seed={seed}"]), *overrides(args.set)],
                     work / f"seed{seed}-scratch")


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
    p.add_argument("--scratch-pick", action="store_true",
                   help="also train one uniformly drawn architecture per seed from scratch")
    p.add_argument("--section", default="demo", help="BENCHMARKS.md section (another name for the preset on other data)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        args.work = args.keep or tmp
        report(args, *measure(args))


def measure(args) -> tuple[list, list, list]:
    rows, picks, scratch = [], [], []
    for seed in args.seeds:
        rows.append(search_stage(run(args, seed, [])))
        m = rows[-1]
        print(f"seed {seed}: top1 {m['top1']:.2f}%  search-stage top1 {m['search_top1']:.2f}%  fixed "
              f"{m['search_fixed']}  H {m['search_entropy']:.3f}  {m['mflops']:.2f} MFLOPs  {m['wall_s']:.0f} s", flush=True)
        if args.random_pick:
            picks.append(run(args, seed, ["--method", "random", "--set", "candidates=1"], "random"))
            print(f"seed {seed} random pick: top1 {picks[-1]['top1']:.2f}%  {picks[-1]['mflops']:.2f} MFLOPs", flush=True)
        if args.scratch_pick:
            scratch.append(scratch_pick(args, seed, _budget(m)))
            print(f"seed {seed} scratch pick: top1 {scratch[-1]['top1']:.2f}%  {scratch[-1]['mflops']:.2f} MFLOPs "
                  f"{scratch[-1]['wall_s']:.0f} s", flush=True)
    return rows, picks, scratch


def _budget(metrics: dict) -> float:
    """The MFLOPs budget the run searched under (0: none)."""
    return float(metrics.get("budget_mflops") or 0.0)


def report(args, rows: list, picks: list, scratch: list) -> None:
    def stat(key, table=rows):
        vals = [r[key] for r in table]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.2f} ± {sd:.2f}"

    pick_head = (" random pick top-1 (%) | random pick MFLOPs |" if picks else "") + \
        (" scratch pick top-1 (%) | scratch pick MFLOPs | scratch pick wall (s) |" if scratch else "")
    beside = (", beside a uniform pick finetuned" if picks else "") + \
        (", beside a uniform architecture from scratch" if scratch else "")
    title = "Default demo (`dsnas search`)" if args.section == "demo" else \
        f"The demo preset on {rows[0]['data']}, {rows[0]['space']} space{beside} (`benchmarks/demo.py`)"
    lines = [f"## {title}", "",
             f"Machine: {machine()}.",
             f"Command: `python benchmarks/demo.py --seeds {' '.join(map(str, args.seeds))}"
             + (" --random-pick" if picks else "") + (" --scratch-pick" if scratch else "") + "".join(f" --set {s}" for s in args.set)
             + ("" if args.section == "demo" else f" --section {args.section}")
             + "` (each seed runs `dsnas search --set seed=N`).", "",
             f"| seed | top-1 (%) | top-5 (%) | search-stage top-1 (%) | fixed at switch | H(α) at switch | MFLOPs | "
             f"params (M) | wall (s) |{pick_head}",
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if picks else "") + ("---|---|---|" if scratch else "")]
    for i, (s, r) in enumerate(zip(args.seeds, rows)):
        pick = (f" {picks[i]['top1']:.2f} | {picks[i]['mflops']:.2f} |" if picks else "") + \
            (f" {scratch[i]['top1']:.2f} | {scratch[i]['mflops']:.2f} | {scratch[i]['wall_s']:.0f} |" if scratch else "")
        lines.append(f"| {s} | {r['top1']:.2f} | {r['top5']:.2f} | {r['search_top1']:.2f} | {r['search_fixed']}/{r['blocks']} | "
                     f"{r['search_entropy']:.3f} | {r['mflops']:.2f} | {r['params_m']:.3f} | {r['wall_s']:.0f} |{pick}")
    pick_mean = (f" {stat('top1', picks)} | {stat('mflops', picks)} |" if picks else "") + \
        (f" {stat('top1', scratch)} | {stat('mflops', scratch)} | {stat('wall_s', scratch)} |" if scratch else "")
    lines += [f"| mean ± sd | {stat('top1')} | {stat('top5')} | {stat('search_top1')} | {stat('search_fixed')} | "
              f"{stat('search_entropy')} | {stat('mflops')} | {stat('params_m')} | {stat('wall_s')} |{pick_mean}",
              "", "*Search-stage top-1*: the argmax child with the supernet's weights (BN re-estimated) at the end of "
              "the last search epoch; *fixed at switch* and *H(α) at switch*: blocks fixed by early fix, and the mean "
              f"entropy (nats, at most ln {rows[0]['most_candidates']} = {math.log(rows[0]['most_candidates']):.3f}) of the "
              "open blocks, when the child is fixed."
              + (" *Random pick*: the same preset with the architecture drawn uniformly within the budget "
                 "(`--method random --set candidates=1`), finetuned for the same epochs." if picks else "")
              + (" *Scratch pick*: an architecture drawn uniformly within the same budget, trained from scratch "
                 "(`dsnas train`) for the same total epochs: random search at k = 1." if scratch else ""),
              "", f"Targets: wall ≤ 180 s, final top-1 ≥ 88 %, search-stage top-1 ≥ 70 %, at least half of the blocks "
              f"fixed or H(α) ≤ 0.9 at the switch, on the embedded test split ({rows[0]['test_images']} images)."
              if args.section == "demo" else f"Test split: {rows[0]['test_images']} images; "
              f"{rows[0]['train_images']} training images."]
    if scratch:
        gaps = [r["top1"] - q["top1"] for r, q in zip(rows, scratch)]
        lines += ["", f"DSNAS child minus scratch pick: {statistics.mean(gaps):+.2f} points on average "
                  f"({', '.join(f'{g:+.2f}' for g in gaps)} per seed); wall of a DSNAS run over a scratch run: "
                  f"{statistics.mean(r['wall_s'] for r in rows) / statistics.mean(q['wall_s'] for q in scratch):.2f}."]
    print("\n".join(lines))
    if not args.no_write:
        write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
