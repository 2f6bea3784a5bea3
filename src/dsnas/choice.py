"""`Choice`: a choice point that runs one candidate op and gates its output with a mask Z.

The mask is the DSNAS gate Z_i (value 1). After ``loss.backward()`` its gradient holds the
per-block reward r_i = dL/dZ_i = <dL/dy_i, y_i>, which `DSNAS.compute_arch_grads` turns into
the architecture gradient. The gate is an identity in the forward pass (no copy of the
activation), so a search step keeps the memory of a plain training step. Because the reward
needs the op's output as it was, a model must not modify a Choice's output in place.

Choice modules that carry the same label are one decision (`decisions`): they share the state
that a search sets (the active and fixed candidate and the gate mask) while each keeps its own
weights. A cell stacked many times with one architecture is built this way; since every tied
module gates its output with the same mask tensor, autograd sums their rewards into its gradient.

`active_path` runs a model on one path for the length of a ``with`` block (what a cost or a
latency table counts on) and puts the search's state back after it; `freeze` turns a model into
the plain network of one architecture, with each `Choice` replaced by its chosen candidate.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def _flat_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` (same shape) as 1-D tensors whose i-th elements match, read in memory
    order when both are channels-last: a plain reshape would copy each into NCHW order."""
    if a.dim() == 4 and all(t.is_contiguous(memory_format=torch.channels_last) for t in (a, b)):
        a, b = a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)  # both now contiguous, same order
    return a.reshape(-1), b.reshape(-1)


class _Gate(torch.autograd.Function):
    """y -> y (a view), with dL/dZ = sum(dL/dy * y) returned as Z's gradient; Z is 1."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        out = y.view_as(y)
        ctx.z_dtype = z.dtype
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (y,) = ctx.saved_tensors
        grad_z = None
        if ctx.needs_input_grad[1]:
            g, v = _flat_pair(grad, y)
            if g.dtype in (torch.float16, torch.bfloat16):  # the sum cancels heavily: accumulate in fp32
                g, v = g.float(), v.float()
            grad_z = torch.dot(g, v).to(ctx.z_dtype)
        return grad, grad_z


class _Decision:
    """What the search sets on a decision: shared by every `Choice` module of one label."""

    __slots__ = ("active", "fixed", "mask")

    def __init__(self):
        self.active: int = 0
        self.fixed: int | None = None
        self.mask: torch.Tensor | None = None


class Choice(nn.Module):
    """Candidates for one place in a network; only the active one runs.

    ``Choice([op_a, op_b])`` names candidates ``"0"``, ``"1"``; ``Choice({"a": op_a, ...})`` keeps
    the given names (used in architecture files and plots). ``label`` names the decision itself:
    architecture files, checkpoints and latency tables match blocks by it (default: the
    module's path in the network, see `labelled_choices`).
    """

    def __init__(self, candidates: Sequence[nn.Module] | Mapping[str, nn.Module], label: str | None = None):
        super().__init__()
        if label is not None and (not isinstance(label, str) or not label):
            raise ValueError(f"a Choice label must be a non-empty string, got {label!r}")
        self.label = label
        if isinstance(candidates, Mapping):
            names, ops = list(candidates.keys()), list(candidates.values())
        else:
            ops = list(candidates)
            names = [str(i) for i in range(len(ops))]
        if not ops:
            raise ValueError("Choice needs at least one candidate")
        if len(set(names)) != len(names):
            raise ValueError(f"Choice candidate names must be unique, got {names}")
        self.names: list[str] = [str(n) for n in names]
        self.candidates = nn.ModuleList(ops)
        self._decision = _Decision()

    # active, fixed and mask live in the decision, so that tied modules (one label) move together
    @property
    def active(self) -> int:
        return self._decision.active

    @active.setter
    def active(self, value: int) -> None:
        self._decision.active = value

    @property
    def fixed(self) -> int | None:
        return self._decision.fixed

    @fixed.setter
    def fixed(self, value: int | None) -> None:
        self._decision.fixed = value

    @property
    def mask(self) -> torch.Tensor | None:
        return self._decision.mask

    @mask.setter
    def mask(self, value: torch.Tensor | None) -> None:
        self._decision.mask = value

    def __len__(self) -> int:
        return len(self.candidates)

    def index(self, name_or_index: str | int) -> int:
        if isinstance(name_or_index, int):
            if not 0 <= name_or_index < len(self):
                raise ValueError(f"candidate index {name_or_index} out of range 0..{len(self) - 1}")
            return name_or_index
        if name_or_index not in self.names:
            raise ValueError(f"unknown candidate {name_or_index!r}; expected one of {self.names}")
        return self.names.index(name_or_index)

    def fix(self, name_or_index: str | int) -> None:
        """Fix this choice to one candidate for good: it stops being searched."""
        self.fixed = self.active = self.index(name_or_index)
        self.mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.candidates[self.active](x)
        if self.mask is not None and torch.is_grad_enabled():
            y = _Gate.apply(y, self.mask)
        return y

    def extra_repr(self) -> str:
        label = f"label={self.label!r}, " if self.label else ""
        state = f"fixed={self.names[self.fixed]}" if self.fixed is not None else f"active={self.names[self.active]}"
        return f"{label}names={self.names}, {state}"


def decisions(model: nn.Module) -> list[tuple[str, list[Choice]]]:
    """The decisions of ``model``: each label with the `Choice` modules that carry it, in
    ``model.modules()`` order of first appearance. A module's label is its own, else its path in
    ``model`` (``"blocks.3"``). Modules that share a label are tied here: from now on they take
    the first one's state (active and fixed candidate, gate mask). Tied modules must name the
    same candidates."""
    found: dict[str, list[Choice]] = {}
    for name, m in model.named_modules():
        if isinstance(m, Choice):
            found.setdefault(m.label or name or "choice", []).append(m)
    for label, tied in found.items():
        first = tied[0]
        for other in tied[1:]:
            if other.names != first.names:
                raise ValueError(f"Choice modules labelled {label!r} name different candidates: "
                                 f"{first.names} and {other.names}")
            other._decision = first._decision
    return list(found.items())


def labelled_choices(model: nn.Module) -> list[tuple[str, Choice]]:
    """One `Choice` per decision of ``model`` (the first module of its label), with its label:
    what a search samples, fixes and derives. Files name decisions by these labels."""
    return [(label, tied[0]) for label, tied in decisions(model)]


def _picked(found: list[tuple[str, list[Choice]]], choices: Sequence[str | int] | None) -> list[int]:
    """The candidate index of each decision in ``found``: ``choices`` holds one name or index per
    decision, in order; None takes the first candidate of every decision."""
    if choices is None:
        return [0] * len(found)
    if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
        raise ValueError(f"choices must be a list of candidate names or indices, got {type(choices).__name__}")
    if len(choices) != len(found):
        raise ValueError(f"expected {len(found)} choices (one per decision), got {len(choices)}")
    return [tied[0].index(c) for (_, tied), c in zip(found, choices)]


@contextmanager
def active_path(model: nn.Module, choices: Sequence[str | int] | None = None) -> Iterator[list]:
    """Run ``model`` on one path inside the ``with`` block: every decision takes its candidate
    of ``choices`` (names or indices, one per decision in `decisions` order; None: the first
    candidate everywhere), ungated. Each decision's active and fixed candidate and gate mask
    are put back on exit, an exception included, so that counting or timing a path leaves a
    search where it was. Yields the model's `decisions`."""
    found = decisions(model)
    picked = _picked(found, choices)  # a bad choice is refused before any state changes
    saved = [(tied[0].active, tied[0].fixed, tied[0].mask) for _, tied in found]
    try:
        for (_, tied), index in zip(found, picked):
            tied[0].active, tied[0].mask = index, None
        yield found
    finally:
        for (_, tied), (active, fixed, mask) in zip(found, saved):
            tied[0].active, tied[0].fixed, tied[0].mask = active, fixed, mask


def freeze(model: nn.Module, choices: Sequence[str | int], share: bool = True) -> nn.Module:
    """The plain network of one architecture of ``model``: each `Choice` module replaced by its
    candidate of ``choices`` (names or indices, one per decision in `decisions` order; every
    module of a tied label takes the same candidate, each keeping its own weights).

    ``share=True`` keeps the model's own modules (no copy: training the network trains the
    model's chosen candidates); the modules on the way from the root to a `Choice` are shallow
    copies, so the model itself stays as it was. ``share=False`` deep-copies what the network
    holds. A model that is itself a `Choice` gives its chosen candidate."""
    found = decisions(model)
    chosen = {id(m): m.candidates[index] for (_, tied), index in zip(found, _picked(found, choices)) for m in tied}
    frozen = _without_choices(model, chosen, {})
    return frozen if share else copy.deepcopy(frozen)


def _without_choices(module: nn.Module, chosen: dict[int, nn.Module], done: dict[int, nn.Module]) -> nn.Module:
    """``module`` with each `Choice` inside it replaced by its entry of ``chosen``: the module
    itself where it holds none, else a shallow copy whose children are replaced in turn (``done``
    keeps a module reached twice one module)."""
    if id(module) in done:
        return done[id(module)]
    if isinstance(module, Choice):
        result = _without_choices(chosen[id(module)], chosen, done)
    elif not any(isinstance(m, Choice) for m in module.modules()):
        result = module
    else:
        result = copy.copy(module)
        # its own dicts, so that replacing a child here leaves the model's module as it was
        result.__dict__.update({k: copy.copy(v) for k, v in module.__dict__.items() if isinstance(v, dict)})
        for name, child in module.named_children():
            result._modules[name] = _without_choices(child, chosen, done)
    done[id(module)] = result
    return result
