"""Checkpoints: ``last.pt`` (and the one before it, ``prev.pt``), written atomically and read
with ``torch.load(weights_only=True)``: tensors and plain containers only, never pickled code.

A run's checkpoint holds the state of everything that trains (`STATEFUL`), every random
generator, and the run's progress (`RunState`), so that a resumed run continues bitwise as if
it had never stopped."""

from __future__ import annotations

import dataclasses
import math
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
    if settings is not None and _settings_with_defaults(ckpt, space) != settings:
        raise DsnasError(f"checkpoint {path} is for space settings {quote(ckpt.get('settings'))}, this run uses {settings}")
    lacking = [k for k in required if k not in ckpt]
    if lacking:
        raise DsnasError(f"checkpoint {path} is incomplete: it lacks {', '.join(lacking)}")
    return ckpt


def _settings_with_defaults(ckpt: dict, space: str | None) -> dict | None:
    """The checkpoint's space settings with the defaults of any setting added since it was written
    (so that a run checkpointed by an earlier version resumes); as written where its space or its
    settings are unknown here, and None where they are not a mapping."""
    from .spaces import settings_of

    found = ckpt.get("settings")
    if not isinstance(found, dict):
        return None
    try:
        return settings_of(ckpt.get("space", space or DEFAULT_SPACE), found).as_dict()
    except (DsnasError, KeyError, ValueError):
        return found


def _reason(e: Exception) -> str:
    """The cause in one of torch's load errors, without its advice on loading unsafely: the first
    sentence of the first line after "WeightsUnpickler error:", shortened at a word."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split("WeightsUnpickler error:", 1)[-1]
    line = next((t for t in text.splitlines() if t.strip()), "")
    return textwrap.shorten(line.split(". ")[0].rstrip("."), 160, placeholder=" ...")


def _warn(text: str) -> None:
    print(one_line(text), file=sys.stderr)


def load_checkpoint(folder: Path, settings: dict | None, warn=_warn, required: tuple = (),
                    space: str | None = DEFAULT_SPACE, limits: tuple[int, int] | None = None, check=None) -> dict:
    """The newest loadable checkpoint in ``folder`` (``last.pt``, else ``prev.pt``) that holds
    every key of ``required``, with ``limits`` (`checkpoint_limits`) no member that would
    inflate past them, of ``space`` with ``settings`` unless they are None (the caller compares),
    and that ``check(ckpt)`` (e.g. `check_run_payload`) finds fits the run: it raises `BadPayload`
    otherwise."""
    errors = []
    for name in (LAST, PREV):
        path = folder / name
        if not path.exists():
            continue
        try:
            ckpt = _read(path, settings, required, space, limits)
            if check is not None:
                _checked(path, ckpt, check)
        except DsnasError as e:
            errors.append(str(e))
            continue
        if errors:
            warn(f"dsnas: warning: {errors[0]}; resuming from {path} instead")
        return ckpt
    if errors:
        raise DsnasError(errors[-1] if len(errors) == 1 else f"{errors[0]}; and {errors[1]}")
    raise DsnasError(f"no checkpoint to resume in {folder}")


def _checked(path: Path, ckpt: dict, check) -> None:
    try:
        check(ckpt)
    except BadPayload as e:
        raise DsnasError(f"checkpoint {path} does not fit this run: {e}") from None


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
    credit_rows: list = field(default_factory=list)  # the gate credit per block and candidate, every epoch
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


class BadPayload(ValueError):
    """A part of a checkpoint that does not fit the run it would restore."""


def check_run_payload(ckpt: dict, parts: dict, epochs: int, steps_per_epoch: int) -> None:
    """Refuse (`BadPayload`) a `run_payload` that would not restore ``parts`` whole: every part is
    checked against the run's own state (keys, shapes, dtypes, finite values, types, ranges)
    before any of it is applied, so that a tampered ``last.pt`` gives way to ``prev.pt``."""
    _fits(ckpt["model"], parts["model"].state_dict(), "model")
    _check_search(ckpt["search"], parts["search"])
    for key in ("optimizer", "arch_optimizer"):
        _check_optimizer(ckpt[key], parts[key], key)
    for key in ("scheduler", "scaler"):
        _fits(ckpt[key], parts[key].state_dict(), key)
    _check_rank_bn(ckpt.get("rank_bn"), parts["model"].state_dict())
    _check_generators(ckpt, parts["search"].generator)
    _check_progress(ckpt["progress"], epochs, steps_per_epoch)


def _fits(saved, live, where: str) -> None:
    """``saved`` has the structure of ``live``: the same keys, lengths, tensor shapes and dtypes,
    and the same types of plain values; floats finite."""
    if isinstance(live, dict):
        if not isinstance(saved, dict) or set(saved) != set(live):
            missing = sorted(map(str, set(live) - set(saved))) if isinstance(saved, dict) else []
            raise BadPayload(f"{where} " + (f"lacks {quote(missing[0])}" if missing else
                             f"holds {quote(saved)}, not the {len(live)} entries of this run's"))
        for k, v in live.items():
            _fits(saved[k], v, f"{where}.{k}")
    elif isinstance(live, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(live):
            raise BadPayload(f"{where} holds {quote(saved)}, not a list of {len(live)}")
        for i, (s, v) in enumerate(zip(saved, live)):
            _fits(s, v, f"{where}[{i}]")
    elif isinstance(live, torch.Tensor):
        _tensor_fits(saved, live.shape, live.dtype, where)
    elif not _same_kind(saved, live):
        raise BadPayload(f"{where} is {quote(saved)}, this run's is a {type(live).__name__}")


def _same_kind(saved, live) -> bool:
    if isinstance(live, (list, dict)):
        return isinstance(saved, type(live))
    if isinstance(live, bool) or live is None or isinstance(live, str):
        return type(saved) is type(live)
    if isinstance(live, int):
        return isinstance(saved, int) and not isinstance(saved, bool)
    if isinstance(live, float):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved)
    return True


def _tensor_fits(saved, shape, dtype, where: str) -> None:
    if not isinstance(saved, torch.Tensor) or saved.shape != shape or saved.dtype != dtype:
        got = f"{saved.dtype} {tuple(saved.shape)}" if isinstance(saved, torch.Tensor) else quote(saved)
        raise BadPayload(f"{where} is {got}, this run's is {dtype} {tuple(shape)}")
    if saved.is_floating_point() and not bool(torch.isfinite(saved).all()):
        raise BadPayload(f"{where} holds NaN or infinite values")


def _check_search(saved, search) -> None:
    """alpha of each block's length, and a fixed candidate that exists (-1: none); the
    architecture state of format /1 is a list per block."""
    if not isinstance(saved, dict) or not isinstance(saved.get("alphas"), (dict, list)):
        raise BadPayload(f"search holds {quote(saved)}, not an architecture state")
    live = search.state_dict()
    if "candidates" not in saved:  # written before the candidates were recorded
        del live["candidates"]
    if "credit" not in saved:  # written before the credit statistics were kept
        del live["credit"]
    elif saved["candidates"] != live["candidates"]:
        raise BadPayload("search names other candidates than this run's blocks")
    in_order = isinstance(saved["alphas"], list)  # format /1: a list per block, in block order
    if in_order:
        live = {k: list(v.values()) for k, v in live.items()}
    _fits(saved, live, "search")
    for i, (label, choice) in enumerate(zip(search.labels, search.choices)):
        f = saved["fixed"][i if in_order else label]
        if not -1 <= f < len(choice):
            raise BadPayload(f"search.fixed[{quote(label)}] is {f}, not -1 or a candidate 0..{len(choice) - 1}")


def _check_optimizer(saved, optimizer, where: str) -> None:
    """The run's parameter groups, and per-parameter state of its parameters' shapes."""
    live = optimizer.state_dict()
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"}:
        raise BadPayload(f"{where} holds {quote(saved)}, not an optimizer state")
    _fits(saved["param_groups"], live["param_groups"], f"{where}.param_groups")
    for s, v in zip(saved["param_groups"], live["param_groups"]):
        if s["params"] != v["params"]:
            raise BadPayload(f"{where}.param_groups name other parameters than this run's")
    shapes = {i: p.shape for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    if not isinstance(saved["state"], dict):
        raise BadPayload(f"{where}.state holds {quote(saved['state'])}, not a mapping")
    for i, state in saved["state"].items():
        if i not in shapes or not isinstance(state, dict):
            raise BadPayload(f"{where}.state has an entry {quote(i)} for no parameter of this run")
        for k, value in state.items():  # momentum, Adam's moments: the parameter's shape; Adam's step: a scalar
            shape = shapes[i] if isinstance(value, torch.Tensor) and value.ndim else torch.Size()
            dtype = value.dtype if isinstance(value, torch.Tensor) and value.is_floating_point() else torch.float32
            _tensor_fits(value, shape, dtype, f"{where}.state[{i}].{k}")


def _check_rank_bn(saved, model_state: dict) -> None:
    """Every rank's BN statistics: a subset of the model's, each of its shape and dtype."""
    if saved is None:
        return
    if not isinstance(saved, list) or not all(isinstance(s, dict) and set(s) <= set(model_state) for s in saved):
        raise BadPayload(f"rank_bn holds {quote(saved)}, not each rank's BN statistics of this model")
    for r, stats in enumerate(saved):
        for k, v in stats.items():
            _tensor_fits(v, model_state[k].shape, model_state[k].dtype, f"rank_bn[{r}].{k}")


def _check_generators(ckpt: dict, sampler: torch.Generator) -> None:
    """Every generator state loads: each is tried on a new generator, never on the run's."""
    rngs = ckpt["sampler_rng"]
    if not isinstance(rngs, list) or not rngs:
        raise BadPayload(f"sampler_rng holds {quote(rngs)}, not one state per rank")
    for r, state in enumerate(rngs):
        _tensor_fits(state, sampler.get_state().shape, torch.uint8, f"sampler_rng[{r}]")
    try:
        torch.Generator().set_state(ckpt["torch_rng"])
        n, p = ckpt["numpy_rng"], ckpt["python_rng"]
        _fits(n, global_rng_states()["numpy_rng"], "numpy_rng")
        _fits(p["internal"], global_rng_states()["python_rng"]["internal"], "python_rng.internal")
        keys = n["keys"]
        if not bool(((keys >= 0) & (keys < 1 << 32)).all()) or not 0 <= n["pos"] <= len(keys):
            raise ValueError("numpy's keys must be 32-bit and its position within them")
        np.random.RandomState().set_state(("MT19937", keys.numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                                           n["gauss"]))
        random.Random().setstate((p["version"], tuple(int(v) for v in p["internal"]), p["gauss_next"]))
    except BadPayload:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError, OverflowError) as e:
        raise BadPayload(f"a random generator state does not load ({quote(str(e))})") from None


PROGRESS_KINDS = {"epoch": 0, "step": 0, "global_step": 0, "alpha_rows": [], "credit_rows": [], "history": [],
                  "epoch_seen": 0,
                  "elapsed": 0.0}  # a value of each field's kind


def _check_progress(progress, epochs: int, steps_per_epoch: int) -> None:
    """`RunState` fields of their types, at a place this run's schedule has: epoch 0..epochs
    (epochs: finished), a step within the epoch."""
    if not isinstance(progress, dict) or "epoch" not in progress:
        raise BadPayload(f"progress holds {quote(progress)}, not a run's progress")
    for key, kind in PROGRESS_KINDS.items():
        if key in progress and not _same_kind(progress[key], kind):
            raise BadPayload(f"progress.{key} is {quote(progress[key])}, not a {type(kind).__name__}")
    for key in ("step", "global_step", "epoch_seen", "elapsed"):
        if progress.get(key, 0) < 0:
            raise BadPayload(f"progress.{key} is {progress[key]}, below 0")
    epoch, step = progress["epoch"], progress.get("step", 0)
    if not 0 <= epoch <= epochs:
        raise BadPayload(f"progress.epoch is {epoch}, outside this run's 0..{epochs}")
    if step >= steps_per_epoch or (epoch == epochs and step):
        raise BadPayload(f"progress.step is {step}, past the {steps_per_epoch} steps of an epoch")
    loss = progress.get("epoch_loss", torch.zeros(()))
    if not isinstance(loss, torch.Tensor) or not loss.is_floating_point():
        raise BadPayload(f"progress.epoch_loss is {quote(loss)}, not a number")
    _tensor_fits(loss, torch.Size(), loss.dtype, "progress.epoch_loss")
    if not isinstance(progress.get("selection") or {}, dict):
        raise BadPayload(f"progress.selection is {quote(progress['selection'])}, not a mapping")


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
