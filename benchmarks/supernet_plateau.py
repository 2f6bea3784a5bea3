"""How fast the ShuffleNet supernet learns from random weights under three sampling schemes, on
the embedded Fashion-MNIST subset (28 px, width 0.25, batch 128, SGD lr 0.1, no augmentation):

- fixed: one path (all `shuffle_3x3`) every step, i.e. plain training of one child;
- per network: every step one op drawn for the whole network (all blocks take it);
- per block: every step an op drawn independently per block (SPOS's uniform sampling, and
  DSNAS's warm-up and first search steps, where alpha is still uniform).

Prints the mean training loss over windows of steps and writes the `plateau` section of
BENCHMARKS.md.

    python benchmarks/supernet_plateau.py [--steps 93] [--lrs 0.1] [--seed 0]
"""

from __future__ import annotations

import argparse
import random

import torch

from _report import machine, write_section

from dsnas.data import Loader, load_data
from dsnas.search import DSNAS
from dsnas.spaces import ShuffleNetSpace

MODES = ("fixed", "per network", "per block")


def losses(mode: str, steps: int, lr: float, seed: int) -> list[float]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    data = load_data()
    space = ShuffleNetSpace(num_classes=10, in_channels=1, input_size=28, width=0.25)
    search = DSNAS(space, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(space.parameters(), lr=lr, momentum=0.9)
    loader = Loader(data, "train", 128, seed, torch.device("cpu"), pad=0)
    out = []
    while len(out) < steps:
        for x, y in loader:
            if mode == "fixed":
                search.arm([0] * 20, gate=False)
            elif mode == "per network":
                search.arm([rng.randrange(4)] * 20, gate=False)
            else:
                search.sample(gate=False)
            loss = torch.nn.functional.cross_entropy(space(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            out.append(loss.item())
            if len(out) == steps:
                break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=93, help="training steps (93 = one epoch of the embedded set)")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.1])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    edges = [round(i * args.steps / args.windows) for i in range(args.windows + 1)]
    head = " | ".join(f"steps {a + 1}-{b}" for a, b in zip(edges, edges[1:]))
    lines = ["## Supernet learning from random weights (`benchmarks/supernet_plateau.py`)", "",
             f"Machine: {machine()}.",
             f"Command: `python benchmarks/supernet_plateau.py --steps {args.steps} --lrs "
             f"{' '.join(map(str, args.lrs))} --seed {args.seed}`", "",
             "Mean training loss (cross-entropy; ln 10 = 2.303 is chance) of the width-0.25 supernet on the embedded "
             "subset, batch 128, SGD with momentum 0.9 at a constant lr, by how the path is drawn each step.", "",
             f"| sampling | lr | {head} |", "|---|---|" + "---|" * args.windows]
    last = {}
    for lr in args.lrs:
        for mode in MODES:
            ls = losses(mode, args.steps, lr, args.seed)
            means = [sum(ls[a:b]) / (b - a) for a, b in zip(edges, edges[1:])]
            last[(lr, mode)] = means[-1]
            lines.append(f"| {mode} | {lr:g} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
            print(lines[-1], flush=True)
    stuck = [lr for lr in args.lrs if last[(lr, "per block")] > 2.2]
    block = ", ".join(f"{last[(lr, 'per block')]:.3f}" for lr in args.lrs)
    fixed = ", ".join(f"{last[(lr, 'fixed')]:.3f}" for lr in args.lrs)
    lines += ["", f"Over the last window per-block sampling is at {block}, against {fixed} for the fixed path"
              + (f"; at lr {', '.join(map(str, stuck))} it has not left chance." if stuck else ".")
              + " A likely reason: in the stride-2 blocks every channel passes through op-specific weights, so "
              "while the weights are random each block sees a different random projection of its input at every step. A short "
              "search therefore starts on an untrained supernet, and the architecture logits get little signal "
              "until the supernet leaves this plateau."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("plateau", text)


if __name__ == "__main__":
    main()
