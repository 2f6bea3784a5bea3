"""A full DSNAS search step and a plain training step of the fixed child, built identically."""

from __future__ import annotations

import time

import torch
from torch import nn

from dsnas import DSNAS
from dsnas.runtime import set_tf32
from dsnas import spaces
from dsnas.train import train_step


class Pair:
    """The supernet with its DSNAS state and optimizers, and the child of one path with its own."""

    def __init__(self, input_size: int, batch: int, width: float = 1.0, num_classes: int = 10, in_channels: int = 3,
                 device: str = "cpu", channels_last: bool = True, amp: torch.dtype | None = None, seed: int = 0,
                 space: str = "shufflenet"):
        torch.manual_seed(seed)
        self.device, self.amp = torch.device(device), amp
        set_tf32(self.device)  # fp32 as a run computes it
        self.space = spaces.build(space, {"num_classes": num_classes, "in_channels": in_channels,
                                          "input_size": input_size, "width": width})
        table = self.space.costs
        self.space.to(self.device)
        self.search = DSNAS(self.space, costs=table, budget=0.0, penalty=1e-3,
                            generator=torch.Generator().manual_seed(seed))
        self.child_path = self.search.sample()
        self.child = self.space.child(self.child_path).to(self.device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.space.to(memory_format=fmt)
        self.child.to(memory_format=fmt)
        self.opt = torch.optim.SGD(self.space.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
        self.arch_opt = torch.optim.Adam(self.search.alphas, lr=1e-3, betas=(0.5, 0.999))
        self.child_opt = torch.optim.SGD(self.child.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch, in_channels, input_size, input_size, generator=g).to(self.device, memory_format=fmt)
        self.y = torch.randint(0, num_classes, (batch,), generator=g).to(self.device)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)  # timing only: no loss scaling

    def _loss(self, model):
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            return self.criterion(model(self.x), self.y)

    def search_step(self, path: list[int] | None = None) -> None:
        """A full search step on a freshly sampled path (or on ``path``, for like-for-like memory)."""
        if path is None:
            self.search.sample()
        else:
            self.search.arm(path)
        train_step(self.space, self.x, self.y, self.criterion, self.opt, self.arch_opt, self.search, self.scaler,
                   self.amp)

    def child_step(self) -> None:
        train_step(self.child, self.x, self.y, self.criterion, self.child_opt, None, None, self.scaler, self.amp)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def search_step_on_the_childs_path(self) -> None:
        """A search step that samples a path (its cost counted) and then trains the child's: where
        the candidates' costs differ, a sampled path would not cost what the child's does."""
        self.search.sample()
        self.search_step(self.child_path)

    def interleaved(self, reps: int, warmup: int = 3, same_path: bool = False) -> tuple[list[float], list[float]]:
        """Seconds of ``reps`` search steps and ``reps`` child steps, taken in turn; with
        ``same_path`` every search step trains the child's path."""
        search = self.search_step_on_the_childs_path if same_path else self.search_step
        for _ in range(warmup):
            search()
            self.child_step()
        search_t, child_t = [], []
        for _ in range(reps):
            search_t.append(self.timed(search))
            child_t.append(self.timed(self.child_step))
        return search_t, child_t

    def timed(self, fn) -> float:
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t


def saved_activation_bytes(fn_forward) -> int:
    """Bytes of the distinct tensors autograd saves for backward during ``fn_forward()``."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn_forward()
    del out
    return sum(seen.values())


def amp_name(dtype: torch.dtype | None) -> str:
    """The autocast dtype of a step as the tables name it (None: fp32)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")

