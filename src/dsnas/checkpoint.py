"""Checkpoints: ``last.pt`` (and the one before it, ``prev.pt``), written atomically and read
with ``torch.load(weights_only=True)``: tensors and plain containers only, never pickled code.

A run's checkpoint holds the state of everything that trains (`STATEFUL`), every random
generator, and the run's progress (`RunState`), so that a resumed run continues bitwise as if
it had never stopped."""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import re
import sys
import textwrap
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import DsnasError, one_line, quote
from .files import atomic_path
from .spaces import DEFAULT_SPACE

FORMAT = "dsnas-checkpoint/2"  # /2: the space's name, and the architecture state keyed by block label
READS = (FORMAT, "dsnas-checkpoint/1")
LAST, PREV = "last.pt", "prev.pt"


def save_checkpoint(folder: Path, payload: dict, settings: dict, space: str = DEFAULT_SPACE) -> Path:
    """Write ``folder/last.pt`` atomically; the previous ``last.pt`` becomes ``prev.pt``."""
    last = folder / LAST
    try:
        with atomic_path(last) as tmp:
            with open(tmp, "wb") as f:
                torch.save({"format": FORMAT, "space": space, "settings": settings, **payload}, f)
            if last.exists():
                os.replace(last, folder / PREV)  # a kill before the next rename leaves prev.pt, which loading reads
    except DsnasError as e:
        raise DsnasError(f"{e}; training stopped. The checkpoints already in {folder} are intact: fix the cause, "
                         f"then continue with --resume {folder.parent}") from None
    return last


PICKLE_MAX_BYTES = 64 << 20  # the non-tensor part of a checkpoint: progress, history, config, RNG states


def checkpoint_limits(model: torch.nn.Module) -> tuple[int, int]:
    """The largest plausible (member, total) uncompressed sizes of a checkpoint of ``model``:
    no tensor larger than its largest one (or 1 MiB, for the RNG states), and in all the model,
    the optimizer's momentum and every rank's BN statistics within four times the model."""
    sizes = [t.numel() * t.element_size() for t in model.state_dict().values()]
    return max(max(sizes, default=0), 1 << 20), 4 * sum(sizes) + PICKLE_MAX_BYTES


def _check_members(path: Path, limits: tuple[int, int]) -> None:
    """Refuse, from the zip directory alone, a checkpoint whose members would inflate past
    ``limits`` (a 4.9 MB file can hold a deflated 5 GB tensor) before torch reads any of them."""
    member_max, total_max = limits
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DsnasError(f"checkpoint {path} is corrupt or truncated: not a checkpoint archive ({e})") from None
    total = sum(m.file_size for m in members)
    for m in members:
        top = PICKLE_MAX_BYTES if m.filename.endswith(".pkl") else member_max
        if m.file_size > top:
            raise DsnasError(f"checkpoint {path} is corrupt or tampered with: its member {quote(m.filename)} "
                             f"inflates to {m.file_size} bytes, over the {top} any part of this run's "
                             "checkpoint can take")
    if total > total_max:
        raise DsnasError(f"checkpoint {path} is corrupt or tampered with: it inflates to {total} bytes, over the "
                         f"{total_max} a checkpoint of this run can take")


def _read(path: Path, settings: dict | None, required: tuple, space: str | None,
          limits: tuple[int, int] | None = None) -> dict:
    if limits is not None:
        _check_members(path, limits)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols and TorchScript: the file is judged here
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DsnasError(f"checkpoint {path} holds objects other than tensors and plain data; refusing to load "
                         f"it ({_reason(e)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise DsnasError(f"checkpoint {path} is corrupt or truncated: {_reason(e)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READS:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise DsnasError(f"checkpoint {path} has format {quote(found)}; this version reads "
                         f"{' and '.join(map(repr, READS))}")
    if space is not None and ckpt.get("space", DEFAULT_SPACE) != space:
        raise DsnasError(f"checkpoint {path} is for the {quote(ckpt.get('space'))} space, this run uses {space}")
    if settings is not None and ckpt.get("settings") != settings:
        raise DsnasError(f"checkpoint {path} is for space settings {quote(ckpt.get('settings'))}, this run uses {settings}")
    lacking = [k for k in required if k not in ckpt]
    if lacking:
        raise DsnasError(f"checkpoint {path} is incomplete: it lacks {', '.join(lacking)}")
    return ckpt


def _reason(e: Exception) -> str:
    """The cause in one of torch's load errors, without its advice on loading unsafely: the first
    sentence of the first line after "WeightsUnpickler error:", shortened at a word."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split("WeightsUnpickler error:", 1)[-1]
    line = next((t for t in text.splitlines() if t.strip()), "")
    return textwrap.shorten(line.split(". ")[0].rstrip("."), 160, placeholder=" ...")


def _warn(text: str) -> None:
    print(one_line(text), file=sys.stderr)


def load_checkpoint(folder: Path, settings: dict | None, warn=_warn, required: tuple = (),
                    space: str | None = DEFAULT_SPACE,
                    limits: tuple[int, int] | None = None) -> dict:
    """The newest loadable checkpoint in ``folder`` (``last.pt``, else ``prev.pt``) that holds
    every key of ``required`` and, with ``limits`` (`checkpoint_limits`), no member that would
    inflate past them; of ``space`` with ``settings`` unless they are None (the caller compares)."""
    errors = []
    for name in (LAST, PREV):
        path = folder / name
        if not path.exists():
            continue
        try:
            ckpt = _read(path, settings, required, space, limits)
        except DsnasError as e:
            errors.append(str(e))
            continue
        if errors:
            warn(f"dsnas: warning: {errors[0]}; resuming from {path} instead")
        return ckpt
    if errors:
        raise DsnasError(errors[-1] if len(errors) == 1 else f"{errors[0]}; and {errors[1]}")
    raise DsnasError(f"no checkpoint to resume in {folder}")


# --- a run's checkpoint -------------------------------------------------------------------------
STATEFUL = ("model", "search", "optimizer", "arch_optimizer", "scheduler", "scaler")
RUN_KEYS = (*STATEFUL, "sampler_rng", "torch_rng", "numpy_rng", "python_rng", "progress")


@dataclass
class RunState:
    """A run's progress: where it is, and what it has recorded so far."""

    epoch: int = 0                      # the epoch to run next
    step: int = 0                       # the step of ``epoch`` to run next (mid-epoch checkpoints)
    global_step: int = 0
    alpha_rows: list = field(default_factory=list)   # softmax(alpha) per block after every epoch
    history: list = field(default_factory=list)      # one record per finished epoch
    epoch_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # running sum, mid-epoch
    epoch_seen: int = 0
    selection: dict | None = None       # what a baseline's candidate ranking found
    elapsed: float = 0.0                # wall seconds of the run so far

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, progress: dict) -> "RunState":
        return cls(**{f.name: progress[f.name] for f in dataclasses.fields(cls) if f.name in progress})


def run_payload(parts: dict, state: RunState, sampler_rngs: list, rank_bn: list | None, config: dict) -> dict:
    """The checkpoint of a run: ``parts`` maps each name of `STATEFUL` to its object;
    ``sampler_rngs`` and ``rank_bn`` hold the per-rank path sampler states and BN statistics."""
    return {**{k: parts[k].state_dict() for k in STATEFUL}, "sampler_rng": sampler_rngs, "rank_bn": rank_bn,
            **global_rng_states(), "progress": state.to_dict(), "config": config}


def restore_run(ckpt: dict, parts: dict, rank: int) -> RunState:
    """Load a `run_payload` into ``parts`` and the global generators; returns the progress."""
    for k in STATEFUL:
        if ckpt.get(k):  # a checkpoint of an fp32 run may hold an empty scaler state
            try:
                parts[k].load_state_dict(ckpt[k])
            except (ValueError, KeyError, RuntimeError) as e:
                raise DsnasError(f"the checkpoint's {k} state does not fit this run: {str(e).splitlines()[0][:200]}") \
                    from None
    rngs = ckpt["sampler_rng"]
    parts["search"].generator.set_state(rngs[rank] if rank < len(rngs) else rngs[0])
    if ckpt.get("rank_bn") and rank < len(ckpt["rank_bn"]):  # this rank's own BN statistics
        parts["model"].load_state_dict(ckpt["rank_bn"][rank], strict=False)
    set_global_rng_states(ckpt)
    return RunState.from_dict(ckpt["progress"])


def bn_buffers(model: torch.nn.Module) -> dict:
    """BN running statistics (and batch counts) of ``model``, on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def global_rng_states() -> dict:
    """torch, numpy and Python generator states, as tensors and plain data (weights_only-safe)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch_rng": torch.get_rng_state(),
            "numpy_rng": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python_rng": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                           "gauss_next": gauss_next}}


def set_global_rng_states(ckpt: dict) -> None:
    torch.set_rng_state(ckpt["torch_rng"])
    n = ckpt["numpy_rng"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = ckpt["python_rng"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"]), p["gauss_next"]))
