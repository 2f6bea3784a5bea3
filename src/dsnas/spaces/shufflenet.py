"""The ShuffleNetV2 search space (SPOS layout) in two block designs, and its deployable child.

Stem conv 3x3 (3->16, stride 2, or 1 for small images) + BN + ReLU; four stages of choice
blocks with 64/160/320/640 channels and 4/4/8/4 repeats (first block of a stage has stride 2);
head conv 1x1 -> 1024 + BN + ReLU, global average pool, optional dropout, linear classifier.
Each block picks one of `OPS`. Convolutions have no bias; BN eps and affine are settings.

``design`` (see `DESIGNS`) is the unit's layout. ``mmrazor`` (the default): both branches give
out / 2 channels and the unit ends with a channel shuffle. ``official`` (Megvii's SPOS and the
DSNAS authors' code): a stride-1 unit splits its input into even and odd channels, a stride-2
unit's projection branch keeps the input's channels and its main branch gives out - in, and no
shuffle follows; the classifier has no bias.

Weights start from one of `INIT_SCHEMES` (`init_weights`); the default, ``aligned``, makes every
candidate of a block start as the same function, which is what lets a supernet whose path is
drawn per block leave chance within a few hundred steps (BENCHMARKS.md, ``plateau``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from ..choice import Choice, freeze
from ..errors import quote
from .registry import Footprint, SpaceMixin, SpaceSettings, kaiming_init, register_space

OPS = ("shuffle_3x3", "shuffle_5x5", "shuffle_7x7", "shuffle_xception")
STEM_CHANNELS = 16
STAGE_CHANNELS = (64, 160, 320, 640)
STAGE_REPEATS = (4, 4, 8, 4)
HEAD_CHANNELS = 1024
BN_EPS = 0.01
DESIGNS = ("mmrazor", "official")
SMALL_INPUT_BELOW = 64  # images smaller than this use a stride-1 stem
INIT_SCHEMES = ("aligned", "kaiming", "torch")


def _conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, depthwise: bool = False, relu: bool = True,
             norm=None):
    """Conv + BN (+ ReLU); ``norm(channels)`` builds the BN (default: eps `BN_EPS`, affine)."""
    norm = norm or partial(nn.BatchNorm2d, eps=BN_EPS)
    layers = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=cin if depthwise else 1, bias=False),
        norm(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups, in one copy that keeps ``x``'s memory format:
    a channels-last input is shuffled along its innermost axis and stays channels-last, so the
    convolutions that follow need no layout copy."""
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last):
        nhwc = x.permute(0, 2, 3, 1).reshape(n, h, w, groups, c // groups).transpose(3, 4).reshape(n, h, w, c)
        return nhwc.permute(0, 3, 1, 2)
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Conv(NamedTuple):
    """One conv + BN (+ ReLU) of a unit: what `_conv_bn` builds and what `footprint` counts."""

    cin: int
    cout: int
    kernel: int = 1
    stride: int = 1
    depthwise: bool = False
    relu: bool = True


def unit_layers(cin: int, cout: int, stride: int, kernel: int = 3, xception: bool = False,
                official: bool = False) -> tuple[list[Conv], list[Conv]]:
    """The layers of a unit's two branches (module docstring; branch A is empty at stride 1)."""
    half = cout // 2
    # the official stride-2 unit projects onto all input channels; the main branch fills the rest
    a_out = cin if official else half
    b_out = cout - a_out if official and stride > 1 else half
    branch_a = []
    if stride > 1:
        branch_a = [Conv(cin, cin, 3 if xception else kernel, stride, depthwise=True, relu=False), Conv(cin, a_out)]
    b_in = cin if stride > 1 else half
    if xception:
        mid = cout // 2
        branch_b = [Conv(b_in, b_in, 3, stride, depthwise=True, relu=False), Conv(b_in, mid),
                    Conv(mid, mid, 3, 1, depthwise=True, relu=False), Conv(mid, mid),
                    Conv(mid, mid, 3, 1, depthwise=True, relu=False), Conv(mid, b_out)]
    else:
        branch_b = [Conv(b_in, half), Conv(half, half, kernel, stride, depthwise=True, relu=False), Conv(half, b_out)]
    return branch_a, branch_b


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit; ``kernel`` in {3, 5, 7}, or ``xception=True`` for the Xception unit.

    ``branch_a`` is the stride-2 unit's projection of the input, ``branch_b`` the main branch.
    ``official=True`` is the official design (module docstring); ``norm`` builds every BN."""

    def __init__(self, cin: int, cout: int, stride: int, kernel: int = 3, xception: bool = False,
                 official: bool = False, norm=None):
        super().__init__()
        if stride == 1 and cin != cout:
            raise ValueError(f"a stride-1 unit needs cin == cout, got {cin} and {cout}")
        self.stride = stride
        self.official = official
        branch_a, branch_b = unit_layers(cin, cout, stride, kernel, xception, official)
        self.branch_a = nn.Sequential(*(_conv_bn(*conv, norm=norm) for conv in branch_a)) if branch_a else None
        self.branch_b = nn.Sequential(*(_conv_bn(*conv, norm=norm) for conv in branch_b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch_a is not None:
            out = torch.cat((self.branch_a(x), self.branch_b(x)), dim=1)
        elif self.official:  # the shuffle sits at the input: even channels pass, odd ones go through
            return torch.cat((x[:, 0::2], self.branch_b(x[:, 1::2])), dim=1)
        else:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch_b(x2)), dim=1)
        return out if self.official else channel_shuffle(out, 2)


def make_op(name: str, cin: int, cout: int, stride: int, settings: "ShuffleNetSettings | None" = None) -> ShuffleUnit:
    """The candidate ``name`` of a block, in the block design of ``settings`` (default: MMRazor's)."""
    design = {} if settings is None else {"official": settings.design == "official", "norm": settings.norm}
    if name == "shuffle_xception":
        return ShuffleUnit(cin, cout, stride, xception=True, **design)
    if name in OPS:
        return ShuffleUnit(cin, cout, stride, kernel=int(name[-1]), **design)
    raise ValueError(f"unknown op {name!r}; expected one of {list(OPS)}")


def _kaiming(weight: torch.Tensor) -> None:
    nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")


def _pointwise(unit: ShuffleUnit) -> list[tuple[str, nn.Conv2d]]:
    """The 1x1 convolutions of ``unit``, each named by its branch and position in it ("a0", "b0", "b1", ...)."""
    named = []
    for branch, seq in (("a", unit.branch_a), ("b", unit.branch_b)):
        convs = [m for m in seq.modules() if isinstance(m, nn.Conv2d) and m.groups == 1] if seq is not None else []
        named += [(f"{branch}{i}", conv) for i, conv in enumerate(convs)]
    return named


@torch.no_grad()
def _align(units: list[ShuffleUnit]) -> None:
    """Start the candidates of one block as (nearly) the same function.

    Depthwise kernels are Dirac deltas, so kernel size makes no difference at the start. A
    stride-1 unit starts as an identity on its branch (identity 1x1s), whatever its op. In a
    stride-2 unit the branch-A 1x1 and the first two branch-B 1x1s are drawn once per block and
    shared by its candidates; the Xception unit's third 1x1 starts as an identity. BN and ReLU
    sit between them, so the candidates differ only by those at the start.
    """
    shared: dict[tuple, torch.Tensor] = {}  # by role and shape: official-design candidates differ in shape
    for unit in units:
        for m in unit.modules():
            if isinstance(m, nn.Conv2d) and m.groups > 1:
                nn.init.dirac_(m.weight, groups=m.groups)
        for role, conv in _pointwise(unit):
            key = (role, conv.weight.shape)
            if unit.stride == 1 or role == "b2":
                nn.init.dirac_(conv.weight)
            elif key in shared:
                conv.weight.copy_(shared[key])
            else:
                _kaiming(conv.weight)
                shared[key] = conv.weight.detach().clone()


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str = "aligned") -> None:
    """Initialise a ShuffleNet supernet or child in place.

    ``aligned``: kaiming (fan-out) convolutions and an N(0, 0.01) classifier, then every block
    aligned by `_align` (all candidates of a `Choice` together). ``kaiming``: the same without
    the alignment, each candidate drawn on its own. ``torch``: PyTorch's default initialisation.
    BN starts at weight 1, bias 0 in every scheme.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {', '.join(INIT_SCHEMES)}, got {scheme!r}")
    if scheme == "torch":
        return
    kaiming_init(model)
    if scheme == "aligned":
        for block in getattr(model, "blocks", []):
            _align(list(block.candidates) if isinstance(block, Choice) else [block])


def _round_channels(c: float) -> int:
    return max(8, int(round(c / 8)) * 8)


# Bounds on every setting that sizes an allocation (checked before anything is built).
SETTING_MAX = {"num_classes": 100_000, "in_channels": 1024, "input_size": 4096, "width": 8.0}


@dataclass(frozen=True)
class ShuffleNetSettings(SpaceSettings):
    """Everything that fixes the shape of the space (stored in arch files and checkpoints)."""

    num_classes: int = 1000
    in_channels: int = 3
    input_size: int = 224
    width: float = 1.0
    small_input: bool | None = None  # None: chosen from input_size
    # the block design (files hold these only where they differ from `design_defaults`)
    design: str = "mmrazor"          # one of DESIGNS
    bn_affine: bool = True           # BN with weight and bias (Megvii's SPOS supernet has none)
    bn_eps: float = BN_EPS           # eps of every BN
    classifier_bias: bool | None = None  # None: the design's (mmrazor: a bias, official: none)
    dropout: float = 0.0             # dropout before the classifier (training only)

    def __post_init__(self):
        for key in ("num_classes", "in_channels", "input_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= SETTING_MAX[key]:
                raise ValueError(f"{key} must be an integer in 1..{SETTING_MAX[key]}, got {quote(value)}")
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)) or not 0 < self.width <= 8:
            raise ValueError(f"width must be a number in (0, {SETTING_MAX['width']:g}], got {quote(self.width)}")
        if self.small_input is None:
            object.__setattr__(self, "small_input", self.input_size < SMALL_INPUT_BELOW)
        elif not isinstance(self.small_input, bool):
            raise ValueError(f"small_input must be true, false or null, got {quote(self.small_input)}")
        object.__setattr__(self, "width", float(self.width))
        self._check_design()

    def _check_design(self) -> None:
        if self.design not in DESIGNS:
            raise ValueError(f"design must be one of {', '.join(DESIGNS)}, got {self.design!r}")
        if self.classifier_bias is None:
            object.__setattr__(self, "classifier_bias", self.design_defaults()["classifier_bias"])
        for key in ("bn_affine", "classifier_bias"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")
        for key, low, high in (("bn_eps", 0.0, 1.0), ("dropout", 0.0, 1.0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high \
                    or (key == "bn_eps" and value == 0):
                bounds = "(0, 1)" if key == "bn_eps" else "[0, 1)"
                raise ValueError(f"{key} must be a number in {bounds}, got {value!r}")
            object.__setattr__(self, key, float(value))
        if self.design == "official":
            thin = [(cin, cout) for cin, cout, stride in self.layout() if stride > 1 and cout <= cin]
            if thin:
                raise ValueError(f"the official design needs more output than input channels in every stride-2 "
                                 f"unit; width {self.width:g} gives {thin[0][0]} -> {thin[0][1]}")

    def design_defaults(self) -> dict:
        """The block-design settings a file leaves out: MMRazor's design, or this design's classifier."""
        return {"design": "mmrazor", "bn_affine": True, "bn_eps": BN_EPS,
                "classifier_bias": self.design != "official", "dropout": 0.0}

    def norm(self, channels: int) -> nn.BatchNorm2d:
        """The BN of these settings."""
        return nn.BatchNorm2d(channels, eps=self.bn_eps, affine=self.bn_affine)

    def left_out(self) -> dict:
        """A file holds the block-design settings only where they are not the default, so that
        files of MMRazor's design read as they always did."""
        return self.design_defaults()

    def chosen_anew(self, changes: dict) -> dict:
        """A new input size chooses ``small_input`` anew unless the change gives it."""
        return {"small_input": None} if "input_size" in changes else {}

    def layout(self) -> list[tuple[int, int, int]]:
        """(in_channels, out_channels, stride) of every choice block, in order."""
        blocks, cin = [], STEM_CHANNELS
        for channels, repeats in zip(STAGE_CHANNELS, STAGE_REPEATS):
            cout = _round_channels(channels * self.width)
            for j in range(repeats):
                blocks.append((cin, cout, 2 if j == 0 else 1))
                cin = cout
        return blocks

    @property
    def head_channels(self) -> int:
        return _round_channels(HEAD_CHANNELS * self.width)


def _convs_footprint(convs: list[Conv], size: int, affine: bool) -> tuple[Footprint, int]:
    """The footprint of a chain of `Conv` layers on ``size`` px, and its output size."""
    total = Footprint()
    for conv in convs:
        part, size = Footprint.conv(conv.cin, conv.cout, conv.kernel, size, conv.stride, conv.depthwise, affine,
                                    maps=3 if conv.relu else 2)
        total += part
    return total, size


def _op_footprint(name: str, cin: int, cout: int, stride: int, size: int, s: ShuffleNetSettings) -> tuple[Footprint, int]:
    """One candidate unit on ``size`` px (its two branches, their concatenation and shuffle)."""
    xception = name == "shuffle_xception"
    branch_a, branch_b = unit_layers(cin, cout, stride, 3 if xception else int(name[-1]), xception,
                                     s.design == "official")
    a, out = _convs_footprint(branch_a, size, s.bn_affine)
    b, out = _convs_footprint(branch_b, size, s.bn_affine)
    return a + b + Footprint(0, 2 * cout * out * out), out


def shufflenet_footprint(s: ShuffleNetSettings, choices=None) -> Footprint:
    """The supernet's footprint (every candidate's weights, the largest candidate's feature maps)
    or, with ``choices`` (op names or indices), that child's, counted from `unit_layers`."""
    total, size = _convs_footprint([Conv(s.in_channels, STEM_CHANNELS, 3, 1 if s.small_input else 2)],
                                   s.input_size, s.bn_affine)
    for i, (cin, cout, stride) in enumerate(s.layout()):
        ops = OPS if choices is None else [OPS[choices[i]] if isinstance(choices[i], int) else choices[i]]
        parts = [_op_footprint(op, cin, cout, stride, size, s) for op in ops]
        total += Footprint(sum(p.params for p, _ in parts), max(p.activations for p, _ in parts))
        size = parts[0][1]
    head, size = _convs_footprint([Conv(s.layout()[-1][1], s.head_channels)], size, s.bn_affine)
    classifier = s.head_channels * s.num_classes + (s.num_classes if s.classifier_bias else 0)
    return total + head + Footprint(classifier, s.head_channels + s.num_classes)


def block_keys() -> list[str]:
    """The label of each block, MMRazor's name for it: ``backbone.layers.<stage>.<block>``."""
    return [f"backbone.layers.{s}.{j}" for s, r in enumerate(STAGE_REPEATS) for j in range(r)]


class Parts(NamedTuple):
    """The modules of a ShuffleNet: stem, the blocks, head and classifier."""

    stem: nn.Module
    blocks: list[nn.Module]
    head: nn.Module
    classifier: nn.Module


class _ShuffleNet(nn.Module):
    def __init__(self, settings: ShuffleNetSettings, parts: Parts):
        super().__init__()
        self.settings = settings
        self.stem = parts.stem
        self.blocks = nn.Sequential(*parts.blocks)
        self.head = parts.head
        self.pool = nn.AdaptiveAvgPool2d(1)
        # no module at all without dropout, so that such a network runs exactly as it always did
        self.dropout = nn.Dropout(settings.dropout) if settings.dropout else nn.Identity()
        self.classifier = parts.classifier

    @staticmethod
    def new_parts(s: ShuffleNetSettings, blocks: list[nn.Module]) -> Parts:
        return Parts(_conv_bn(s.in_channels, STEM_CHANNELS, 3, 1 if s.small_input else 2, norm=s.norm), blocks,
                     _conv_bn(s.layout()[-1][1], s.head_channels, 1, norm=s.norm),
                     nn.Linear(s.head_channels, s.num_classes, bias=s.classifier_bias))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.flatten(self.pool(self.head(features)), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ShuffleNetChild(_ShuffleNet):
    """A plain network holding only the chosen ops: what gets deployed.

    ``shared`` builds it from existing modules instead of new ones (no initialisation), as
    `ShuffleNetSpace.child(share=True)` does with the supernet's."""

    def __init__(self, choices: list[str], settings: ShuffleNetSettings | None = None, init: str = "aligned",
                 shared: Parts | None = None, **kwargs):
        settings = settings or ShuffleNetSettings(**kwargs)
        layout = settings.layout()
        if len(choices) != len(layout):
            raise ValueError(f"expected {len(layout)} choices, got {len(choices)}")
        if shared is None:
            blocks = [make_op(op, *shape, settings) for op, shape in zip(choices, layout)]
            super().__init__(settings, self.new_parts(settings, blocks))
            init_weights(self, init)
        else:
            super().__init__(settings, shared)
        self.choices = list(choices)


@register_space("shufflenet")
class ShuffleNetSpace(SpaceMixin, _ShuffleNet):
    """The supernet: every block is a `Choice` over `OPS`, labelled by `block_keys`.

    ``ShuffleNetSpace(num_classes=1000, in_channels=3, input_size=224, width=1.0, small_input=None,
    init="aligned", **design)``; ``small_input`` defaults to True below 64 px (stride-1 stem, so
    28-32 px images end at 2x2); ``init`` is one of `INIT_SCHEMES` (see `init_weights`);
    ``design`` holds the block-design settings of `ShuffleNetSettings` (``design``, ``bn_eps``, ...).
    """

    Settings = ShuffleNetSettings
    ops = OPS
    init_schemes = INIT_SCHEMES
    description = "ShuffleNetV2 supernet of DSNAS and SPOS: 20 blocks in 4 stages, each one of 4 ShuffleNet units"

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
                 width: float = 1.0, small_input: bool | None = None, init: str = "aligned", **design):
        settings = ShuffleNetSettings(num_classes, in_channels, input_size, width, small_input, **design)
        blocks = [Choice({op: make_op(op, *shape, settings) for op in OPS}, label)
                  for label, shape in zip(block_keys(), settings.layout())]
        super().__init__(settings, self.new_parts(settings, blocks))
        init_weights(self, init)

    @classmethod
    def from_settings(cls, settings: ShuffleNetSettings, init: str = "aligned") -> "ShuffleNetSpace":
        return cls(**asdict(settings), init=init)

    @staticmethod
    def decisions(settings: ShuffleNetSettings | None = None) -> list[tuple[str, list[str]]]:
        """(label, candidates) of every block; the same at every setting."""
        return [(label, list(OPS)) for label in block_keys()]

    @staticmethod
    def child_from(choices, settings: ShuffleNetSettings, init: str = "aligned") -> ShuffleNetChild:
        return ShuffleNetChild(list(choices), settings, init=init)

    footprint = staticmethod(shufflenet_footprint)

    def child(self, choices, share: bool = False) -> ShuffleNetChild:
        """The deployable child for ``choices`` (op names, indices or an `Architecture`), with
        weights copied from this supernet; ``share=True`` reuses the supernet's modules instead
        (no copy: training the child trains the supernet's chosen ops)."""
        choices = getattr(choices, "choices", choices)
        if len(choices) != self.num_blocks:
            raise ValueError(f"expected {self.num_blocks} choices, got {len(choices)}")
        names = [block.names[block.index(c)] for block, c in zip(self.choices, choices)]
        # the child keeps its own class (what `child_from` builds and files load into); `freeze` gives its blocks
        blocks = list(freeze(self.blocks, names))
        shared = ShuffleNetChild(names, self.settings, shared=Parts(self.stem, blocks, self.head, self.classifier))
        if share:
            return shared
        # fresh modules, as `child_from` builds them (float32, contiguous, each drawing PyTorch's default
        # initialisation, so that what a run draws after it stays the same), with the chosen weights loaded
        child = ShuffleNetChild(names, self.settings, init="torch")
        child.to(next(self.parameters()).device)
        child.load_state_dict(shared.state_dict())
        return child
