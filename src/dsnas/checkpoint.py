"""Checkpoints: ``last.pt`` (and the one before it, ``prev.pt``), written atomically and read
with ``torch.load(weights_only=True)``: tensors and plain containers only, never pickled code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from .errors import DsnasError
from .files import atomic_path

FORMAT = "dsnas-checkpoint/1"
LAST, PREV = "last.pt", "prev.pt"


def save_checkpoint(folder: Path, payload: dict, settings: dict) -> Path:
    """Write ``folder/last.pt`` atomically; the previous ``last.pt`` becomes ``prev.pt``."""
    last = folder / LAST
    with atomic_path(last) as tmp:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "settings": settings, **payload}, f)
        if last.exists():
            os.replace(last, folder / PREV)  # a kill before the next rename leaves prev.pt, which loading falls back to
    return last


def _read(path: Path, settings: dict) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DsnasError(f"checkpoint {path} holds objects other than tensors and plain data; refusing to load "
                         f"it ({str(e).splitlines()[0][:120]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise DsnasError(f"checkpoint {path} is corrupt or truncated: {str(e).splitlines()[0][:160]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise DsnasError(f"checkpoint {path} has format {found!r}; this version reads {FORMAT!r}")
    if ckpt.get("settings") != settings:
        raise DsnasError(f"checkpoint {path} is for space settings {ckpt.get('settings')}, this run uses {settings}")
    return ckpt


def load_checkpoint(folder: Path, settings: dict, warn=print) -> dict:
    """The newest loadable checkpoint in ``folder`` (``last.pt``, else ``prev.pt``)."""
    errors = []
    for name in (LAST, PREV):
        path = folder / name
        if not path.exists():
            continue
        try:
            ckpt = _read(path, settings)
        except DsnasError as e:
            errors.append(str(e))
            continue
        if errors:
            warn(f"dsnas: warning: {errors[0]}; resuming from {path} instead")
        return ckpt
    if errors:
        raise DsnasError(errors[-1] if len(errors) == 1 else f"{errors[0]}; and {errors[1]}")
    raise DsnasError(f"no checkpoint to resume in {folder}")
