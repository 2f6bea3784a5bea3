"""What a run leaves behind: its folder, the epoch log (terminal and TensorBoard), alpha over
epochs (``alpha.csv``, ``alpha.png``), the gate credit that moved it (``credit.csv``,
``credit.png``), the candidates a baseline ranked (``candidates.csv``) and
the final files (``arch.yaml``, ``child.safetensors``, ``metrics.json``)."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from .errors import DsnasError
from .files import RunLock, atomic_path, check_path_text, dump_yaml, json_text, write_text


def new_run_dir(data_name: str) -> Path:
    """A fresh folder name under ``runs/``: the start time and the data's name."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{data_name}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = Path(f"{base}-{i}")
    return path


def check_run_dir(out: Path, resume: bool) -> None:
    """A new run needs an empty or missing folder whose name is text; a resumed one needs its checkpoints."""
    check_path_text(out)
    if resume and not (out / "checkpoints").is_dir():
        raise DsnasError(f"nothing to resume: {out} has no checkpoints")
    if not resume and out.exists() and (not out.is_dir() or any(p.name != RunLock.NAME for p in out.iterdir())):
        raise DsnasError(f"{out} already exists and is not empty; pass --resume {out} to continue a run "
                         "there, or choose another --out")


STARTED_ONLY = {"config.yaml", "tensorboard", RunLock.NAME}  # what a run writes before its first checkpoint


def run_dir_state(out: Path) -> str:
    """``finished`` (its results are written), ``checkpointed`` (it can resume) or ``new``."""
    if (out / "metrics.json").is_file():
        return "finished"
    if any((out / "checkpoints" / name).is_file() for name in ("last.pt", "prev.pt")):
        return "checkpointed"
    return "new"


def clear_unstarted(out: Path) -> None:
    """Remove what a start that never reached its first checkpoint left in ``out`` (its
    config.yaml and TensorBoard events), so that the run can start there again; a folder that
    holds anything else is left to `check_run_dir` to refuse."""
    import shutil

    if not out.is_dir() or any(p.name not in STARTED_ONLY and not (p.name == "checkpoints" and p.is_dir()
                                                                   and not any(p.iterdir())) for p in out.iterdir()):
        return
    if (out / "checkpoints").is_dir():
        (out / "checkpoints").rmdir()
    if (out / "tensorboard").is_dir():
        shutil.rmtree(out / "tensorboard")
    (out / "config.yaml").unlink(missing_ok=True)


class Logger:
    """Rank 0 writes: epoch lines, TensorBoard scalars."""

    def __init__(self, out: Path, main: bool, quiet: bool):
        self.enabled = main and not quiet
        self.tb = None
        if main:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))

    def line(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def scalars(self, step: int, values: dict) -> None:
        if self.tb is not None:
            for k, v in values.items():
                if v is not None:
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class RunFiles:
    """Every file a run writes into its folder, from rank 0 only: ``config.yaml`` at the start,
    ``alpha.csv`` after every epoch, ``candidates.csv`` after a baseline's ranking, and the
    deliverables at the end (`write_results`)."""

    def __init__(self, out: Path, main: bool):
        self.out, self.main = out, main

    def config(self, config: dict) -> None:
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text(self.out / "config.yaml", dump_yaml(config, sort_keys=False))

    def alpha(self, rows: list[dict]) -> None:
        if self.main:
            write_alpha_csv(self.out / "alpha.csv", rows)

    def credit(self, rows: list[dict]) -> None:
        """``credit.csv``, rewritten after every epoch (``credit.png`` comes with the results)."""
        if self.main and rows:
            write_rows_csv(self.out / "credit.csv", rows)

    def candidates(self, candidates, names: list[list[str]], losses: dict, metric: str) -> None:
        if self.main:
            write_candidates_csv(self.out / "candidates.csv", candidates, names, losses, metric)

    def results(self, arch, child, metrics: dict, alpha: list[dict] | None, title: str,
                credit: list[dict] | None = None) -> None:
        if self.main:
            write_results(self.out, arch, child, metrics, alpha, title, credit)


def write_results(out: Path, arch, child, metrics: dict, alpha: list[dict] | None, title: str,
                  credit: list[dict] | None = None) -> None:
    """The run's deliverables: ``arch.yaml``, ``child.safetensors``, ``metrics.json`` and, for a
    DSNAS search, ``alpha.png`` and ``credit.png``."""
    from .arch import save_arch
    from .export import save_weights

    metrics_text = json_text(metrics, indent=2) + "\n"  # refused (NaN) before anything is written
    save_arch(arch, out / "arch.yaml")
    save_weights(child, out / "child.safetensors", {"format": "dsnas-child/1"})
    write_text(out / "metrics.json", metrics_text)
    if alpha is not None:
        plot_alpha(out / "alpha.png", alpha, title)
    if credit:
        plot_credit(out / "credit.png", credit)


ROW_KEYS = ("epoch", "stage", "block", "label", "fixed")  # the columns of alpha.csv that are not candidates


def alpha_rows(search, epoch: int, stage: str) -> list[dict]:
    """softmax(alpha) of every block of a `DSNAS` search after ``epoch``, one row per block."""
    names = [c.names for c in search.choices]
    return [{"epoch": epoch, "stage": stage, "block": i, "label": label, "fixed": "" if f is None else n[f],
             **{op: round(p, 6) for op, p in zip(n, pr.tolist())}}
            for i, (label, n, pr, f) in enumerate(zip(search.labels, names, search.probs(), search.fixed()))]


def write_alpha_csv(path: Path, rows: list[dict]) -> None:
    ops = []
    for r in rows:
        for k in r:
            if k not in ROW_KEYS and k not in ops:
                ops.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, ["epoch", "stage", "block", "label", *ops, "fixed"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def credit_rows(search, stats: list, epoch: int, stage: str) -> list[dict]:
    """One row per block and sampled candidate of the epoch's credit statistics (`DSNAS.take_credit_stats`):
    how often it was sampled, and the mean and standard deviation (empty for one sample) of its gate credit dL/dZ and,
    when the search is rewarded otherwise (``credit: loss``), of the reward it was given."""
    rows = []
    for i, (label, choice, t) in enumerate(zip(search.labels, search.choices, stats)):
        for k, name in enumerate(choice.names):
            n = int(t[k, 0])
            if n == 0:
                continue
            row = {"epoch": epoch, "stage": stage, "block": i, "label": label, "candidate": name, "samples": n}
            for col, (total, sq) in {"gate": (1, 2), "credit": (3, 4)}.items():
                if col == "gate" or search.credit != "gate":
                    mean = float(t[k, total]) / n
                    var = max(0.0, float(t[k, sq]) / n - mean * mean) * n / (n - 1) if n > 1 else None
                    row.update({f"{col}_mean": float(f"{mean:.6g}"),
                                f"{col}_sd": None if var is None else float(f"{var ** 0.5:.6g}")})
            rows.append(row)
    return rows


def write_rows_csv(path: Path, rows: list[dict]) -> None:
    """Rows of dicts as CSV, with the columns of the first row."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def write_candidates_csv(path: Path, candidates, names: list[list[str]], losses: dict, metric: str = "mflops") -> None:
    """The architectures a baseline ranked, in evaluation order: generation, cost (in ``metric``,
    the budget's), held-out top-1 and cross-entropy, and the op of every block."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["order", "generation", metric, "held_out_top1", "held_out_loss",
                     *[f"block_{i}" for i in range(len(names))]])
    for i, c in enumerate(candidates):
        writer.writerow([i, c.generation, round(c.cost, 4), round(c.score, 2), round(losses[c.choices], 5),
                         *[n[k] for n, k in zip(names, c.choices)]])
    write_text(path, buf.getvalue())


def plot_alpha(path: Path, rows: list[dict], title: str = "") -> None:
    """One panel per block: the probability of every candidate over epochs; the epoch a block
    was fixed is marked with a dashed line and the fixed op named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    blocks = sorted({r["block"] for r in rows})
    ops = list(dict.fromkeys(k for r in rows for k in r if k not in ROW_KEYS))  # blocks may offer different ops
    cols = 5
    nrows = (len(blocks) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.0 * cols, 2.1 * nrows), sharex=True, sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, b in zip(axes.flat, blocks):
        mine = [r for r in rows if r["block"] == b]
        epochs = [r["epoch"] for r in mine]
        for j, op in enumerate(ops):
            if op in mine[0]:
                ax.plot(epochs, [r[op] for r in mine], color=colors[j % len(colors)], lw=1.6, label=op)
        fixed = next((r for r in mine if r["fixed"]), None)
        if fixed is not None:
            ax.axvline(fixed["epoch"], color="0.3", ls="--", lw=0.9)
            ax.set_title(f"block {b}: fixed {fixed['fixed']}", fontsize=8)
        else:
            ax.set_title(f"block {b}", fontsize=8)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]}
    shown = [op for op in ops if op in handles]
    _finish_panels(path, fig, axes, len(blocks), "probability", title or "softmax(alpha) per block",
                   [handles[op] for op in shown], shown)


def plot_credit(path: Path, rows: list[dict]) -> None:
    """One panel per block: the mean gate credit dL/dZ of every candidate per epoch, with its
    standard error; a positive credit lowers the candidate's alpha under the paper's estimator,
    and a candidate whose output is zero (``none``) always gets 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    blocks = sorted({r["block"] for r in rows})
    first, last = min(r["epoch"] for r in rows), max(r["epoch"] for r in rows)
    names = list(dict.fromkeys(r["candidate"] for r in rows))
    cols = min(3 if len(blocks) <= 9 else 5, len(blocks))
    nrows = (len(blocks) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.0 * cols, 2.1 * nrows + 0.6), sharex=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, b in zip(axes.flat, blocks):
        for j, name in enumerate(names):
            mine = [r for r in rows if r["block"] == b and r["candidate"] == name]
            if not mine:
                continue
            x = [r["epoch"] for r in mine]
            y = [r["gate_mean"] for r in mine]
            se = [(r["gate_sd"] or 0.0) / r["samples"] ** 0.5 for r in mine]  # one sample: no spread
            ax.errorbar(x, y, yerr=se, color=colors[j % len(colors)], lw=1.4, marker=".", capsize=2, label=name)
        ax.axhline(0, color="0.3", lw=0.7)
        ax.set_title(f"block {b}: {rows[[r['block'] for r in rows].index(b)]['label']}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(first - 0.5, last + 0.5)  # whole epochs, one or many
        if last - first <= 10:
            ax.set_xticks(range(first, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]}
    shown = [n for n in names if n in handles]
    _finish_panels(path, fig, axes, len(blocks), "mean dL/dZ",
                   "gate credit dL/dZ per block and candidate (± standard error)", [handles[n] for n in shown], shown)


def _finish_panels(path: Path, fig, axes, used: int, ylabel: str, title: str, handles: list, labels: list) -> None:
    """Blank the unused panels, label the outer axes, title the figure with one legend, and write it."""
    import matplotlib.pyplot as plt

    for ax in axes.flat[used:]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title, y=0.995, fontsize=11)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.965), ncol=len(labels), fontsize=9,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
