"""Blocks are matched by label everywhere a file names them: architecture files (ours and
MMRazor's), the architecture state in checkpoints and latency tables. A misordered file loads
correctly; a missing or unknown label is a one-line error; files of the positional version 1
formats still load."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from conftest import BLOCK_KEYS, SMALL, dsnas_error, random_arch
from dsnas import DSNAS, Choice
from dsnas.arch import Architecture, load_arch, parse_arch, save_arch
from dsnas.choice import labelled_choices
from dsnas.files import dump_yaml
from dsnas.latency import LatencyTable, load_latency, save_latency
from dsnas.spaces import ShuffleNetSpace
from dsnas.spaces.shufflenet import block_keys


def test_the_shufflenet_blocks_are_labelled_with_mmrazors_names():
    space = ShuffleNetSpace(**SMALL)
    assert space.labels == BLOCK_KEYS == block_keys()
    assert [c.label for c in space.choices] == BLOCK_KEYS
    assert space.costs.labels == BLOCK_KEYS


def test_a_misordered_arch_file_loads_by_label(tmp_path):
    arch = Architecture(random_arch(3), settings=SMALL)
    save_arch(arch, tmp_path / "a.yaml")
    doc = yaml.safe_load((tmp_path / "a.yaml").read_text())
    assert doc["format"] == "dsnas-arch/2" and list(doc["choices"]) == BLOCK_KEYS
    doc["choices"] = dict(reversed(list(doc["choices"].items())))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert load_arch(tmp_path / "b.yaml").choices == arch.choices


@pytest.mark.parametrize("change, words", [
    (lambda c: c.pop("backbone.layers.2.5"), "lacks block backbone.layers.2.5"),
    (lambda c: c.update({"backbone.layers.4.0": "shuffle_3x3"}), "'backbone.layers.4.0' is not in the shufflenet"),
    (lambda c: c.update({"backbone.layers.0.1": "conv9"}), "unknown op 'conv9'"),
])
def test_a_missing_or_unknown_label_is_a_one_line_error(change, words):
    doc = Architecture(random_arch(4)).to_dict()
    change(doc["choices"])
    assert words in dsnas_error(parse_arch, doc, "a.yaml")


def test_version_1_arch_files_still_load_in_block_order():
    ops = random_arch(5)
    arch = parse_arch({"format": "dsnas-arch/1", "space": "shufflenet", "choices": ops})
    assert arch.choices == ops
    assert "must be a list" in dsnas_error(parse_arch, {"format": "dsnas-arch/1", "choices": {"a": 1}})
    assert "mapping from each block's label" in dsnas_error(parse_arch, {"format": "dsnas-arch/2", "choices": ops})


def test_a_misordered_mmrazor_subnet_loads_by_label():
    ops = random_arch(6)
    doc = {f"architecture.{k}": {"chosen": op} for k, op in reversed(list(zip(BLOCK_KEYS, ops)))}
    assert parse_arch(doc).choices == ops
    assert Architecture(ops).to_mmrazor() == {k: {"chosen": op} for k, op in zip(BLOCK_KEYS, ops)}


def _two_choices(order: tuple[str, str]) -> nn.Module:
    blocks = {"a": Choice([nn.Identity(), nn.ReLU()], "a"), "b": Choice([nn.Identity(), nn.Tanh(), nn.ReLU()], "b")}
    return nn.Sequential(nn.Linear(2, 2), *[blocks[k] for k in order])


def test_the_architecture_state_is_matched_by_label():
    saved = DSNAS(_two_choices(("a", "b")))
    with torch.no_grad():
        saved.alphas[0].copy_(torch.tensor([1.0, 2.0]))
        saved.alphas[1].copy_(torch.tensor([3.0, 4.0, 5.0]))
    saved.choices[1].fix(2)
    state = saved.state_dict()
    assert set(state["alphas"]) == {"a", "b"} and state["fixed"] == {"a": -1, "b": 2}
    loaded = DSNAS(_two_choices(("b", "a")))  # the same blocks, in the other order
    loaded.load_state_dict(state)
    assert loaded.labels == ["b", "a"]
    assert loaded.alphas[0].tolist() == [3.0, 4.0, 5.0] and loaded.alphas[1].tolist() == [1.0, 2.0]
    assert loaded.fixed() == [2, None]


def test_an_architecture_state_of_other_blocks_is_refused():
    state = DSNAS(_two_choices(("a", "b"))).state_dict()
    other = nn.Sequential(nn.Linear(2, 2), Choice([nn.Identity(), nn.ReLU()], "a"), Choice([nn.Identity()] * 3, "c"))
    with pytest.raises(ValueError, match="does not match this model's blocks"):
        DSNAS(other).load_state_dict(state)
    renamed = nn.Sequential(nn.Linear(2, 2), Choice({"x": nn.Identity(), "y": nn.ReLU()}, "a"),
                            Choice([nn.Identity(), nn.Tanh(), nn.ReLU()], "b"))
    with pytest.raises(ValueError, match="other candidates"):
        DSNAS(renamed).load_state_dict(state)


def test_version_1_architecture_state_loads_in_block_order():
    search = DSNAS(_two_choices(("a", "b")))
    search.load_state_dict({"alphas": [torch.ones(2), torch.full((3,), 2.0)], "fixed": [1, -1]})
    assert search.alphas[1].tolist() == [2.0, 2.0, 2.0] and search.fixed() == [1, None]


def test_choice_labels_default_to_the_module_path_and_tied_ones_name_the_same_candidates():
    net = nn.Sequential(Choice([nn.Identity()]), Choice([nn.Identity()], "named"))
    assert [label for label, _ in labelled_choices(net)] == ["0", "named"]
    tied = nn.Sequential(Choice([nn.Identity()], "x"), Choice([nn.Identity()], "x"))
    assert [label for label, _ in labelled_choices(tied)] == ["x"]  # one decision (tests/test_tied.py)
    with pytest.raises(ValueError, match="labelled 'x' name different candidates"):
        labelled_choices(nn.Sequential(Choice({"a": nn.Identity()}, "x"), Choice({"b": nn.Identity()}, "x")))
    with pytest.raises(ValueError, match="non-empty string"):
        Choice([nn.Identity()], "")


def _table(blocks) -> LatencyTable:
    entry = {"ms": 0.5, "spread": 0.0}
    fixed = {"stem": entry, "head": entry, "call": entry}
    return LatencyTable(ShuffleNetSpace(**SMALL).settings.as_dict(), blocks, fixed, {"scale": 1.0})


def test_a_latency_table_is_keyed_by_label_and_a_misordered_one_predicts_the_same(tmp_path):
    space = ShuffleNetSpace(**SMALL)
    ms = {label: {op: {"ms": 0.01 * (i + 1) + 0.001 * j, "spread": 0.0} for j, op in enumerate(space.ops)}
          for i, label in enumerate(space.labels)}
    save_latency(_table(ms), tmp_path / "in_order.yaml")
    save_latency(_table(dict(reversed(list(ms.items())))), tmp_path / "reversed.yaml")
    doc = yaml.safe_load((tmp_path / "in_order.yaml").read_text())
    assert doc["format"] == "dsnas-latency/2" and doc["space"] == "shufflenet" and list(doc["blocks"]) == BLOCK_KEYS
    names = [c.names for c in space.choices]
    a = load_latency(tmp_path / "in_order.yaml").entries(names, space.labels)
    b = load_latency(tmp_path / "reversed.yaml").entries(names, space.labels)
    assert a == b and a[0][5][2] == pytest.approx(0.062)


def test_version_1_latency_tables_load_in_block_order_and_unknown_labels_are_refused(tmp_path):
    space = ShuffleNetSpace(**SMALL)
    rows = [{op: {"ms": float(i), "spread": 0.0} for op in space.ops} for i in range(20)]
    doc = {**_table({}).to_dict(), "format": "dsnas-latency/1", "blocks": rows}
    (tmp_path / "v1.yaml").write_text(dump_yaml(doc))
    table = load_latency(tmp_path / "v1.yaml")
    assert list(table.blocks) == BLOCK_KEYS and table.blocks["backbone.layers.2.3"]["shuffle_5x5"]["ms"] == 11.0
    (tmp_path / "short.yaml").write_text(dump_yaml({**doc, "blocks": rows[:19]}))
    assert "has 19 blocks" in dsnas_error(load_latency, tmp_path / "short.yaml")
    odd = {**{k: v for k, v in table.blocks.items() if k != "backbone.layers.3.3"}, "backbone.layers.9.9": rows[0]}
    save_latency(_table(odd), tmp_path / "odd.yaml")
    names = [c.names for c in space.choices]
    assert "backbone.layers.3.3" in dsnas_error(load_latency(tmp_path / "odd.yaml").entries, names, space.labels)
