"""The NAS-Bench-201 cell space (Dong & Yang, ICLR 2020) and its deployable child.

A cell is a DAG of 4 nodes: node 0 is the cell's input, node j (1..3) sums one op applied to
each earlier node, and node 3 is the output. Each of the 6 edges picks one of `OPS`;
``nor_conv`` is ReLU -> conv -> BN, ``none`` outputs zeros. The network: stem conv 3x3 (to C)
+ BN; three stages of N cells at C, 2C and 4C channels, with a residual basic block of stride
2 between stages; BN + ReLU, global average pooling and a linear classifier. As in the
benchmark, an architecture is ONE cell: every cell takes the same op on each edge (the `Choice`
modules of an edge share its label, `choice.decisions`) while each keeps its own weights, so
the space holds 5**6 = 15,625 architectures.

The benchmark trains C = 16, N = 5 on 32 px images; ``channels`` and ``cells_per_stage`` set
them, and any input size divisible by 4 works (28 px Fashion-MNIST ends at 7 x 7). BN uses
PyTorch's defaults (eps 1e-5) and convolutions have no bias, as in the reference code;
``bn_affine: false`` drops the weight and bias of the cells' BN, as the benchmark's search cells
do (its stem and reductions keep theirs).

Architectures are also written as the benchmark's string, with the edges into nodes 1, 2 and 3
and ``~k`` naming the source node: ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (`to_string`,
`from_string`), so that an architecture found here can be looked up in NAS-Bench-201/NATS-Bench.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..choice import Choice, freeze
from .registry import Footprint, SpaceMixin, SpaceSettings, kaiming_init, register_space

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")  # the benchmark's order
NODES = 4
EDGES = [(j, i) for j in range(1, NODES) for i in range(j)]  # (target, source), in the string's order
EDGE_LABELS = [f"{j}<-{i}" for j, i in EDGES]  # the reference code's edge names
STAGES = 3
INIT_SCHEMES = ("aligned", "kaiming", "torch")
SETTING_MAX = {"num_classes": 100_000, "in_channels": 1024, "input_size": 4096, "channels": 256,
               "cells_per_stage": 32}  # bounds on every setting that sizes an allocation


class Zero(nn.Module):
    """The ``none`` op: zeros of the input's shape (the edge is absent)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def relu_conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, affine: bool = True) -> nn.Sequential:
    # the ReLU must not act in place: its input is a node that other edges (and a gate) also read
    return nn.Sequential(nn.ReLU(), nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(cout, affine=affine))


def make_op(name: str, channels: int, affine: bool = True) -> nn.Module:
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name in ("nor_conv_1x1", "nor_conv_3x3"):
        return relu_conv_bn(channels, channels, int(name[-1]), affine=affine)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"unknown op {name!r}; expected one of {list(OPS)}")


class Cell(nn.Module):
    """The 4-node DAG; ``edges`` holds one module per edge, in `EDGES` order."""

    def __init__(self, edges: list[nn.Module]):
        super().__init__()
        if len(edges) != len(EDGES):
            raise ValueError(f"a cell has {len(EDGES)} edges, got {len(edges)}")
        self.edges = nn.ModuleList(edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes, edge = [x], iter(self.edges)
        for j in range(1, NODES):
            total = next(edge)(nodes[0])
            for i in range(1, j):
                total = total + next(edge)(nodes[i])  # not in place: an edge's output may be a gated view
            nodes.append(total)
        return nodes[-1]


class Reduction(nn.Module):
    """The residual basic block between stages: two ReLU-conv-BN 3x3 (the first of stride 2),
    plus a shortcut of 2x2 average pooling and a 1x1 convolution."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv_a = relu_conv_bn(cin, cout, 3, stride=2)
        self.conv_b = relu_conv_bn(cout, cout, 3)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


def _whole(key: str, value, low: int = 1) -> None:
    top = SETTING_MAX[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= top:
        raise ValueError(f"{key} must be an integer in {low}..{top}, got {value!r}")


@dataclass(frozen=True)
class NB201Settings(SpaceSettings):
    """Everything that fixes the shape of the space (stored in arch files and checkpoints).
    The defaults are the benchmark's CIFAR-10 network."""

    num_classes: int = 10
    in_channels: int = 3
    input_size: int = 32
    channels: int = 16          # C: the first stage's width (the stem's output); then 2C and 4C
    cells_per_stage: int = 5    # N
    bn_affine: bool = True      # BN of the cells' convolutions with weight and bias (the benchmark's
                                # search cells have none; its stand-alone networks do)
    ops: str = ",".join(OPS)    # every edge's candidates, comma-separated, in `OPS` order

    def __post_init__(self):
        if not isinstance(self.bn_affine, bool):
            raise ValueError(f"bn_affine must be true or false, got {self.bn_affine!r}")
        names = [n.strip() for n in self.ops.split(",")] if isinstance(self.ops, str) else None
        if not names or any(n not in OPS for n in names) or len(set(names)) != len(names):
            raise ValueError(f"ops must name distinct ops among {', '.join(OPS)}, comma-separated, got {self.ops!r}")
        object.__setattr__(self, "ops", ",".join(op for op in OPS if op in names))  # one spelling per set
        for key in ("num_classes", "in_channels", "channels", "cells_per_stage"):
            _whole(key, getattr(self, key))
        _whole("input_size", self.input_size, low=4)
        if self.input_size % 4:  # each reduction halves the size; its two branches agree on even sizes only
            raise ValueError(f"input_size must be a multiple of 4, got {self.input_size}")

    def stage_channels(self) -> list[int]:
        return [self.channels * 2**s for s in range(STAGES)]

    def candidates(self) -> list[str]:
        """Every edge's candidate ops, in `OPS` order."""
        return self.ops.split(",")


def to_string(choices) -> str:
    """The NAS-Bench-201 string of one cell: ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``."""
    ops = iter(choices)
    return "+".join("|" + "|".join(f"{next(ops)}~{i}" for i in range(j)) + "|" for j in range(1, NODES))


def from_string(text: str) -> list[str]:
    """The ops of the 6 edges (in `EDGES` order) of a NAS-Bench-201 string; ``ValueError`` names
    what is wrong."""
    nodes = str(text).strip().split("+")
    if len(nodes) != NODES - 1:
        raise ValueError(f"a NAS-Bench-201 string has {NODES - 1} nodes joined by '+', got {len(nodes)}")
    choices = []
    for j, node in enumerate(nodes, start=1):
        if len(node) < 2 or node[0] != "|" or node[-1] != "|":
            raise ValueError(f"node {j} ({node!r}) must be written |op~source|...|")
        by_source = {}
        for edge in node[1:-1].split("|"):
            op, sep, source = edge.rpartition("~")
            if not sep or not source.isdigit() or int(source) >= j or int(source) in by_source:
                raise ValueError(f"node {j}: {edge!r} is not op~k with a new source k in 0..{j - 1}")
            if op not in OPS:
                raise ValueError(f"node {j}: unknown op {op!r} (expected one of {', '.join(OPS)})")
            by_source[int(source)] = op
        if len(by_source) != j:
            raise ValueError(f"node {j} needs one edge from each of nodes 0..{j - 1}, got {len(by_source)}")
        choices += [by_source[i] for i in range(j)]
    return choices


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str = "aligned") -> None:
    """Initialise an nb201 supernet or child in place.

    ``torch``: PyTorch's defaults (what the benchmark's reference code trains from).
    ``kaiming``: kaiming (fan-out) convolutions and an N(0, 0.01) classifier. ``aligned``: the
    same, then the two convolutions of every edge start as one function (the 3x3 kernel is the
    1x1 kernel at its centre); ``none``, ``skip_connect`` and pooling cannot be aligned with them.
    BN starts at weight 1, bias 0 in every scheme.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {', '.join(INIT_SCHEMES)}, got {scheme!r}")
    if scheme == "torch":
        return
    kaiming_init(model)
    if scheme == "aligned":
        for m in model.modules():
            if isinstance(m, Choice) and {"nor_conv_1x1", "nor_conv_3x3"} <= set(m.names):
                one, three = (m.candidates[m.index(n)][1].weight for n in ("nor_conv_1x1", "nor_conv_3x3"))
                three.zero_()
                three[:, :, 1:2, 1:2] = one


def _op_footprint(name: str, channels: int, size: int, affine: bool = True) -> Footprint:
    """One edge's op on ``size`` px: a ReLU-conv-BN writes three maps, the others one."""
    if name in ("nor_conv_1x1", "nor_conv_3x3"):
        return Footprint.conv(channels, channels, int(name[-1]), size, affine=affine, maps=3)[0]
    return Footprint(0, channels * size * size)


def _cell_footprint(channels: int, size: int, choices=None, affine: bool = True, candidates=OPS) -> Footprint:
    """A cell: every candidate's weights (or the chosen op's), the largest candidate's maps, and
    the node sums."""
    total = Footprint(0, (NODES - 1) * channels * size * size)
    for i in range(len(EDGES)):
        ops = candidates if choices is None else [candidates[choices[i]] if isinstance(choices[i], int) else choices[i]]
        parts = [_op_footprint(op, channels, size, affine) for op in ops]
        total += Footprint(sum(p.params for p in parts), max(p.activations for p in parts))
    return total


def _reduction_footprint(cin: int, cout: int, size: int) -> tuple[Footprint, int]:
    """The residual block between stages (`Reduction`), and its output size."""
    a, out = Footprint.conv(cin, cout, 3, size, stride=2, maps=3)
    b, _ = Footprint.conv(cout, cout, 3, out, maps=3)
    shortcut = Footprint(cin * cout, (cin + cout) * out * out)
    return a + b + shortcut + Footprint(0, cout * out * out), out


def nb201_footprint(s: NB201Settings, choices=None) -> Footprint:
    """The supernet's footprint (every candidate's weights, the largest candidate's maps) or,
    with ``choices`` (the 6 edges' ops, names or indices), that child's."""
    widths, size = s.stage_channels(), s.input_size
    total, size = Footprint.conv(s.in_channels, s.channels, 3, size)
    for stage, channels in enumerate(widths):
        if stage:
            reduction, size = _reduction_footprint(widths[stage - 1], channels, size)
            total += reduction
        total += _cell_footprint(channels, size, choices, s.bn_affine, s.candidates()) * s.cells_per_stage
    head = Footprint(2 * widths[-1] + widths[-1] * s.num_classes + s.num_classes,
                     2 * widths[-1] * size * size + widths[-1] + s.num_classes)
    return total + head


class _CellNet(nn.Module):
    """Stem, the 3N cells with the two reductions among them (``cells``), and the head; with
    ``shared``, its stem, reductions and head are reused instead of new ones."""

    def __init__(self, settings: NB201Settings, cells: list[nn.Module], shared: _CellNet | None = None):
        super().__init__()
        s, widths = settings, settings.stage_channels()
        self.settings = s
        if shared is None:
            self.stem = nn.Sequential(nn.Conv2d(s.in_channels, s.channels, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(s.channels))
            reductions = [Reduction(widths[i], widths[i + 1]) for i in range(STAGES - 1)]
            self.lastact = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU())
            self.classifier = nn.Linear(widths[-1], s.num_classes)
        else:
            self.stem, reductions = shared.stem, shared.reductions()
            self.lastact, self.classifier = shared.lastact, shared.classifier
        n, layers = s.cells_per_stage, []
        for stage in range(STAGES):
            if stage:
                layers.append(reductions[stage - 1])
            layers += cells[stage * n:(stage + 1) * n]
        self.cells = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def reductions(self) -> list[Reduction]:
        return [m for m in self.cells if isinstance(m, Reduction)]

    @staticmethod
    def cell_channels(settings: NB201Settings) -> list[int]:
        """The width of each of the 3N cells, in order."""
        return [c for c in settings.stage_channels() for _ in range(settings.cells_per_stage)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.cells(self.stem(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.lastact(features)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class NB201Child(_CellNet):
    """The plain network of one cell (``choices``: the 6 edges' ops): what gets deployed."""

    def __init__(self, choices: list[str], settings: NB201Settings | None = None, init: str = "aligned",
                 shared: tuple[_CellNet, list[Cell]] | None = None):
        settings = settings or NB201Settings()
        if len(choices) != len(EDGES):
            raise ValueError(f"expected {len(EDGES)} choices, got {len(choices)}")
        if shared is None:
            super().__init__(settings, [Cell([make_op(op, c, settings.bn_affine) for op in choices])
                                        for c in self.cell_channels(settings)])
            init_weights(self, init)
        else:  # (network, cells): the network's stem, reductions and head around the given cells
            super().__init__(settings, shared[1], shared[0])
        self.choices = list(choices)

    @property
    def arch_string(self) -> str:
        return to_string(self.choices)


@register_space("nb201")
class NB201Space(SpaceMixin, _CellNet):
    """The supernet: every edge of every cell is a `Choice` over `OPS`, labelled by its edge
    (`EDGE_LABELS`), so the 3N modules of an edge are one decision."""

    Settings = NB201Settings
    ops = OPS
    init_schemes = INIT_SCHEMES
    description = "NAS-Bench-201 cell space: one cell of 6 edges over up to 5 ops, stacked in 3 stages of N cells"
    # A search's defaults here (config ``credit: auto``, ``never_pick: auto``, ``ops`` left empty): the
    # paper's gate credit collapses this space onto parameter-free cells (docs/spaces.md, "A cell
    # space: NAS-Bench-201"; BENCHMARKS `nb201_remedies`), so the sampled op is rewarded by the step's loss and
    # the candidates leave out `none` (4**6 cells); where a config puts `none` back, it is never derived.
    credit = "loss"
    never_pick = "none"
    search_settings = {"ops": ",".join(op for op in OPS if op != "none")}
    child_free_settings = ("ops",)

    def __init__(self, settings: NB201Settings | None = None, init: str = "aligned"):
        settings = settings or NB201Settings()
        cells = [Cell([Choice({op: make_op(op, c, settings.bn_affine) for op in settings.candidates()}, label)
                       for label in EDGE_LABELS]) for c in self.cell_channels(settings)]
        super().__init__(settings, cells)
        init_weights(self, init)

    @classmethod
    def from_settings(cls, settings: NB201Settings, init: str = "aligned") -> "NB201Space":
        return cls(settings, init)

    @staticmethod
    def decisions(settings: NB201Settings | None = None) -> list[tuple[str, list[str]]]:
        """(label, candidates) of every edge: the setting ``ops``, the same on every edge."""
        return [(label, (settings or NB201Settings()).candidates()) for label in EDGE_LABELS]

    @staticmethod
    def child_from(choices, settings: NB201Settings, init: str = "aligned") -> NB201Child:
        return NB201Child(list(choices), settings, init=init)

    footprint = staticmethod(nb201_footprint)
    to_string = staticmethod(to_string)
    from_string = staticmethod(from_string)

    def describe(self) -> dict:
        s = self.settings
        return {"cells": STAGES * s.cells_per_stage, "reductions": STAGES - 1, "edges_per_cell": len(EDGES),
                "nodes_per_cell": NODES, "architectures": len(s.candidates()) ** len(EDGES), "stage_channels": s.stage_channels()}

    def fixed_parts(self) -> dict[str, nn.Module]:
        """The modules outside the choices before the head: the stem and the two reductions."""
        return {"stem": self.stem, **{f"reduction.{i + 1}": m for i, m in enumerate(self.reductions())}}

    def child(self, choices, share: bool = False) -> NB201Child:
        """The deployable child for ``choices`` (op names, indices or an `Architecture`), with
        weights copied from this supernet; ``share=True`` reuses the supernet's modules instead
        (no copy: training the child trains the supernet's chosen ops)."""
        choices = getattr(choices, "choices", choices)
        if len(choices) != self.num_blocks:
            raise ValueError(f"expected {self.num_blocks} choices, got {len(choices)}")
        names = [block.names[block.index(c)] for block, c in zip(self.choices, choices)]
        # the child keeps its own class (what `child_from` builds and files load into); `freeze` gives its cells
        cells = [m for m in freeze(self.cells, names) if isinstance(m, Cell)]
        shared = NB201Child(names, self.settings, shared=(self, cells))
        if share:
            return shared
        # a copy of only the child's modules, in the default memory format whatever the supernet's
        return copy.deepcopy(shared).to(memory_format=torch.contiguous_format)
