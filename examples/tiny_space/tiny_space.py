"""A dsnas search space in a package of its own: a stem, two searchable blocks (a 3x3 or a 1x1
convolution, or a skip), and a linear classifier.

`pyproject.toml` beside this file declares it under the entry point group ``dsnas.spaces``; once
the package is installed, ``dsnas search --set space=tiny`` (or ``dsnas info --spaces``) finds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from dsnas import Choice, freeze
from dsnas.spaces import SpaceMixin, SpaceSettings, register_space

OPS = ("conv3x3", "conv1x1", "skip")
LABELS = ("block1", "block2")


@dataclass(frozen=True)
class TinySettings(SpaceSettings):
    """What fixes the network's shape: the data's three settings, and the blocks' width.
    `SpaceSettings` reads them from files and writes them back (from_mapping, as_dict, replace)."""

    num_classes: int = 10
    in_channels: int = 3
    input_size: int = 32
    channels: int = 16

    def __post_init__(self):
        for key, value in self.as_dict().items():
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
                raise ValueError(f"{key} must be an integer in 1..4096, got {value!r}")


def make_op(name: str, channels: int) -> nn.Module:
    if name == "skip":
        return nn.Identity()
    k = 3 if name == "conv3x3" else 1
    return nn.Sequential(nn.Conv2d(channels, channels, k, padding=k // 2, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU())


class TinyNet(nn.Module):
    """The network around the blocks; ``blocks`` are `Choice` modules (the supernet) or ops (a child)."""

    def __init__(self, settings: TinySettings, blocks: list[nn.Module]):
        super().__init__()
        c = settings.channels
        self.settings = settings
        self.stem = nn.Sequential(nn.Conv2d(settings.in_channels, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c, settings.num_classes)

    def forward_features(self, x):
        return self.blocks(self.stem(x))

    def forward_head(self, features):
        return self.classifier(features.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_space("tiny")
class TinySpace(SpaceMixin, TinyNet):
    Settings = TinySettings
    init_schemes = ("torch",)
    description = "two blocks of a 3x3 or 1x1 convolution or a skip (an example space from another package)"

    def __init__(self, settings: TinySettings):
        super().__init__(settings, [Choice({op: make_op(op, settings.channels) for op in OPS}, label)
                                    for label in LABELS])

    @classmethod
    def from_settings(cls, settings: TinySettings, init: str = "torch") -> "TinySpace":
        return cls(settings)

    @staticmethod
    def decisions(settings: TinySettings | None = None) -> list[tuple[str, list[str]]]:
        return [(label, list(OPS)) for label in LABELS]

    @staticmethod
    def child_from(choices, settings: TinySettings, init: str = "torch") -> TinyNet:
        return TinyNet(settings, [make_op(op, settings.channels) for op in choices])

    def child(self, choices, share: bool = False) -> nn.Module:
        """The plain network of ``choices`` (op names or indices): this supernet's modules with
        ``share``, else a copy of them."""
        return freeze(self, getattr(choices, "choices", choices), share=share)
