"""Cost tables: MFLOPs (MMRazor ResourceEstimator rules), MACs (conv + linear only), params and,
from a measured table (`latency.py`), latency in ms.

Counting rules per layer, batch 1: conv = k_h*k_w*C_in*C_out/groups*H_out*W_out; BatchNorm =
2 x output elements; ReLU = output elements; pooling = input elements; linear = in x out.

A table holds one entry per candidate of every decision plus the cost of everything outside the
choices (``base``), so the cost of any architecture is a sum of table entries: no model copies,
no counting forward passes per query. A decision taken by several tied `Choice` modules (one
label, e.g. an edge of a stacked cell) costs the sum of its modules' costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .choice import Choice, active_path

METRICS = ("mflops", "macs_m", "params_m")  # counted; "latency_ms" comes from a measured table
UNITS = {"mflops": "MFLOPs", "macs_m": "M MACs", "params_m": "M params", "latency_ms": "ms"}
_POOLS = (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


def _layer_cost(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """(flops, macs) of one leaf layer for a batch-1 input."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        per_pos = kh * kw * module.in_channels * module.out_channels / module.groups
        flops = per_pos * out.shape[-1] * out.shape[-2]
        if module.bias is not None:
            flops += out.numel()
        return flops, per_pos * out.shape[-1] * out.shape[-2]
    if isinstance(module, nn.Linear):
        macs = module.in_features * module.out_features * (out.numel() // module.out_features)
        return macs, macs
    if isinstance(module, _BNS):
        return (2 if module.affine else 1) * out.numel(), 0.0
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return out.numel(), 0.0
    if isinstance(module, _POOLS):
        return inp.numel(), 0.0
    return 0.0, 0.0


def count(module: nn.Module, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Run ``module`` once on ``x`` (batch 1) and count its cost. Returns (costs, output)."""
    totals = {"mflops": 0.0, "macs_m": 0.0}

    def hook(mod, inputs, output):
        flops, macs = _layer_cost(mod, inputs[0], output)
        totals["mflops"] += flops / 1e6
        totals["macs_m"] += macs / 1e6

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = module(x)
    finally:
        for h in handles:
            h.remove()
    totals["params_m"] = sum(p.numel() for p in module.parameters()) / 1e6
    return totals, out


@dataclass
class CostTable:
    """``entries[metric][block][candidate]`` plus ``base[metric]`` for the fixed parts; blocks
    are in the network's order, named by ``labels``, their candidates by ``names``."""

    names: list[list[str]]
    entries: dict[str, list[list[float]]]
    base: dict[str, float]
    labels: list[str] = field(default_factory=list)

    @property
    def num_blocks(self) -> int:
        return len(self.names)

    def total(self, choices, metric: str = "mflops") -> float:
        """Cost of the architecture ``choices`` (indices or op names, one per block)."""
        if metric not in self.entries:
            raise ValueError(f"unknown metric {metric!r}; expected one of {list(self.entries)}")
        if len(choices) != self.num_blocks:
            raise ValueError(f"expected {self.num_blocks} choices, got {len(choices)}")
        total = self.base[metric]
        for names, row, c in zip(self.names, self.entries[metric], choices):
            total += row[c if isinstance(c, int) else names.index(c)]
        return total

    def costs(self, choices) -> dict[str, float]:
        return {m: round(self.total(choices, m), 3) for m in self.entries}

    def with_latency(self, table) -> "CostTable":
        """This table plus ``latency_ms`` from a measured `latency.LatencyTable`."""
        rows, base = table.entries(self.names, self.labels)
        return CostTable(self.names, {**self.entries, "latency_ms": rows}, {**self.base, "latency_ms": base},
                         self.labels)

    def bounds(self, metric: str = "mflops") -> dict[str, float]:
        """min / mean (uniform sampling) / max over the whole space."""
        rows = self.entries[metric]
        return {
            "min": self.base[metric] + sum(min(r) for r in rows),
            "mean": self.base[metric] + sum(sum(r) / len(r) for r in rows),
            "max": self.base[metric] + sum(max(r) for r in rows),
        }

    def tensors(self, metric: str = "mflops") -> list[torch.Tensor]:
        return [torch.tensor(row, dtype=torch.float32) for row in self.entries[metric]]


def cost_table(model: nn.Module, example: torch.Tensor) -> CostTable:
    """Build the table for any model made of `Choice` blocks whose candidates share an output shape.

    One forward on candidate 0 everywhere records each `Choice` module's input; each candidate
    is then counted on that input and summed over the modules of its decision. ``base`` is the
    whole model minus the choices.
    """
    was_training = model.training
    model.eval()  # counting must not touch BN running statistics
    try:
        with active_path(model) as found:
            whole, inputs = _count_recording_inputs(model, example, [m for _, tied in found for m in tied])
            entries = _candidate_entries(found, inputs)
    finally:
        model.train(was_training)
    base = {m: whole[m] - sum(row[0] for row in entries[m]) for m in METRICS}
    # parameters of unchosen candidates were counted in `whole`; base holds only the fixed parts
    base["params_m"] = (sum(p.numel() for p in model.parameters()) / 1e6
                        - sum(sum(row) for row in entries["params_m"]))
    return CostTable([list(tied[0].names) for _, tied in found], entries, base, [label for label, _ in found])


def _count_recording_inputs(model: nn.Module, example: torch.Tensor,
                            modules: list[Choice]) -> tuple[dict, list[torch.Tensor]]:
    """The cost of one forward of ``model`` on its active path, and the input each of
    ``modules`` saw in it: what every candidate of that module is then counted on."""
    inputs: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, a, i=i: inputs.__setitem__(i, a[0]))
               for i, m in enumerate(modules)]
    try:
        whole, _ = count(model, example)
    finally:
        for h in handles:
            h.remove()
    return whole, [inputs[i] for i in range(len(modules))]


def _candidate_entries(found: list[tuple[str, list[Choice]]], inputs: list[torch.Tensor]) -> dict[str, list]:
    """``entries[metric][decision][candidate]``: each candidate counted on the input its module
    saw, summed over the modules of a decision (``inputs`` in the order of ``found``'s modules)."""
    entries = {m: [] for m in METRICS}
    seen = iter(inputs)
    for _, tied in found:
        rows = [[0.0] * len(tied[0]) for _ in METRICS]
        for choice in tied:
            x = next(seen)
            for k, op in enumerate(choice.candidates):
                counted = count(op, x)[0]
                for row, m in zip(rows, METRICS):
                    row[k] += counted[m]
        for row, m in zip(rows, METRICS):
            entries[m].append(row)
    return entries
