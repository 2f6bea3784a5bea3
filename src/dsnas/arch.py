"""Architecture files: our versioned ``arch.yaml`` and MMRazor's subnet YAML.

Ours::

    format: dsnas-arch/2
    space: shufflenet
    settings: {num_classes: 1000, in_channels: 3, input_size: 224, width: 1.0, small_input: false}
    choices:                                      # the op of every block, by the block's label
      backbone.layers.0.0: shuffle_3x3
      backbone.layers.0.1: shuffle_7x7
      ...
    metadata: {mflops: ..., macs_m: ..., params_m: ..., created_by: ...}

Blocks are matched by label, so their order in the file does not matter; a missing or unknown
label is an error. ``dsnas-arch/1`` files (``choices`` a list, one op per block in the space's
order) still load.

MMRazor's: ``<mutable name>: <op>`` or ``{chosen: <op>}``, keys optionally prefixed
``architecture.``; its space is the one whose labels the keys are (ShuffleNet's
``backbone.layers.<stage>.<block>``, MobileNet's ``backbone.layer<n>.<block>``, ...).

A space may also have an architecture string (its class's ``to_string`` / ``from_string``): the
nb201 space's is NAS-Bench-201's ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``. `load_arch` reads one
given in place of a file name, and our YAML records it as ``metadata.arch_string``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DsnasError, quote
from .files import dump_yaml, read_yaml, write_text
from .spaces import DEFAULT_SPACE, SPACES, settings_of, space_class

FORMAT = "dsnas-arch/2"
FORMAT_V1 = "dsnas-arch/1"  # choices as a list in the space's order
MMRAZOR_SOURCE = "mmrazor subnet"  # metadata.source of an architecture read from MMRazor's YAML
STRING_SOURCE = "architecture string"  # metadata.source of one read from a space's string
_NUMBER = re.compile(r"(?<![^.])0+(?=\d{1,9}(?:\.|$))")  # a label's index with leading zeros: 00.000 is 0.0


@dataclass
class Architecture:
    """One choice (op name) per decision of a space, with the space's settings and metadata.

    ``choices`` is a list in the space's order, or a mapping from each decision's label to its
    op (matched by label, in any order); it is kept as the ordered list."""

    choices: list[str]
    space: str = DEFAULT_SPACE
    settings: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        space_class(self.space)
        self.settings = settings_of(self.space, self.settings).as_dict()
        self.choices = ordered_choices(self.decisions, self.choices, self.space)

    @property
    def decisions(self) -> list[tuple[str, list[str]]]:
        """(label, candidates) of every decision of the space."""
        cls = space_class(self.space)
        return cls.decisions(cls.Settings(**self.settings))

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.decisions]

    @property
    def names_space(self) -> bool:
        """False for an MMRazor subnet: its file names ops only, and ``settings`` are the defaults."""
        return self.metadata.get("source") != MMRAZOR_SOURCE

    @property
    def names_settings(self) -> bool:
        """False where ``settings`` are the defaults because the source names ops only (an MMRazor
        subnet, an architecture string): the data of a run sizes the network."""
        return self.metadata.get("source") not in (MMRAZOR_SOURCE, STRING_SOURCE)

    @property
    def string(self) -> str | None:
        """The space's architecture string (NAS-Bench-201's for nb201), if it has one."""
        to_string = getattr(space_class(self.space), "to_string", None)
        return None if to_string is None else to_string(self.choices)

    def to_dict(self) -> dict:
        metadata = dict(self.metadata)
        if self.string is not None:  # derived from the choices, so it never disagrees with them
            metadata["arch_string"] = self.string
        return {"format": FORMAT, "space": self.space, "settings": dict(self.settings),
                "choices": dict(zip(self.labels, self.choices)), "metadata": metadata}

    def to_mmrazor(self) -> dict:
        return {label: {"chosen": op} for label, op in zip(self.labels, self.choices)}


def ordered_choices(decisions: list[tuple[str, list[str]]], choices, space: str) -> list[str]:
    """``choices`` (a list in order, or a mapping label -> op) as a list in the order of
    ``decisions``, every op checked against its decision's candidates."""
    labels = [label for label, _ in decisions]
    if isinstance(choices, dict):
        unknown = [k for k in choices if k not in labels]
        if unknown:
            raise DsnasError(f"block {quote(unknown[0])} is not in the {space} space")
        missing = [label for label in labels if label not in choices]
        if missing:
            raise DsnasError(f"architecture lacks block {missing[0]} ({len(choices)} of the {len(labels)} blocks "
                             f"of the {space} space are given)")
        choices = [choices[label] for label in labels]
    choices = [str(c) for c in choices]
    if len(choices) != len(labels):
        raise DsnasError(f"architecture has {len(choices)} blocks, the {space} space has {len(labels)}")
    for i, (op, (label, names)) in enumerate(zip(choices, decisions)):
        if op not in names:
            raise DsnasError(f"block {i} ({label}): unknown op {quote(op)} (expected one of {', '.join(names)})")
    return choices


def parse_arch(data, source: str = "architecture") -> Architecture:
    """Build an `Architecture` from a parsed YAML document of either format."""
    try:
        if data is None:
            raise DsnasError("the file is empty")
        if not isinstance(data, dict) or not data:
            raise DsnasError("not a mapping of architecture settings")
        if "format" not in data:
            choices = _parse_mmrazor(data)
            return Architecture(choices, _mmrazor_space(choices), metadata={"source": MMRAZOR_SOURCE})  # no settings
        if data["format"] not in (FORMAT, FORMAT_V1):
            raise DsnasError(f"unknown format {quote(data['format'])} (this version reads {FORMAT!r} and {FORMAT_V1!r})")
        space = data.get("space", DEFAULT_SPACE)
        if not isinstance(space, str):
            raise DsnasError(f"'space' must be a space name, got {quote(space)}")
        choices = data.get("choices")
        if data["format"] == FORMAT_V1 and not isinstance(choices, list):
            raise DsnasError(f"'choices' must be a list of op names in {FORMAT_V1}")
        if data["format"] == FORMAT and not isinstance(choices, dict):
            raise DsnasError("'choices' must be a mapping from each block's label to its op")
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise DsnasError("'metadata' must be a mapping")
        settings = data.get("settings") or {}
        return Architecture(choices, space, settings_of(space, settings).as_dict(), dict(metadata))
    except DsnasError as e:
        raise DsnasError(f"{source}: {e}") from None


def _parse_mmrazor(data: dict) -> dict[str, str]:
    """MMRazor's subnet YAML as a mapping label -> op (keys normalised: no ``architecture.``
    prefix, no leading zeros)."""
    found: dict[str, str] = {}
    for key, value in data.items():
        label = _NUMBER.sub("", str(key).removeprefix("architecture."))
        if not re.fullmatch(r"[A-Za-z_]\w{0,63}(\.\w{1,64}){0,15}", label) or re.search(r"\d{10}", str(key)):
            raise DsnasError(f"unknown key {quote(key)} (expected 'format: {FORMAT}' or MMRazor's mutable names, "
                             "such as backbone.layers.<stage>.<block>)")
        if isinstance(value, dict):
            value = value.get("chosen")
        if not isinstance(value, str):
            raise DsnasError(f"{key}: expected an op name or {{chosen: <op>}}")
        if label in found:  # "0.0" and "00.000", or with and without the "architecture." prefix
            raise DsnasError(f"block {label} is named twice (again as {quote(key)})")
        found[label] = value
    return found


def _mmrazor_space(choices: dict[str, str]) -> str:
    """The space whose decisions an MMRazor subnet names: the one whose labels are the file's keys,
    else the one with most of them (whose check then says what is missing or unknown)."""
    def shared(name: str) -> int:
        cls = space_class(name)
        return len({label for label, _ in cls.decisions(cls.Settings())} & set(choices))

    names = [DEFAULT_SPACE] + [n for n in SPACES if n != DEFAULT_SPACE]
    best = max(names, key=shared)  # the first of the best: the default space on a tie
    if shared(best) == 0:
        raise DsnasError(f"unknown key {quote(next(iter(choices)))}: no space has a block of that name "
                         f"(expected 'format: {FORMAT}' or MMRazor's mutable names, such as backbone.layers.<s>.<b>)")
    return best


def load_arch(path: str | Path) -> Architecture:
    """An architecture file of either format, or a space's architecture string given instead."""
    if isinstance(path, str) and path.lstrip().startswith("|") and not Path(path).exists():
        return parse_arch_string(path)
    return parse_arch(read_yaml(path, "arch file"), f"arch file {path}")


def parse_arch_string(text: str) -> Architecture:
    """The architecture an architecture string names, in the space whose string format it is
    (settings: the space's defaults, as in an MMRazor subnet)."""
    readers = {name: cls.from_string for name, cls in SPACES.items() if hasattr(cls, "from_string")}
    errors = []
    for name, read in readers.items():
        try:
            choices = read(text)
        except ValueError as e:
            errors.append(f"{name}: {e}")
            continue
        return Architecture(choices, name, metadata={"source": STRING_SOURCE})
    raise DsnasError(f"architecture string {quote(text.strip())} is not one of {', '.join(readers)} ({'; '.join(errors)})")


def save_arch(arch: Architecture, path: str | Path, mmrazor: bool = False, replace: bool = True) -> None:
    """Write ``arch`` as our YAML (or MMRazor's subnet YAML); ``-`` writes it to stdout. Unless
    ``replace``, a file that exists by the time it is written is kept."""
    data = arch.to_mmrazor() if mmrazor else arch.to_dict()
    # one line per block (label: op); short settings and metadata mappings on one line each
    text = "".join(dump_yaml({k: v}, sort_keys=False,
                             default_flow_style=None if isinstance(v, dict) and k != "choices" else False)
                   for k, v in data.items())
    if str(path) == "-":
        if sys.stdout is None:  # started with stdout closed
            raise DsnasError("cannot write the architecture to stdout: it is closed; give a file instead")
        sys.stdout.write(text)
        sys.stdout.flush()  # a closed pipe fails here, inside the command's error handling
    else:
        write_text(path, text, replace)
