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
- ``footprint(settings, choices=None)`` (static method): the `Footprint` of the supernet (or of
  the child of ``choices``), counted from the settings alone: `build` and `build_child` refuse,
  before building anything, a network past ``max_model_gb``;
- ``describe()``: optional facts for ``dsnas info`` (cells, edges, ...);
- ``costs``: the per-candidate `CostTable` at the space's input size (`SpaceMixin` gives it).

Adding a space is a module under ``spaces/`` whose class is decorated with `register_space`,
and one import line in ``spaces/__init__.py``.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from functools import cached_property

import torch

from ..choice import labelled_choices
from ..config import MAX_MODEL_GB
from ..errors import DsnasError, quote

SPACES: dict[str, type] = {}
DATA_SETTINGS = ("num_classes", "in_channels", "input_size")  # what a dataset fixes in every space

# Settings that are each in range can still describe a network of hundreds of gigabytes (100,000
# classes x 8 times the width x 4096 px): `check_footprint` bounds the product, from the settings alone.
BYTES_PER_ELEMENT = 4  # float32, the dtype every network is built in


def register_space(name: str):
    """Class decorator: make the space class buildable as ``build(name, ...)``."""
    def register(cls: type) -> type:
        if name in SPACES and SPACES[name] is not cls:
            raise ValueError(f"a space named {name!r} is already registered")
        cls.name = name
        SPACES[name] = cls
        return cls
    return register


ENTRY_POINTS = "dsnas.spaces"  # the group through which an installed package adds its spaces
_installed_loaded = False


def load_installed_spaces() -> None:
    """Import the spaces of installed packages, once: each entry point of group ``dsnas.spaces``
    names a space and the object whose import registers it (``tiny = tiny_space:TinySpace``). A
    package that fails to import, or registers no space of that name, is a one-line error."""
    global _installed_loaded
    if _installed_loaded:
        return
    _installed_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        if entry.name in SPACES:
            continue
        where = f"the {entry.name} space of {entry.dist.name if entry.dist else 'an installed package'} ({entry.value})"
        try:
            entry.load()
        except Exception as e:  # a broken package must not take the command down with a traceback
            raise DsnasError(f"{where} cannot be imported: {type(e).__name__}: {e}") from None
        if entry.name not in SPACES:
            raise DsnasError(f"{where} registers no space named {entry.name!r} (register_space({entry.name!r}))")


def space_names() -> list[str]:
    """Every space dsnas can build: its own and the installed packages'."""
    load_installed_spaces()
    return list(SPACES)


def space_class(name: str) -> type:
    if name not in SPACES:
        load_installed_spaces()
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


def build(name: str, settings=None, init: str = "aligned", max_model_gb: float = MAX_MODEL_GB):
    """The supernet of space ``name``: ``settings`` is its settings type, a mapping, or None
    (defaults); refused if its `Footprint` is past ``max_model_gb``."""
    cls = space_class(name)
    if not isinstance(settings, cls.Settings):
        settings = settings_of(name, settings)
    check_footprint(name, settings, max_model_gb)
    return cls.from_settings(settings, init)


def build_child(name: str, choices, settings=None, init: str = "aligned", max_model_gb: float = MAX_MODEL_GB):
    """The plain network of one architecture of space ``name``, with fresh weights; refused if
    its `Footprint` is past ``max_model_gb``."""
    cls = space_class(name)
    if not isinstance(settings, cls.Settings):
        settings = settings_of(name, settings)
    check_footprint(name, settings, max_model_gb, choices)
    return cls.child_from(choices, settings, init)


# --- how much memory the network of some settings takes -----------------------------------------

@dataclass(frozen=True)
class Footprint:
    """What a network holds for one image: its parameters, and the elements of the feature maps
    its layers write along its largest path (what a forward keeps for the backward). A training
    step holds more: gradients, momentum, and the feature maps of every image of its batch."""

    params: int = 0
    activations: int = 0

    def __add__(self, other: "Footprint") -> "Footprint":
        return Footprint(self.params + other.params, self.activations + other.activations)

    def __mul__(self, times: int) -> "Footprint":
        return Footprint(self.params * times, self.activations * times)

    @property
    def gigabytes(self) -> float:
        return BYTES_PER_ELEMENT * (self.params + self.activations) / 1e9

    @staticmethod
    def conv(cin: int, cout: int, kernel: int, size: int, stride: int = 1, depthwise: bool = False,
             affine: bool = True, maps: int = 2) -> tuple["Footprint", int]:
        """A bias-free conv + BN on ``size`` px: its weights, ``maps`` feature maps of its output
        (conv and BN; 3 with a ReLU) and the output's size (padding ``kernel // 2``)."""
        out = -(-size // stride)
        weights = (cin if depthwise else cin * cout) * kernel * kernel + (2 * cout if affine else 0)
        return Footprint(weights, maps * cout * out * out), out


def check_footprint(name: str, settings, max_model_gb: float = MAX_MODEL_GB, choices=None) -> None:
    """Refuse settings whose network (the supernet, or the child of ``choices``) would take more
    than ``max_model_gb`` for one image, before any of it is allocated."""
    footprint = space_class(name).footprint(settings, choices)
    if footprint.gigabytes > max_model_gb:
        shown = ", ".join(f"{k} {quote(v)}" for k, v in settings.as_dict().items() if not isinstance(v, str))
        raise DsnasError(
            f"the {name} network of these settings ({shown}) would take about {footprint.gigabytes:.1f} GB for "
            f"one image ({footprint.params / 1e6:.1f} M parameters, {footprint.activations / 1e6:.1f} M "
            f"feature-map values), over the {max_model_gb:g} GB limit; if this machine has the memory, raise "
            "it: --max-model-gb GB, or max_model_gb in a run's config")


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
    init_schemes: tuple = ("torch",)  # the ``init`` values `from_settings` takes (a config's init)
    credit = "gate"   # the `DSNAS` credit that config ``credit: auto`` gives this space: the paper's
    never_pick = ""   # candidates its derivation never chooses under ``never_pick: auto`` (where present)
    search_settings: dict = {}  # settings a search takes where its config leaves them empty; files
                                # that do not name them (old runs, architecture strings) take the defaults
    child_free_settings: tuple = ()  # settings that change the supernet but not a child's network

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

    @classmethod
    def footprint(cls, settings, choices=None) -> Footprint:
        """The `Footprint` of the supernet (or the child of ``choices``), measured on the meta
        device, where building and running allocate nothing: the fallback for a space that does
        not count it from its settings (the registered ones do, in no time)."""
        with torch.device("meta"):
            model = cls.from_settings(settings, "torch") if choices is None else cls.child_from(choices, settings, "torch")
        written = [0]
        hooks = [m.register_forward_hook(lambda mod, i, out: written.__setitem__(0, written[0] + out.numel()))
                 for m in model.modules() if not list(m.children())]
        x = torch.zeros(1, settings.in_channels, settings.input_size, settings.input_size, device="meta")
        with torch.no_grad():
            model.eval()(x)  # each choice runs its active candidate, the first
        for h in hooks:
            h.remove()
        return Footprint(sum(p.numel() for p in model.parameters()), written[0])

    @cached_property
    def costs(self):
        """Per-candidate cost table at this space's input size (computed once)."""
        from ..cost import cost_table

        return cost_table(self, self.example_input())
