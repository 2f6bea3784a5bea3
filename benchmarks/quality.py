"""Search quality on the full Fashion-MNIST, at equal total epochs and the same MFLOPs budget:

- dsnas:   `dsnas search` (the DSNAS child, no retraining);
- scratch: `dsnas train` of the same DSNAS architecture from freshly initialised weights;
- random:  `dsnas search --method random` (uniform supernet, random candidates, finetune);
- spos:    `dsnas search --method spos` (uniform supernet, evolution, finetune);

over several seeds, plus the Kendall tau between the supernet-inherited accuracy and the
stand-alone accuracy of architectures drawn within the budget. Writes the `quality` section of
BENCHMARKS.md and benchmarks/figures/quality.png.

The data comes from the Debian package (`apt-get install dataset-fashion-mnist`, which puts the
IDX files in /usr/share/datasets/fashion-mnist); pass another folder with --data.

    python benchmarks/quality.py [--seeds 0 1 2] [--epochs 3] [--search-epochs 1] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _report import ROOT, machine, write_section

DATA = "/usr/share/datasets/fashion-mnist"
METHODS = ("dsnas", "scratch", "random", "spos")
LABELS = {"dsnas": "DSNAS child, no retraining", "scratch": "same architecture, retrained from scratch",
          "random": "random search (uniform supernet)", "spos": "SPOS-style evolution (uniform supernet)"}


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b (ties counted in neither concordant nor discordant pairs)."""
    conc = disc = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    denom = ((conc + disc + ties_a) * (conc + disc + ties_b)) ** 0.5
    return (conc - disc) / denom if denom else float("nan")


def bootstrap_tau(pairs: list[dict], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of Kendall's tau over architectures resampled with replacement."""
    rng = random.Random(seed)
    taus = []
    for _ in range(resamples):
        pick = [rng.choice(pairs) for _ in pairs]
        t = kendall_tau([q["inherited"] for q in pick], [q["alone"] for q in pick])
        if t == t:  # a resample of all-equal values has no tau
            taus.append(t)
    taus.sort()
    return taus[int(0.025 * len(taus))], taus[min(len(taus) - 1, int(0.975 * len(taus)))]


class Runner:
    def __init__(self, args):
        self.args, self.work = args, Path(args.work)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                    "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}

    def common(self, seed: int, epochs: int) -> list[str]:
        a = self.args
        sets = [f"seed={seed}", f"epochs={epochs}", f"search_epochs={min(a.search_epochs, epochs)}",
                f"budget_mflops={a.budget}", f"candidates={a.candidates}", f"population={a.population}",
                f"select_images={a.select_images}"] + a.set
        out = ["--config", a.config, "--data", a.data, "--quiet"]
        for s in sets:
            out += ["--set", s]
        return out

    def run(self, name: str, cli: list[str]) -> dict:
        """One dsnas run in its own process; a finished run in the work folder is reused."""
        out = self.work / name
        if (out / "metrics.json").exists():
            return json.loads((out / "metrics.json").read_text())
        if out.exists():  # an interrupted run: start it again
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        log = out.with_suffix(".log")
        with open(log, "w") as f:
            p = subprocess.run([sys.executable, "-m", "dsnas", *cli, "--out", str(out)], cwd=ROOT, env=self.env,
                               stdout=f, stderr=subprocess.STDOUT)
        if p.returncode:
            raise SystemExit(f"{name} failed (exit {p.returncode}); see {log}")
        m = json.loads((out / "metrics.json").read_text())
        print(f"{name}: top1 {m['top1']:.2f}%  {m['mflops']:.3f} MFLOPs  {m['wall_s']:.0f} s "
              f"({time.time() - t0:.0f} s with start-up)", flush=True)
        return m

    # --- the experiments ------------------------------------------------------------------
    def seed_dsnas_then_scratch(self, seed: int) -> dict:
        d = self.run(f"seed{seed}/dsnas", ["search", "--method", "dsnas", *self.common(seed, self.args.epochs)])
        s = self.run(f"seed{seed}/scratch", ["train", str(self.work / f"seed{seed}/dsnas/arch.yaml"),
                                            *self.common(seed, self.args.epochs)])
        return {"dsnas": d, "scratch": s}

    def seed_baseline(self, seed: int, method: str) -> dict:
        return {method: self.run(f"seed{seed}/{method}", ["search", "--method", method,
                                                         *self.common(seed, self.args.epochs)])}

    def ranking(self) -> dict:
        """A uniform supernet trained for search_epochs ranks `tau_archs` random architectures
        (held-out top-1, inherited weights); each is then trained alone for `tau_epochs`."""
        from dsnas.arch import Architecture, load_arch, save_arch

        a = self.args
        sets = self.common(a.seeds[0], a.search_epochs)
        sets[sets.index(f"candidates={a.candidates}")] = f"candidates={a.tau_archs}"
        sup = self.run("ranking/supernet", ["search", "--method", "random", *sets])
        rows = (self.work / "ranking/supernet/candidates.csv").read_text().splitlines()
        header = rows[0].split(",")
        settings = load_arch(self.work / "ranking/supernet/arch.yaml").settings
        pairs = []
        for line in rows[1:]:
            rec = dict(zip(header, line.split(",")))
            choices = [rec[f"block_{i}"] for i in range(len(header) - 4)]
            path = self.work / f"ranking/arch{rec['order']}.yaml"
            if not path.exists():
                save_arch(Architecture(choices, "shufflenet", settings), path)
            alone = self.run(f"ranking/alone{rec['order']}", ["train", str(path), *self.common(a.seeds[0], a.tau_epochs)])
            pairs.append({"inherited": float(rec["held_out_top1"]), "alone": alone["top1"],
                          "mflops": float(rec["mflops"])})
        return {"supernet": sup, "pairs": pairs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DATA, help=f"Fashion-MNIST IDX folder (default {DATA})")
    p.add_argument("--config", default="demo", help="base preset or YAML (default demo)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3, help="total epochs of every method")
    p.add_argument("--search-epochs", type=int, default=1, help="epochs before the architecture is fixed")
    p.add_argument("--budget", type=float, default=2.1, help="MFLOPs budget")
    p.add_argument("--candidates", type=int, default=40, help="architectures ranked by random and spos")
    p.add_argument("--population", type=int, default=10)
    p.add_argument("--select-images", type=int, default=2000, help="held-out training images (random, spos)")
    p.add_argument("--tau-archs", type=int, default=10)
    p.add_argument("--tau-epochs", type=int, default=1, help="stand-alone training epochs in the ranking study")
    p.add_argument("--set", action="append", default=[], help="extra config override for every run")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side")
    p.add_argument("--threads", type=int, default=1, help="threads per run")
    p.add_argument("--work", default=str(ROOT / "runs" / "quality"), help="run folders (finished runs are reused)")
    p.add_argument("--name", default="quality", help="BENCHMARKS.md section and figure name (default quality)")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args()
    if args.data != "embedded" and not Path(args.data).is_dir():
        raise SystemExit(f"{args.data} not found: install the Debian package dataset-fashion-mnist "
                         "(apt-get install dataset-fashion-mnist) or pass --data FOLDER")
    r = Runner(args)
    with ThreadPoolExecutor(args.jobs) as pool:  # the longest chains first
        tau = pool.submit(r.ranking) if args.tau_archs else None
        chains = [pool.submit(r.seed_dsnas_then_scratch, s) for s in args.seeds]
        chains += [pool.submit(r.seed_baseline, s, m) for m in ("random", "spos") for s in args.seeds]
        per_seed = {s: {} for s in args.seeds}
        for i, f in enumerate(chains):
            per_seed[(args.seeds * 3)[i]].update(f.result())
        ranking = tau.result() if tau else None
    write_report(args, per_seed, ranking)


def _ms(values: list[float], digits: int = 2) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def write_report(args, per_seed: dict, ranking: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = args.seeds
    pairs = ranking["pairs"] if ranking else []
    tau = kendall_tau([q["inherited"] for q in pairs], [q["alone"] for q in pairs]) if pairs else float("nan")
    first = per_seed[seeds[0]]["dsnas"]
    cmd = (f"python benchmarks/quality.py --seeds {' '.join(map(str, seeds))} --epochs {args.epochs} "
           f"--search-epochs {args.search_epochs} --budget {args.budget} --candidates {args.candidates} "
           f"--population {args.population} --select-images {args.select_images} --tau-archs {args.tau_archs} "
           f"--tau-epochs {args.tau_epochs} --jobs {args.jobs} --threads {args.threads}"
           + "".join(f" --set {s}" for s in args.set) + ("" if args.name == "quality" else f" --name {args.name}"))
    lines = [f"## Search quality: {args.epochs} epochs, {args.search_epochs} of search, {len(seeds)} seed(s) "
             "(`benchmarks/quality.py`)", "",
             f"Machine: {machine()}; {args.jobs} runs side by side, {args.threads} thread(s) each "
             "(finished runs in the work folder are reused, not rerun).", f"Command: `{cmd}`", "",
             f"Data: {first['data']} ({first['train_images']} training images for "
             f"DSNAS, {first['test_images']} test images). "
             f"Every method trains for {args.epochs} epochs from the `{args.config}` preset (width "
             f"{_cfg(args, 'width')}), all under a {args.budget} MFLOPs budget. DSNAS searches for "
             f"{args.search_epochs} epoch(s) and finetunes its child for the rest; random and SPOS train the "
             f"supernet with uniform single paths for {args.search_epochs} epoch(s), rank {args.candidates} "
             f"candidates (SPOS: generations of {args.population}) on {args.select_images} training images held "
             "out from weight training, then finetune the winner for the rest. Top-1 is on the test split, which "
             "no method sees before its final evaluation.", "",
             "| method | top-1 (%) | MFLOPs | params (M) | wall (s) |", "|---|---|---|---|---|"]
    for m in METHODS:
        rows = [per_seed[s][m] for s in seeds]
        lines.append(f"| {LABELS[m]} | {_ms([x['top1'] for x in rows])} | {_ms([x['mflops'] for x in rows], 3)} | "
                     f"{_ms([x['params_m'] for x in rows], 3)} | {_ms([x['wall_s'] for x in rows], 0)} |")
    lines += ["", f"Mean ± standard deviation over seeds {', '.join(map(str, seeds))}. Per seed (top-1 %):", "",
              "| seed | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for s in seeds:
        lines.append(f"| {s} | " + " | ".join(f"{per_seed[s][m]['top1']:.2f}" for m in METHODS) + " |")
    wins = {m: sum(per_seed[s]["dsnas"]["top1"] >= per_seed[s][m]["top1"] for s in seeds) for m in METHODS[1:]}
    lines += ["", "DSNAS child at or above: " + ", ".join(f"{m} in {wins[m]} of {len(seeds)} seeds" for m in wins) + "."]
    mean = {m: statistics.mean(per_seed[s][m]["top1"] for s in seeds) for m in METHODS}
    reading = (f"**Reading.** The DSNAS child is {mean['dsnas'] - mean['scratch']:+.2f} points from the same "
               f"architecture trained from scratch, {mean['dsnas'] - mean['random']:+.2f} from random search and "
               f"{mean['dsnas'] - mean['spos']:+.2f} from SPOS (means over seeds).")
    if pairs:
        lines += ["", f"**Ranking.** A uniform supernet trained for {args.search_epochs} epoch(s) (seed {seeds[0]}) ranks "
              f"{len(pairs)} random architectures within the budget by held-out top-1 with inherited "
              f"weights (BN re-estimated); each is then trained alone for {args.tau_epochs} epoch(s) and tested. "
              f"Kendall τ between the two = **{tau:.3f}**.", "",
              "| inherited top-1 (%) | stand-alone top-1 (%) | MFLOPs |", "|---|---|---|"]
        lines += [f"| {q['inherited']:.2f} | {q['alone']:.2f} | {q['mflops']:.3f} |" for q in pairs]
        lo, hi = bootstrap_tau(pairs)
        lines += ["", f"Bootstrap 95% interval of τ (2,000 resamples of the architectures): [{lo:.3f}, {hi:.3f}]."]
        inherited = [q["inherited"] for q in pairs]
        reading += (f" After {args.search_epochs} epoch(s) the uniform supernet gives its candidates "
                    f"{min(inherited):.1f}-{max(inherited):.1f}% held-out top-1 (10% is chance), and its ranking "
                    f"agrees with stand-alone training at τ = {tau:.3f} (goal ≥ 0.5).")
    lines += ["", reading]

    fig_dir = Path(args.work) if args.no_write else ROOT / "benchmarks" / "figures"
    fig_dir.mkdir(exist_ok=True)
    fig, axes = plt.subplots(1, 2 if pairs else 1, figsize=(11 if pairs else 5.5, 4), squeeze=False)
    ax1 = axes[0][0]
    for i, m in enumerate(METHODS):
        vals = [per_seed[s][m]["top1"] for s in seeds]
        ax1.bar(i, statistics.mean(vals), color=f"C{i}", alpha=0.6)
        ax1.scatter([i] * len(vals), vals, color="k", s=12, zorder=3)
    lo = min(per_seed[s][m]["top1"] for s in seeds for m in METHODS)
    ax1.set_ylim(lo - 2, None)
    ax1.set_xticks(range(len(METHODS)), METHODS)
    ax1.set_ylabel("test top-1 (%)")
    ax1.set_title(f"{args.epochs} epochs each, {args.budget} MFLOPs budget ({len(seeds)} seeds)")
    if pairs:
        ax2 = axes[0][1]
        ax2.scatter([q["inherited"] for q in pairs], [q["alone"] for q in pairs])
        ax2.set_xlabel("supernet-inherited held-out top-1 (%)")
        ax2.set_ylabel(f"stand-alone test top-1 (%), {args.tau_epochs} epoch(s)")
        ax2.set_title(f"Kendall tau = {tau:.3f} ({len(pairs)} architectures)")
    fig.tight_layout()
    fig.savefig(fig_dir / f"{args.name}.png", dpi=110)
    lines += ["", f"![{args.name}](benchmarks/figures/{args.name}.png)"]
    text = "\n".join(lines)
    print(text)
    (Path(args.work) / f"{args.name}.json").write_text(json.dumps({"per_seed": per_seed, "ranking": ranking, "tau": tau},
                                                             indent=1, default=str))
    if not args.no_write:
        write_section(args.name, text)


def _cfg(args, key: str):
    sys.path.insert(0, str(ROOT / "src"))
    from dsnas.config import load_config

    return getattr(load_config(args.config, args.set), key)


if __name__ == "__main__":
    main()
