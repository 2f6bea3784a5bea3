"""Search methods as objects: what each one trains at every epoch, how it picks the child at the
switch, what it needs from the configuration.

- ``dsnas``: warm-up (weights only), search (weights and alpha, early fix), then finetune of the
  argmax child (repaired to fit the budget).
- ``spos`` / ``random``: a supernet trained with uniform single paths, then candidates ranked by
  held-out top-1 with inherited weights (evolution or uniform draws, `select`), then finetune of
  the best.
- ``fixed``: one given architecture trained from scratch, from the first epoch.

The training loop (`train.py`) asks the run's method; no other module tests the method's name.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

from tqdm import tqdm

from .cost import UNITS
from .data import Loader
from .errors import DsnasError, quote
from .evaluate import accuracy, recalibrate_bn
from .select import best, select, selection_summary

if TYPE_CHECKING:
    from .build import Run
    from .config import Config


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise DsnasError(f"config: {msg}")


class Method:
    """The rules of one method. ``stages``: the stages it runs, in order; ``searches``: whether it
    chooses the architecture (under the budget); ``learns_alpha``: whether it trains the
    architecture logits (and records them); ``holds_out``: whether it keeps training images away
    from the weights, to rank candidates on."""

    name: str
    stages: tuple[str, ...]
    searches = True
    learns_alpha = False
    holds_out = False

    def stage(self, epoch: int, cfg: Config) -> str:
        """The stage of ``epoch`` (counted from 0)."""
        raise NotImplementedError

    def switch_epoch(self, cfg: Config) -> int:
        """The epoch at whose start the architecture is chosen and fixed."""
        return cfg.search_epochs

    def choose(self, run: Run) -> list[int]:
        """The architecture to fix at the switch (candidate indices, one per block)."""
        raise NotImplementedError

    def check(self, cfg: Config) -> None:
        """Refuse, in one line, settings this method cannot run with."""
        _need(not cfg.arch, "arch is only used with method fixed")


class DsnasMethod(Method):
    name = "dsnas"
    stages = ("warmup", "search", "finetune")
    learns_alpha = True

    def stage(self, epoch: int, cfg: Config) -> str:
        if epoch >= cfg.search_epochs:
            return "finetune"
        return "warmup" if epoch < cfg.warmup_epochs else "search"

    def choose(self, run: Run) -> list[int]:
        return run.search.derive_within()


class RankingMethod(Method):
    """A baseline without architecture logits: uniform single-path training, then a ranking."""

    stages = ("supernet", "finetune")
    holds_out = True

    def __init__(self, name: str):
        self.name = name

    def stage(self, epoch: int, cfg: Config) -> str:
        return "finetune" if epoch >= cfg.search_epochs else "supernet"

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        for key in ("candidates", "eval_bn_recalibrate"):
            _need(getattr(cfg, key) >= 1, f"method {self.name} needs {key} >= 1, got {getattr(cfg, key)}")
        _need(cfg.population >= 2, f"population must be >= 2, got {cfg.population}")

    def choose(self, run: Run) -> list[int]:
        """Rank candidates by held-out top-1 with inherited weights; the best wins."""
        cfg, rt = run.cfg, run.rt
        held = Loader(run.held, "test", max(cfg.batch_size // rt.world, 256), cfg.seed, rt.device, rt.rank, rt.world,
                      train=False, workers=cfg.workers, jpeg_decode=cfg.jpeg_decode)
        bar = tqdm(total=cfg.candidates, desc=f"{self.name}: ranking candidates", leave=False,
                   disable=None if run.log.enabled else True, dynamic_ncols=True)
        t0 = time.time()
        losses = {}  # held-out cross-entropy, recorded beside the top-1 that ranks

        def score(arch) -> float:  # the same BN images for every candidate
            bar.update(1)
            m = inherited(run, arch, held, cfg.search_epochs)
            losses[arch] = m["loss"]
            return m["top1"]

        cost = functools.partial(run.costs.total, metric=cfg.cost_metric)
        found = select(self.name, [len(c) for c in run.search.choices], cost, cfg.budget, score, cfg.candidates,
                       cfg.population, cfg.mutation_prob, cfg.seed)
        bar.close()
        metric = cfg.cost_metric
        run.state.selection = selection_summary(self.name, found, len(run.held.test), time.time() - t0, metric)
        run.files.candidates(found, [c.names for c in run.search.choices], losses, metric)
        win = best(found)
        run.log.line(f"{self.name}: {len(found)} candidates ranked on {len(run.held.test)} held-out images in "
                     f"{run.state.selection['wall_s']:.0f}s; best {win.score:.2f}% at {win.cost:.2f} {UNITS[metric]}")
        return list(win.choices)


class FixedMethod(Method):
    """One given architecture (``arch``), trained from scratch."""

    name = "fixed"
    stages = ("train",)
    searches = False

    def stage(self, epoch: int, cfg: Config) -> str:
        return "train"

    def switch_epoch(self, cfg: Config) -> int:
        return 0

    def check(self, cfg: Config) -> None:
        _need(bool(cfg.arch), "method fixed needs arch (an architecture file)")
        _need(not cfg.init_from, "init_from starts a supernet (methods dsnas, spos, random); method fixed trains "
              "its architecture from scratch")

    def choose(self, run: Run) -> list[int]:
        return run.given


METHODS: dict[str, Method] = {m.name: m for m in (DsnasMethod(), RankingMethod("spos"), RankingMethod("random"),
                                                  FixedMethod())}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise DsnasError(f"config: method must be one of {', '.join(METHODS)}, got {quote(name)}")
    return METHODS[name]


def method_of(cfg: Config) -> Method:
    """The method a configuration runs."""
    return get_method(cfg.method)


def inherited(run: Run, arch: list[int], loader: Loader, epoch: int) -> dict:
    """Accuracy of ``arch`` with the supernet's weights, BN re-estimated on the training images of ``epoch``."""
    candidate = run.space.child(list(arch), share=True)
    run.train_loader.set_epoch(epoch)
    recalibrate_bn(candidate, run.train_loader, max(1, run.cfg.eval_bn_recalibrate // run.rt.world))
    return accuracy(candidate, loader, run.rt.amp_dtype)
