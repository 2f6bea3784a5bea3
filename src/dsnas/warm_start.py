"""A supernet that starts from another's weights (the ``init_from`` config key): a folder from
``dsnas import`` of a published supernet (its ``supernet.safetensors``, with the space settings in
its ``arch.yaml``), or a dsnas run (the model of its last checkpoint).

The source must be a supernet of the run's space with the run's settings, apart from those no
weight depends on (`FREE_SETTINGS`); its weights and BN statistics replace the initialisation.
The architecture logits start afresh: a DSNAS search learns them, and a published supernet
trained with uniform paths (SPOS) has none."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .arch import load_arch
from .checkpoint import LAST, PREV, checkpoint_limits, load_checkpoint
from .errors import DsnasError, quote
from .export import load_checked
from .files import check_readable
from .spaces import DATA_SETTINGS, settings_of

# Settings that change no weight: a supernet trained at 224 px searches at another size, and
# dropout acts in training only. Every other setting (design, BN, width, classes) must match.
FREE_SETTINGS = ("input_size", "dropout")


@dataclasses.dataclass
class Source:
    """A supernet's weights and what they are for."""

    where: Path        # the file the weights come from
    space: str
    settings: dict     # every setting of the space, defaults filled in
    state: dict


def start_from(space: torch.nn.Module, folder: str | Path) -> Path:
    """Replace ``space``'s weights by those of the supernet in ``folder``; returns the file read.
    A source of another space or other settings is a one-line error naming what differs."""
    source = read_source(Path(folder), space)
    check_fits(source, space, folder)
    with torch.no_grad():
        load_checked(space, source.state, f"init_from {folder}: {source.where.name}", "this run's supernet")
    return source.where


def read_source(folder: Path, space: torch.nn.Module) -> Source:
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "no such folder"
        raise DsnasError(f"init_from {folder}: {what} (give a folder from dsnas import of a supernet, or a dsnas "
                         "run folder)")
    weights = folder / "supernet.safetensors"
    if weights.exists():
        arch = load_arch(folder / "arch.yaml") if (folder / "arch.yaml").exists() else None
        if arch is None or not arch.names_settings:
            raise DsnasError(f"init_from {folder}: no arch.yaml with the space settings beside {weights.name}")
        check_readable(weights, "weights file")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as e:
            raise DsnasError(f"init_from {folder}: {weights.name} is not a readable safetensors file: {e}") from None
        return Source(weights, arch.space, _all_settings(arch.space, arch.settings), state)
    checkpoints = folder / "checkpoints"
    if (checkpoints / LAST).exists() or (checkpoints / PREV).exists():
        ckpt = load_checkpoint(checkpoints, None, required=("model",), space=None, limits=checkpoint_limits(space))
        name = ckpt.get("space", space.name)
        return Source(checkpoints / LAST, name, _all_settings(name, ckpt.get("settings")), ckpt["model"])
    raise DsnasError(f"init_from {folder}: holds neither supernet.safetensors (dsnas import of a supernet) nor "
                     "checkpoints/ (a dsnas run)")


def _all_settings(space: str, mapping) -> dict:
    if not isinstance(mapping, dict):
        raise DsnasError(f"init_from: the source records no settings of the {space} space")
    s = settings_of(space, mapping)
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}


def check_fits(source: Source, space: torch.nn.Module, folder) -> None:
    if source.space != space.name:
        raise DsnasError(f"init_from {folder}: a supernet of the {source.space} space; this run searches "
                         f"the {space.name} space")
    mine = _all_settings(space.name, space.settings.as_dict())
    differ = [k for k in mine if k not in FREE_SETTINGS and source.settings.get(k) != mine[k]]
    if differ:
        theirs = ", ".join(f"{k} {quote(source.settings.get(k))}" for k in differ)
        ours = ", ".join(f"{k} {quote(mine[k])}" for k in differ)
        hint = " ".join(f"--set space.{k}={_yaml(source.settings[k])}" for k in differ if k not in DATA_SETTINGS)
        raise DsnasError(f"init_from {folder}: its supernet has {theirs}; this run has {ours}"
                         + (f" (start the run with {hint})" if hint else " (from the run's data)"))


def _yaml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)
