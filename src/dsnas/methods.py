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

import time
from dataclasses import dataclass, field
from typing import Callable

from tqdm import tqdm

from .config import Config
from .cost import UNITS
from .errors import DsnasError, quote
from .search import DSNAS
from .select import Candidate, best, evolution_search, random_search, selection_summary


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise DsnasError(f"config: {msg}")


@dataclass(frozen=True)
class Stage:
    """What a stage's steps do. ``samples_path``: each step trains one path of the supernet
    (drawn from alpha, uniform while alpha is flat); ``gates``: the path's outputs carry the DSNAS
    gates, whose gradients are the rewards; ``learns_alpha``: alpha takes a step (and early fix
    applies); ``trains_child``: the steps train one fixed child; ``has_child``: there is an argmax
    child to evaluate; ``full_precision``: under amp auto its steps run in fp32, as the gate
    rewards need (`runtime.stage_autocast`)."""

    name: str
    samples_path: bool = False
    gates: bool = False
    learns_alpha: bool = False
    trains_child: bool = False
    has_child: bool = True
    full_precision: bool = False

    def __str__(self) -> str:
        return self.name


WARMUP = Stage("warmup", samples_path=True)
SEARCH = Stage("search", samples_path=True, gates=True, learns_alpha=True, full_precision=True)
SUPERNET = Stage("supernet", samples_path=True, has_child=False)  # a baseline's uniform single paths
FINETUNE = Stage("finetune", trains_child=True)
TRAIN = Stage("train", trains_child=True)  # method fixed: the given child from scratch


@dataclass
class Switch:
    """What a method chooses the child from at the switch: the search (its alpha and candidates),
    the run's settings, the cost of an architecture in the budget's unit, and for the rankings
    the held-out accuracy of an architecture with inherited weights."""

    search: DSNAS
    cfg: Config
    cost: Callable[[tuple], float]
    given: list[int] | None = None                  # method fixed: the architecture to train
    score: Callable[[tuple], dict] | None = None     # held-out metrics (top1, loss) of an architecture
    held_images: int = 0
    progress: bool = False                           # show a progress bar while ranking


@dataclass
class Chosen:
    """The child a method chose (candidate indices, one per block) and, for a ranking, what it
    found: every candidate in the order evaluated, their held-out losses and a summary."""

    choices: list[int]
    found: list[Candidate] = field(default_factory=list)
    losses: dict = field(default_factory=dict)
    summary: dict | None = None
    line: str = ""                                   # one line for the run's log


class Method:
    """The rules of one method. ``stages``: the stages it runs, in order; ``searches``: whether it
    chooses the architecture (under the budget); ``learns_alpha``: whether it trains the
    architecture logits (and records them); ``holds_out``: whether it keeps training images away
    from the weights, to rank candidates on."""

    name: str
    stages: tuple[Stage, ...]
    searches = True
    learns_alpha = False
    holds_out = False

    def stage(self, epoch: int, cfg: Config) -> Stage:
        """The stage of ``epoch`` (counted from 0)."""
        raise NotImplementedError

    def switch_epoch(self, cfg: Config) -> int:
        """The epoch at whose start the architecture is chosen and fixed."""
        return cfg.search_epochs

    def choose(self, switch: Switch) -> Chosen:
        """The architecture to fix at the switch."""
        raise NotImplementedError

    def check(self, cfg: Config) -> None:
        """Refuse, in one line, settings this method cannot run with."""
        _need(not cfg.arch, "arch is only used with method fixed")


class DsnasMethod(Method):
    name = "dsnas"
    stages = (WARMUP, SEARCH, FINETUNE)
    learns_alpha = True

    def stage(self, epoch: int, cfg: Config) -> Stage:
        if epoch >= cfg.search_epochs:
            return FINETUNE
        return WARMUP if epoch < cfg.warmup_epochs else SEARCH

    def choose(self, switch: Switch) -> Chosen:
        return Chosen(switch.search.derive_within())


class RankingMethod(Method):
    """A baseline without architecture logits: uniform single-path training, then a ranking of
    candidates by held-out top-1 with inherited weights (`rank`)."""

    stages = (SUPERNET, FINETUNE)
    holds_out = True

    def stage(self, epoch: int, cfg: Config) -> Stage:
        return FINETUNE if epoch >= cfg.search_epochs else SUPERNET

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        for key in ("candidates", "eval_bn_recalibrate"):
            _need(getattr(cfg, key) >= 1, f"method {self.name} needs {key} >= 1, got {getattr(cfg, key)}")
        _need(cfg.population >= 2, f"population must be >= 2, got {cfg.population}")

    def rank(self, sizes: list[int], cost, score, cfg: Config) -> list[Candidate]:
        """Every candidate evaluated, in order (`select`)."""
        raise NotImplementedError

    def choose(self, switch: Switch) -> Chosen:
        cfg, metric = switch.cfg, switch.cfg.cost_metric
        bar = tqdm(total=cfg.candidates, desc=f"{self.name}: ranking candidates", leave=False,
                   disable=None if switch.progress else True, dynamic_ncols=True)
        t0 = time.time()
        losses = {}  # held-out cross-entropy, recorded beside the top-1 that ranks

        def score(arch) -> float:
            bar.update(1)
            m = switch.score(arch)
            losses[arch] = m["loss"]
            return m["top1"]

        found = self.rank([len(c) for c in switch.search.choices], switch.cost, score, cfg)
        bar.close()
        summary = selection_summary(self.name, found, switch.held_images, time.time() - t0, metric)
        win = best(found)
        line = (f"{self.name}: {len(found)} candidates ranked on {switch.held_images} held-out images in "
                f"{summary['wall_s']:.0f}s; best {win.score:.2f}% at {win.cost:.2f} {UNITS[metric]}")
        return Chosen(list(win.choices), found, losses, summary, line)


class SposMethod(RankingMethod):
    name = "spos"

    def rank(self, sizes, cost, score, cfg: Config) -> list[Candidate]:
        return evolution_search(sizes, cost, cfg.budget, score, cfg.candidates, cfg.population, cfg.mutation_prob,
                                cfg.seed)


class RandomMethod(RankingMethod):
    name = "random"

    def rank(self, sizes, cost, score, cfg: Config) -> list[Candidate]:
        return random_search(sizes, cost, cfg.budget, score, cfg.candidates, cfg.seed)


class FixedMethod(Method):
    """One given architecture (``arch``), trained from scratch."""

    name = "fixed"
    stages = (TRAIN,)
    searches = False

    def stage(self, epoch: int, cfg: Config) -> Stage:
        return TRAIN

    def switch_epoch(self, cfg: Config) -> int:
        return 0

    def check(self, cfg: Config) -> None:
        _need(bool(cfg.arch), "method fixed needs arch (an architecture file)")
        _need(not cfg.init_from, "init_from starts a supernet (methods dsnas, spos, random); method fixed trains "
              "its architecture from scratch")

    def choose(self, switch: Switch) -> Chosen:
        return Chosen(list(switch.given))


METHODS: dict[str, Method] = {m.name: m for m in (DsnasMethod(), SposMethod(), RandomMethod(), FixedMethod())}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise DsnasError(f"config: method must be one of {', '.join(METHODS)}, got {quote(name)}")
    return METHODS[name]
