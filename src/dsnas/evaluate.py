"""Accuracy of a network on a split, and BN statistics re-estimation."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn


@torch.no_grad()
def accuracy(model: nn.Module, loader, amp_dtype: torch.dtype | None = None) -> dict:
    """top-1 / top-5 (percent) and mean cross-entropy; summed over ranks under torch.distributed."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss sum, count
    for x, y in loader:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        totals += torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum(),
                               nn.functional.cross_entropy(logits, y, reduction="sum"),
                               torch.full((), float(len(y)), device=device)]).double()  # no host copy
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    model.train(was_training)
    n = max(float(totals[3]), 1.0)
    return {"top1": 100 * float(totals[0]) / n, "top5": 100 * float(totals[1]) / n,
            "loss": float(totals[2]) / n, "images": int(totals[3])}


def reset_bn_stats(model: nn.Module) -> None:
    """Forget BN running statistics (affine weights are kept)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()


@torch.no_grad()
def sync_bn_stats(model: nn.Module) -> None:
    """Under torch.distributed, replace every rank's BN running mean and variance by their mean
    over ranks, so all ranks hold, evaluate and save the same statistics (DDP leaves them per rank)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    stats = [t for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
             for t in (m.running_mean, m.running_var)]
    if not stats:
        return
    flat = torch.cat([t.flatten() for t in stats])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for t, avg in zip(stats, flat.split([t.numel() for t in stats])):
        t.copy_(avg.view_as(t))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, images: int) -> int:
    """Re-estimate BN running statistics as an exact average over ``images`` training images, or
    all that ``loader`` holds if fewer (per rank; under torch.distributed the ranks' averages are
    then averaged). Returns the images used; a loader with no batch leaves the statistics as they were."""
    from .errors import DsnasError

    if len(loader) == 0:
        raise DsnasError("no batch of training images to re-estimate BN statistics on")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    seen = 0
    try:
        for x, _ in loader:
            model(x)
            seen += len(x)
            if seen >= images:
                break
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.train(was_training)
    sync_bn_stats(model)
    return seen


def evaluate_child(arch, child: nn.Module, data_spec: str, bn_recalibrate: int = 0,
                   input_convention: str | None = None) -> dict:
    """Top-1/top-5 of a deployed child (``dsnas eval``) on the test split of ``data_spec``, on the
    GPU when there is one; BN statistics first re-estimated on ``bn_recalibrate`` training images.
    Images are fed as ``input_convention`` prescribes (a published network's channel order and
    mean/std), else normalised by the data's own statistics, as dsnas trains."""
    from .data import Loader, load_data
    from .errors import DsnasError

    s = arch.settings
    data = load_data(data_spec, s["input_size"] if s["input_size"] > 64 else None)
    if input_convention is not None:
        data = data.with_convention(input_convention)
    if (data.num_classes, data.in_channels, data.input_size) != (s["num_classes"], s["in_channels"], s["input_size"]):
        raise DsnasError(f"data {data.name} has {data.num_classes} classes, {data.in_channels} channels, "
                         f"{data.input_size} px; the architecture expects {s['num_classes']}, {s['in_channels']}, "
                         f"{s['input_size']}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    child.to(device)
    if bn_recalibrate:  # batches of 256, or one of all the training images if fewer
        loader = Loader(data, "train", min(256, len(data.train)), 0, device, train=True)
        bn_recalibrate = recalibrate_bn(child, loader, bn_recalibrate)
    metrics = accuracy(child, Loader(data, "test", 256, 0, device, train=False))
    if not math.isfinite(metrics["loss"]):
        raise DsnasError(f"the child's outputs on {data.name} are NaN or infinite: its weights are finite but "
                         "overflow in the network")
    return {"top1": round(metrics["top1"], 2), "top5": round(metrics["top5"], 2), "loss": round(metrics["loss"], 4),
            "images": metrics["images"], "bn_recalibrate": bn_recalibrate, "data": data.name,
            "input_convention": input_convention}
