"""Search quality on the full Fashion-MNIST, at equal total epochs and the same MFLOPs budget:

- dsnas:   `dsnas search` (the DSNAS child, no retraining);
- scratch: `dsnas train` of the same DSNAS architecture from freshly initialised weights;
- random:  `dsnas search --method random` (uniform supernet, random candidates, finetune);
- spos:    `dsnas search --method spos` (uniform supernet, evolution, finetune);
- uniform: `dsnas train` of an architecture drawn uniformly within the budget, from scratch (the
  random-search baseline of Li & Talwalkar at k = 1: one DSNAS run costs about one training);

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
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _report import ROOT, machine, write_section
from _runs import overrides, run_dsnas, uniform_architecture

from dsnas.agreement import kendall_tau

DATA = "/usr/share/datasets/fashion-mnist"
GROUND_TRUTH = ROOT / "benchmarks" / "quality_space_long_ground_truth.json"
METHODS = ("dsnas", "scratch", "random", "spos", "uniform")
LABELS = {"dsnas": "DSNAS child, no retraining", "scratch": "same architecture, retrained from scratch",
          "random": "random search (uniform supernet)", "spos": "SPOS-style evolution (uniform supernet)",
          "uniform": "a uniform architecture within the budget, from scratch"}


def bootstrap_tau(pairs: list[dict], a: str = "inherited", b: str = "alone", resamples: int = 2000,
                  seed: int = 0) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of Kendall's tau between keys ``a`` and ``b`` over architectures
    resampled with replacement."""
    rng = random.Random(seed)
    taus = []
    for _ in range(resamples):
        pick = [rng.choice(pairs) for _ in pairs]
        t = kendall_tau([q[a] for q in pick], [q[b] for q in pick])
        if t == t:  # a resample of all-equal values has no tau
            taus.append(t)
    taus.sort()
    if not taus:
        return float("nan"), float("nan")
    return taus[int(0.025 * len(taus))], taus[min(len(taus) - 1, int(0.975 * len(taus)))]


def percentile(value: float, population: list[float]) -> float:
    """Share (%) of the population below ``value``, ties counted half."""
    below = sum(p < value for p in population) + 0.5 * sum(p == value for p in population)
    return 100.0 * below / len(population)


class Runner:
    def __init__(self, args):
        self.args, self.work = args, Path(args.work)

    def common(self, seed: int, epochs: int) -> list[str]:
        a = self.args
        sets = [f"seed={seed}", f"epochs={epochs}", f"search_epochs={min(a.search_epochs, epochs)}",
                f"budget_mflops={a.budget}", f"candidates={a.candidates}", f"population={a.population}",
                f"select_images={a.select_images}"] + a.set
        return ["--config", a.config, "--data", a.data, "--quiet", *overrides(sets)]

    def run(self, name: str, cli: list[str]) -> dict:
        """One dsnas run in its own process; a finished run in the work folder is reused."""
        out, t0 = self.work / name, time.time()
        reused = (out / "metrics.json").exists()
        m = run_dsnas(cli, out, self.args.threads, out.with_suffix(".log"))
        if not reused:
            print(f"{name}: top1 {m['top1']:.2f}%  {m['mflops']:.3f} MFLOPs  {m['wall_s']:.0f} s "
                  f"({time.time() - t0:.0f} s with start-up)", flush=True)
        return m

    # --- the experiments ------------------------------------------------------------------
    def seed_dsnas_then_scratch(self, seed: int) -> dict:
        """The seed's DSNAS run, then (where asked for) its architecture and a uniform one from scratch."""
        a = self.args
        out = {"dsnas": self.run(f"seed{seed}/dsnas", ["search", "--method", "dsnas", *self.common(seed, a.epochs)])}
        if "scratch" in a.methods:
            out["scratch"] = self.run(f"seed{seed}/scratch", ["train", str(self.work / f"seed{seed}/dsnas/arch.yaml"),
                                                              *self.common(seed, a.epochs)])
        if "uniform" in a.methods:
            arch = uniform_architecture(self.work / f"seed{seed}/dsnas/arch.yaml", a.budget, seed,
                                        self.work / f"seed{seed}/uniform.yaml")
            out["uniform"] = self.run(f"seed{seed}/uniform", ["train", str(arch), *self.common(seed, a.epochs)])
        return out

    def seed_baseline(self, seed: int, method: str) -> dict:
        return {method: self.run(f"seed{seed}/{method}", ["search", "--method", method,
                                                         *self.common(seed, self.args.epochs)])}

    def ranking(self) -> dict:
        """A uniform supernet trained for search_epochs ranks `tau_archs` random architectures
        (held-out top-1, inherited weights); each is then trained alone for `tau_epochs`, once per
        seed of `tau_repeats`, so that the ground truth's own run-to-run agreement is known."""
        from dsnas.arch import Architecture, load_arch, save_arch

        a = self.args
        sets = self.common(a.seeds[0], a.search_epochs)
        sets[sets.index(f"candidates={a.candidates}")] = f"candidates={max(a.tau_pool, a.tau_archs)}"
        sets[sets.index(f"select_images={a.select_images}")] = f"select_images={a.tau_held_out}"
        sup = self.run("ranking/supernet", ["search", "--method", "random", *sets])
        rows = (self.work / "ranking/supernet/candidates.csv").read_text().splitlines()
        header = rows[0].split(",")
        blocks = sum(h.startswith("block_") for h in header)
        settings = load_arch(self.work / "ranking/supernet/arch.yaml").settings
        records, runs = [dict(zip(header, line.split(","))) for line in rows[1:]], []
        if len(records) > a.tau_archs:  # a pool: keep architectures evenly spaced in MFLOPs rank
            records.sort(key=lambda rec: float(rec["mflops"]))
            records = [records[round(i * (len(records) - 1) / (a.tau_archs - 1))] for i in range(a.tau_archs)]
        for rec in records:
            path = self.work / f"ranking/arch{rec['order']}.yaml"
            if not path.exists():
                save_arch(Architecture([rec[f"block_{i}"] for i in range(blocks)], "shufflenet", settings), path)
            runs += [(f"ranking/alone{rec['order']}" + (f"_r{r}" if r else ""),
                      ["train", str(path), *self.common(a.seeds[0] + r, a.tau_epochs)]) for r in range(a.tau_repeats)]
        alone_jobs = a.jobs if a.parts == ["ranking"] else 1  # beside the methods, the ranking takes one slot
        with ThreadPoolExecutor(alone_jobs) as pool:
            top1 = iter(list(pool.map(lambda job: self.run(*job)["top1"], runs)))
        pairs = []
        for rec in records:
            repeats = [next(top1) for _ in range(a.tau_repeats)]
            pairs.append({"inherited": float(rec["held_out_top1"]), "inherited_loss": float(rec["held_out_loss"]),
                          "alone": statistics.mean(repeats),
                          "repeats": repeats, "mflops": float(rec["mflops"]),
                          "choices": [rec[f"block_{i}"] for i in range(blocks)]})
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
    p.add_argument("--tau-repeats", type=int, default=2, help="stand-alone runs per architecture (seeds 0, 1, ...)")
    p.add_argument("--tau-held-out", type=int, default=10000, help="held-out training images that rank them")
    p.add_argument("--tau-pool", type=int, default=0, help="rank this many uniform draws with the supernet and keep "
                   "--tau-archs of them evenly spaced in MFLOPs (0: the first --tau-archs draws)")
    p.add_argument("--parts", nargs="+", choices=["methods", "ranking"], default=["methods", "ranking"])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="the rows to measure (dsnas always runs: the others start from its run)")
    p.add_argument("--set", action="append", default=[], help="extra config override for every run")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side")
    p.add_argument("--threads", type=int, default=1, help="threads per run")
    p.add_argument("--work", default=str(ROOT / "runs" / "quality"), help="run folders (finished runs are reused)")
    p.add_argument("--name", default="quality", help="BENCHMARKS.md section and figure name (default quality)")
    p.add_argument("--ground-truth", type=Path, default=GROUND_TRUTH,
                   help="stand-alone results a ranking study wrote (benchmarks/NAME_ground_truth.json): the "
                        "methods' figure places their architectures among them (default %(default)s)")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args()
    args.methods = [m for m in METHODS if m in args.methods or m == "dsnas"]
    if args.data != "embedded" and not Path(args.data).is_dir():
        raise SystemExit(f"{args.data} not found: install the Debian package dataset-fashion-mnist "
                         "(apt-get install dataset-fashion-mnist) or pass --data FOLDER")
    r = Runner(args)
    with ThreadPoolExecutor(args.jobs) as pool:  # the longest chains first
        tau = pool.submit(r.ranking) if "ranking" in args.parts and args.tau_archs else None
        chains = []
        if "methods" in args.parts:
            chains = [pool.submit(r.seed_dsnas_then_scratch, s) for s in args.seeds]
            baselines = [m for m in ("random", "spos") if m in args.methods]
            chains += [pool.submit(r.seed_baseline, s, m) for m in baselines for s in args.seeds]
        per_seed = {s: {} for s in args.seeds}
        for i, f in enumerate(chains):
            per_seed[(args.seeds * 3)[i]].update(f.result())
        ranking = tau.result() if tau else None
    if chains:
        write_report(args, per_seed)
    if ranking:
        write_ranking(args, ranking)


def _ms(values: list[float], digits: int = 2) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _command(args, parts: str) -> str:
    methods = "" if len(args.methods) == len(METHODS) else f" --methods {' '.join(args.methods)}"
    return (f"python benchmarks/quality.py --parts {parts}{methods} --seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs} "
            f"--search-epochs {args.search_epochs} --budget {args.budget} --candidates {args.candidates} "
            f"--population {args.population} --select-images {args.select_images} --tau-archs {args.tau_archs} "
            f"--tau-epochs {args.tau_epochs} --tau-repeats {args.tau_repeats} --tau-held-out {args.tau_held_out} "
            + (f"--tau-pool {args.tau_pool} " if args.tau_pool else "") +
            f"--jobs {args.jobs} --threads {args.threads}"
            + "".join(f" --set {s}" for s in args.set) + ("" if args.name == "quality" else f" --name {args.name}"))


def _figure(args, fig, name: str) -> str:
    fig_dir = Path(args.work) if args.no_write else ROOT / "benchmarks" / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(fig_dir / f"{name}.png", dpi=110)
    return f"![{name}](benchmarks/figures/{name}.png)"


def _publish(args, name: str, text: str, record: dict) -> None:
    print(text)
    (Path(args.work) / f"{name}.json").write_text(json.dumps(record, indent=1, default=str, allow_nan=False))
    if not args.no_write:
        write_section(name, text)


def write_report(args, per_seed: dict) -> None:
    seeds = args.seeds
    first = per_seed[seeds[0]]["dsnas"]
    lines = [f"## Search quality: {args.epochs} epochs, {args.search_epochs} of search, {len(seeds)} seed(s), "
             f"{_against(args.methods)} (`benchmarks/quality.py`)", "",
             f"Machine: {machine()}; {args.jobs} runs side by side, {args.threads} thread(s) each "
             "(finished runs in the work folder are reused, not rerun).", f"Command: `{_command(args, 'methods')}`", "",
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
    for m in args.methods:
        rows = [per_seed[s][m] for s in seeds]
        lines.append(f"| {LABELS[m]} | {_ms([x['top1'] for x in rows])} | {_ms([x['mflops'] for x in rows], 3)} | "
                     f"{_ms([x['params_m'] for x in rows], 3)} | {_ms([x['wall_s'] for x in rows], 0)} |")
    lines += ["", f"Mean ± standard deviation over seeds {', '.join(map(str, seeds))}. Per seed (top-1 %):", "",
              "| seed | " + " | ".join(args.methods) + " |", "|---" * (len(args.methods) + 1) + "|"]
    for s in seeds:
        lines.append(f"| {s} | " + " | ".join(f"{per_seed[s][m]['top1']:.2f}" for m in args.methods) + " |")
    wins = {m: sum(per_seed[s]["dsnas"]["top1"] >= per_seed[s][m]["top1"] for s in seeds) for m in args.methods[1:]}
    lines += ["", "DSNAS child at or above: " + ", ".join(f"{m} in {wins[m]} of {len(seeds)} seeds" for m in wins) + "."]
    mean = {m: statistics.mean(per_seed[s][m]["top1"] for s in seeds) for m in args.methods}
    against = {"scratch": "the same architecture trained from scratch", "random": "random search",
               "spos": "SPOS", "uniform": "a uniform architecture trained from scratch"}
    lines += ["", "**Reading.** The DSNAS child is " + ", ".join(
        f"{mean['dsnas'] - mean[m]:+.2f} points from {against[m]}" for m in args.methods[1:]) + " (means over seeds)."]
    gt = _read_ground_truth(args)
    if gt:
        lines += ["", _placement(args, per_seed, gt)]
    lines += ["", _methods_figure(args, per_seed, gt)]
    _publish(args, args.name, "\n".join(lines), {"per_seed": per_seed})


def _against(methods) -> str:
    """What the DSNAS child is compared with, for the section's title (which names its setting)."""
    names = {"scratch": "its architecture retrained", "random": "random search", "spos": "SPOS",
             "uniform": "a uniform architecture from scratch"}
    others = [names[m] for m in methods if m != "dsnas"]
    if not others:
        return "DSNAS alone"
    return "DSNAS against " + (others[0] if len(others) == 1 else ", ".join(others[:-1]) + " and " + others[-1])


def _read_ground_truth(args) -> dict | None:
    """The ranking study's stand-alone results, when they share this run's schedule (same preset and
    epochs, so that an architecture trained alone here is comparable with them)."""
    path = Path(args.ground_truth)
    if not path.is_file():
        return None
    gt = json.loads(path.read_text())
    return gt if gt["config"] == args.config and gt["epochs"] == args.epochs and not args.set else None


def _placement(args, per_seed: dict, gt: dict) -> str:
    """Where the architectures trained alone here fall among the ground truth's."""
    pop = [q["alone"] for q in gt["pairs"]]

    trained_alone = {"scratch": "the DSNAS architecture retrained from scratch", "uniform": "the uniform architecture"}
    where = [f"{what} at percentiles " + ", ".join(f"{percentile(per_seed[s][m]['top1'], pop):.0f}" for s in args.seeds)
             for m, what in trained_alone.items() if m in args.methods]
    where.insert(0, "the DSNAS child (finetuned, not trained alone) at " +
                 ", ".join(f"{percentile(per_seed[s]['dsnas']['top1'], pop):.0f}" for s in args.seeds))
    return (f"Among the {len(pop)} architectures of `{Path(args.ground_truth).name}` (the same preset and "
            f"{gt['epochs']} epochs, each the mean of {len(gt['seeds'])} stand-alone runs; median "
            f"{statistics.median(pop):.2f}%, sd {statistics.stdev(pop):.2f}), per seed: " + "; ".join(where)
            + " (one run each).")


def _methods_figure(args, per_seed: dict, gt: dict | None) -> str:
    """Top-1 per method; with a ground truth, also stand-alone top-1 against MFLOPs, with what each
    method delivered marked."""
    plt, seeds = _plt(), args.seeds
    fig, axes = plt.subplots(1, 2 if gt else 1, figsize=(11 if gt else 5.5, 4), squeeze=False)
    ax = axes[0][0]
    for i, m in enumerate(args.methods):
        vals = [per_seed[s][m]["top1"] for s in seeds]
        ax.bar(i, statistics.mean(vals), color=f"C{i}", alpha=0.6)
        ax.scatter([i] * len(vals), vals, color="k", s=12, zorder=3)
    ax.set_ylim(min(per_seed[s][m]["top1"] for s in seeds for m in args.methods) - 2, None)
    ax.set_xticks(range(len(args.methods)), args.methods)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{args.epochs} epochs each, {args.budget} MFLOPs budget ({len(seeds)} seeds)")
    if gt:
        ax = axes[0][1]
        ax.scatter([q["mflops"] for q in gt["pairs"]], [q["alone"] for q in gt["pairs"]], s=16, color="0.6",
                   label=f"uniform draws, trained alone (mean of {len(gt['seeds'])})")
        for i, m in enumerate(args.methods):
            ax.scatter([per_seed[s][m]["mflops"] for s in seeds], [per_seed[s][m]["top1"] for s in seeds],
                       s=44, marker="*sP^D"[i], color=f"C{i}", zorder=3, label=LABELS[m])
        ax.set_xlabel("MFLOPs")
        ax.set_ylabel(f"test top-1 (%), {args.epochs} epochs")
        ax.set_title("the same schedule: each method against the ground truth")
        ax.legend(fontsize=6.5, loc="lower right")
    return _figure(args, fig, args.name)


def write_ranking(args, ranking: dict) -> None:
    pairs, name = ranking["pairs"], f"{args.name}_ranking"
    tau = kendall_tau([q["inherited"] for q in pairs], [q["alone"] for q in pairs])
    lo, hi = bootstrap_tau(pairs)
    repeats = len(pairs[0]["repeats"])
    within = f"within {args.budget} MFLOPs" if args.budget else "from the whole space"
    if args.tau_pool:
        within += f", spread over the MFLOPs range of {args.tau_pool} uniform draws"
    lines = [f"## Supernet ranking against stand-alone training: supernet {_epochs(args.search_epochs)}, "
             f"stand-alone {_epochs(args.tau_epochs)}, architectures {within} (`benchmarks/quality.py --parts ranking`)",
             "",
             f"Machine: {machine()}; {args.jobs} runs side by side, {args.threads} thread(s) each.",
             f"Command: `{_command(args, 'ranking')}`", "",
             f"A uniform supernet (`--method random`, the `{args.config}` preset, seed {args.seeds[0]}) trained for "
             f"{args.search_epochs} epoch(s) ranks {len(pairs)} random architectures {within} by "
             f"top-1 with inherited weights (BN re-estimated) on {args.tau_held_out} training images held out from "
             f"weight training. Each architecture is then trained alone for {args.tau_epochs} epoch(s), "
             f"{repeats} time(s) with seeds {args.seeds[0]}..{args.seeds[0] + repeats - 1}, and tested on the test "
             "split; the stand-alone score is the mean over those runs.", "",
             "| inherited top-1 (%) | stand-alone top-1 (%), per seed | mean | MFLOPs |", "|---|---|---|---|"]
    lines += [f"| {q['inherited']:.2f} | {' / '.join(f'{v:.2f}' for v in q['repeats'])} | {q['alone']:.2f} | "
              f"{q['mflops']:.3f} |" for q in pairs]
    lines += ["", f"Kendall τ, supernet against the stand-alone mean: **{tau:.3f}**, bootstrap 95% interval "
              f"(2,000 resamples of the architectures) [{lo:.3f}, {hi:.3f}]."]
    record = {"pairs": pairs, "tau": tau, "interval": [lo, hi]}
    for q in pairs:
        q["neg_loss"] = -q["inherited_loss"]
    by_loss = kendall_tau([q["neg_loss"] for q in pairs], [q["alone"] for q in pairs])
    l_lo, l_hi = bootstrap_tau(pairs, "neg_loss")
    size = {k: kendall_tau([q[k] for q in pairs], [q["mflops"] for q in pairs]) for k in ("inherited", "alone")}
    lines += [f"Ranked by inherited held-out cross-entropy instead (lower is better): τ = **{by_loss:.3f}** "
              f"[{l_lo:.3f}, {l_hi:.3f}].",
              f"τ against MFLOPs: inherited top-1 {size['inherited']:.3f}, stand-alone mean {size['alone']:.3f}."]
    record.update(tau_loss=by_loss, tau_loss_interval=[l_lo, l_hi], tau_mflops=size)
    if repeats >= 2:
        for q in pairs:
            q["first"], q["second"] = q["repeats"][0], q["repeats"][1]
        ceiling = kendall_tau([q["first"] for q in pairs], [q["second"] for q in pairs])
        c_lo, c_hi = bootstrap_tau(pairs, "first", "second")
        per_repeat = [kendall_tau([q["inherited"] for q in pairs], [q["repeats"][r] for q in pairs])
                      for r in range(repeats)]
        diffs = [q["first"] - q["second"] for q in pairs]
        noise = statistics.stdev(diffs) / 2 ** 0.5
        spread = statistics.stdev(q["alone"] for q in pairs)
        lines += [f"Against each seed's stand-alone result alone: τ = {', '.join(f'{t:.3f}' for t in per_repeat)}.",
                  f"Two stand-alone runs of the same architectures agree with each other at τ = **{ceiling:.3f}** "
                  f"[{c_lo:.3f}, {c_hi:.3f}]: the ground truth's own reproducibility. The run-to-run standard "
                  f"deviation of one stand-alone result is {noise:.2f} points; the architectures' means spread with "
                  f"a standard deviation of {spread:.2f} points."]
        record.update(ceiling=ceiling, ceiling_interval=[c_lo, c_hi], per_repeat=per_repeat, noise=noise,
                      spread=spread)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in range(repeats):
        ax.scatter([q["inherited"] for q in pairs], [q["repeats"][r] for q in pairs], s=14, alpha=0.6,
                   label=f"stand-alone seed {args.seeds[0] + r}")
    ax.scatter([q["inherited"] for q in pairs], [q["alone"] for q in pairs], color="k", marker="x", label="mean")
    ax.set_xlabel("supernet-inherited held-out top-1 (%)")
    ax.set_ylabel(f"stand-alone test top-1 (%), {args.tau_epochs} epoch(s)")
    ax.set_title(f"Kendall tau = {tau:.3f} ({len(pairs)} architectures)")
    ax.legend(fontsize=8)
    lines += ["", _figure(args, fig, name)]
    _publish(args, name, "\n".join(lines), record)
    if not args.no_write:
        truth = {"source": f"`{_command(args, 'ranking')}`, {time.strftime('%Y-%m-%d')}", "config": args.config,
                 "epochs": args.tau_epochs, "seeds": list(range(args.seeds[0], args.seeds[0] + repeats)),
                 "data": args.data, "pairs": [{k: q[k] for k in ("inherited", "repeats", "alone", "mflops", "choices")}
                                             for q in pairs]}
        (ROOT / "benchmarks" / f"{args.name}_ground_truth.json").write_text(json.dumps(truth, indent=1, allow_nan=False) + "\n")


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _cfg(args, key: str):
    from dsnas.config import load_config

    return getattr(load_config(args.config, args.set), key)


if __name__ == "__main__":
    main()
