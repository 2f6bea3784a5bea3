"""The space registry: every search space is built by name, from one settings type per space.

A space is an ``nn.Module`` supernet class registered with `register_space`. What the rest of
dsnas relies on (arch files, checkpoints, cost and latency tables, the CLI):

- ``Settings``: a frozen dataclass with ``num_classes``, ``in_channels`` and ``input_size`` among
  its fields (the data sets those), ``from_mapping(dict)`` (validated, ``ValueError`` on bad
  values) and ``as_dict()``;
- ``decisions(settings)`` (class method): ``[(label, [candidate names]), ...]``, one per decision
  in the network's order, known without building the network (`Choice` modules that share a
  label are one decision, e.g. an edge of a stacked cell);
- ``from_settings(settings, init)`` (class method): the supernet; its `Choice` modules carry the
  labels of ``decisions``;
- ``child(choices, share=False)``: the plain network of one architecture, with the supernet's
  weights; ``child_from(choices, settings)`` (class method): the same, with fresh weights;
- ``forward_features(x)`` / ``forward_head(features)``, and a ``stem`` module: the parts outside
  the choices that a latency table times (``fixed_parts()`` names more of them, e.g. the
  reductions between a cell space's stages);
- ``describe()``: optional facts for ``dsnas info`` (cells, edges, ...);
- ``costs``: the per-candidate `CostTable` at the space's input size (`SpaceMixin` gives it).

Adding a space is a module under ``spaces/`` whose class is decorated with `register_space`,
and one import line in ``spaces/__init__.py``.
"""

from __future__ import annotations

from functools import cached_property

import torch

from ..choice import labelled_choices
from ..errors import DsnasError

SPACES: dict[str, type] = {}
DATA_SETTINGS = ("num_classes", "in_channels", "input_size")  # what a dataset fixes in every space


def register_space(name: str):
    """Class decorator: make the space class buildable as ``build(name, ...)``."""
    def register(cls: type) -> type:
        if name in SPACES and SPACES[name] is not cls:
            raise ValueError(f"a space named {name!r} is already registered")
        cls.name = name
        SPACES[name] = cls
        return cls
    return register


def space_class(name: str) -> type:
    if name not in SPACES:
        raise DsnasError(f"unknown space {name!r} (known: {', '.join(SPACES)})")
    return SPACES[name]


def settings_of(name: str, mapping: dict | None = None):
    """The settings of space ``name`` from a mapping of known keys (missing ones take their
    defaults); a bad value is a one-line `DsnasError`."""
    try:
        return space_class(name).Settings.from_mapping(dict(mapping or {}))
    except ValueError as e:
        raise DsnasError(f"bad space settings: {e}") from None


def build(name: str, settings=None, init: str = "aligned"):
    """The supernet of space ``name``: ``settings`` is its settings type, a mapping, or None (defaults)."""
    cls = space_class(name)
    if not isinstance(settings, cls.Settings):
        settings = settings_of(name, settings)
    return cls.from_settings(settings, init)


def build_child(name: str, choices, settings=None, init: str = "aligned"):
    """The plain network of one architecture of space ``name``, with fresh weights."""
    cls = space_class(name)
    if not isinstance(settings, cls.Settings):
        settings = settings_of(name, settings)
    return cls.child_from(choices, settings, init)


CLASSIFIER_STD = 0.01


@torch.no_grad()
def kaiming_init(model: torch.nn.Module) -> None:
    """Kaiming (fan-out, ReLU) convolutions and an N(0, 0.01) linear classifier with zero bias:
    the common start of the spaces' non-default initialisations."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, 0.0, CLASSIFIER_STD)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


class SpaceMixin:
    """What every registered supernet shares: its choices, their labels and its cost table."""

    name: str
    settings: object

    @property
    def choices(self) -> list:
        return [choice for _, choice in labelled_choices(self)]

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in labelled_choices(self)]

    @property
    def num_blocks(self) -> int:
        return len(self.choices)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        s = self.settings
        return torch.zeros(batch, s.in_channels, s.input_size, s.input_size)

    def describe(self) -> dict:
        """Facts about the space beyond its decisions and costs, for ``dsnas info`` (none by default)."""
        return {}

    def fixed_parts(self) -> dict:
        """The modules outside the choices and the head, by name, that a latency table times."""
        return {"stem": self.stem}

    @cached_property
    def costs(self):
        """Per-candidate cost table at this space's input size (computed once)."""
        from ..cost import cost_table

        return cost_table(self, self.example_input())
