"""The space contract (`dsnas.spaces.registry`), checked on every space the package registers at
small settings: its labels are its decisions, a shared child trains the supernet and a copied
one computes what the supernet computes, its settings round-trip through files. Registration
refuses a class that lacks a piece of the contract, and `build` a class whose supernet's
labels are not its decisions. `freeze` and `active_path` work on any model made of `Choice`
modules, a user's own included."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from conftest import dsnas_error
from dsnas import Choice, active_path, freeze, spaces
from dsnas.choice import decisions, labelled_choices
from dsnas.spaces import SpaceMixin, SpaceSettings, register_space
from dsnas.spaces.nb201 import NB201Space
from dsnas.spaces.shufflenet import ShuffleNetSettings, ShuffleNetSpace

PACKAGE_SPACES = sorted(name for name, cls in spaces.SPACES.items() if cls.__module__.startswith("dsnas."))
SMALL = {"shufflenet": {"num_classes": 10, "in_channels": 1, "input_size": 28, "width": 0.25},
         "nb201": {"num_classes": 10, "in_channels": 1, "input_size": 28, "channels": 8, "cells_per_stage": 1},
         "mobilenet": {"num_classes": 10, "in_channels": 1, "input_size": 28, "width": 0.25}}


def small_space(name: str) -> nn.Module:
    torch.manual_seed(0)
    return spaces.build(name, SMALL[name])


def an_arch(space) -> list[str]:
    """An architecture that takes a different candidate position from block to block."""
    return [names[(i + 1) % len(names)] for i, (_, names) in enumerate(type(space).decisions(space.settings))]


def tensor_addresses(module: nn.Module) -> set[int]:
    """Where each parameter and buffer of ``module`` keeps its values."""
    return {t.data_ptr() for t in [*module.parameters(), *module.buffers()]}


def check_shared_child(space, arch) -> None:
    """``space.child(arch, share=True)`` must hold the supernet's own tensors (no copy), so that
    training the child trains the supernet; an AssertionError says what is wrong otherwise."""
    child = space.child(arch, share=True)
    assert not labelled_choices(child), "a child must be a plain network, without Choice modules"
    own = tensor_addresses(child)
    assert own, "the child holds no tensors"
    copied = own - tensor_addresses(space)
    assert not copied, f"{len(copied)} of the child's {len(own)} tensors are not the supernet's"


def small_input(space) -> torch.Tensor:
    torch.manual_seed(1)
    s = space.settings
    return torch.randn(2, s.in_channels, s.input_size, s.input_size)


@pytest.fixture
def registry_kept():
    """Spaces registered by a test are gone after it."""
    saved = dict(spaces.SPACES)
    yield
    spaces.SPACES.clear()
    spaces.SPACES.update(saved)


def test_every_package_space_has_small_settings_here():
    assert PACKAGE_SPACES and set(PACKAGE_SPACES) <= set(SMALL), f"add small settings for {PACKAGE_SPACES}"


@pytest.mark.parametrize("name", PACKAGE_SPACES)
def test_the_supernet_labels_are_its_decisions(name):
    space = small_space(name)
    declared = [(label, list(names)) for label, names in type(space).decisions(space.settings)]
    assert [(label, choice.names) for label, choice in labelled_choices(space)] == declared
    assert space.labels == [label for label, _ in declared]


@pytest.mark.parametrize("name", PACKAGE_SPACES)
def test_a_shared_child_holds_the_supernet_tensors_and_trains_it(name):
    space = small_space(name)
    arch = an_arch(space)
    check_shared_child(space, arch)
    child = space.child(arch, share=True)
    before = {k: v.clone() for k, v in space.state_dict().items()}
    opt = torch.optim.SGD(child.parameters(), lr=0.1)
    child(small_input(space)).square().mean().backward()
    opt.step()
    moved = [k for k, v in space.state_dict().items() if not torch.equal(v, before[k])]
    assert moved, "a step on the shared child left the supernet as it was"


class CopyingChildSpace(ShuffleNetSpace):
    """A broken space (never registered): its shared child is a copy."""

    def child(self, choices, share: bool = False):
        return super().child(choices, share=False)


def test_the_shared_child_check_catches_a_copying_space():
    torch.manual_seed(0)
    broken = CopyingChildSpace.from_settings(ShuffleNetSettings.from_mapping(SMALL["shufflenet"]))
    with pytest.raises(AssertionError, match="not the supernet's"):
        check_shared_child(broken, an_arch(broken))


@pytest.mark.parametrize("name", PACKAGE_SPACES)
def test_a_copied_child_computes_what_the_supernet_computes_and_shares_nothing(name):
    space = small_space(name).eval()
    arch = an_arch(space)
    child = space.child(arch, share=False).eval()
    assert not tensor_addresses(child) & tensor_addresses(space)
    x = small_input(space)
    with torch.no_grad(), active_path(space, arch):
        expected = space(x)
    with torch.no_grad():
        assert torch.equal(child(x), expected)
    fresh = spaces.build_child(name, arch, space.settings)
    assert type(fresh) is type(child) and fresh.state_dict().keys() == child.state_dict().keys()


@pytest.mark.parametrize("name", PACKAGE_SPACES)
def test_the_settings_round_trip_through_files_and_replace(name):
    cls = spaces.space_class(name)
    for s in (cls.Settings(), spaces.settings_of(name, SMALL[name])):
        assert isinstance(s, SpaceSettings) and cls.Settings.from_mapping(s.as_dict()) == s
        changed = s.replace(num_classes=7)
        assert changed.num_classes == 7 and changed.replace(num_classes=s.num_classes) == s
    with pytest.raises(ValueError, match="unknown space setting.*no_such_setting"):
        cls.Settings.from_mapping({"no_such_setting": 1})
    with pytest.raises(ValueError, match="unknown space setting.*no_such_setting"):
        cls.Settings().replace(no_such_setting=1)
    with pytest.raises(ValueError, match="num_classes"):
        cls.Settings.from_mapping({"num_classes": 0})
    with pytest.raises(ValueError, match="must be a mapping"):
        cls.Settings.from_mapping(["num_classes"])


def test_shufflenet_keeps_its_own_file_and_replace_rules():
    s = ShuffleNetSettings(input_size=28)
    assert "design" not in s.as_dict() and s.small_input
    assert not s.replace(input_size=224).small_input  # a new input size chooses anew
    assert s.replace(input_size=224, small_input=True).small_input
    assert ShuffleNetSettings(design="official").as_dict()["design"] == "official"


@pytest.mark.parametrize("name", PACKAGE_SPACES)
def test_the_space_states_its_init_schemes_and_description(name):
    cls = spaces.space_class(name)
    assert isinstance(cls.description, str) and cls.description.isprintable() and cls.description
    assert isinstance(cls.init_schemes, tuple) and cls.init_schemes
    for scheme in cls.init_schemes:
        assert spaces.build(name, SMALL[name], init=scheme).settings == spaces.settings_of(name, SMALL[name])


# --- registration and build refuse a class that breaks the contract ------------------------------

@dataclasses.dataclass(frozen=True)
class TinySettings(SpaceSettings):
    num_classes: int = 2
    in_channels: int = 1
    input_size: int = 4


@dataclasses.dataclass(frozen=True)
class SizelessSettings(SpaceSettings):
    num_classes: int = 2
    in_channels: int = 1


def _complete() -> dict:
    """Everything a space class needs, as the attributes of a class (none of it runs here)."""
    def method(*args, **kwargs):
        raise AssertionError("not called")
    return {"Settings": TinySettings, "init_schemes": ("torch",), "description": "a tiny space",
            **{name: method for name in ("decisions", "from_settings", "child", "child_from", "forward_features",
                                         "forward_head", "footprint")}}


def test_a_complete_class_registers(registry_kept):
    cls = register_space("tiny")(type("TinySpace", (SpaceMixin, nn.Module), _complete()))
    assert spaces.space_class("tiny") is cls and cls.name == "tiny"


@pytest.mark.parametrize("piece, changes, bases", [
    ("Settings", {"Settings": None}, (SpaceMixin, nn.Module)),
    ("Settings", {"Settings": dataclasses.make_dataclass("PlainSettings", ["num_classes", "in_channels",
                                                                          "input_size"], frozen=True)},
     (SpaceMixin, nn.Module)),
    ("input_size", {"Settings": SizelessSettings}, (SpaceMixin, nn.Module)),
    ("decisions()", {"decisions": None}, (SpaceMixin, nn.Module)),
    ("from_settings()", {"from_settings": None}, (SpaceMixin, nn.Module)),
    ("child()", {"child": None}, (SpaceMixin, nn.Module)),
    ("child_from()", {"child_from": None}, (SpaceMixin, nn.Module)),
    ("forward_features()", {"forward_features": None}, (SpaceMixin, nn.Module)),
    ("forward_head()", {"forward_head": None}, (SpaceMixin, nn.Module)),
    ("footprint()", {"footprint": None}, (SpaceMixin, nn.Module)),
    ("init_schemes", {"init_schemes": None}, (SpaceMixin, nn.Module)),
    ("init_schemes", {"init_schemes": ["torch"]}, (SpaceMixin, nn.Module)),
    ("description", {"description": None}, (SpaceMixin, nn.Module)),
    ("description", {"description": "two\nlines"}, (SpaceMixin, nn.Module)),
    ("nn.Module", {}, (SpaceMixin,)),
    ("SpaceMixin", {}, (nn.Module,)),
])
def test_registration_refuses_a_class_lacking_a_piece(piece, changes, bases, registry_kept):
    attrs = {k: v for k, v in {**_complete(), **changes}.items() if v is not None}
    if piece == "footprint()":
        attrs["footprint"] = None  # SpaceMixin's own footprint is there otherwise
    cls = type("LackingSpace", bases, attrs)
    with pytest.raises(ValueError, match="LackingSpace") as e:
        register_space("lacking")(cls)
    assert piece in str(e.value) and "\n" not in str(e.value)
    assert "lacking" not in spaces.SPACES


class MislabelledSpace(NB201Space):
    """Its decisions name the edges in another order than its supernet does."""

    @staticmethod
    def decisions(settings=None):
        return list(reversed(NB201Space.decisions(settings)))


class UnfrozenChildSpace(NB201Space):
    """Its fresh child is the supernet itself."""

    @staticmethod
    def child_from(choices, settings, init: str = "aligned"):
        return NB201Space(settings, init)


def test_build_refuses_a_space_whose_labels_are_not_its_decisions(registry_kept):
    register_space("mislabelled")(MislabelledSpace)
    msg = dsnas_error(spaces.build, "mislabelled", SMALL["nb201"])
    assert "MislabelledSpace is inconsistent" in msg and "'1<-0'" in msg and "'3<-2'" in msg
    spaces.build("nb201", SMALL["nb201"])  # the consistent space builds


def test_build_child_refuses_a_child_that_still_holds_choices(registry_kept):
    register_space("unfrozen")(UnfrozenChildSpace)
    msg = dsnas_error(spaces.build_child, "unfrozen", ["skip_connect"] * 6, SMALL["nb201"])
    assert "UnfrozenChildSpace is inconsistent" in msg and "not a plain network" in msg


# --- freeze and active_path on a user's model ----------------------------------------------------

class UserNet(nn.Module):
    """A user's own model: two `Choice` modules tied by one label (each with its own weights)
    and one more decision, without any space around them."""

    def __init__(self):
        super().__init__()
        self.first = Choice({"wide": nn.Linear(4, 4), "tanh": nn.Sequential(nn.Linear(4, 4), nn.Tanh())}, "layer")
        self.middle = nn.ReLU()
        self.second = Choice({"wide": nn.Linear(4, 4), "tanh": nn.Sequential(nn.Linear(4, 4), nn.Tanh())}, "layer")
        self.head = nn.Sequential(Choice([nn.Identity(), nn.Sigmoid()]), nn.Linear(4, 2))

    def forward(self, x):
        return self.head(self.second(self.middle(self.first(x))))


def test_freeze_gives_the_plain_network_of_a_path_of_a_user_model():
    torch.manual_seed(0)
    model, x = UserNet(), torch.randn(3, 4)
    assert [label for label, _ in decisions(model)] == ["layer", "head.0"]
    for arch in (["tanh", 1], [0, "0"]):
        with active_path(model, arch):
            expected = model(x)
        shared, copied = freeze(model, arch), freeze(model, arch, share=False)
        assert not labelled_choices(shared) and not labelled_choices(copied)
        assert torch.equal(shared(x), expected) and torch.equal(copied(x), expected)
        k = model.first.index(arch[0])
        assert shared.first is model.first.candidates[k] and shared.second is model.second.candidates[k]
        assert tensor_addresses(shared) <= tensor_addresses(model)
        assert not tensor_addresses(copied) & tensor_addresses(model)
    assert isinstance(model.first, Choice) and isinstance(model.head[0], Choice)  # the model stays a supernet
    with pytest.raises(ValueError, match="expected 2 choices"):
        freeze(model, ["tanh"])


def test_active_path_puts_the_search_state_back_after_an_exception():
    model = UserNet()
    found = labelled_choices(model)
    mask = torch.ones((), requires_grad=True)
    found[0][1].active, found[0][1].mask = 1, mask
    found[1][1].fix(1)
    state = [(c.active, c.fixed, c.mask) for _, c in found]
    with pytest.raises(RuntimeError, match="inside"):
        with active_path(model, ["wide", 0]):
            assert [(c.active, c.mask) for _, c in found] == [(0, None), (0, None)]
            assert model.second.active == 0  # the tied module moves with its label
            raise RuntimeError("inside")
    assert [(c.active, c.fixed, c.mask) for _, c in found] == state and found[0][1].mask is mask
    with pytest.raises(ValueError, match="unknown candidate"):
        with active_path(model, ["narrow", 0]):
            pass
    assert [(c.active, c.fixed, c.mask) for _, c in found] == state
    with active_path(model):  # None: the first candidate everywhere
        assert [c.active for _, c in found] == [0, 0]
    assert [(c.active, c.fixed, c.mask) for _, c in found] == state
