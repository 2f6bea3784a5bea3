"""The space registry: every search space is built by name, from one settings type per space.

A space is a supernet class registered with `register_space`, which refuses a class that lacks
any piece of this contract (what arch files, checkpoints, cost and latency tables and the CLI
rely on):

- an ``nn.Module`` subclass that uses `SpaceMixin` (its choices, labels and cost table);
- ``Settings``: a `SpaceSettings` subclass (a frozen dataclass) with ``num_classes``,
  ``in_channels`` and ``input_size`` among its fields (the data sets those); `SpaceSettings`
  gives it ``from_mapping(mapping)`` (``ValueError`` on an unknown key or a bad value),
  ``as_dict()`` (what files hold) and ``replace(**changes)``;
- ``decisions(settings)`` (class or static method): ``[(label, [candidate names]), ...]``, one
  per decision in the network's order, known without building the network (`Choice` modules
  that share a label are one decision, e.g. an edge of a stacked cell);
- ``from_settings(settings, init)`` (class method): the supernet, whose `Choice` modules carry
  the labels and candidates of ``decisions``, in order (`build` checks it);
- ``child(choices, share=False)``: the plain network of one architecture, with the supernet's
  weights (``share=True``: its very modules, so that training the child trains the supernet);
  ``child_from(choices, settings, init)`` (class or static method): the same, with fresh weights;
- ``forward_features(x)`` / ``forward_head(features)``: the network on both sides of the head,
  and a ``stem`` module: the parts outside the choices that a latency table times
  (``fixed_parts()`` names more of them, e.g. the reductions between a cell space's stages);
- ``footprint(settings, choices=None)`` (static method): the `Footprint` of the supernet (or of
  the child of ``choices``), counted from the settings alone: `build` and `build_child` refuse,
  before building anything, a network past ``max_model_gb``;
- ``init_schemes``: a tuple of the ``init`` values ``from_settings`` and ``child_from`` accept;
- ``description``: one line saying what the space is, for a listing of the spaces;
- ``describe()`` (optional): facts for ``dsnas info`` (cells, edges, ...);
- ``costs``: the per-candidate `CostTable` at the space's input size (`SpaceMixin` gives it).

Adding a space is a module under ``spaces/`` whose class is decorated with `register_space`,
and one import line in ``spaces/__init__.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from ..choice import labelled_choices
from ..config import MAX_MODEL_GB
from ..errors import DsnasError, quote

SPACES: dict[str, type] = {}
DATA_SETTINGS = ("num_classes", "in_channels", "input_size")  # what a dataset fixes in every space

# Settings that are each in range can still describe a network of hundreds of gigabytes (100,000
# classes x 8 times the width x 4096 px): `check_footprint` bounds the product, from the settings alone.
BYTES_PER_ELEMENT = 4  # float32, the dtype every network is built in


SPACE_METHODS = ("decisions", "from_settings", "child", "child_from", "forward_features", "forward_head",
                 "footprint")  # what every space class defines, besides `Settings`, `init_schemes` and `description`


def register_space(name: str):
    """Class decorator: make the space class buildable as ``build(name, ...)``; a class that
    lacks a piece of the contract (module docstring) is refused with what it lacks."""
    def register(cls: type) -> type:
        if name in SPACES and SPACES[name] is not cls:
            raise ValueError(f"a space named {name!r} is already registered")
        missing = contract_gaps(cls)
        if missing:
            raise ValueError(f"space class {getattr(cls, '__name__', cls)!r} lacks what a space needs: "
                             f"{'; '.join(missing)}")
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


def contract_gaps(cls) -> list[str]:
    """What ``cls`` lacks of the space contract, one phrase each (none: it is a space class)."""
    if not isinstance(cls, type):
        return [f"a class (got {type(cls).__name__})"]
    gaps = [] if issubclass(cls, nn.Module) else ["to be an nn.Module"]
    gaps += [] if issubclass(cls, SpaceMixin) else ["to use SpaceMixin"]
    gaps += _settings_gaps(getattr(cls, "Settings", None))
    gaps += [f"{name}()" for name in SPACE_METHODS if not callable(getattr(cls, name, None))]
    schemes = getattr(cls, "init_schemes", None)
    if not (isinstance(schemes, tuple) and schemes and all(isinstance(s, str) and s for s in schemes)):
        gaps.append("init_schemes (a tuple of the init names it accepts)")
    description = getattr(cls, "description", None)
    if not (isinstance(description, str) and description.strip() and description.isprintable()):
        gaps.append("description (one line of text)")
    return gaps


def _settings_gaps(settings) -> list[str]:
    """What a space's ``Settings`` lacks: a `SpaceSettings` dataclass with the data's fields."""
    if not (isinstance(settings, type) and issubclass(settings, SpaceSettings)):
        return ["Settings (a SpaceSettings subclass)"]
    names = {f.name for f in dataclasses.fields(settings)}
    absent = [key for key in DATA_SETTINGS if key not in names]
    return [f"Settings fields {', '.join(absent)}"] if absent else []


def space_class(name: str) -> type:
    if name not in SPACES:
        load_installed_spaces()
    if name not in SPACES:
        raise DsnasError(f"unknown space {name!r} (known: {', '.join(SPACES)})")
    return SPACES[name]


def settings_of(name: str, mapping: Mapping | None = None):
    """The settings of space ``name`` from a mapping of known keys (missing ones take their
    defaults); a bad value is a one-line `DsnasError`."""
    try:
        return space_class(name).Settings.from_mapping({} if mapping is None else mapping)
    except ValueError as e:
        raise DsnasError(f"bad space settings: {e}") from None


def build(name: str, settings=None, init: str = "aligned", max_model_gb: float = MAX_MODEL_GB):
    """The supernet of space ``name``: ``settings`` is its settings type, a mapping, or None
    (defaults); refused if its `Footprint` is past ``max_model_gb``. A space class whose
    supernet's labels differ from its ``decisions`` is refused as inconsistent."""
    cls = space_class(name)
    if not isinstance(settings, cls.Settings):
        settings = settings_of(name, settings)
    check_footprint(name, settings, max_model_gb)
    supernet = cls.from_settings(settings, init)
    check_decisions(cls, settings, supernet)
    return supernet


def build_child(name: str, choices, settings=None, init: str = "aligned", max_model_gb: float = MAX_MODEL_GB):
    """The plain network of one architecture of space ``name``, with fresh weights; refused if
    its `Footprint` is past ``max_model_gb``. A space class whose child still holds a `Choice`
    is refused as inconsistent."""
    cls = space_class(name)
    if not isinstance(settings, cls.Settings):
        settings = settings_of(name, settings)
    check_footprint(name, settings, max_model_gb, choices)
    child = cls.child_from(choices, settings, init)
    check_plain(cls, child)
    return child


def check_decisions(cls: type, settings, supernet) -> None:
    """Refuse a supernet whose decisions (labels and candidate names, in order) are not its
    class's ``decisions(settings)``: files, cost and latency tables name blocks by the latter."""
    if not isinstance(supernet, nn.Module):
        raise DsnasError(f"the space class {cls.__name__} is inconsistent: from_settings gave a "
                         f"{type(supernet).__name__}, not a network")
    built = [(label, list(choice.names)) for label, choice in labelled_choices(supernet)]
    declared = [(label, list(names)) for label, names in cls.decisions(settings)]
    if built != declared:
        at = next((i for i, (b, d) in enumerate(zip(built, declared)) if b != d), min(len(built), len(declared)))
        raise DsnasError(f"the space class {cls.__name__} is inconsistent: its supernet's decision {at} is "
                         f"{_decision_at(built, at)}, its decisions() say {_decision_at(declared, at)} "
                         f"({len(built)} and {len(declared)} decisions)")


def _decision_at(found: list[tuple[str, list[str]]], at: int) -> str:
    """Decision ``at`` of a list as an error message shows it."""
    if at >= len(found):
        return "absent"
    label, names = found[at]
    return f"{quote(label)} over {quote(names)}"


def check_plain(cls: type, child) -> None:
    """Refuse a child that is not a plain network (one holding a `Choice` is still a supernet)."""
    if not isinstance(child, nn.Module) or labelled_choices(child):
        raise DsnasError(f"the space class {cls.__name__} is inconsistent: child_from gave "
                         f"{'a network with choices' if isinstance(child, nn.Module) else type(child).__name__}, "
                         "not a plain network")


# --- the settings of a space ---------------------------------------------------------------------

NAME_LIMIT = 40  # characters of a setting's name in an error message


def _shown(keys, limit: int = 8) -> str:
    """Setting names for an error message: a file can hold thousands, or long ones."""
    names = sorted(k if len(k) <= NAME_LIMIT else k[:NAME_LIMIT - 3] + "..." for k in map(str, keys))
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


@dataclass(frozen=True)
class SpaceSettings:
    """The base of every space's settings: a frozen dataclass read from and written to files.

    A subclass declares its fields (``num_classes``, ``in_channels``, ``input_size`` among them)
    and checks their values in ``__post_init__`` with a ``ValueError``. Two hooks keep a space's
    own rules: `left_out` (values a file does not hold) and `chosen_anew` (settings a change
    derives again)."""

    @classmethod
    def from_mapping(cls, mapping: Mapping):
        """Settings read from a file: a mapping of known keys (missing ones take their defaults);
        ``ValueError`` on an unknown key or a bad value."""
        if not isinstance(mapping, Mapping):
            raise ValueError(f"space settings must be a mapping, got {type(mapping).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = set(mapping) - set(known)
        if unknown:
            raise ValueError(f"unknown space setting(s): {_shown(unknown)} (known: {', '.join(known)})")
        return cls(**mapping)

    def left_out(self) -> dict:
        """Settings a file leaves out where they have these values (none by default)."""
        return {}

    def chosen_anew(self, changes: dict) -> dict:
        """Settings that `replace` sets back to None (derived again) because of ``changes``,
        unless ``changes`` gives them (none by default)."""
        return {}

    def as_dict(self) -> dict:
        """The settings as files hold them, in field order, without those `left_out` names."""
        left_out = self.left_out()
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in left_out or v != left_out[k]}

    def replace(self, **changes):
        """These settings with ``changes``, checked as `from_mapping` checks a file's."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return self.from_mapping({**values, **self.chosen_anew(changes), **changes})


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
    settings: SpaceSettings
    init_schemes: tuple[str, ...]  # each space's own (the contract): none here, so that a space states them
    description: str
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
