"""The training loop: warm-up, search and finetune ("search-from-search") in one run, on CPU,
one GPU or many (torchrun + DistributedDataParallel)."""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm import tqdm

from . import __version__
from .arch import Architecture, load_arch, save_arch
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config
from .data import Loader, Split, hold_out, load_data
from .errors import DsnasError
from .evaluate import accuracy, recalibrate_bn, reset_bn_stats, sync_bn_stats
from .export import save_weights
from .files import write_text
from .report import alpha_rows, plot_alpha, write_alpha_csv, write_candidates_csv
from .search import DSNAS
from .select import best, select
from .spaces import ShuffleNetSpace


# --- process and device ---------------------------------------------------------------------
@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(cfg: Config) -> Runtime:
    """Join the torchrun process group when launched by torchrun; pick device and precision."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise DsnasError(f"device {cfg.device!r} requested but CUDA is not available")
    if want_cuda:
        device = torch.device(cfg.device if ":" in cfg.device else f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world, device, autocast_dtype(cfg.amp, device))


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` is bf16 on a GPU that supports it and off elsewhere; ``bf16``
    and ``fp16`` are honoured on any device (fp16 trains with a gradient scaler)."""
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and bf16_ok else None
    if amp == "bf16" and not bf16_ok:
        raise DsnasError(f"config: amp bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or off")
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def precision_label(amp: str, dtype: torch.dtype | None, method: str) -> str:
    """How a run computes, for the log and metrics.json: ``fp32``, ``bf16``, ``fp16 (scaled)``, or
    ``bf16, search stage fp32`` under ``amp: auto``."""
    name = {torch.bfloat16: "bf16", torch.float16: "fp16 (scaled)"}.get(dtype, "fp32")
    if dtype is not None and stage_autocast(amp, dtype, "search") is None and method == "dsnas":
        name += ", search stage fp32"
    return name


def stage_autocast(amp: str, dtype: torch.dtype | None, stage: str) -> torch.dtype | None:
    """The autocast dtype of a training step. Under ``amp: auto`` the search stage runs in fp32:
    a gate's reward <dL/dy, y> is a small difference of large sums (cancellation of 1e2-1e4 on
    ShuffleNet blocks), and with bf16 activations its error is as large as its spread over
    batches and paths (benchmarks/reward_precision.py). An explicit ``bf16``/``fp16`` is kept."""
    return None if amp == "auto" and stage == "search" else dtype


def train_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion, optimizer, arch_optimizer,
               search: DSNAS, scaler: torch.amp.GradScaler, amp: torch.dtype | None) -> torch.Tensor:
    """One step: forward under autocast, one backward for the weight gradients and the gate
    rewards, then (with ``arch_optimizer``) the DSNAS alpha-step and the weight step. Under fp16 the
    loss is scaled; the alpha-gradients carry the same scale and are unscaled by the scaler like
    the weights' (a step with an inf/NaN gradient is skipped and the scale lowered)."""
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        loss = criterion(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if arch_optimizer is not None:
        search.compute_arch_grads()
        if any(a.grad is not None for a in search.alphas):  # all fixed: nothing to step
            scaler.step(arch_optimizer)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def lr_factor(step: int, steps_per_epoch: int, cfg: Config) -> float:
    """Linear warm-up over ``lr_warmup_epochs``, then cosine to 0 at the last step."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.lr_warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1.0, total - warm))))


CHILD_STAGES = ("finetune", "train")  # stages that train one fixed child


def stage_of(epoch: int, cfg: Config) -> str:
    """warmup / search (dsnas), supernet (spos, random: uniform single paths), then finetune
    of the chosen child; method fixed trains its architecture from the first epoch."""
    if cfg.method == "fixed":
        return "train"
    if epoch >= cfg.search_epochs:
        return "finetune"
    if cfg.method != "dsnas":
        return "supernet"
    return "warmup" if epoch < cfg.warmup_epochs else "search"


def switch_epoch(cfg: Config) -> int:
    """The epoch at whose start the architecture is chosen and fixed."""
    return 0 if cfg.method == "fixed" else cfg.search_epochs


def weight_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only (not on BN or biases)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def new_run_dir(data_name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{data_name}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = Path(f"{base}-{i}")
    return path


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
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# --- the run ------------------------------------------------------------------------------------
@dataclass
class RunResult:
    metrics: dict
    out: Path
    space: ShuffleNetSpace
    search: DSNAS


def run_search(cfg: Config, out: Path | None = None, resume: bool = False, quiet: bool = False) -> RunResult:
    """Run a DSNAS search with ``cfg``; files go to ``out`` (rank 0 writes them)."""
    started = time.time()
    rt = setup_runtime(cfg)
    data = load_data(cfg.data, cfg.input_size or None)
    if isinstance(data.train, Split):
        data.train = data.train.limit(cfg.train_limit, cfg.seed)
        data.test = data.test.limit(cfg.test_limit, cfg.seed)
    held = None
    if cfg.method in ("spos", "random"):  # candidates are ranked on images the weights never see
        data, held = hold_out(data, cfg.select_images or min(10_000, len(data.train) // 10), cfg.seed)
    if cfg.batch_size % rt.world:
        raise DsnasError(f"config: batch_size {cfg.batch_size} is not divisible by the {rt.world} processes")
    per_rank_batch = cfg.batch_size // rt.world
    if per_rank_batch * rt.world > len(data.train):
        raise DsnasError(f"config: batch_size {cfg.batch_size} is larger than the {len(data.train)} training images")

    out = Path(out) if out is not None else new_run_dir(data.name)
    if resume and not (out / "checkpoints").is_dir():
        raise DsnasError(f"nothing to resume: {out} has no checkpoints")
    if rt.main and not resume and out.exists() and any(out.iterdir()):
        raise DsnasError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    torch.manual_seed(cfg.seed)
    space = ShuffleNetSpace(num_classes=data.num_classes, in_channels=data.in_channels, input_size=data.input_size,
                            width=cfg.width, init=cfg.init)
    table = space.costs  # counted once, on the CPU, before the model moves
    given = _given_arch(cfg, space) if cfg.method == "fixed" else None
    cheapest = table.bounds()["min"]
    if cfg.budget_mflops and cfg.method != "fixed" and cfg.budget_mflops < cheapest:
        raise DsnasError(f"config: budget_mflops {cfg.budget_mflops:g} is below the cheapest architecture of "
                         f"this space ({cheapest:.3f} MFLOPs at {data.input_size} px, width {cfg.width:g})")
    space.to(rt.device)
    if cfg.channels_last:
        space.to(memory_format=torch.channels_last)
    search = DSNAS(space, costs=table, budget=cfg.budget_mflops or None, penalty=cfg.penalty,
                   early_fix=cfg.early_fix, generator=torch.Generator().manual_seed(cfg.seed * 7919 + rt.rank))
    optimizer = torch.optim.SGD(weight_groups(space, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    arch_optimizer = torch.optim.Adam(search.alphas, lr=cfg.arch_lr, betas=(cfg.arch_beta1, cfg.arch_beta2))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    if scaler.is_enabled():  # a step skipped for an inf gradient is expected under fp16, not a mistake
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`")

    train_loader = Loader(data, "train", per_rank_batch, cfg.seed, rt.device, rt.rank, rt.world, train=True,
                          workers=cfg.workers, pad=2 if cfg.augment else 0)
    test_loader = Loader(data, "test", max(per_rank_batch, 256), cfg.seed, rt.device, rt.rank, rt.world,
                         train=False, workers=cfg.workers)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, cfg))

    state = {"epoch": 0, "step": 0, "global_step": 0, "alpha_rows": [], "history": [],
             "epoch_loss": torch.zeros(()), "epoch_seen": 0, "selection": None}
    if resume:
        ckpt = load_checkpoint(out / "checkpoints", space.settings.as_dict())
        space.load_state_dict(ckpt["model"])
        search.load_state_dict(ckpt["search"])
        optimizer.load_state_dict(ckpt["optimizer"])
        arch_optimizer.load_state_dict(ckpt["arch_optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        search.generator.set_state(ckpt["sampler_rng"][rt.rank] if rt.rank < len(ckpt["sampler_rng"]) else ckpt["sampler_rng"][0])
        if ckpt.get("rank_bn") and rt.rank < len(ckpt["rank_bn"]):  # this rank's own BN statistics
            space.load_state_dict(ckpt["rank_bn"][rt.rank], strict=False)
        _set_global_rng_states(ckpt)
        state.update(ckpt["progress"])
        started = time.time() - state.pop("elapsed", 0.0)  # wall time counts the work before the interruption
    else:
        state["alpha_rows"] = alpha_rows(0, "init", [c.names for c in search.choices],
                                         [p.tolist() for p in search.probs()], search.fixed())
    if rt.main and not resume:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", yaml.safe_dump({**cfg.to_dict(), "world_size": rt.world}, sort_keys=False))

    log = Logger(out, rt.main, quiet)
    precision = precision_label(cfg.amp, rt.amp_dtype, cfg.method)
    if rt.main and not quiet and not resume:
        b = table.bounds()
        log.line(f"dsnas {__version__}: {data.name}, {len(data.train)} train / {len(data.test)} test images, "
                 f"{data.num_classes} classes, {data.input_size} px; method {cfg.method}; space {table.num_blocks} blocks x "
                 f"{len(space.ops)} ops, {b['min']:.2f}-{b['max']:.2f} MFLOPs; {rt.world} x {rt.device.type}, {precision}; "
                 f"run dir {out}")

    def checkpoint(epoch: int, step: int) -> None:
        rngs, bn = [search.generator.get_state()], None
        if rt.world > 1:  # per-rank state: the sampler and, between epoch ends, BN statistics
            gathered = [None] * rt.world
            dist.all_gather_object(gathered, (rngs[0], bn_buffers(space)))
            rngs, bn = [g[0] for g in gathered], [g[1] for g in gathered]
        if rt.main:
            save_checkpoint(out / "checkpoints", {
                "model": space.state_dict(), "search": search.state_dict(), "optimizer": optimizer.state_dict(),
                "arch_optimizer": arch_optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "sampler_rng": rngs,
                "rank_bn": bn, **_global_rng_states(),
                "progress": {**state, "epoch": epoch, "step": step, "elapsed": time.time() - started},
                "config": cfg.to_dict(),
            }, space.settings.as_dict())

    def choose() -> list[int]:
        """The architecture to fix: the given one, DSNAS's argmax, or the baselines' best."""
        if cfg.method == "fixed":
            return given
        if cfg.method == "dsnas":
            return _derive(search, cfg)
        return select_candidate()

    def inherited(arch, loader, epoch: int) -> dict:
        """Accuracy of ``arch`` with the supernet's weights, BN re-estimated on the training images of ``epoch``."""
        candidate = space.child(list(arch), share=True)
        train_loader.set_epoch(epoch)
        recalibrate_bn(candidate, train_loader, max(1, cfg.eval_bn_recalibrate // rt.world))
        return accuracy(candidate, loader, rt.amp_dtype)

    def select_candidate() -> list[int]:
        held_loader = Loader(held, "test", max(per_rank_batch, 256), cfg.seed, rt.device, rt.rank, rt.world,
                             train=False, workers=cfg.workers)
        bar = tqdm(total=cfg.candidates, desc=f"{cfg.method}: ranking candidates", leave=False,
                   disable=None if rt.main and not quiet else True, dynamic_ncols=True)
        t0 = time.time()

        def score(arch) -> float:  # the same BN images for every candidate
            bar.update(1)
            return inherited(arch, held_loader, cfg.search_epochs)["top1"]

        found = select(cfg.method, [len(c) for c in search.choices], table.total, cfg.budget_mflops or None, score,
                       cfg.candidates, cfg.population, cfg.mutation_prob, cfg.seed)
        bar.close()
        win = best(found)
        state["selection"] = {"method": cfg.method, "evaluated": len(found), "held_out_images": len(held.test),
                              "best_held_out_top1": round(win.score, 2), "best_mflops": round(win.mflops, 3),
                              "generations": max(c.generation for c in found) + 1, "wall_s": round(time.time() - t0, 1)}
        if rt.main:
            write_candidates_csv(out / "candidates.csv", found, [c.names for c in search.choices])
        log.line(f"{cfg.method}: {len(found)} candidates ranked on {len(held.test)} held-out images in "
                 f"{state['selection']['wall_s']:.0f}s; best {win.score:.2f}% at {win.mflops:.2f} MFLOPs")
        return list(win.choices)

    model = space
    ddp = child = compiled = None
    for epoch in range(state["epoch"], cfg.epochs):
        stage = stage_of(epoch, cfg)
        start_step = state["step"] if epoch == state["epoch"] else 0
        if stage == "search" and start_step == 0:
            _early_fix(search, cfg)
        if stage in CHILD_STAGES:
            if child is None:
                if epoch == switch_epoch(cfg) and start_step == 0:  # the switch: fix the choice, reset BN
                    search.fix_all(choose())
                    child = space.child(search.derive(), share=True)
                    reset_bn_stats(child)
                else:  # resumed inside the finetune stage
                    child = space.child(search.derive(), share=True)
            model = child
        if rt.world > 1 and (ddp is None or ddp.module is not model):
            ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                find_unused_parameters=stage not in CHILD_STAGES, broadcast_buffers=False)
        net = ddp if rt.world > 1 else model
        if cfg.compile and rt.device.type == "cuda" and stage in CHILD_STAGES:
            if compiled is None or compiled[0] is not net:  # compile the fixed child once
                compiled = (net, torch.compile(net))
            net = compiled[1]

        train_loader.set_epoch(epoch, start_step)
        space.train()
        loss_sum = torch.zeros((), device=rt.device)
        seen = 0
        first_bad = torch.full((), -1, dtype=torch.long, device=rt.device)
        if start_step:  # resumed mid-epoch: the epoch's running loss continues
            loss_sum += state["epoch_loss"].to(rt.device)
            seen = state["epoch_seen"]
        bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{cfg.epochs} {stage}",
                   leave=False, disable=None if rt.main and not quiet else True, dynamic_ncols=True)
        for step, (x, y) in enumerate(train_loader, start=start_step):
            if stage not in CHILD_STAGES:
                try:
                    search.sample(gate=stage == "search")
                except FloatingPointError:  # alpha took a non-finite step from a non-finite loss
                    _check_finite(first_bad, epoch, out)
                    raise DsnasError("the architecture logits became NaN or infinite; training stopped") from None
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = train_step(net, x, y, criterion, optimizer, arch_optimizer if stage == "search" else None,
                              search, scaler, stage_autocast(cfg.amp, rt.amp_dtype, stage))
            scheduler.step()
            loss_sum += loss
            first_bad = torch.where(torch.isfinite(loss) | (first_bad >= 0), first_bad, step)  # no sync
            seen += 1
            state["global_step"] += 1
            bar.update(1)
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps_per_epoch:
                _check_finite(first_bad, epoch, out)
                state["epoch_loss"], state["epoch_seen"] = loss_sum.detach().cpu().clone(), seen
                checkpoint(epoch, step + 1)
        bar.close()
        _check_finite(first_bad, epoch, out)

        if rt.world > 1:
            check_consistent(search, epoch)
            sync_bn_stats(space)  # the evaluated, checkpointed and saved statistics are the same on every rank
        # evaluate the argmax child (a supernet without alpha has none until the selection)
        arch = search.derive()  # fixed blocks give their fixed op
        if stage == "supernet":
            metrics, mflops = {"top1": None, "top5": None}, None
        else:
            eval_child = child if child is not None else space.child(arch, share=True)
            if stage not in CHILD_STAGES and cfg.eval_bn_recalibrate:
                train_loader.set_epoch(epoch)
                recalibrate_bn(eval_child, train_loader, cfg.eval_bn_recalibrate // rt.world)
            metrics = accuracy(eval_child, test_loader, rt.amp_dtype)
            mflops = table.total(arch)
        train_loss = float(loss_sum) / max(seen, 1)
        if rt.world > 1:
            t = torch.tensor([train_loss], device=rt.device)
            dist.all_reduce(t)
            train_loss = float(t) / rt.world
        fixed = sum(f is not None for f in search.fixed())
        record = {"epoch": epoch + 1, "stage": stage, "train_loss": round(train_loss, 4),
                  "top1": _round(metrics["top1"]), "top5": _round(metrics["top5"]),
                  "entropy": round(search.entropy(), 4), "fixed": fixed, "mflops": _round(mflops, 3),
                  "lr": scheduler.get_last_lr()[0], "elapsed_s": round(time.time() - started, 1)}
        state["history"].append(record)
        state["alpha_rows"] += alpha_rows(epoch + 1, stage, [c.names for c in search.choices],
                                          [p.tolist() for p in search.probs()], search.fixed())
        if stage == "supernet":
            shown = "(no child yet)"
        else:
            shown = (f"top1 {metrics['top1']:5.2f}%  H(alpha) {record['entropy']:.3f}  fixed {fixed:2d}/"
                     f"{len(search.choices)}  child {mflops:.2f} MFLOPs")
        log.line(f"epoch {epoch + 1:3d}/{cfg.epochs} {stage:<8} loss {train_loss:.3f}  {shown}  {record['elapsed_s']:.0f}s")
        log.scalars(epoch + 1, {k: v for k, v in {
            "train/loss": train_loss, "eval/top1": metrics["top1"], "eval/top5": metrics["top5"],
            "alpha/entropy": record["entropy"], "alpha/fixed": fixed, "child/mflops": mflops,
            "train/lr": record["lr"]}.items() if v is not None})
        state["epoch"], state["step"] = epoch + 1, 0
        checkpoint(epoch + 1, 0)
        if rt.main and cfg.method == "dsnas":
            write_alpha_csv(out / "alpha.csv", state["alpha_rows"])

    # --- the result -----------------------------------------------------------------------------
    arch_idx = search.derive() if None not in search.fixed() else choose()  # no finetune stage: choose now
    result = dict(state["history"][-1]) if state["history"] else {}
    if state["history"] and result["top1"] is None:  # ended on a supernet: the chosen child, inherited
        m = inherited(arch_idx, test_loader, cfg.epochs)
        result.update(top1=round(m["top1"], 2), top5=round(m["top5"], 2))
    final_child = space.child(arch_idx).cpu().float()
    costs = table.costs(arch_idx)
    metrics = {"method": cfg.method, "top1": result.get("top1"), "top5": result.get("top5"), **costs,
               "budget_mflops": cfg.budget_mflops or None,
               "within_budget": None if not cfg.budget_mflops else costs["mflops"] <= cfg.budget_mflops,
               "wall_s": round(time.time() - started, 1), "epochs": cfg.epochs, "world_size": rt.world,
               "device": rt.device.type, "precision": precision, "data": data.name, "train_images": len(data.train),
               "test_images": len(data.test), "selection": state["selection"], "history": state["history"]}
    if rt.main:
        names = [c.names[i] for c, i in zip(search.choices, arch_idx)]
        arch = Architecture(names, "shufflenet", space.settings.as_dict(),
                            {**costs, "input_size": data.input_size, "top1": metrics["top1"],
                             "created_by": f"dsnas {__version__} {cfg.method}", "run": str(out)})
        save_arch(arch, out / "arch.yaml")
        save_weights(final_child, out / "child.safetensors", {"format": "dsnas-child/1"})
        write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        if cfg.method == "dsnas":
            plot_alpha(out / "alpha.png", state["alpha_rows"], f"DSNAS on {data.name}: softmax(alpha) per block")
        log.line(f"done in {metrics['wall_s']:.0f}s: child top1 {metrics['top1']}%  top5 {metrics['top5']}%  "
                 f"{costs['mflops']:.2f} MFLOPs  {costs['params_m']:.3f} M params -> {out}")
    log.close()
    if rt.world > 1:
        dist.barrier()
    return RunResult(metrics, out, space, search)


def _global_rng_states() -> dict:
    """torch, numpy and Python generator states, as tensors and plain data (weights_only-safe)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch_rng": torch.get_rng_state(),
            "numpy_rng": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python_rng": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                           "gauss_next": gauss_next}}


def _set_global_rng_states(ckpt: dict) -> None:
    torch.set_rng_state(ckpt["torch_rng"])
    n = ckpt["numpy_rng"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = ckpt["python_rng"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"]), p["gauss_next"]))


def bn_buffers(model: nn.Module) -> dict:
    """BN running statistics (and batch counts) of ``model``, on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def check_consistent(search: DSNAS, epoch: int) -> None:
    """All ranks must hold bitwise the same alpha and fixed set; abort with a clear error if not."""
    alpha = torch.cat([a.detach().flatten().float() for a in search.alphas])
    fixed = torch.tensor([-1 if f is None else f for f in search.fixed()], dtype=torch.float32, device=alpha.device)
    mine = torch.cat([alpha, fixed])
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    bad = [r for r, t in enumerate(gathered) if not torch.equal(t, gathered[0])]
    if bad:
        raise DsnasError(f"ranks {bad} hold a different alpha or fixed set than rank 0 after epoch {epoch + 1}; "
                         "the architecture state diverged, stopping")


def _early_fix(search: DSNAS, cfg: Config) -> list[int]:
    """Early fix at the start of a search epoch; with a budget, a block is fixed only if the
    cheapest completion of the remaining blocks still fits."""
    if not cfg.budget_mflops:
        return search.early_fix()
    before = search.fixed()
    newly = search.early_fix()
    for i in newly:
        floor = search.base_cost + sum(float(c[f]) if f is not None else float(c.min())
                                       for c, f in zip(search.costs, search.fixed()))
        if floor > cfg.budget_mflops:
            search.choices[i].fixed = before[i]
    return [i for i in newly if search.choices[i].fixed is not None]


def _round(value, digits: int = 2):
    return None if value is None else round(value, digits)


def _given_arch(cfg: Config, space: ShuffleNetSpace) -> list[int]:
    """The architecture of method fixed, checked against the space this run's data builds."""
    arch = load_arch(cfg.arch)
    mine = space.settings.as_dict()
    differ = {k: (arch.settings.get(k), v) for k, v in mine.items() if arch.settings.get(k) != v}
    if differ:
        detail = ", ".join(f"{k} {a} (this run: {b})" for k, (a, b) in differ.items())
        raise DsnasError(f"{cfg.arch} does not fit this run's space: {detail}")
    return [c.index(name) for c, name in zip(space.choices, arch.choices)]


def _derive(search: DSNAS, cfg: Config) -> list[int]:
    return search.derive_within(cfg.budget_mflops) if cfg.budget_mflops else search.derive()


def _check_finite(first_bad: torch.Tensor, epoch: int, out: Path) -> None:
    """Stop at the first non-finite loss, before anything from that step on is saved."""
    step = int(first_bad)
    if step >= 0:
        last = out / "checkpoints" / "last.pt"
        kept = f"the last good checkpoint is kept in {last}" if last.exists() else "no checkpoint had been written yet"
        raise DsnasError(f"the loss became NaN or infinite at step {step + 1} of epoch {epoch + 1}; training "
                         f"stopped and {kept} (try a lower lr)")
