"""A run checked as a whole before any of it starts: the configuration's own ranges, then the
method's rules, then the space's settings, each by the module that defines them.

`config` is a leaf that knows no method or space; this module is where a configuration meets
them. It also turns a configuration into what the run builds from: the space's settings for the
data's shape (`space_settings`) and the search's rules (`search_rules`).
"""

from __future__ import annotations

import dataclasses
import typing

from .config import SPACE_DEFAULT, Config, coerce
from .errors import DsnasError, quote
from .images import DECODERS
from .methods import get_method
from .spaces import DATA_SETTINGS, space_class, space_names


def check_run(cfg: Config) -> Config:
    """``cfg`` checked (config, method, space, in that order), with the space settings an older
    file gave at the top level moved under the space; a one-line `DsnasError` otherwise."""
    cfg.validate()
    get_method(cfg.method).check(cfg)
    if cfg.space not in space_names():
        raise DsnasError(f"config: space must be one of {', '.join(space_names())}, got {quote(cfg.space)}")
    if cfg.jpeg_decode not in DECODERS:
        raise DsnasError(f"config: jpeg_decode must be one of {', '.join(DECODERS)}, got {quote(cfg.jpeg_decode)}")
    cls = space_class(cfg.space)
    if cfg.init not in cls.init_schemes:
        raise DsnasError(f"config: init of the {cfg.space} space must be one of {', '.join(cls.init_schemes)}, "
                         f"got {quote(cfg.init)}")
    given = _given_settings(cls, cfg)
    try:
        cls.Settings.from_mapping(_with_search_settings(cls, cfg, given))
    except (TypeError, ValueError) as e:
        raise DsnasError(f"config: space {cfg.space}: {e}") from None
    return dataclasses.replace(cfg, space_settings=given, flat_space_settings={})


def _given_settings(cls: type, cfg: Config) -> dict:
    """The settings of the run's space that ``cfg`` gives, typed as the space's `Settings` holds
    them: its ``space.KEY`` entries, and the flat keys of an older file that are this space's (those
    of another space, which such files held for every space, are left out)."""
    hints = typing.get_type_hints(cls.Settings)
    given = dict(cfg.space_settings)
    from_data = sorted(set(given) & set(DATA_SETTINGS))
    if from_data:
        raise DsnasError(f"config: space.{from_data[0]} comes from the data (input_size: the crop size of large "
                         "images), not from the space's settings")
    unknown = sorted(set(given) - set(hints))
    if unknown:
        raise DsnasError(f"config: the {cfg.space} space has no setting {quote(unknown[0])} (its settings: "
                         f"{', '.join(k for k in hints if k not in DATA_SETTINGS)})")
    defaults = cls.Settings()
    for key, value in cfg.flat_space_settings.items():
        if key in hints and key not in given:
            given[key] = getattr(defaults, key) if value is SPACE_DEFAULT else value
    given = {k: v for k, v in given.items() if v != ""}  # "": the space's choice
    return {k: coerce(f"space.{k}", hints[k], v) for k, v in sorted(given.items())}


def _with_search_settings(cls: type, cfg: Config, given: dict) -> dict:
    """``given`` over the settings a search takes where it gives none (`SpaceMixin.search_settings`)."""
    return {**(cls.search_settings if get_method(cfg.method).searches else {}), **given}


def space_settings(cfg: Config, num_classes: int, in_channels: int, input_size: int) -> dict:
    """The settings of the run's space: the data's shape and what ``cfg`` (checked) gives."""
    shape = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
    return {**shape, **_with_search_settings(space_class(cfg.space), cfg, cfg.space_settings)}


def full_space_settings(cfg: Config) -> dict:
    """Every setting but the data's that a run of ``cfg`` (checked) builds its space with: two
    configurations that differ only in how they say it give the same."""
    cls = space_class(cfg.space)
    defaults = cls.Settings()
    every = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults) if f.name not in DATA_SETTINGS}
    return {**every, **_with_search_settings(cls, cfg, cfg.space_settings)}


def search_rules(cfg: Config, space) -> dict:
    """The `DSNAS` credit and never_pick of this run, with ``auto`` resolved by the space (its
    never_pick names that are among the built candidates)."""
    if cfg.never_pick == "auto":
        present = {n for c in space.choices for n in c.names}
        never = [n for n in space.never_pick.split(",") if n in present]
    else:
        never = [n.strip() for n in cfg.never_pick.split(",") if n.strip()]
    return {"credit": space.credit if cfg.credit == "auto" else cfg.credit, "never_pick": never}
