"""MMRazor's SPOS MobileNet search space (the ProxylessNAS-GPU skeleton) and its deployable child.

Stem conv 3x3 (in -> 40, stride 2, or 1 for small images) + BN + ReLU6; seven stages of choice
blocks as (channels, blocks, stride of the first block): (24, 1, 1), (32, 4, 2), (56, 4, 2),
(112, 4, 2), (128, 4, 1), (256, 4, 2), (432, 1, 1); head conv 1x1 -> 1728 + BN + ReLU6, global
average pool, linear classifier with bias. The one block of the first stage is fixed to
``mb_k3e1`` (a decision with one candidate, as in MMRazor, whose subnet files list it); every
other block picks one of `OPS`.

``mb_k<k>e<e>`` is an inverted residual block (`MBBlock`): a 1x1 expansion to ``in * e``
channels (none at e = 1), a k x k depthwise convolution carrying the stride, both with BN and
ReLU6, and a 1x1 projection with BN; it adds its input back when the stride is 1 and the
channels match. ``identity`` (`IdentityOp`) passes its input through, except in a block that
changes the stride or the channels (the first of each stage), where it is a 1x1 convolution with
that stride and BN. Convolutions have no bias and every BN has eps 1e-5 (mmcv's default).

Under a width multiplier the stem's and the stages' channels are ``channels * width`` rounded to
a multiple of 8 (at least 8, never more than 10% down: mmcls's ``make_divisible``); the head
keeps 1728 channels up to width 1 and takes ``int(1728 * width)`` above. The labels are
MMRazor's mutable names (``backbone.layer1.0``, ``backbone.layer2.0``, ...), so its subnet YAML
reads and writes as it is, and ``dsnas import`` reads its subnet checkpoints
(`MMRazorSubnet`). Weights start from one of `INIT_SCHEMES` (`init_weights`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..choice import Choice, freeze
from ..errors import DsnasError, quote
from .registry import Footprint, SpaceMixin, SpaceSettings, kaiming_init, register_space

OPS = ("mb_k3e3", "mb_k5e3", "mb_k7e3", "mb_k3e6", "mb_k5e6", "mb_k7e6", "identity")
FIRST_OPS = ("mb_k3e1",)  # the first stage's one block has this op only
# (channels, blocks, stride of the first block, candidates) of every stage
STAGES = ((24, 1, 1, FIRST_OPS), (32, 4, 2, OPS), (56, 4, 2, OPS), (112, 4, 2, OPS), (128, 4, 1, OPS),
          (256, 4, 2, OPS), (432, 1, 1, OPS))
STEM_CHANNELS = 40
HEAD_CHANNELS = 1728
BN_EPS = 1e-5
CHANNEL_DIVISOR = 8
SMALL_INPUT_BELOW = 64  # images smaller than this use a stride-1 stem
INIT_SCHEMES = ("aligned", "kaiming", "torch")
_MB = re.compile(r"mb_k(\d)e(\d)")

# Bounds on every setting that sizes an allocation (checked before anything is built).
SETTING_MAX = {"num_classes": 100_000, "in_channels": 1024, "input_size": 4096, "width": 8.0}


def mb_shape(name: str) -> tuple[int, int]:
    """(kernel, expand ratio) of an ``mb_k<k>e<e>`` op name."""
    m = _MB.fullmatch(name)
    if m is None:
        raise ValueError(f"unknown op {name!r}; expected one of {list(FIRST_OPS + OPS)}")
    return int(m[1]), int(m[2])


def make_divisible(value: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, at least ``divisor`` and never more
    than 10% below ``value``: the widths MMRazor's backbone takes under a multiplier."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBN(nn.Sequential):
    """A bias-free convolution (``conv``), BN (``bn``) and, with ``act``, ReLU6 (``act``): the
    children are named as mmcv's ConvModule names them, so published keys map one to one."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        for key, value in (("cin", cin), ("cout", cout), ("kernel", kernel), ("stride", stride), ("groups", groups)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (padding kernel // 2 keeps the size), got {kernel}")
        layers = OrderedDict(conv=nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                             bn=nn.BatchNorm2d(cout, eps=BN_EPS))
        if act:
            layers["act"] = nn.ReLU6(inplace=True)
        super().__init__(layers)


class MBBlock(nn.Module):
    """The inverted residual block ``mb_k<kernel>e<expand>``: expand 1x1 (none at ratio 1),
    depthwise ``kernel`` x ``kernel`` with the stride, project 1x1 (no activation); the input is
    added back when the stride is 1 and the channels match."""

    def __init__(self, cin: int, cout: int, stride: int, kernel: int, expand: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        if isinstance(expand, bool) or not isinstance(expand, int) or expand < 1:
            raise ValueError(f"expand must be a positive integer, got {expand!r}")
        mid = cin * expand
        self.expand = ConvBN(cin, mid) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, cout, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        return x + out if self.residual else out


class IdentityOp(nn.Module):
    """The ``identity`` candidate: the input itself, or, in a block that changes the stride or
    the channels, a 1x1 convolution with that stride and BN (``downsample``, no activation)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        self.downsample = ConvBN(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)


def make_op(name: str, cin: int, cout: int, stride: int) -> nn.Module:
    """The candidate ``name`` of a block from ``cin`` to ``cout`` channels."""
    if name == "identity":
        return IdentityOp(cin, cout, stride)
    return MBBlock(cin, cout, stride, *mb_shape(name))


def block_labels() -> list[str]:
    """The label of each block, MMRazor's mutable name for it: ``backbone.layer<stage>.<block>``
    (stages from 1)."""
    return [f"backbone.layer{s + 1}.{j}" for s, (_, blocks, _, _) in enumerate(STAGES) for j in range(blocks)]


def block_ops() -> list[tuple[str, ...]]:
    """The candidates of each block, in order."""
    return [ops for _, blocks, _, ops in STAGES for _ in range(blocks)]


@dataclass(frozen=True)
class MobileNetSettings(SpaceSettings):
    """Everything that fixes the shape of the space (stored in arch files and checkpoints)."""

    num_classes: int = 1000
    in_channels: int = 3
    input_size: int = 224
    width: float = 1.0
    small_input: bool | None = None  # None: chosen from input_size

    def __post_init__(self):
        for key in ("num_classes", "in_channels", "input_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= SETTING_MAX[key]:
                raise ValueError(f"{key} must be an integer in 1..{SETTING_MAX[key]}, got {quote(value)}")
        top = SETTING_MAX["width"]
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)) or not 0 < self.width <= top:
            raise ValueError(f"width must be a number in (0, {top:g}], got {quote(self.width)}")
        object.__setattr__(self, "width", float(self.width))
        if self.small_input is None:
            object.__setattr__(self, "small_input", self.input_size < SMALL_INPUT_BELOW)
        elif not isinstance(self.small_input, bool):
            raise ValueError(f"small_input must be true, false or null, got {quote(self.small_input)}")

    def chosen_anew(self, changes: dict) -> dict:
        """A new input size chooses ``small_input`` anew unless the change gives it."""
        return {"small_input": None} if "input_size" in changes else {}

    @property
    def stem_channels(self) -> int:
        return make_divisible(STEM_CHANNELS * self.width)

    @property
    def stem_stride(self) -> int:
        return 1 if self.small_input else 2

    @property
    def head_channels(self) -> int:
        """1728 up to width 1, ``int(1728 * width)`` above (MMRazor's rule: the head is not rounded)."""
        return int(HEAD_CHANNELS * self.width) if self.width > 1 else HEAD_CHANNELS

    def layout(self) -> list[tuple[int, int, int]]:
        """(in_channels, out_channels, stride) of every choice block, in order."""
        blocks, cin = [], self.stem_channels
        for channels, repeats, stride, _ in STAGES:
            cout = make_divisible(channels * self.width)
            for j in range(repeats):
                blocks.append((cin, cout, stride if j == 0 else 1))
                cin = cout
        return blocks


# --- initialisation ------------------------------------------------------------------------------

@torch.no_grad()
def _align(ops: list[nn.Module]) -> None:
    """Start the candidates of one block as one function where they can.

    Depthwise kernels are Dirac deltas, so kernel size makes no difference at the start. The
    expansions are rows of one matrix drawn for the block and the projections read only the
    hidden channels that every expansion ratio has (the others start at zero), so ``e3`` and
    ``e6`` start equal too. In a block that adds its input back the projection's BN starts at
    zero: every candidate then starts as the identity, which is what ``identity`` is there.
    """
    blocks = [op for op in ops if isinstance(op, MBBlock)]
    if not blocks:
        return
    for block in blocks:
        nn.init.dirac_(block.depthwise.conv.weight, groups=block.depthwise.conv.groups)
    expanded = [b for b in blocks if b.expand is not None]
    if expanded:
        widest = max(expanded, key=lambda b: b.expand.conv.out_channels).expand.conv.weight
        shared = torch.empty_like(widest)
        nn.init.kaiming_normal_(shared, mode="fan_out", nonlinearity="relu")
        for block in expanded:
            block.expand.conv.weight.copy_(shared[:block.expand.conv.out_channels])
        common = min(b.expand.conv.out_channels for b in expanded)
        projection = max(expanded, key=lambda b: b.project.conv.in_channels).project.conv.weight
        shared = torch.empty_like(projection)
        nn.init.kaiming_normal_(shared, mode="fan_out", nonlinearity="relu")
        shared[:, common:] = 0
        for block in expanded:
            block.project.conv.weight.copy_(shared[:, :block.project.conv.in_channels])
    for block in blocks:
        if block.residual:
            nn.init.zeros_(block.project.bn.weight)


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str = "aligned") -> None:
    """Initialise a MobileNet supernet or child in place.

    ``kaiming``: kaiming (fan-out) convolutions and an N(0, 0.01) classifier with zero bias, as
    MMRazor initialises this network. ``aligned``: the same, then every block's candidates
    aligned by `_align` (all candidates of a `Choice` together). ``torch``: PyTorch's default
    initialisation. BN starts at weight 1, bias 0 (but where `_align` zeroes it).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {', '.join(INIT_SCHEMES)}, got {scheme!r}")
    if scheme == "torch":
        return
    kaiming_init(model)
    if scheme == "aligned":
        for block in getattr(model, "blocks", []):
            _align(list(block.candidates) if isinstance(block, Choice) else [block])


# --- how much memory a network of some settings takes --------------------------------------------

def _op_footprint(name: str, cin: int, cout: int, stride: int, size: int) -> tuple[Footprint, int]:
    """One candidate on ``size`` px: its weights and the feature maps its layers write (conv, BN
    and ReLU6 each one; the residual sum one more), and its output size."""
    if name == "identity":
        if stride == 1 and cin == cout:
            return Footprint(), size
        return Footprint.conv(cin, cout, 1, size, stride, maps=2)
    kernel, expand = mb_shape(name)
    mid, total = cin * expand, Footprint()
    if expand != 1:
        total, _ = Footprint.conv(cin, mid, 1, size, maps=3)
    depthwise, out = Footprint.conv(mid, mid, kernel, size, stride, depthwise=True, maps=3)
    project, _ = Footprint.conv(mid, cout, 1, out, maps=2)
    residual = Footprint(0, cout * out * out) if stride == 1 and cin == cout else Footprint()
    return total + depthwise + project + residual, out


def mobilenet_footprint(s: MobileNetSettings, choices=None) -> Footprint:
    """The supernet's footprint (every candidate's weights, the largest candidate's feature maps)
    or, with ``choices`` (op names or indices), that child's, counted from the settings."""
    total, size = Footprint.conv(s.in_channels, s.stem_channels, 3, s.input_size, s.stem_stride, maps=3)
    for i, ((cin, cout, stride), ops) in enumerate(zip(s.layout(), block_ops())):
        if choices is not None:
            ops = [ops[choices[i]] if isinstance(choices[i], int) else choices[i]]
        parts = [_op_footprint(op, cin, cout, stride, size) for op in ops]
        total += Footprint(sum(p.params for p, _ in parts), max(p.activations for p, _ in parts))
        size = parts[0][1]
    head, size = Footprint.conv(s.layout()[-1][1], s.head_channels, 1, size, maps=3)
    classifier = Footprint(s.head_channels * s.num_classes + s.num_classes, s.head_channels + s.num_classes)
    return total + head + classifier


# --- the networks --------------------------------------------------------------------------------

class Parts(NamedTuple):
    """The modules of a MobileNet: stem, the blocks, head and classifier."""

    stem: nn.Module
    blocks: list[nn.Module]
    head: nn.Module
    classifier: nn.Module


class _MobileNet(nn.Module):
    def __init__(self, settings: MobileNetSettings, parts: Parts):
        super().__init__()
        self.settings = settings
        self.stem = parts.stem
        self.blocks = nn.Sequential(*parts.blocks)
        self.head = parts.head
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = parts.classifier

    @staticmethod
    def new_parts(s: MobileNetSettings, blocks: list[nn.Module]) -> Parts:
        return Parts(ConvBN(s.in_channels, s.stem_channels, 3, s.stem_stride), blocks,
                     ConvBN(s.layout()[-1][1], s.head_channels), nn.Linear(s.head_channels, s.num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.head(features)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class MobileNetChild(_MobileNet):
    """A plain network holding only the chosen ops: what gets deployed.

    ``shared`` builds it from existing modules instead of new ones (no initialisation), as
    `MobileNetSpace.child(share=True)` does with the supernet's."""

    def __init__(self, choices: list[str], settings: MobileNetSettings | None = None, init: str = "aligned",
                 shared: Parts | None = None):
        settings = settings or MobileNetSettings()
        layout = settings.layout()
        if len(choices) != len(layout):
            raise ValueError(f"expected {len(layout)} choices, got {len(choices)}")
        for op, ops, label in zip(choices, block_ops(), block_labels()):
            if op not in ops:
                raise ValueError(f"{label}: unknown op {op!r}; expected one of {list(ops)}")
        if shared is None:
            blocks = [make_op(op, *shape) for op, shape in zip(choices, layout)]
            super().__init__(settings, self.new_parts(settings, blocks))
            init_weights(self, init)
        else:
            super().__init__(settings, shared)
        self.choices = list(choices)


@register_space("mobilenet")
class MobileNetSpace(SpaceMixin, _MobileNet):
    """The supernet: every block is a `Choice` over its stage's candidates, labelled by
    `block_labels` (MMRazor's mutable names).

    ``MobileNetSpace(settings=None, init="aligned")``; ``small_input`` defaults to True below
    64 px (stride-1 stem, so 28-32 px images end at 2x2); ``init`` is one of `INIT_SCHEMES`.
    """

    Settings = MobileNetSettings
    ops = OPS
    init_schemes = INIT_SCHEMES
    description = ("MMRazor's SPOS MobileNet (ProxylessNAS-GPU skeleton): 22 inverted-residual blocks in "
                   "7 stages, each one of 6 MBBlocks or identity (the first fixed to mb_k3e1)")

    def __init__(self, settings: MobileNetSettings | None = None, init: str = "aligned"):
        settings = settings or MobileNetSettings()
        blocks = [Choice({op: make_op(op, *shape) for op in ops}, label)
                  for label, ops, shape in zip(block_labels(), block_ops(), settings.layout())]
        super().__init__(settings, self.new_parts(settings, blocks))
        init_weights(self, init)

    @classmethod
    def from_settings(cls, settings: MobileNetSettings, init: str = "aligned") -> "MobileNetSpace":
        return cls(settings, init)

    @staticmethod
    def decisions(settings: MobileNetSettings | None = None) -> list[tuple[str, list[str]]]:
        """(label, candidates) of every block; the same at every setting."""
        return [(label, list(ops)) for label, ops in zip(block_labels(), block_ops())]

    @staticmethod
    def child_from(choices, settings: MobileNetSettings, init: str = "aligned") -> MobileNetChild:
        return MobileNetChild(list(choices), settings, init=init)

    footprint = staticmethod(mobilenet_footprint)

    @staticmethod
    def published_layouts() -> dict:
        """The published checkpoints of this space that ``dsnas import`` reads."""
        return {MMRazorSubnet.name: MMRazorSubnet()}

    def describe(self) -> dict:
        s = self.settings
        firsts = [sum(blocks for _, blocks, _, _ in STAGES[:i]) for i in range(len(STAGES))]
        return {"stages": len(STAGES), "stage_channels": [s.layout()[i][1] for i in firsts],
                "stem_channels": s.stem_channels, "head_channels": s.head_channels,
                "architectures": len(OPS) ** (len(block_labels()) - 1)}

    def child(self, choices, share: bool = False) -> MobileNetChild:
        """The deployable child for ``choices`` (op names, indices or an `Architecture`), with
        weights copied from this supernet; ``share=True`` reuses the supernet's modules instead
        (no copy: training the child trains the supernet's chosen ops)."""
        choices = getattr(choices, "choices", choices)
        if len(choices) != self.num_blocks:
            raise ValueError(f"expected {self.num_blocks} choices, got {len(choices)}")
        names = [block.names[block.index(c)] for block, c in zip(self.choices, choices)]
        # the child keeps its own class (what `child_from` builds and files load into); `freeze` gives its blocks
        blocks = list(freeze(self.blocks, names))
        shared = MobileNetChild(names, self.settings, shared=Parts(self.stem, blocks, self.head, self.classifier))
        if share:
            return shared
        # fresh modules, as `child_from` builds them (float32, contiguous), with the chosen weights loaded
        child = MobileNetChild(names, self.settings, init="torch")
        child.to(next(self.parameters()).device)
        child.load_state_dict(shared.state_dict())
        return child


# --- MMRazor's subnet checkpoints ----------------------------------------------------------------

class MMRazorSubnet:
    """The layout of an MMRazor subnet of this space (`dsnas.published` reads it): an MMEngine
    runner checkpoint whose keys are ``backbone.conv1.{conv,bn}.*``,
    ``backbone.layer<n>.<b>._candidates.<op>.{expand_conv,depthwise_conv,linear_conv,downsample}.
    {conv,bn}.*``, ``backbone.conv2.{conv,bn}.*`` and ``head.fc.{weight,bias}`` (prefixed
    ``architecture.`` when saved from the search algorithm, which `dsnas.published` removes).
    An ``identity`` that passes its input through holds no tensor, so a block without keys is one."""

    name = "mmrazor-mobilenet"
    supernet = False
    input_convention = "mmrazor"  # the RGB mean/std of MMRazor's ImageNet configs
    FIXED = {"stem": "backbone.conv1", "head": "backbone.conv2", "classifier": "head.fc"}
    PARTS = {"expand": "expand_conv", "depthwise": "depthwise_conv", "project": "linear_conv",
             "downsample": "downsample"}
    _CANDIDATE = re.compile(r"(backbone\.layer\d+\.\d+)\._candidates\.(\w+?)\.")

    def detect(self, state: dict) -> bool:
        return any(self._CANDIDATE.match(key) for key in state)

    def settings(self, state: dict, config_text: str, bn_eps: float | None) -> tuple[dict, list[str]]:
        """Classes and input channels from the shapes; the width from ``widen_factor`` in the
        config the checkpoint carries (else 1); BN eps is mmcv's default, the only one here."""
        for key, ndim in (("head.fc.weight", 2), ("backbone.conv1.conv.weight", 4)):
            if key not in state or state[key].ndim != ndim:
                raise DsnasError(f"checkpoint has no {key} (an MMRazor MobileNet subnet has one)")
        if bn_eps is not None and bn_eps != BN_EPS:
            raise DsnasError(f"--bn-eps {bn_eps:g}: the mobilenet space has BN eps {BN_EPS:g} (mmcv's default, "
                             "which MMRazor's MobileNet keeps)")
        notes = [f"BN eps {BN_EPS:g} (mmcv's default)",
                 "input as MMRazor's ImageNet configs feed it (RGB, mean 123.675/116.28/103.53, std "
                 "58.395/57.12/57.375); its MobileNet supernet config leaves the preprocessor commented out"]
        m = re.search(r"widen_factor\s*=\s*(\d*\.?\d+(?:[eE][+-]?\d+)?)", config_text)
        width = float(m[1]) if m else 1.0
        notes.append(f"width {width:g} " + ("from widen_factor in the config in the checkpoint" if m
                                             else "(no widen_factor in a config in the checkpoint)"))
        return {"num_classes": int(state["head.fc.weight"].shape[0]),
                "in_channels": int(state["backbone.conv1.conv.weight"].shape[1]), "width": width}, notes

    def choices(self, state: dict, arch) -> list[str]:
        """The op of every block from the keys (a block without keys passes its input through)."""
        found: dict[str, set] = {}
        for key in state:
            if m := self._CANDIDATE.match(key):
                found.setdefault(m[1], set()).add(m[2])
        unknown = sorted(set(found) - set(block_labels()))
        if unknown:
            raise DsnasError(f"checkpoint has a block {unknown[0]}, which the mobilenet space lacks")
        ops = []
        for label, candidates in zip(block_labels(), block_ops()):
            names = found.get(label, {"identity"})
            if len(names) != 1 or not names <= set(candidates):
                raise DsnasError(f"{label} holds candidates {sorted(names)}: expected one of {list(candidates)} "
                                 "(a subnet)")
            ops.append(names.pop())
        return ops

    def key(self, ours: str, net: nn.Module, choices: list[str]) -> str:
        """The published key of our child's tensor ``ours``."""
        head, _, rest = ours.partition(".")
        if head in self.FIXED:
            return f"{self.FIXED[head]}.{rest}"
        index, part, rest = rest.split(".", 2)
        label = block_labels()[int(index)]
        return f"{label}._candidates.{choices[int(index)]}.{self.PARTS[part]}.{rest}"

    def ignored(self, key: str) -> bool:
        return False
