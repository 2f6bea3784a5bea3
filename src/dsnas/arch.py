"""Architecture files: our versioned ``arch.yaml`` and MMRazor's subnet YAML.

Ours::

    format: dsnas-arch/1
    space: shufflenet
    settings: {num_classes: 1000, in_channels: 3, input_size: 224, width: 1.0, small_input: false}
    choices: [shuffle_3x3, shuffle_7x7, ...]      # one op name per block, in order
    metadata: {mflops: ..., macs_m: ..., params_m: ..., created_by: ...}

MMRazor's: ``backbone.layers.<stage>.<block>: <op>`` or ``{chosen: <op>}``, keys optionally
prefixed ``architecture.``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DsnasError, quote
from .files import dump_yaml, read_yaml, write_text
from .spaces.shufflenet import OPS, STAGE_REPEATS, ShuffleNetSettings, block_keys

FORMAT = "dsnas-arch/1"
MMRAZOR_SOURCE = "mmrazor subnet"  # metadata.source of an architecture read from MMRazor's YAML
_MMRAZOR_KEY = re.compile(r"^(?:architecture\.)?backbone\.layers\.(\d{1,9})\.(\d{1,9})$")  # int() refuses 4300 digits


@dataclass
class Architecture:
    """One choice (op name) per block of a space, with the space's settings and metadata."""

    choices: list[str]
    space: str = "shufflenet"
    settings: dict = field(default_factory=lambda: ShuffleNetSettings().as_dict())
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.choices = [str(c) for c in self.choices]
        validate_choices(self.choices)
        self.settings = ShuffleNetSettings(**self.settings).as_dict()

    @property
    def names_space(self) -> bool:
        """False for an MMRazor subnet: its file names ops only, and ``settings`` are the defaults."""
        return self.metadata.get("source") != MMRAZOR_SOURCE

    def to_dict(self) -> dict:
        return {"format": FORMAT, "space": self.space, "settings": dict(self.settings),
                "choices": list(self.choices), "metadata": dict(self.metadata)}

    def to_mmrazor(self) -> dict:
        return {key: {"chosen": op} for key, op in zip(block_keys(), self.choices)}


def validate_choices(choices: list[str]) -> None:
    expected = sum(STAGE_REPEATS)
    if len(choices) != expected:
        raise DsnasError(f"architecture has {len(choices)} blocks, the shufflenet space has {expected}")
    for i, op in enumerate(choices):
        if op not in OPS:
            raise DsnasError(f"block {i}: unknown op {quote(op)} (expected one of {', '.join(OPS)})")


def parse_arch(data, source: str = "architecture") -> Architecture:
    """Build an `Architecture` from a parsed YAML document of either format."""
    try:
        if data is None:
            raise DsnasError("the file is empty")
        if not isinstance(data, dict) or not data:
            raise DsnasError("not a mapping of architecture settings")
        if "format" in data:
            if data["format"] != FORMAT:
                raise DsnasError(f"unknown format {quote(data['format'])} (this version reads {FORMAT!r})")
            if data.get("space", "shufflenet") != "shufflenet":
                raise DsnasError(f"unknown space {quote(data.get('space'))} (known: shufflenet)")
            choices = data.get("choices")
            if not isinstance(choices, list):
                raise DsnasError("'choices' must be a list of op names")
            try:
                settings = ShuffleNetSettings.from_mapping(data.get("settings") or {}).as_dict()
            except ValueError as e:
                raise DsnasError(f"bad space settings: {e}") from None
            metadata = data.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise DsnasError("'metadata' must be a mapping")
            return Architecture(choices, "shufflenet", settings, dict(metadata))
        return Architecture(_parse_mmrazor(data), metadata={"source": MMRAZOR_SOURCE})  # no settings in the file
    except DsnasError as e:
        raise DsnasError(f"{source}: {e}") from None


def _parse_mmrazor(data: dict) -> list[str]:
    found: dict[tuple[int, int], str] = {}
    for key, value in data.items():
        m = _MMRAZOR_KEY.match(str(key))
        if not m:
            raise DsnasError(f"unknown key {quote(key)} (expected 'format: {FORMAT}' or MMRazor's backbone.layers.<stage>.<block>)")
        if isinstance(value, dict):
            value = value.get("chosen")
        if not isinstance(value, str):
            raise DsnasError(f"{key}: expected an op name or {{chosen: <op>}}")
        block = (int(m.group(1)), int(m.group(2)))
        if block in found:  # "0.0" and "00.000", or with and without the "architecture." prefix
            raise DsnasError(f"block backbone.layers.{block[0]}.{block[1]} is named twice (again as {quote(key)})")
        found[block] = value
    expected = [tuple(map(int, k.split(".")[-2:])) for k in block_keys()]
    extra = sorted(set(found) - set(expected))
    if extra:
        s, b = extra[0]
        raise DsnasError(f"block backbone.layers.{s}.{b} is not in the shufflenet space")
    missing = [k for k in expected if k not in found]
    if missing:
        raise DsnasError(f"architecture has {len(found)} blocks, the shufflenet space has {len(expected)}")
    return [found[k] for k in expected]


def load_arch(path: str | Path) -> Architecture:
    return parse_arch(read_yaml(path, "arch file"), f"arch file {path}")


def save_arch(arch: Architecture, path: str | Path, mmrazor: bool = False, replace: bool = True) -> None:
    """Write ``arch`` as our YAML (or MMRazor's subnet YAML); ``-`` writes it to stdout. Unless
    ``replace``, a file that exists by the time it is written is kept."""
    data = arch.to_mmrazor() if mmrazor else arch.to_dict()
    text = dump_yaml(data, sort_keys=False, default_flow_style=None)
    if str(path) == "-":
        if sys.stdout is None:  # started with stdout closed
            raise DsnasError("cannot write the architecture to stdout: it is closed; give a file instead")
        sys.stdout.write(text)
        sys.stdout.flush()  # a closed pipe fails here, inside the command's error handling
    else:
        write_text(path, text, replace)
