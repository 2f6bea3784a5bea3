"""How fast the ShuffleNet supernet learns from its initial weights, by initialisation and by how
the path is drawn each step, on the embedded Fashion-MNIST subset (28 px, width 0.25, batch 128,
SGD momentum 0.9 at a constant lr, no augmentation), over several seeds:

- fixed: one path (all `shuffle_3x3`) every step, i.e. plain training of one child;
- per network: every step one op drawn for the whole network (all blocks take it);
- per block: every step an op drawn independently per block (SPOS's uniform sampling, and
  DSNAS's warm-up and first search steps, where alpha is still uniform).

Initialisations are the `init` config values (`dsnas.spaces.init_weights`). Reports the mean
training loss over windows of steps, the step at which the loss leaves chance, and the top-1 on
the test split of the path that was trained (fixed) or of a fresh random path per test batch
(batch statistics, since a random path has no running statistics of its own). Writes the
`plateau` section of BENCHMARKS.md.

    python benchmarks/supernet_plateau.py [--steps 300] [--seeds 0 1 2] [--inits torch kaiming aligned]
        [--data DIR --batch 32 --section plateau_digits]

``--data`` takes any folder `dsnas search --data` takes, e.g. the scikit-learn digits built by
`scripts/make_digits_idx.py`.
"""

from __future__ import annotations

import argparse
import random
import statistics

import torch

from _report import machine, write_section

from dsnas.data import Loader, load_data
from dsnas.search import DSNAS
from dsnas import spaces
from dsnas.spaces.shufflenet import INIT_SCHEMES

MODES = ("fixed", "per network", "per block")
LEFT_CHANCE = 2.0  # a 20-step mean loss below this has left chance (ln 10 = 2.303)


def draw(mode: str, search: DSNAS, rng: random.Random) -> None:
    n = len(search.choices)
    if mode == "fixed":
        search.arm([0] * n, gate=False)
    elif mode == "per network":
        search.arm([rng.randrange(4)] * n, gate=False)
    else:
        search.sample(gate=False)


def run(data, mode: str, init: str, steps: int, lr: float, batch: int, seed: int) -> tuple[list[float], float]:
    """Training losses of every step, and the test top-1 (%) afterwards."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    space = spaces.build("shufflenet", {"num_classes": data.num_classes, "in_channels": data.in_channels,
                                        "input_size": data.input_size, "width": 0.25}, init=init)
    search = DSNAS(space, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(space.parameters(), lr=lr, momentum=0.9)
    loader = Loader(data, "train", batch, seed, torch.device("cpu"), pad=0)
    losses, epoch = [], 0
    while len(losses) < steps:
        loader.set_epoch(epoch)
        epoch += 1
        for x, y in loader:
            draw(mode, search, rng)
            loss = torch.nn.functional.cross_entropy(space(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    correct = seen = 0
    with torch.no_grad():  # BN in training mode: batch statistics of the path being tested
        for x, y in Loader(data, "test", 500, seed, torch.device("cpu"), train=False):
            draw(mode, search, rng)
            correct += int((space(x).argmax(1) == y).sum())
            seen += len(y)
    return losses, 100.0 * correct / seen


def left_chance(losses: list[float], window: int = 20) -> int | None:
    for end in range(window, len(losses) + 1):
        if sum(losses[end - window:end]) / window < LEFT_CHANCE:
            return end
    return None


def mean_sd(values: list[float], digits: int = 2) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps (93 = one epoch of the embedded set)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--data", default="embedded")
    p.add_argument("--section", default="plateau", help="the BENCHMARKS.md section to write")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--inits", nargs="+", default=list(INIT_SCHEMES), choices=INIT_SCHEMES)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    data = load_data(args.data)
    edges = [round(i * args.steps / args.windows) for i in range(args.windows + 1)]
    head = " | ".join(f"steps {a + 1}-{b}" for a, b in zip(edges, edges[1:]))
    lines = [f"## Supernet learning from its initial weights, {data.name}, batch {args.batch} "
             "(`benchmarks/supernet_plateau.py`)", "",
             f"Machine: {machine()}.",
             f"Command: `python benchmarks/supernet_plateau.py --data {args.data} --batch {args.batch} --section "
             f"{args.section} --steps {args.steps} --lr {args.lr:g} --seeds "
             f"{' '.join(map(str, args.seeds))} --inits {' '.join(args.inits)} --modes "
             f"{' '.join(repr(m) if ' ' in m else m for m in args.modes)}`", "",
             f"Mean training loss (cross-entropy; ln 10 = 2.303 is chance) of the width-0.25 supernet on {data.name} "
             f"({len(data.train)} training images, {data.input_size} px), batch {args.batch}, SGD with momentum 0.9 at lr "
             f"{args.lr:g}, by initialisation and by how the path is "
             f"drawn each step; mean ± sd over {len(args.seeds)} seed(s). *Leaves chance*: the first step at which the "
             f"mean of the last 20 losses is below {LEFT_CHANCE} (mean over seeds; — where some seed never does). "
             "*Test top-1*: the trained path (fixed) or a fresh random path per test batch of 500 images, "
             "with batch statistics.", "",
             f"| init | sampling | {head} | leaves chance at | test top-1 (%) |",
             "|---|---|" + "---|" * args.windows + "---|---|"]
    for init in args.inits:
        for mode in args.modes:
            windows, exits, tops = [[] for _ in edges[1:]], [], []
            for seed in args.seeds:
                losses, top1 = run(data, mode, init, args.steps, args.lr, args.batch, seed)
                for w, (a, b) in zip(windows, zip(edges, edges[1:])):
                    w.append(sum(losses[a:b]) / (b - a))
                exits.append(left_chance(losses))
                tops.append(top1)
            exit_text = "—" if None in exits else f"{statistics.mean(exits):.0f}"
            lines.append(f"| {init} | {mode} | " + " | ".join(mean_sd(w) for w in windows)
                         + f" | {exit_text} | {mean_sd(tops, 1)} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(args.section, text)


if __name__ == "__main__":
    main()
