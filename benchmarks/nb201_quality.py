"""Search quality in the nb201 space, measured against its ground truth (benchmarks/nb201_ground_truth.py).

Every method runs the ground truth's schedule (the same data, network and total epochs), over seeds:

- dsnas:  `dsnas search` (search from the first step, then the argmax child is finetuned);
- dsnas_warmup: the same after a warm-up of the weights alone and with a slower α, which tells
  whether a warm-up keeps the search from collapsing to parameter-free ops;
- random: `dsnas search --method random` (uniform supernet, random candidates ranked on held-out
  images, the best finetuned);
- spos:   `dsnas search --method spos` (the same supernet, evolution).

Each architecture a method finds is then trained alone twice like the ground truth's, which gives
its percentile among the ground truth's uniform draws. Beside them, the baseline of Li & Talwalkar:
k architectures drawn uniformly and trained from scratch, the best of them chosen on its first run
and reported on its second (so that the choice does not pick its own noise), for k = 1 and for the
k whose wall time equals one DSNAS run. The ranking part trains a uniform supernet for the search
epochs and ranks every ground-truth architecture by its inherited held-out accuracy: Kendall tau
against the ground truth with a bootstrap interval, next to the ground truth's own tau.

Writes the `nb201_ground_truth` and `nb201_quality` sections of BENCHMARKS.md and
benchmarks/figures/nb201_quality.png.

    python benchmarks/nb201_quality.py [--seeds 0 1 2] [--parts methods ranking] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from _report import ROOT, machine, write_section
from _runs import overrides, run_dsnas
from nb201_ground_truth import (SCHEDULE, append_result, claim, architectures, read_results, summary, train_one,
                                uniform_kind, uniform_records)
from quality import bootstrap_tau, percentile

from dsnas.agreement import kendall_tau
from dsnas.arch import load_arch
from dsnas.spaces.nb201 import EDGES, NODES, OPS, from_string, to_string

GROUND_TRUTH = ROOT / "benchmarks" / "nb201_ground_truth.jsonl"
METHODS = ("dsnas", "dsnas_warmup", "random", "spos")
LABELS = {"dsnas": "DSNAS child, no retraining", "dsnas_warmup": "DSNAS after a warm-up, slower α",
          "random": "random search (uniform supernet)", "spos": "SPOS-style evolution (uniform supernet)"}
# The collapse study: DSNAS with the paper's estimator under other schedules, each a list of overrides
# on top of the `dsnas` method's. The found cells are trained alone like the ground truth, so they
# compare across schedules even where a schedule is longer than the ground truth's.
COLLAPSE = {
    "slow_alpha": ["arch_lr=0.03"],
    "long_warmup_slow_alpha": ["epochs=6", "search_epochs=5", "warmup_epochs=2", "arch_lr=0.03"],
    "long_warmup_slow_alpha_no_fix": ["epochs=6", "search_epochs=5", "warmup_epochs=2", "arch_lr=0.03",
                                      "early_fix=1.0"],
    "no_bn_affine": ["bn_affine=false"],
    "no_bn_affine_long_warmup_slow_alpha": ["bn_affine=false", "epochs=6", "search_epochs=5", "warmup_epochs=2",
                                            "arch_lr=0.03"],
}


# The remedies study: the paper's estimator beside each remedy, and their combinations, each a list of
# overrides on top of the `dsnas` method's schedule. Every row names credit and never_pick, so that
# it does not depend on what the space's defaults are.
NO_NONE = "ops=" + ",".join(op for op in OPS if op != "none")
# The paper's search in the benchmark's whole space, whatever the space's defaults for a search are:
# every method and study starts from it, and a row's overrides come after.
PAPER = ["ops=" + ",".join(OPS), "credit=gate", "never_pick="]
REMEDIES = {
    "paper": ["credit=gate", "never_pick="],
    "darts_rule": ["credit=gate", "never_pick=none"],
    "no_none": ["credit=gate", "never_pick=", NO_NONE],
    "loss_credit": ["credit=loss", "never_pick="],
    "loss_credit_darts_rule": ["credit=loss", "never_pick=none"],
    "loss_credit_no_none": ["credit=loss", "never_pick=", NO_NONE],
    "loss_credit_no_none_warmup": ["credit=loss", "never_pick=", NO_NONE, "warmup_epochs=1", "arch_lr=0.03"],
}


DEFAULT_REMEDY = "loss_credit_no_none"  # what a search of the nb201 space does by default (NB201Space)
POOL_SUPERNETS = {"uniform": [], "uniform_no_none": [NO_NONE]}  # the uniform supernet that ranks each pool


def derivable(overrides: list[str]) -> tuple[str, ...]:
    """The ops a search with ``overrides`` can deliver: its candidate set less its never_pick."""
    sets = dict(o.split("=", 1) for o in overrides)
    ops = sets.get("ops", ",".join(OPS)).split(",")
    never = [n for n in sets.get("never_pick", "").split(",") if n]
    return tuple(op for op in ops if op not in never)


def dead(string: str) -> bool:
    """Whether every path from the cell's input to its output passes through ``none``."""
    edges = [(i, j) for (j, i), op in zip(EDGES, from_string(string)) if op != "none"]
    reached = {0}
    for i, j in sorted(edges, key=lambda e: e[1]):  # sources precede targets
        if i in reached:
            reached.add(j)
    return NODES - 1 not in reached


def parameter_free(string: str) -> bool:
    return not any(op.startswith("nor_conv") for op in from_string(string))


# --- the ground truth -------------------------------------------------------------------------
def ground_truth(records: list[dict]) -> dict[str, dict]:
    """Per architecture string: its kind, MFLOPs, wall times and top-1 of each run."""
    gt: dict[str, dict] = {}
    for r in records:
        a = gt.setdefault(r["arch_string"], {"kind": r["kind"], "mflops": r["mflops"], "runs": {}, "wall": []})
        a["runs"][r["run"]] = r["top1"]
        a["wall"].append(r["wall_s"])
    for a in gt.values():
        a["mean"] = statistics.fmean(a["runs"].values())
    return gt


def uniform(gt: dict, kind: str = "uniform") -> dict:
    """The uniformly drawn architectures of ``kind`` (`uniform_kind`) with both runs: the
    population the percentiles refer to."""
    return {s: a for s, a in gt.items() if a["kind"] == kind and {0, 1} <= set(a["runs"])}


CHANCE = 15.0  # top-1 (%) below which a cell is taken as dead: ten classes, chance is 10%


def alive(pool: dict) -> dict:
    """The architectures of ``pool`` that learn at all (both runs above `CHANCE`)."""
    return {s: a for s, a in pool.items() if min(a["runs"].values()) > CHANCE}


def _runs_of(pool: dict) -> tuple[list[float], list[float]]:
    return [a["runs"][0] for a in pool.values()], [a["runs"][1] for a in pool.values()]


def best_of_k(pool: dict, k: int, draws: int = 20000, seed: int = 0) -> dict:
    """k uniform architectures trained from scratch: the one best on its first run, scored by its
    second run; mean and median of that over ``draws`` resampled sets, and the chance that it lands
    in the pool's top 10% (by the mean of both runs)."""
    rng, archs = random.Random(seed), list(pool.values())
    top10 = sorted(a["mean"] for a in archs)[int(0.9 * len(archs))]
    picked = []
    for _ in range(draws):
        best = max(rng.sample(archs, k), key=lambda a: a["runs"][0])
        picked.append((best["runs"][1], best["mean"] >= top10))
    scores = [p for p, _ in picked]
    return {"k": k, "mean": statistics.fmean(scores), "median": statistics.median(scores),
            "p_top10": statistics.fmean(hit for _, hit in picked)}


def tau_interval(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """95% bootstrap interval of Kendall's tau between ``xs`` and ``ys`` (architectures resampled)."""
    return bootstrap_tau([{"x": x, "y": y} for x, y in zip(xs, ys)], "x", "y")


# --- the runs ---------------------------------------------------------------------------------
class Runner:
    def __init__(self, args):
        self.args, self.work = args, Path(args.work)

    def sets(self, seed: int, method: str) -> list[str]:
        a = self.args
        common = [*SCHEDULE, "space=nb201", *PAPER, f"seed={seed}", "warmup_epochs=0",
                  f"search_epochs={a.search_epochs}", "eval_bn_recalibrate=1024"]
        if method == "dsnas":
            return [*common, f"arch_lr={a.arch_lr}", *a.set]
        if method == "dsnas_warmup":  # weights first under uniform paths, so that α does not reward untrained convs
            return [*common, f"warmup_epochs={a.warmup_epochs}", f"arch_lr={a.warmup_arch_lr}", *a.set]
        return [*common, f"candidates={a.candidates}", f"population={a.population}",
                f"select_images={a.select_images}", *a.set]

    def search(self, seed: int, method: str, name: str | None = None, sets: list[str] = ()) -> dict:
        out = self.work / (name or f"seed{seed}/{method}")
        t0, reused = time.time(), (out / "metrics.json").exists()
        cli = ["search", "--config", "fmnist", "--quiet", "--method", method.split("_")[0],
               *overrides([*self.sets(seed, method), *sets])]
        m = run_dsnas(cli, out, self.args.threads, out.with_suffix(".log"))
        m["arch_string"] = load_arch(out / "arch.yaml").string
        if not reused:
            print(f"{out.relative_to(self.work)}: top1 {m['top1']:.2f}%  {m['mflops']:.2f} MFLOPs  "
                  f"{time.time() - t0:.0f} s  {m['arch_string']}", flush=True)
        return m

    def alone(self, string: str, kind: str) -> None:
        """Both ground-truth runs of ``string`` (skipped where the ground truth has them, or where
        another process of the study has claimed them)."""
        spec = SimpleNamespace(set=self.args.set, config="fmnist")  # the ground truth's schedule, and any --set
        (self.work / "alone").mkdir(parents=True, exist_ok=True)
        for run in (0, 1):
            have = {(r["arch_string"], r["run"]) for r in read_results(self.args.ground_truth)}
            if (string, run) not in have and claim(self.work / "alone", string, run):
                record = {"kind": kind, **train_one(list(from_string(string)), run, spec, self.work / "alone")}
                append_result(self.args.ground_truth, record)
                print(f"alone {kind} run {run}: top1 {record['top1']:.2f}%  {string}", flush=True)

    def ranking(self, strings: list[str], name: str = "supernet", sets: list[str] = ()) -> dict:
        """Inherited held-out top-1 of every architecture of ``strings`` from a uniform supernet
        (``sets``: its candidate set; kept in the work folder, so that a rerun only reports)."""
        a = self.args
        sup = self.search(a.seeds[0], "random", f"ranking/{name}",
                          [f"epochs={a.search_epochs}", "candidates=1", *sets])
        cache = self.work / f"ranking/{name}_inherited.json"
        scores = json.loads(cache.read_text()) if cache.exists() else {}
        if set(strings) - set(scores):
            scores.update(inherited_scores(self.work / "ranking/supernet", sorted(set(strings) - set(scores))))
            cache.write_text(json.dumps(scores, indent=1, allow_nan=False))
        return {"supernet": sup, "inherited": scores}


def inherited_scores(run_dir: Path, strings: list[str]) -> dict[str, float]:
    """Held-out top-1 of each architecture with the weights of the finished supernet run ``run_dir``
    (restored from its last checkpoint; BN re-estimated per architecture, as the baselines rank)."""
    from dsnas.config import load_run_config
    from dsnas.data import Loader
    from dsnas.run import open_run
    from dsnas.train import inherited

    cfg = load_run_config(run_dir)
    with open_run(cfg, run_dir, resume=True, quiet=True) as run:
        held = Loader(run.held, "test", 256, cfg.seed, run.rt.device, 0, 1, train=False, workers=0)
        return {s: inherited(run, from_string(s), held, cfg.search_epochs)["top1"] for s in strings}


def gate_rewards(run_dir: Path | None, batches: int, seed: int = 0) -> dict[str, dict]:
    """What DSNAS's estimator sees: the gate reward dL/dZ of each op over ``batches`` training batches,
    on uniformly drawn paths, with the weights held where they are: those of the finished supernet
    run ``run_dir``, or a freshly initialised supernet of the ground truth's schedule (None). Per op:
    the mean over edges and batches, its standard error and the share of positive rewards (a
    positive reward lowers that op's α). ``none`` outputs zeros, so its reward is 0 by construction."""
    import tempfile

    from dsnas.config import load_config, load_run_config
    from dsnas.run import open_run

    with tempfile.TemporaryDirectory() as tmp:
        if run_dir is None:
            cfg = load_config("fmnist", [*SCHEDULE, "space=nb201", *PAPER, f"seed={seed}", "warmup_epochs=0",
                                         "search_epochs=3"])
            opened = open_run(cfg, Path(tmp) / "run", resume=False, quiet=True)
        else:
            opened = open_run(load_run_config(run_dir), run_dir, resume=True, quiet=True)
        with opened as run:
            net, search, rewards = run.space.train(), run.search, {op: [] for op in OPS}
            for alpha in search.alphas:  # uniform paths, whatever α the run ended with
                alpha.data.zero_()
            run.train_loader.set_epoch(0)
            for step, (x, y) in enumerate(run.train_loader):
                if step == batches:
                    break
                search.sample(gate=True)
                net.zero_grad(set_to_none=True)
                run.criterion(net(x), y).backward()
                for choice in search.choices:
                    if choice.mask is not None and choice.mask.grad is not None:
                        rewards[choice.names[choice.active]].append(float(choice.mask.grad))
    return {op: {"mean": statistics.fmean(r), "se": statistics.stdev(r) / math.sqrt(len(r)),
                 "positive": statistics.fmean(v > 0 for v in r), "n": len(r)} for op, r in rewards.items() if len(r) > 1}


# --- the report -------------------------------------------------------------------------------
def _ms(values: list[float], digits: int = 2) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


def ground_truth_section(args, gt: dict) -> str:
    pool = uniform(gt)
    s = summary(uniform_records(read_results(args.ground_truth)))
    fixed = {k: a for k, a in gt.items() if a["kind"] in ("best_known", "all_none", "all_skip", "all_pool")}
    means = sorted(a["mean"] for a in pool.values())
    t0, t1 = [a["runs"][0] for a in pool.values()], [a["runs"][1] for a in pool.values()]
    tau = kendall_tau(t0, t1)
    lo, hi = tau_interval(t0, t1)
    diffs = [x - y for x, y in zip(t0, t1)]
    noise = statistics.stdev(diffs) / math.sqrt(2)
    walls = [w for a in pool.values() for w in a["wall"]]
    live = alive(pool)
    q1, _, q3 = statistics.quantiles([a["mean"] for a in live.values()], n=4)
    lines = ["## nb201 ground truth: architectures trained alone, twice each (`benchmarks/nb201_ground_truth.py`)", "",
             f"Machine: {machine()}; the runs shared the machine with other work, so wall times are upper bounds.",
             "Command: `python benchmarks/nb201_ground_truth.py --threads 1` (resumable; its results are "
             "`benchmarks/nb201_ground_truth.jsonl`, one line per run, which later studies reuse).", "",
             f"Schedule: full Fashion-MNIST from the Debian package, `{' '.join(SCHEDULE)}` over the `fmnist` preset "
             "(SGD, cosine, label smoothing 0.1). C = 8 and N = 1 instead of the benchmark's 16 and 5, and "
             "282 steps, so that all runs fit into the hours of a 2-core CPU: a longer schedule ranks the "
             "architectures more reliably, and this one is a stated compromise.", "",
             f"- {len(pool)} architectures drawn uniformly from the 15,625 (both runs finished), mean top-1 "
             f"{statistics.fmean(means):.2f}%, from {means[0]:.2f} to {means[-1]:.2f}%; spread (sd of the "
             f"per-architecture means) **{statistics.stdev(means):.2f} points** against a run-to-run noise of "
             f"**{noise:.2f}** (sd of run 0 − run 1, over √2).",
             f"- Kendall τ between run 0 and run 1: **{tau:.3f}** (bootstrap 95% interval [{lo:.3f}, {hi:.3f}]): "
             "the ceiling of any ranking against this ground truth.",
             f"- {len(pool) - len(live)} of the {len(pool)} cells are at chance (every path from the input passes "
             f"through `none`). Among the other {len(live)}: interquartile range of the means {q1:.2f}–{q3:.2f}% "
             f"({q3 - q1:.2f} points), sd {statistics.stdev(a['mean'] for a in live.values()):.2f}, and τ between "
             f"the two runs {kendall_tau(*_runs_of(live)):.3f}.",
             f"- Median wall time of one run: {statistics.median(walls):.0f} s (1 thread).", "",
             "| fixed cell | MFLOPs | run 0 | run 1 |", "|---|---|---|---|"]
    for k, a in fixed.items():
        lines.append(f"| {a['kind']} `{k}` | {a['mflops']:.2f} | " +
                     " | ".join(f"{a['runs'].get(r, float('nan')):.2f}" for r in (0, 1)) + " |")
    lines += ["", f"Summary as the script prints it: `{json.dumps(s, allow_nan=False)}`"]
    return "\n".join(lines)


def quality_section(args, gt: dict, per_seed: dict, ranking: dict | None, k_equal: int) -> tuple[str, dict]:
    pool = uniform(gt)
    pop = [a["mean"] for a in pool.values()]
    lines = ["## Search quality in the nb201 space against its ground truth (`benchmarks/nb201_quality.py`)", "",
             f"Machine: {machine()}; {args.threads} thread(s) per run.",
             f"Command: `python benchmarks/nb201_quality.py --seeds {' '.join(map(str, args.seeds))} "
             f"--search-epochs {args.search_epochs} --arch-lr {args.arch_lr} --warmup-epochs {args.warmup_epochs} "
             f"--warmup-arch-lr {args.warmup_arch_lr} --candidates {args.candidates}`", "",
             f"Every method runs the ground truth's schedule (`{' '.join(SCHEDULE)}`, `nb201_ground_truth`), so "
             f"all use equal total epochs. DSNAS searches from the first step for {args.search_epochs} epoch(s) "
             f"(arch_lr {args.arch_lr}, early fix 0.3) and finetunes its child for the rest; *after a warm-up*: "
             f"{args.warmup_epochs} of those epoch(s) train the weights alone under uniform paths, then α learns "
             f"with arch_lr {args.warmup_arch_lr}. Random and SPOS train "
             f"a uniform supernet for {args.search_epochs} epoch(s), rank {args.candidates} candidates on "
             f"{args.select_images} held-out training images, then finetune the winner. *Delivered*: the "
             "method's own child on the test split. *Alone*: the architecture it found, trained from scratch twice "
             "like the ground truth (mean of both runs); *percentile*: among the ground truth's uniform "
             f"architectures ({len(pool)}).", "",
             "| method | delivered top-1 (%) | alone top-1 (%) | percentile | MFLOPs | median wall (s) |",
             "|---|---|---|---|---|---|"]
    record = {"per_seed": per_seed}
    for m in METHODS:
        rows = [per_seed[s][m] for s in args.seeds]
        alone = [gt[r["arch_string"]]["mean"] for r in rows]
        pct = [percentile(x, pop) for x in alone]
        lines.append(f"| {LABELS[m]} | {_ms([r['top1'] for r in rows])} | {_ms(alone)} | {_ms(pct, 1)} | "
                     f"{_ms([r['mflops'] for r in rows])} | {statistics.median(r['wall_s'] for r in rows):.0f} |")
    for k in sorted({1, 2, 3, k_equal}):
        b = best_of_k(pool, k)
        record[f"best_of_{k}"] = b
        lines.append(f"| best of {k} uniform architecture(s) from scratch{' (equal wall time)' if k == k_equal else ''}"
                     f" | {b['mean']:.2f} (median {b['median']:.2f}) | (trained alone) | "
                     f"{100 * b['p_top10']:.0f}% chance of the top 10% | | |")
    lines += ["", "Per seed: the architecture each method found, and its percentile.", "",
              "| seed | method | delivered | alone | percentile | architecture |", "|---|---|---|---|---|---|"]
    for s in args.seeds:
        for m in METHODS:
            r = per_seed[s][m]
            a = gt[r["arch_string"]]
            lines.append(f"| {s} | {m} | {r['top1']:.2f} | {a['mean']:.2f} | {percentile(a['mean'], pop):.1f} | "
                         f"`{r['arch_string']}` |")
    lines += ["", collapse(args, gt, per_seed), "", goals(args, gt, per_seed, record, k_equal)]
    if ranking:
        strings = [s for s in pool if s in ranking["inherited"]]
        inh, truth = [ranking["inherited"][s] for s in strings], [pool[s]["mean"] for s in strings]
        tau, (lo, hi) = kendall_tau(inh, truth), tau_interval(inh, truth)
        t0, t1 = [pool[s]["runs"][0] for s in strings], [pool[s]["runs"][1] for s in strings]
        record["ranking"] = {"tau": tau, "interval": [lo, hi], "self_tau": kendall_tau(t0, t1),
                             "inherited": ranking["inherited"]}
        lines += ["", f"**Ranking.** A uniform supernet trained for {args.search_epochs} epoch(s) ranks the "
                  f"{len(strings)} uniform architectures by inherited held-out top-1 (BN re-estimated per "
                  f"architecture) at Kendall τ = **{tau:.3f}** (bootstrap 95% [{lo:.3f}, {hi:.3f}]) against the "
                  f"mean of their two stand-alone runs; the ground truth agrees with itself at τ = "
                  f"{record['ranking']['self_tau']:.3f}. Goal τ ≥ 0.5 where the ground truth agrees with itself "
                  f"at ≥ 0.8: {'met' if tau >= 0.5 else 'missed'} ({tau - 0.5:+.3f}); the ground truth's own τ "
                  f"{'reaches' if record['ranking']['self_tau'] >= 0.8 else 'falls short of'} 0.8."]
        live = [s for s in strings if s in alive(pool)]
        record["ranking"]["tau_alive"] = kendall_tau([ranking["inherited"][s] for s in live],
                                                     [pool[s]["mean"] for s in live])
        lines += ["", f"Without the cells at chance ({len(live)} left): the supernet's τ is "
                  f"{record['ranking']['tau_alive']:.3f}, the ground truth's own {kendall_tau(*_runs_of({s: pool[s] for s in live})):.3f}."]
    return "\n".join(lines), record


def goals(args, gt: dict, per_seed: dict, record: dict, k_equal: int) -> str:
    """The issue's three goals for DSNAS, each met or missed, by how much."""
    pop = [a["mean"] for a in uniform(gt).values()]
    pct = [percentile(gt[per_seed[s]["dsnas"]["arch_string"]]["mean"], pop) for s in args.seeds]
    delivered = statistics.fmean(per_seed[s]["dsnas"]["top1"] for s in args.seeds)
    best, median = record[f"best_of_{k_equal}"]["mean"], record[f"best_of_{k_equal}"]["median"]
    top10 = sum(p >= 90 for p in pct)
    return ("**Against the goals.** "
            f"DSNAS child in the top 10% of the ground truth: {'met' if top10 == len(pct) else 'missed'} "
            f"({top10} of {len(pct)} seeds; percentiles {', '.join(f'{p:.0f}' for p in pct)}). "
            f"Above the best of {k_equal} uniform architecture(s) trained from scratch at equal wall time: "
            f"{'met' if delivered > best else 'missed'} ({delivered:.2f}% delivered against {best:.2f}%, "
            f"{delivered - best:+.2f} points). That mean counts the dead cells a uniform draw sometimes gives "
            f"(cells at chance, above): against the median pick ({median:.2f}%), which is what a random cell usually gives, the "
            f"child is {delivered - median:+.2f} points.")


def op_counts(strings: list[str]) -> dict[str, float]:
    """Share (%) of each op over the edges of ``strings``."""
    ops = [op for s in strings for op in from_string(s)]
    return {op: 100.0 * ops.count(op) / len(ops) for op in OPS}


def collapse(args, gt: dict, per_seed: dict) -> str:
    """Whether a method drifts to parameter-free ops: the ops of what it found, against the ops of
    the ground truth's best tenth and of the space (uniform: 20% each)."""
    pool = uniform(gt)
    ranked = sorted(pool, key=lambda s: pool[s]["mean"], reverse=True)
    rows = {m: op_counts([per_seed[s][m]["arch_string"] for s in args.seeds]) for m in METHODS}
    rows["ground truth, best tenth"] = op_counts(ranked[:max(1, len(ranked) // 10)])
    lines = ["Ops on the edges of the architectures found (share of all their edges, %):", "",
             "| | " + " | ".join(OPS) + " |", "|---" * (len(OPS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{shares[op]:.0f}" for op in OPS) + " |" for name, shares in rows.items()]
    return "\n".join(lines)


def collapse_runs(r: "Runner", args) -> dict:
    """Every (seed, schedule) of the collapse study, or this worker's share of them (``--worker K/N``),
    each searched and its cell trained alone; the base schedules are the `dsnas` and `dsnas_warmup`
    methods' runs."""
    jobs = [(s, v) for s in args.seeds for v in ("dsnas", "dsnas_warmup", *COLLAPSE)]
    if args.worker:
        k, n = map(int, args.worker.split("/"))
        jobs = jobs[k::n]
    found = {}
    for s, v in jobs:
        if v in COLLAPSE:
            found[s, v] = r.search(s, "dsnas", f"seed{s}/collapse/{v}", COLLAPSE[v])
        else:
            found[s, v] = r.search(s, v)
        r.alone(found[s, v]["arch_string"], f"found_{v}")
    return found


def remedy_runs(r: "Runner", args) -> dict:
    """Every (seed, remedy) of the remedies study, or this worker's share (``--worker K/N``), each
    searched and its cell trained alone twice."""
    jobs = [(s, v) for s in args.seeds for v in REMEDIES]
    if args.worker:
        k, n = map(int, args.worker.split("/"))
        jobs = jobs[k::n]
    found = {}
    for s, v in jobs:
        found[s, v] = r.search(s, "dsnas", f"seed{s}/remedy/{v}", REMEDIES[v])
        r.alone(found[s, v]["arch_string"], f"found_{v}")
    return found


def remedies_section(args, gt: dict, found: dict, rankings: dict) -> str:
    """Per remedy: what its cells hold, where they rank in the ground truth of the ops it can
    deliver, and what it delivers, beside random cells of that set trained from scratch."""
    walls = {kind: statistics.median(w for a in uniform(gt, kind).values() for w in a["wall"])
             for kind in {uniform_kind(derivable(o)) for o in REMEDIES.values()}}
    lines = ["## DSNAS remedies in the nb201 space (`benchmarks/nb201_quality.py --parts remedies`)", "",
             f"Machine: {machine()}; {args.threads} thread(s) per run.",
             f"Command: `python benchmarks/nb201_quality.py --parts remedies --seeds {' '.join(map(str, args.seeds))}`",
             "", "Each row is DSNAS on the ground truth's data and network (3 epochs, search from the first step for "
             f"{args.search_epochs}, arch_lr {args.arch_lr}, early fix 0.3, then the argmax child finetuned) with the "
             "overrides shown. *Pool*: the uniform cells of the ground truth drawn from the ops the row can deliver "
             "(its candidate set less `never_pick`), which its percentiles and random baselines come from. *Dead*: "
             "every path from the cell's input to its output passes through `none`; *no conv*: no convolution on any "
             "edge. *Alone*: the cell found, trained from scratch twice on the ground truth's schedule. *Random "
             "from scratch*: the best of k uniform cells of the pool trained from scratch (chosen on run 0, scored "
             "on run 1), its mean and median over resampled sets, for k = 1 and for the k whose wall time equals "
             "the row's.", "",
             "| remedy | overrides | none % | conv % | dead | no conv | delivered top-1 (%) | alone top-1 (%) | "
             "percentile per seed | random from scratch, k = 1 / k equal | pool |", "|---" * 11 + "|"]
    for v, overrides_ in REMEDIES.items():
        rows = [found[s, v] for s in args.seeds if (s, v) in found]
        if not rows:
            continue
        kind = uniform_kind(derivable(overrides_))
        pool = uniform(gt, kind)
        pop = [a["mean"] for a in pool.values()]
        strings = [m["arch_string"] for m in rows]
        shares = op_counts(strings)
        alone = [gt[x]["mean"] for x in strings]
        k_equal = max(1, round(statistics.median(m["wall_s"] for m in rows) / walls[kind]))
        one, equal = best_of_k(pool, 1), best_of_k(pool, k_equal)
        base = (f"{one['mean']:.2f} (median {one['median']:.2f}) / {equal['mean']:.2f} (median {equal['median']:.2f}), "
                f"k = {k_equal}")
        lines.append(f"| {v} | {' '.join(overrides_)} | {shares['none']:.0f} | "
                     f"{shares['nor_conv_1x1'] + shares['nor_conv_3x3']:.0f} | {sum(map(dead, strings))}/{len(rows)} | "
                     f"{sum(map(parameter_free, strings))}/{len(rows)} | {_ms([m['top1'] for m in rows])} | {_ms(alone)} | "
                     f"{', '.join(f'{percentile(x, pop):.0f}' for x in alone)} | {base} | {kind} ({len(pool)}) |")
    lines += ["", "Per seed:", "", "| seed | remedy | delivered | alone | architecture |", "|---|---|---|---|---|"]
    for (s, v), m in sorted(found.items(), key=lambda kv: (list(REMEDIES).index(kv[0][1]), kv[0][0])):
        lines.append(f"| {s} | {v} | {m['top1']:.2f} | {gt[m['arch_string']]['mean']:.2f} | `{m['arch_string']}` |")
    for kind in POOL_SUPERNETS:
        pool = uniform(gt, kind)
        means = sorted(a["mean"] for a in pool.values())
        noise = statistics.stdev([a["runs"][0] - a["runs"][1] for a in pool.values()]) / math.sqrt(2)
        lines += ["", f"Pool `{kind}`: {len(pool)} cells trained alone twice (`benchmarks/nb201_ground_truth.py"
                  f"{'' if kind == 'uniform' else ' --archs 40 --ops ' + ' '.join(derivable(REMEDIES[DEFAULT_REMEDY]))}`), "
                  f"{len(pool) - len(alive(pool))} at chance; mean {statistics.fmean(means):.2f}%, "
                  f"from {means[0]:.2f} to {means[-1]:.2f}, 90th percentile {means[int(0.9 * len(means))]:.2f}; "
                  f"run-to-run noise {noise:.2f}."]
    lines += ["", remedy_goals(args, gt, found)]
    for kind, ranking in rankings.items():
        pool = uniform(gt, kind)
        strings = [x for x in pool if x in ranking["inherited"]]
        inh, truth = [ranking["inherited"][x] for x in strings], [pool[x]["mean"] for x in strings]
        lo, hi = tau_interval(inh, truth)
        t0, t1 = _runs_of({x: pool[x] for x in strings})
        slo, shi = tau_interval(t0, t1)
        lines += ["", f"**Supernet ranking, {kind}.** A uniform supernet of that candidate set, trained for "
                  f"{args.search_epochs} epoch(s), ranks the pool's {len(strings)} cells by inherited held-out top-1 at "
                  f"Kendall τ = {kendall_tau(inh, truth):.3f} (bootstrap 95% [{lo:.3f}, {hi:.3f}]); the ground truth's "
                  f"two runs agree at τ = {kendall_tau(t0, t1):.3f} ([{slo:.3f}, {shi:.3f}])."]
    return "\n".join(lines)


def remedy_goals(args, gt: dict, found: dict) -> str:
    """The issue's three goals for the space's default remedy, each met or missed, by how much."""
    v = DEFAULT_REMEDY
    rows = [found[s, v] for s in args.seeds if (s, v) in found]
    strings = [m["arch_string"] for m in rows]
    pool = uniform(gt, uniform_kind(derivable(REMEDIES[v])))
    pct = [percentile(gt[x]["mean"], [a["mean"] for a in pool.values()]) for x in strings]
    delivered = statistics.fmean(m["top1"] for m in rows)
    wall = statistics.median(w for a in pool.values() for w in a["wall"])
    k = max(1, round(statistics.median(m["wall_s"] for m in rows) / wall))
    median = best_of_k(pool, k)["median"]
    bad = sum(dead(x) or parameter_free(x) for x in strings)
    top = sum(p >= 90 for p in pct)
    return (f"**Against the goals** (the default, `{v}`). No dead or parameter-free cell: "
            f"{'met' if not bad else 'missed'} ({bad} of {len(rows)} seeds). At or above the 90th percentile of "
            f"the matching ground truth in 2 of 3 seeds: {'met' if top >= 2 else 'missed'} ({top} of {len(rows)}; "
            f"percentiles {', '.join(f'{p:.0f}' for p in pct)}). Delivered child above the median random cell of "
            f"the same set trained from scratch at equal cost (k = {k}): {'met' if delivered > median else 'missed'} "
            f"({delivered:.2f}% against {median:.2f}%, {delivered - median:+.2f} points).")


def remedies_figure(args, gt: dict, found: dict) -> str:
    """The ground truth of both pools, and the cell each remedy found in each seed, trained alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.6))
    for kind, color in (("uniform", "0.75"), ("uniform_no_none", "0.45")):
        pool = alive(uniform(gt, kind))
        ax.scatter([a["mflops"] for a in pool.values()], [a["mean"] for a in pool.values()], s=12, color=color,
                   label=f"{kind} cells, trained alone")
    for i, v in enumerate(REMEDIES):
        cells = [gt[found[s, v]["arch_string"]] for s in args.seeds if (s, v) in found]
        ax.scatter([a["mflops"] for a in cells], [a["mean"] for a in cells], s=46, marker="*P^sDXv"[i % 7],
                   color=f"C{i}", label=v, zorder=3)
    ax.set_xlabel("MFLOPs")
    ax.set_ylabel("stand-alone test top-1 (%), mean of 2 runs")
    ax.set_ylim(64, None)  # dead cells (~10%) would flatten the rest
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    ax.set_title("nb201: the cells DSNAS finds under each remedy")
    fig.tight_layout()
    folder = Path(args.work) if args.no_write else ROOT / "benchmarks" / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / "nb201_remedies.png", dpi=110)
    plt.close(fig)
    return "![nb201_remedies](benchmarks/figures/nb201_remedies.png)"


def reward_study(r: "Runner", args, batches: int = 100) -> dict:
    """`gate_rewards` of a fresh supernet and of the uniform supernet of the ranking part (its
    weights after the search epochs of uniform paths: where a warm-up of that length leaves them);
    kept in the work folder."""
    cache = Path(args.work) / "rewards.json"
    if cache.exists():
        return json.loads(cache.read_text())
    r.search(args.seeds[0], "random", "ranking/supernet", [f"epochs={args.search_epochs}", "candidates=1"])
    study = {"at initialisation": gate_rewards(None, batches, args.seeds[0]),
             f"after {args.search_epochs} epochs of uniform paths": gate_rewards(r.work / "ranking/supernet", batches)}
    cache.write_text(json.dumps(study, indent=1, allow_nan=False))
    return study


def reward_table(study: dict) -> str:
    lines = ["Gate rewards dL/dZ by op (×10⁻³; mean over 100 batches of uniformly drawn paths and the edges, ± "
             "standard error; in brackets the share of positive rewards, which lower the op's α):", "",
             "| weights | " + " | ".join(OPS) + " |", "|---" * (len(OPS) + 1) + "|"]
    for state, rewards in study.items():
        lines.append(f"| {state} | " + " | ".join(
            f"{1e3 * rewards[op]['mean']:+.2f} ± {1e3 * rewards[op]['se']:.2f} ({100 * rewards[op]['positive']:.0f}%)"
            if op in rewards else "0 (by construction)" for op in OPS) + " |")
    return "\n".join(lines)


def collapse_section(args, gt: dict, found: dict, rewards: dict | None = None) -> str:
    """Ops, decisiveness and stand-alone rank of the cells DSNAS finds under each schedule."""
    pop = [a["mean"] for a in uniform(gt).values()]
    variants = list(dict.fromkeys(v for _, v in found))
    lines = ["## Collapse in the nb201 space: DSNAS under other schedules (`benchmarks/nb201_quality.py --parts "
             "collapse`)", "", f"Machine: {machine()}; {args.threads} thread(s) per run.",
             f"Command: `python benchmarks/nb201_quality.py --parts collapse --seeds {' '.join(map(str, args.seeds))}`",
             "", "DSNAS with the paper's estimator, on the ground truth's data and network, under schedules that "
             "differ from the `nb201_quality` one (3 epochs, search from the first step for 2, arch_lr "
             f"{args.arch_lr}, early fix 0.3) only by the overrides shown. *Alone*: the cell found, trained "
             "from scratch twice on the ground truth's schedule, so that cells found under a longer search "
             "compare with the rest; *percentile*: among the ground truth's uniform cells. *H(α)*: mean entropy "
             "of the open edges at the end of the search stage (nats, at most ln 5 = 1.609), with the edges "
             "early fix had fixed.", "",
             "| schedule | overrides | " + " | ".join(f"{op} %" for op in OPS) +
             " | fixed, H(α) at the switch | alone top-1 (%) | percentile per seed |",
             "|---" * (len(OPS) + 5) + "|"]
    for v in variants:
        rows = [found[s, v] for s in args.seeds if (s, v) in found]
        shares = op_counts([m["arch_string"] for m in rows])
        alone = [gt[m["arch_string"]]["mean"] for m in rows]
        switch = [[h for h in m["history"] if h["stage"] == "search"][-1] for m in rows]
        overrides_ = {"dsnas": "(the `nb201_quality` DSNAS row)",
                      "dsnas_warmup": f"warmup_epochs={args.warmup_epochs} arch_lr={args.warmup_arch_lr}"}
        lines.append(f"| {v} | {overrides_.get(v) or ' '.join(COLLAPSE[v])} | "
                     + " | ".join(f"{shares[op]:.0f}" for op in OPS)
                     + f" | {statistics.fmean(h['fixed'] for h in switch):.1f}/6, {_ms([h['entropy'] for h in switch])} "
                     f"| {_ms(alone)} | {', '.join(f'{percentile(x, pop):.0f}' for x in alone)} |")
    best = sorted(uniform(gt).values(), key=lambda a: a["mean"], reverse=True)
    top = [s for s, a in uniform(gt).items() if a["mean"] >= best[max(0, len(best) // 10 - 1)]["mean"]]
    lines.append("| ground truth, best tenth | | " + " | ".join(f"{op_counts(top)[op]:.0f}" for op in OPS) + " | | | |")
    if rewards:
        lines += ["", reward_table(rewards)]
    return "\n".join(lines)


def figure(args, gt: dict, per_seed: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pool = uniform(gt)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter([a["mflops"] for a in pool.values()], [a["mean"] for a in pool.values()], s=14, color="0.6",
               label="uniform draws, trained alone")
    for i, m in enumerate(METHODS):
        found = [gt[per_seed[s][m]["arch_string"]] for s in args.seeds]
        ax.scatter([a["mflops"] for a in found], [a["mean"] for a in found], s=48, marker="*P^s"[i],
                   color=f"C{i}", label=f"{m} (found, trained alone)", zorder=3)
    ax.set_xlabel("MFLOPs")
    ax.set_ylabel("stand-alone test top-1 (%), mean of 2 runs")
    live = alive(pool)
    ax.set_ylim(min(a["mean"] for a in live.values()) - 1.5, None)  # the dead cells would flatten the rest
    if len(live) < len(pool):
        ax.text(0.02, 0.03, f"{len(pool) - len(live)} cell(s) at chance (~10%) below the axis", fontsize=7,
                transform=ax.transAxes)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("nb201 on Fashion-MNIST: ground truth and the architectures found")
    fig.tight_layout()
    folder = Path(args.work) if args.no_write else ROOT / "benchmarks" / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / "nb201_quality.png", dpi=110)
    return "![nb201_quality](benchmarks/figures/nb201_quality.png)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--search-epochs", type=int, default=2, help="epochs before the architecture is fixed")
    p.add_argument("--arch-lr", type=float, default=0.3, help="DSNAS's Adam step on alpha")
    p.add_argument("--warmup-epochs", type=int, default=1, help="dsnas_warmup: epochs of weights only")
    p.add_argument("--warmup-arch-lr", type=float, default=0.03, help="dsnas_warmup: its Adam step on alpha")
    p.add_argument("--candidates", type=int, default=40, help="architectures ranked by random and spos")
    p.add_argument("--population", type=int, default=10)
    p.add_argument("--select-images", type=int, default=2000, help="held-out training images (random, spos)")
    p.add_argument("--parts", nargs="+", choices=["methods", "ranking", "collapse", "remedies"],
                   default=["methods", "ranking"])
    p.add_argument("--worker", help="collapse: take every N-th run from the K-th (K/N, 0-based) and write "
                   "nothing, so that N processes share the study; a run without it reports")
    p.add_argument("--set", action="append", default=[], help="extra config override for every run (a study "
                   "comparable with the ground truth passes none)")
    p.add_argument("--threads", type=int, default=1, help="threads per run")
    p.add_argument("--ground-truth", type=Path, default=GROUND_TRUTH)
    p.add_argument("--archs", type=int, default=50, help="the ground truth's uniform draws (its --archs)")
    p.add_argument("--draw-seed", type=int, default=0, help="the ground truth's --draw-seed")
    p.add_argument("--work", default=str(ROOT / "runs" / "nb201_quality"), help="run folders (finished runs are reused)")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args()
    torch.set_num_threads(args.threads)  # the runs trained alone here take no more than the searches
    r = Runner(args)
    per_seed = {s: {} for s in args.seeds}
    if "methods" in args.parts:
        for s in args.seeds:
            for m in METHODS:
                per_seed[s][m] = r.search(s, m)
                r.alone(per_seed[s][m]["arch_string"], f"found_{m}")
    if "collapse" in args.parts:
        found = collapse_runs(r, args)
        if args.worker:
            return 0
        text = collapse_section(args, ground_truth(read_results(args.ground_truth)), found, reward_study(r, args))
        print(text)
        if not args.no_write:
            write_section("nb201_collapse", text)
        if args.parts == ["collapse"]:
            return 0
    if "remedies" in args.parts:
        found = remedy_runs(r, args)
        if args.worker:
            return 0
        gt = ground_truth(read_results(args.ground_truth))
        rankings = {kind: r.ranking(sorted(uniform(gt, kind)), "supernet" if kind == "uniform" else kind, sets)
                    for kind, sets in POOL_SUPERNETS.items()}
        text = remedies_section(args, gt, found, rankings) + "\n\n" + remedies_figure(args, gt, found)
        print(text)
        if not args.no_write:
            write_section("nb201_remedies", text)
        if args.parts == ["remedies"]:
            return 0
    gt = ground_truth(read_results(args.ground_truth))
    pool = uniform(gt)
    drawn = [to_string(ops) for kind, ops in architectures(args.archs, args.draw_seed) if kind == "uniform"]
    ranking = r.ranking(drawn) if "ranking" in args.parts else None  # the ground truth's draws, finished or not
    gt_text = ground_truth_section(args, gt)
    if "methods" not in args.parts:
        print(gt_text)
        return 0
    alone_wall = statistics.median(w for a in pool.values() for w in a["wall"])
    dsnas_wall = statistics.median(per_seed[s]["dsnas"]["wall_s"] for s in args.seeds)
    k_equal = max(1, round(dsnas_wall / alone_wall))
    text, record = quality_section(args, gt, per_seed, ranking, k_equal)
    text += (f"\n\nEqual wall time: a DSNAS run took {dsnas_wall:.0f} s (median), one stand-alone training "
             f"{alone_wall:.0f} s, so k = {k_equal}.\n\n" + figure(args, gt, per_seed))
    print(gt_text + "\n\n" + text)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    (Path(args.work) / "nb201_quality.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    if not args.no_write:
        write_section("nb201_ground_truth", gt_text)
        write_section("nb201_quality", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
