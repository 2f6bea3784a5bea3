"""Everything a run builds before its first step: runtime, data, supernet, search, optimizers
and loaders (`Run`), either fresh or restored from the run's checkpoint. `open_run` builds it,
after `plan.check_run` has checked the whole configuration, and owns the run folder's lock and
the logger, which it releases whatever happens."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .arch import load_arch
from .checkpoint import RUN_KEYS, RunState, check_run_payload, checkpoint_limits, load_checkpoint, restore_run
from .config import COSTS, Config, run_world_size
from .cost import UNITS, CostTable
from .data import Data, Loader, Split, hold_out, load_data
from .errors import DsnasError
from .files import PreemptionSignals, RunLock
from .latency import load_latency
from .methods import Method, get_method
from .plan import check_run, search_rules, space_settings
from .ranks import RankWatch
from .report import Logger, RunFiles, alpha_rows, check_run_dir, new_run_dir
from .runtime import Runtime, check_same_on_every_rank, precision_label, set_threads, setup_runtime
from .search import DSNAS
from .warm_start import start_from
from . import spaces


@dataclass
class Run:
    """Everything one run builds, and the network each stage trains."""

    cfg: Config                        # checked (`plan.check_run`)
    method: Method
    rt: Runtime
    data: Data
    held: Data | None                  # spos/random: images the weights never see, for ranking
    out: Path
    space: nn.Module                   # the supernet, built through the space registry
    costs: CostTable                   # the space's cost per candidate (MFLOPs, params, measured latency)
    search: DSNAS
    optimizer: torch.optim.Optimizer
    arch_optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    train_loader: Loader
    test_loader: Loader
    given: list[int] | None            # method fixed: the architecture to train
    state: RunState                    # where the run is, restored on resume
    started: float                     # wall clock of the start, less the time before an interruption
    log: Logger
    files: RunFiles                    # what the run writes into its folder (rank 0)
    # what the training loop sets as it goes
    child: nn.Module | None = None     # the fixed child, from the switch on
    ddp: nn.Module | None = None
    compiled: tuple | None = None      # (network, its torch.compile'd form)
    signals: PreemptionSignals = field(default_factory=PreemptionSignals)  # what the loop stops on
    watch: RankWatch = field(default_factory=lambda: RankWatch(None, 0, 1, 0))  # names a lost rank (torchrun)

    @property
    def precision(self) -> str:
        return precision_label(self.cfg.amp, self.rt.amp_dtype, self.method.stages, self.rt.tf32)

    @property
    def parts(self) -> dict:
        return _parts(self.space, self.search, self.optimizer, self.arch_optimizer, self.scheduler, self.scaler)


def _parts(model, search, optimizer, arch_optimizer, scheduler, scaler) -> dict:
    """What a checkpoint saves and restores, by name (`checkpoint.STATEFUL`)."""
    return {"model": model, "search": search, "optimizer": optimizer, "arch_optimizer": arch_optimizer,
            "scheduler": scheduler, "scaler": scaler}


@contextlib.contextmanager
def open_run(cfg: Config, out: Path | None = None, resume: bool = False, quiet: bool = False) -> Iterator[Run]:
    """The `Run` of ``cfg`` in ``out`` (a new folder under runs/ if None), restored from its
    checkpoint on ``resume``. Rank 0 holds the folder's lock and the logger until the block ends,
    however it ends."""
    with contextlib.ExitStack() as held:
        yield _prepare(check_run(cfg), out, resume, quiet, held)


def _prepare(cfg: Config, out: Path | None, resume: bool, quiet: bool, held: contextlib.ExitStack) -> Run:
    started = time.time()
    rt = setup_runtime(cfg.device, cfg.amp, cfg.deterministic, cfg.dist_timeout_s)
    check_same_on_every_rank(int(resume), rt, "whether to resume")
    threads = set_threads(cfg.threads, rt)
    method = get_method(cfg.method)
    if out is not None and (rt.main or resume):  # refuse a used folder before the data is read
        check_run_dir(Path(out), resume)
        if resume and (Path(out) / "config.yaml").is_file():
            _check_world(Path(out), rt.world)
    data, held_out = _run_data(cfg, method, rt)
    out = Path(out) if out is not None else new_run_dir(data.name)
    torch.manual_seed(cfg.seed)
    space = spaces.build(cfg.space, space_settings(cfg, data.num_classes, data.in_channels, data.input_size), cfg.init,
                         cfg.max_model_gb)
    started_from = None
    if cfg.init_from and not resume:  # on resume the checkpoint holds the weights the run has trained since
        started_from = start_from(space, cfg.init_from)
    given = None if method.searches else _given_arch(cfg, space)
    costs = _cost_table(cfg, space)
    _check_budget(cfg, method, costs, space)
    training = _training(cfg, rt, data, space, costs)
    if rt.main:  # one writer per run folder, from here to the end of the run
        held.callback(RunLock(out).acquire().release)
        check_run_dir(out, resume)  # under the lock: another writer may have used the folder since the first check
    files = RunFiles(out, rt.main)
    if resume:
        state = _restored(cfg, out, space, training, rt)
        started = time.time() - state.elapsed  # wall time counts the work before the interruption
    else:
        state = RunState(alpha_rows=alpha_rows(training["search"], 0, "init"))
        files.config({**cfg.to_dict(), "threads": threads, "world_size": rt.world})
    log = Logger(out, rt.main, quiet)
    held.callback(log.close)
    run = Run(cfg=cfg, method=method, rt=rt, data=data, held=held_out, out=out, space=space, costs=costs, given=given,
              state=state, started=started, log=log, files=files, **training)
    if not resume:
        log.line(_first_line(run))
    if started_from is not None:
        log.line(f"supernet weights from {started_from}")
    return run


def _restored(cfg: Config, out: Path, space: nn.Module, training: dict, rt: Runtime) -> RunState:
    """The state of the run's last checkpoint, restored into ``training``'s parts."""
    parts = _parts(space, *(training[k] for k in ("search", "optimizer", "arch_optimizer", "scheduler", "scaler")))
    fits = partial(check_run_payload, parts=parts, epochs=cfg.epochs, steps_per_epoch=len(training["train_loader"]))
    ckpt = load_checkpoint(out / "checkpoints", space.settings.as_dict(), required=RUN_KEYS, space=space.name,
                           limits=checkpoint_limits(space), check=fits)
    return restore_run(ckpt, parts, rt.rank)


def _first_line(run: Run) -> str:
    data, space, b = run.data, run.space, run.space.costs.bounds()
    return (f"dsnas {__version__}: {data.name}, {len(data.train)} train / {len(data.test)} test images, "
            f"{data.num_classes} classes, {data.input_size} px; method {run.method.name}; space "
            f"{space.costs.num_blocks} blocks x {max(map(len, space.costs.names))} ops, {b['min']:.2f}-{b['max']:.2f} "
            f"MFLOPs; {run.rt.world} x {run.rt.device.type}, {run.precision}; run dir {run.out}")


def _check_world(out: Path, world: int) -> None:
    """A run resumes on as many processes as it started on: each rank restores its own path sampler
    and BN statistics, and the batches are split by rank, so another count would continue with
    other numerics."""
    started = run_world_size(out)
    if started is not None and started != world:
        raise DsnasError(f"{out} was started on {started} process(es) and this launch has {world}; resume it with "
                         f"{started} (torchrun --nproc-per-node, --nnodes), or start a new run")


def _run_data(cfg: Config, method: Method, rt: Runtime) -> tuple[Data, Data | None]:
    """The run's images (capped by train/test_limit) and, for spos/random, the held-out images
    on which candidates are ranked."""
    data = load_data(cfg.data, cfg.input_size or None)
    if isinstance(data.train, Split):
        data.train = data.train.limit(cfg.train_limit, cfg.seed)
        data.test = data.test.limit(cfg.test_limit, cfg.seed)
    held = None
    if method.holds_out:
        data, held = hold_out(data, cfg.select_images or min(10_000, len(data.train) // 10), cfg.seed)
    if cfg.batch_size % rt.world:
        raise DsnasError(f"config: batch_size {cfg.batch_size} is not divisible by the {rt.world} processes")
    if cfg.batch_size < 2 * rt.world:
        raise DsnasError(f"config: batch_size {cfg.batch_size} gives fewer than 2 images per process; BatchNorm "
                         "needs at least two")
    if cfg.batch_size > len(data.train):
        raise DsnasError(f"config: batch_size {cfg.batch_size} is larger than the {len(data.train)} training images")
    return data, held


def _cost_table(cfg: Config, space: nn.Module) -> CostTable:
    """The space's counted costs (on the CPU, before the model moves), with the measured
    latencies when the run's cost is latency."""
    if cfg.cost != "latency":
        return space.costs
    return space.costs.with_latency(load_latency(cfg.latency_table, space.settings.as_dict(), space.name))


def _check_budget(cfg: Config, method: Method, costs: CostTable, space: nn.Module) -> None:
    cheapest = costs.bounds(cfg.cost_metric)["min"]
    if cfg.budget and method.searches and cfg.budget < cheapest:
        key, unit = COSTS[cfg.cost][1], UNITS[cfg.cost_metric]
        shape = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in space.settings.as_dict().items() if k not in spaces.DATA_SETTINGS)
        raise DsnasError(f"config: {key} {cfg.budget:g} is below the cheapest architecture of this space "
                         f"({cheapest:.3f} {unit} at {space.settings.input_size} px, {shape})")


def _training(cfg: Config, rt: Runtime, data: Data, space: nn.Module, costs: CostTable) -> dict:
    """The search, optimizers, scheduler, scaler, loss and loaders of a run, by `Run` field name."""
    space.to(rt.device)
    if cfg.channels_last:
        space.to(memory_format=torch.channels_last)
    try:
        search = DSNAS(space, costs=costs, metric=cfg.cost_metric, budget=cfg.budget, penalty=cfg.penalty,
                       early_fix=cfg.early_fix, generator=torch.Generator().manual_seed(cfg.seed * 7919 + rt.rank),
                       **search_rules(cfg, space))
    except ValueError as e:  # a never_pick that names no candidate of this space
        raise DsnasError(f"config: {e}") from None
    optimizer = torch.optim.SGD(weight_groups(space, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    arch_optimizer = torch.optim.Adam(search.alphas, lr=cfg.arch_lr, betas=(cfg.arch_beta1, cfg.arch_beta2))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    if scaler.is_enabled():  # a step skipped for an inf gradient is expected under fp16, not a mistake
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`")
    train_loader = run_loader(cfg, rt, data, "train", train=True)
    steps = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, cfg))
    return {"search": search, "optimizer": optimizer, "arch_optimizer": arch_optimizer, "scheduler": scheduler,
            "scaler": scaler, "criterion": criterion, "train_loader": train_loader,
            "test_loader": run_loader(cfg, rt, data, "test", train=False)}


def run_loader(cfg: Config, rt: Runtime, data: Data, split: str, train: bool) -> Loader:
    """This rank's batches of ``data``'s ``split``: the run's batch (augmented, shuffled per
    epoch) for training; for evaluation at least 256 images a batch, in order."""
    batch = cfg.batch_size // rt.world
    if train:
        return Loader(data, split, batch, cfg.seed, rt.device, rt.rank, rt.world, train=True, workers=cfg.workers,
                      pad=2 if cfg.augment else 0, jpeg_decode=cfg.jpeg_decode)
    return Loader(data, split, max(batch, 256), cfg.seed, rt.device, rt.rank, rt.world, train=False,
                  workers=cfg.workers, jpeg_decode=cfg.jpeg_decode)


def _given_arch(cfg: Config, space: nn.Module) -> list[int]:
    """The architecture of method fixed, checked against the space this run's data builds and
    matched to its blocks by label."""
    arch = load_arch(cfg.arch)
    mine = space.settings.as_dict()
    differ = {k: (arch.settings.get(k), mine.get(k)) for k in {**mine, **arch.settings}
              if arch.settings.get(k) != mine.get(k) and k not in space.child_free_settings}
    if arch.space != space.name:
        raise DsnasError(f"{cfg.arch} is an architecture of the {arch.space} space, this run searches {space.name}")
    # an MMRazor file or an architecture string names ops only: the run's data and settings size the network
    if differ and arch.names_settings:
        detail = ", ".join(f"{k} {a} (this run: {b})" for k, (a, b) in differ.items())
        raise DsnasError(f"{cfg.arch} does not fit this run's space: {detail}")
    op_of = dict(zip(arch.labels, arch.choices))
    try:
        return [choice.index(op_of[label]) for label, choice in zip(space.labels, space.choices)]
    except ValueError as e:  # an op this run's candidates leave out (a child-free setting such as nb201's ops)
        raise DsnasError(f"{cfg.arch} does not fit this run's space: {e}") from None


def weight_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only (not on BN or biases)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, steps_per_epoch: int, cfg: Config) -> float:
    """Linear warm-up over ``lr_warmup_epochs``, then cosine to 0 at the last step."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.lr_warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1.0, total - warm))))
