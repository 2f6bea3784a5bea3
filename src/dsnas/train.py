"""The training loop: warm-up, search and finetune ("search-from-search") in one run, on CPU,
one GPU or many (torchrun + DistributedDataParallel).

`run_search` reads top to bottom: open the run (`open_run`), then for every epoch pick the
network of its stage (`enter_stage`), train it (`train_epoch`), evaluate, record and checkpoint
(`end_epoch`), and finally write the chosen child (`finish`)."""

from __future__ import annotations

import dataclasses
import functools
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from . import __version__
from .arch import Architecture
from .checkpoint import bn_buffers, run_payload, save_checkpoint
from .config import Config
from .data import Loader
from .errors import DsnasError, Preempted
from .files import PreemptionSignals
from .evaluate import accuracy, recalibrate_bn, reset_bn_stats, sync_bn_stats
from .methods import Stage, Switch
from .ranks import watched
from .report import alpha_rows, credit_rows
from .run import Run, open_run, run_loader
from .runtime import check_consistent, largest_over_ranks, mean_over_ranks, stage_autocast, wrap_ddp
from .search import DSNAS


# The host-device syncs left in a search step on a GPU (the loader's indices and augmentation draws
# reach the device through pinned memory; the loss, its sum and its finiteness check stay there):
# - `DSNAS.sample` copies softmax(alpha) to the host, where the path is drawn with a CPU generator
#   (the same paths on every device), and the forward needs the path;
# - under amp fp16, `GradScaler.step` reads whether a gradient overflowed, once per optimizer;
# - under torchrun, DDP copies back which parameters no rank used (the unsampled candidates).
def train_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion, optimizer, arch_optimizer,
               search: DSNAS, scaler: torch.amp.GradScaler, amp: torch.dtype | None) -> torch.Tensor:
    """One step: forward under autocast, one backward for the weight gradients and the gate
    rewards, then (with ``arch_optimizer``) the DSNAS alpha-step and the weight step. Under fp16 the
    loss is scaled; the alpha-gradients (rewards and resource term alike) carry the same scale and
    are unscaled by the scaler like the weights' (a step with an inf/NaN gradient is skipped and
    the scale lowered)."""
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        loss = criterion(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if arch_optimizer is not None:
        if scaler.is_enabled():  # the rewards carry the loss scale, so the resource term must too
            search.compute_arch_grads(loss_scale=scaler.scale(torch.ones((), device=loss.device)), loss=loss)
        else:
            search.compute_arch_grads(loss=loss)
        if any(a.grad is not None for a in search.alphas):  # all fixed: nothing to step
            scaler.step(arch_optimizer)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


# --- the run ------------------------------------------------------------------------------------
@dataclass
class RunResult:
    metrics: dict
    out: Path
    space: nn.Module
    search: DSNAS


def run_search(cfg: Config, out: Path | None = None, resume: bool = False, quiet: bool = False) -> RunResult:
    """Run a DSNAS search (or a baseline, or a fixed architecture) with ``cfg``; files go to
    ``out`` (rank 0 writes them)."""
    with open_run(cfg, out, resume, quiet) as run, PreemptionSignals() as run.signals, \
            watched(run.rt.store, run.rt.rank, run.rt.world, run.rt.timeout_s, run.out) as run.watch:
        for epoch in range(run.state.epoch, run.cfg.epochs):  # SIGTERM, SIGUSR1: checkpoint, then stop
            stage = run.method.stage(epoch, run.cfg)
            start_step = run.state.step if epoch == run.state.epoch else 0
            net = enter_stage(run, stage, epoch, start_step)
            loss_sum, seen = train_epoch(run, net, stage, epoch, start_step)
            end_epoch(run, stage, epoch, loss_sum, seen)
            stop_if_preempted(run, epoch + 1, 0)
        return finish(run)


def enter_stage(run: Run, stage: Stage, epoch: int, start_step: int) -> nn.Module:
    """The network this epoch trains: the supernet, or from the switch on the fixed child (BN
    statistics reset at the switch), wrapped in DDP and compiled when the run asks for it."""
    cfg, search = run.cfg, run.search
    model = run.space
    if stage.learns_alpha and start_step == 0:
        search.early_fix()
    if stage.trains_child:
        if run.child is None:
            at_switch = epoch == run.method.switch_epoch(cfg) and start_step == 0
            if at_switch:
                search.fix_all(choose_child(run))
            run.child = run.space.child(search.derive(), share=True)
            if at_switch:
                reset_bn_stats(run.child)
        model = run.child
    if run.rt.world > 1 and (run.ddp is None or run.ddp.module is not model):
        run.ddp = wrap_ddp(model, run.rt, find_unused=not stage.trains_child)
    net = run.ddp if run.rt.world > 1 else model
    if cfg.compile and run.rt.device.type == "cuda" and stage.trains_child:
        if run.compiled is None or run.compiled[0] is not net:  # compile the fixed child once
            run.compiled = (net, torch.compile(net))
        net = run.compiled[1]
    return net


def train_epoch(run: Run, net: nn.Module, stage: Stage, epoch: int, start_step: int) -> tuple[torch.Tensor, int]:
    """Train one epoch from ``start_step``; returns the summed loss and the steps it covers.
    Checkpoints every ``checkpoint_every`` steps; stops at the first non-finite loss."""
    cfg, rt, search, state = run.cfg, run.rt, run.search, run.state
    run.train_loader.set_epoch(epoch, start_step)
    run.space.train()
    loss_sum, seen = torch.zeros((), device=rt.device), 0
    first_bad = torch.full((), -1, dtype=torch.long, device=rt.device)
    if start_step:  # resumed mid-epoch: the epoch's running loss continues
        loss_sum += state.epoch_loss.to(rt.device)
        seen = state.epoch_seen
    steps = len(run.train_loader)
    bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{cfg.epochs} {stage}", leave=False,
               disable=None if run.log.enabled else True, dynamic_ncols=True)
    arch_optimizer = run.arch_optimizer if stage.learns_alpha else None
    amp = stage_autocast(cfg.amp, rt.amp_dtype, stage.full_precision)
    for step, (x, y) in enumerate(run.train_loader, start=start_step):
        run.watch.where = f"step {step + 1} of epoch {epoch + 1}"  # what a lost rank's message says
        if stage.samples_path:
            try:
                search.sample(gate=stage.gates)
            except FloatingPointError:  # alpha took a non-finite step from a non-finite loss
                _check_finite(first_bad, epoch, run.out)
                raise DsnasError("the architecture logits became NaN or infinite; training stopped") from None
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = train_step(net, x, y, run.criterion, run.optimizer, arch_optimizer, search, run.scaler, amp)
        run.scheduler.step()
        loss_sum += loss
        first_bad = torch.where(torch.isfinite(loss) | (first_bad >= 0), first_bad, step)  # no sync
        seen += 1
        state.global_step += 1
        bar.update(1)
        if step + 1 == steps:  # end_epoch checkpoints the epoch's end, and stops there if a signal came
            continue
        signum = largest_over_ranks(run.signals.signum, rt)
        if signum or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0):
            _check_finite(first_bad, epoch, run.out)
            state.epoch_loss, state.epoch_seen = loss_sum.detach().cpu().clone(), seen
            checkpoint(run, epoch, step + 1)
        if signum:
            raise _preempted(run, signum, epoch, step + 1)
    bar.close()
    _check_finite(first_bad, epoch, run.out)
    return loss_sum, seen


def stop_if_preempted(run: Run, epoch: int, step: int) -> None:
    """After the checkpoint of (``epoch``, ``step``): stop every rank if any received a preemption
    signal, with the command that continues."""
    signum = largest_over_ranks(run.signals.signum, run.rt)
    if signum:
        raise _preempted(run, signum, epoch, step)


def _preempted(run: Run, signum: int, epoch: int, step: int) -> Preempted:
    name = signal.Signals(signum).name
    return Preempted(f"dsnas: {name}: stopped before step {step + 1} of epoch {epoch + 1}, checkpointed in "
                     f"{run.out / 'checkpoints'}; continue with: dsnas search --resume {run.out}", signum,
                     show=run.rt.main)


def end_epoch(run: Run, stage: Stage, epoch: int, loss_sum: torch.Tensor, seen: int) -> None:
    """Evaluate the argmax child, record the epoch (history, alpha, log, TensorBoard) and checkpoint."""
    cfg, rt, search, state = run.cfg, run.rt, run.search, run.state
    if rt.world > 1:
        check_consistent(search.alphas, search.fixed(), epoch)
        sync_bn_stats(run.space)  # the evaluated, checkpointed and saved statistics are the same on every rank
    metrics, mflops = _evaluate_epoch(run, stage, epoch)
    train_loss = mean_over_ranks(float(loss_sum) / max(seen, 1), rt)
    fixed = sum(f is not None for f in search.fixed())
    record = {"epoch": epoch + 1, "stage": stage.name, "train_loss": round(train_loss, 4),
              "top1": _round(metrics["top1"]), "top5": _round(metrics["top5"]),
              "entropy": round(search.entropy(), 4), "fixed": fixed, "mflops": _round(mflops, 3),
              "lr": run.scheduler.get_last_lr()[0], "elapsed_s": round(time.time() - run.started, 1)}
    state.history.append(record)
    state.alpha_rows += alpha_rows(search, epoch + 1, stage.name)
    credit = credit_rows(search, search.take_credit_stats(), epoch + 1, stage.name)
    state.credit_rows += credit
    shown = "(no child yet)" if not stage.has_child else (
        f"top1 {metrics['top1']:5.2f}%  H(alpha) {record['entropy']:.3f}  fixed {fixed:2d}/"
        f"{len(search.choices)}  child {mflops:.2f} MFLOPs")
    run.log.line(f"epoch {epoch + 1:3d}/{cfg.epochs} {stage.name:<8} loss {train_loss:.3f}  {shown}  "
                 f"{record['elapsed_s']:.0f}s")
    run.log.scalars(epoch + 1, {"train/loss": train_loss, "eval/top1": metrics["top1"], "eval/top5": metrics["top5"],
                                "alpha/entropy": record["entropy"], "alpha/fixed": fixed, "child/mflops": mflops,
                                "train/lr": record["lr"],
                                **{f"credit/{r['label']}/{r['candidate']}": r["gate_mean"] for r in credit}})
    state.epoch, state.step = epoch + 1, 0
    checkpoint(run, epoch + 1, 0)
    if run.method.learns_alpha:
        run.files.alpha(state.alpha_rows)
        run.files.credit(state.credit_rows)


def _evaluate_epoch(run: Run, stage: Stage, epoch: int) -> tuple[dict, float | None]:
    """Test accuracy and MFLOPs of the argmax child (a supernet without alpha has none until
    the selection); during the search with BN statistics re-estimated for that child."""
    if not stage.has_child:
        return {"top1": None, "top5": None}, None
    arch = run.search.derive()  # fixed blocks give their fixed op
    child = run.child if run.child is not None else run.space.child(arch, share=True)
    if not stage.trains_child and run.cfg.eval_bn_recalibrate:
        run.train_loader.set_epoch(epoch)
        recalibrate_bn(child, run.train_loader, run.cfg.eval_bn_recalibrate // run.rt.world)
    return accuracy(child, run.test_loader, run.rt.amp_dtype), run.costs.total(arch)


def checkpoint(run: Run, epoch: int, step: int) -> None:
    """Save the run at (``epoch``, ``step``), with every rank's sampler state and, under
    torchrun, every rank's BN statistics (they differ between epoch ends)."""
    rngs, bn = [run.search.generator.get_state()], None
    if run.rt.world > 1:
        gathered = [None] * run.rt.world
        dist.all_gather_object(gathered, (rngs[0], bn_buffers(run.space)))
        rngs, bn = [g[0] for g in gathered], [g[1] for g in gathered]
    if run.rt.main:
        at = dataclasses.replace(run.state, epoch=epoch, step=step, elapsed=time.time() - run.started)
        payload = run_payload(run.parts, at, rngs, bn, run.cfg.to_dict())
        save_checkpoint(run.out / "checkpoints", payload, run.space.settings.as_dict(), run.space.name)


def finish(run: Run) -> RunResult:
    """The chosen child, its metrics and the run's files."""
    cfg, rt, search, state, table = run.cfg, run.rt, run.search, run.state, run.costs
    arch_idx = search.derive() if None not in search.fixed() else choose_child(run)  # no finetune: choose now
    result = dict(state.history[-1]) if state.history else {}
    if state.history and result["top1"] is None:  # ended on a supernet: the chosen child, inherited
        m = inherited(run, arch_idx, run.test_loader, cfg.epochs)
        result.update(top1=round(m["top1"], 2), top5=round(m["top5"], 2))
    costs = table.costs(arch_idx)
    metrics = {"method": run.method.name, "top1": result.get("top1"), "top5": result.get("top5"), **costs,
               "cost": cfg.cost, "budget": cfg.budget, "budget_mflops": cfg.budget_mflops or None,
               "within_budget": None if not cfg.budget else costs[cfg.cost_metric] <= cfg.budget,
               "wall_s": round(time.time() - run.started, 1), "epochs": cfg.epochs, "world_size": rt.world,
               "device": rt.device.type, "precision": run.precision, "data": run.data.name,
               "train_images": len(run.data.train), "test_images": len(run.data.test),
               "selection": state.selection, "history": state.history}
    if rt.main:
        chosen = {label: c.names[i] for label, c, i in zip(search.labels, search.choices, arch_idx)}
        arch = Architecture(chosen, run.space.name, run.space.settings.as_dict(),
                            {**costs, "input_size": run.data.input_size, "top1": metrics["top1"],
                             "created_by": f"dsnas {__version__} {run.method.name}", "run": str(run.out)})
        run.files.results(arch, run.space.child(arch_idx).cpu().float(), metrics,
                          state.alpha_rows if run.method.learns_alpha else None,
                          f"DSNAS on {run.data.name}: softmax(alpha) per block",
                          state.credit_rows if run.method.learns_alpha else None)
        run.log.line(f"done in {metrics['wall_s']:.0f}s: child top1 {metrics['top1']}%  top5 {metrics['top5']}%  "
                     f"{costs['mflops']:.2f} MFLOPs  {costs['params_m']:.3f} M params -> {run.out}")
    if rt.world > 1:
        dist.barrier()
    return RunResult(metrics, run.out, run.space, search)


def choose_child(run: Run) -> list[int]:
    """The method's choice at the switch, and what a ranking found recorded (metrics, candidates.csv, log)."""
    cfg, score, held_images = run.cfg, None, 0
    if run.method.holds_out:
        held = run_loader(cfg, run.rt, run.held, "test", train=False)
        score, held_images = functools.partial(inherited, run, loader=held, epoch=cfg.search_epochs), len(run.held.test)
    switch = Switch(run.search, cfg, functools.partial(run.costs.total, metric=cfg.cost_metric), run.given, score,
                    held_images, progress=run.log.enabled)
    chosen = run.method.choose(switch)
    if chosen.summary is not None:
        run.state.selection = chosen.summary
        run.files.candidates(chosen.found, [c.names for c in run.search.choices], chosen.losses, cfg.cost_metric)
    if chosen.line:
        run.log.line(chosen.line)
    return chosen.choices


def inherited(run: Run, arch: list[int], loader: Loader, epoch: int) -> dict:
    """Accuracy of ``arch`` with the supernet's weights, BN re-estimated on the training images of ``epoch``."""
    candidate = run.space.child(list(arch), share=True)
    run.train_loader.set_epoch(epoch)
    recalibrate_bn(candidate, run.train_loader, max(1, run.cfg.eval_bn_recalibrate // run.rt.world))
    return accuracy(candidate, loader, run.rt.amp_dtype)


def _round(value, digits: int = 2):
    return None if value is None else round(value, digits)


def _check_finite(first_bad: torch.Tensor, epoch: int, out: Path) -> None:
    """Stop at the first non-finite loss, before anything from that step on is saved."""
    step = int(first_bad)
    if step >= 0:
        last = out / "checkpoints" / "last.pt"
        kept = f"the last good checkpoint is kept in {last}" if last.exists() else "no checkpoint had been written yet"
        raise DsnasError(f"the loss became NaN or infinite at step {step + 1} of epoch {epoch + 1}; training "
                         f"stopped and {kept} (try a lower lr)")
