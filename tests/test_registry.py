"""The space registry: a space defined here, in the tests, plugs into every part of dsnas (build,
arch files, cost tables, the search loop, child weights) without any edit to the package."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from conftest import dsnas_error
from dsnas import Choice, spaces
from dsnas.arch import Architecture, load_arch, parse_arch
from dsnas.errors import DsnasError
from dsnas.spaces import SpaceMixin, SpaceSettings, register_space

TOY_OPS = ("conv3", "conv1")


@dataclass(frozen=True)
class ToySettings(SpaceSettings):
    num_classes: int = 10
    in_channels: int = 1
    input_size: int = 28
    channels: int = 8

    def __post_init__(self):
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")


def _op(name: str, c: int) -> nn.Module:
    k = 3 if name == "conv3" else 1
    return nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c), nn.ReLU())


class _ToyNet(nn.Module):
    def __init__(self, s: ToySettings, blocks: list[nn.Module]):
        super().__init__()
        self.settings = s
        self.stem = nn.Sequential(nn.Conv2d(s.in_channels, s.channels, 3, 2, 1, bias=False), nn.BatchNorm2d(s.channels),
                                  nn.ReLU())
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(s.channels, s.num_classes)

    def forward_features(self, x):
        return self.blocks(self.stem(x))

    def forward_head(self, features):
        return self.fc(features.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_space("toy")
class ToySpace(SpaceMixin, _ToyNet):
    Settings = ToySettings
    init_schemes = ("aligned",)
    description = "two convolution blocks, for the registry's tests"

    def __init__(self, settings: ToySettings):
        super().__init__(settings, [Choice({op: _op(op, settings.channels) for op in TOY_OPS}, label)
                                    for label, _ in self.decisions(settings)])

    @classmethod
    def from_settings(cls, settings: ToySettings, init: str = "aligned") -> "ToySpace":
        return cls(settings)

    @staticmethod
    def decisions(settings: ToySettings | None = None):
        return [("cell.first", list(TOY_OPS)), ("cell.second", list(TOY_OPS))]

    @staticmethod
    def child_from(choices, settings: ToySettings, init: str = "aligned") -> nn.Module:
        net = _ToyNet(settings, [_op(op, settings.channels) for op in choices])
        net.choices = list(choices)
        return net

    def child(self, choices, share: bool = False) -> nn.Module:
        names = [c.names[c.index(x)] for c, x in zip(self.choices, getattr(choices, "choices", choices))]
        child = self.child_from(names, self.settings)
        child.load_state_dict({k: v for k, v in self._child_state(names).items()})
        return child

    def _child_state(self, names: list[str]) -> dict:
        state = {f"stem.{k}": v for k, v in self.stem.state_dict().items()}
        state.update({f"fc.{k}": v for k, v in self.fc.state_dict().items()})
        for i, (choice, name) in enumerate(zip(self.choices, names)):
            op = choice.candidates[choice.index(name)]
            state.update({f"blocks.{i}.{k}": v for k, v in op.state_dict().items()})
        return state


def test_a_registered_space_builds_by_name_with_its_labels():
    space = spaces.build("toy", {"channels": 4})
    assert isinstance(space, ToySpace) and space.settings.channels == 4
    assert space.labels == ["cell.first", "cell.second"]
    assert space.costs.labels == space.labels and space.costs.num_blocks == 2
    assert space(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_an_unknown_space_or_setting_is_a_one_line_error():
    assert "known: " in dsnas_error(spaces.build, "nope") and "toy" in dsnas_error(spaces.build, "nope")
    assert "unknown space setting" in dsnas_error(spaces.build, "toy", {"width": 2})


def test_architecture_files_of_a_registered_space_round_trip(tmp_path):
    arch = Architecture({"cell.second": "conv1", "cell.first": "conv3"}, "toy", {"channels": 4})
    assert arch.choices == ["conv3", "conv1"] and arch.labels == ["cell.first", "cell.second"]
    from dsnas.arch import save_arch

    save_arch(arch, tmp_path / "a.yaml")
    again = load_arch(tmp_path / "a.yaml")
    assert (again.space, again.choices, again.settings) == ("toy", ["conv3", "conv1"], arch.settings)
    with pytest.raises(DsnasError, match="unknown op 'shuffle_3x3'"):
        parse_arch({**arch.to_dict(), "choices": {"cell.first": "shuffle_3x3", "cell.second": "conv1"}})


@pytest.mark.slow
def test_a_search_runs_on_a_registered_space(tmp_path):
    """The whole loop (search, switch, finetune, files) on the test-only space; the saved child
    loads through the registry and computes what the run's child computed."""
    from dsnas.config import load_config
    from dsnas.export import load_child
    from dsnas.train import run_search

    cfg = load_config(None, ["space=toy", "epochs=2", "search_epochs=1", "train_limit=256", "test_limit=128",
                             "batch_size=64", "eval_bn_recalibrate=64", "budget_mflops=0"])
    result = run_search(cfg, tmp_path / "run", quiet=True)
    arch = load_arch(tmp_path / "run" / "arch.yaml")
    assert arch.space == "toy" and arch.labels == ["cell.first", "cell.second"]
    assert result.metrics["top1"] is not None and (tmp_path / "run" / "alpha.csv").exists()
    child = load_child(arch, tmp_path / "run" / "child.safetensors").eval()
    expected = result.space.child(arch.choices).eval()
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(child(x), expected(x))
