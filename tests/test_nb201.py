"""The NAS-Bench-201 cell space: one decision per edge shared by every cell, the same contracts
as the ShuffleNet space (child = supernet path, table sum = counted child, exact resume), and
the benchmark's architecture string."""

import json

import pytest
import torch

from conftest import TINY, assert_one_line_error, dsnas_error
from dsnas.plan import check_run, search_rules, space_settings
from dsnas import spaces
from dsnas.arch import Architecture, load_arch, parse_arch_string, save_arch
from dsnas.cost import count
from dsnas.errors import DsnasError
from dsnas.search import DSNAS
from dsnas.spaces.nb201 import EDGE_LABELS, OPS, NB201Space, from_string, to_string

SMALL = {"num_classes": 10, "in_channels": 1, "input_size": 28, "channels": 4, "cells_per_stage": 2}
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
TINY_RUN = [*TINY, "space=nb201", "channels=4", "cells_per_stage=1", "epochs=3", "warmup_epochs=1", "search_epochs=2",
            "lr_warmup_epochs=1", "arch_lr=0.05", "checkpoint_every=2", "seed=5", "early_fix=0.05", "budget_mflops=0"]


def _archs(n: int, seed: int = 0) -> list[list[str]]:
    g = torch.Generator().manual_seed(seed)
    drawn = [[OPS[int(i)] for i in torch.randint(len(OPS), (6,), generator=g)] for _ in range(n)]
    return drawn + [["none"] * 6, ["skip_connect"] * 6, from_string(BEST)]


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    net = spaces.build("nb201", SMALL)
    net.train()
    with torch.no_grad():  # move the BN statistics away from their initial values
        search = DSNAS(net)
        for _ in range(3):
            search.set_path([int(i) for i in torch.randint(len(OPS), (6,))])
            net(torch.randn(8, 1, 28, 28))
    return net.eval()


def test_one_decision_per_edge_shared_by_every_cell(space):
    search = DSNAS(space)
    assert space.labels == EDGE_LABELS == [label for label, _ in NB201Space.decisions()]
    assert len(search.alphas) == 6 and all(len(a) == len(OPS) for a in search.alphas)
    search.arm([0, 1, 2, 3, 4, 3])
    cells = [m for m in space.cells if hasattr(m, "edges")]
    assert len(cells) == 3 * SMALL["cells_per_stage"]
    assert all([edge.active for edge in cell.edges] == [0, 1, 2, 3, 4, 3] for cell in cells)
    assert len({id(edge.mask) for cell in cells for edge in cell.edges}) == 6
    search.set_path([0] * 6)


def test_child_equals_the_supernet_on_the_same_path(space):
    search = DSNAS(space)
    x = torch.randn(4, 1, 28, 28)
    for arch in _archs(4):
        search.set_path(arch)
        child = space.child(arch).eval()
        with torch.no_grad():
            assert torch.equal(child(x), space(x)), to_string(arch)
        assert child.arch_string == to_string(arch)
    fresh = spaces.build_child("nb201", arch, space.settings)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in child.state_dict().items()}


def test_a_shared_child_trains_the_supernet_and_a_copied_one_does_not(space):
    arch = from_string(BEST)
    shared, copied = space.child(arch, share=True), space.child(arch)
    assert shared.classifier.weight is space.classifier.weight
    assert copied.classifier.weight is not space.classifier.weight
    assert sum(p.numel() for p in shared.parameters()) == sum(p.numel() for p in copied.parameters())


def test_cost_table_sums_to_the_counted_child_with_none_free(space):
    table = space.costs
    assert table.labels == EDGE_LABELS
    for metric in ("mflops", "macs_m", "params_m"):
        assert all(row[OPS.index("none")] == 0 and row[OPS.index("skip_connect")] == 0
                   for row in table.entries[metric]), metric
        assert all(row[OPS.index(op)] > 0 for row in table.entries[metric] for op in ("nor_conv_1x1", "nor_conv_3x3"))
    for arch in _archs(6):
        counted, _ = count(space.child(arch), torch.zeros(1, 1, 28, 28))
        for metric in ("mflops", "macs_m", "params_m"):
            assert table.total(arch, metric) == pytest.approx(counted[metric], rel=1e-9, abs=1e-9), (arch, metric)


def test_settings_are_checked_in_one_line():
    assert "multiple of 4" in dsnas_error(spaces.build, "nb201", {"input_size": 30})
    assert "channels must be an integer" in dsnas_error(spaces.build, "nb201", {"channels": 0})
    assert "cells_per_stage must be an integer" in dsnas_error(spaces.build, "nb201", {"cells_per_stage": True})
    assert "unknown space setting(s): width" in dsnas_error(spaces.build, "nb201", {"width": 0.5})
    assert "in 1..256" in dsnas_error(spaces.build, "nb201", {"channels": 10**6})


def test_the_string_round_trips_and_bad_strings_are_refused():
    for arch in _archs(20, seed=1):
        assert from_string(to_string(arch)) == arch
    assert from_string(BEST) == ["nor_conv_3x3"] * 3 + ["skip_connect"] + ["nor_conv_3x3"] * 2
    reordered = "|none~0|+|skip_connect~1|none~0|+|none~2|none~0|none~1|"  # sources in any order
    assert from_string(reordered) == ["none", "none", "skip_connect", "none", "none", "none"]
    for bad, why in [("|none~0|+|none~0|none~1|", "3 nodes"), ("|none~0|+|none~0|none~0|+|none~0|none~1|none~2|",
                                                                 "new source"),
                     ("|none~0|+|none~0|none~1|+|none~0|none~1|conv~2|", "unknown op 'conv'"),
                     ("|none~0|+none~0|none~1|+|none~0|none~1|none~2|", "node 2"),
                     ("|none~0|+|none~0|none~1|+|none~0|none~1|none~3|", "new source")]:
        assert why in dsnas_error(parse_arch_string, bad), bad
        assert why in dsnas_error(load_arch, bad), bad


def test_arch_files_record_the_string_and_take_it_in_place_of_a_file(tmp_path):
    arch = load_arch(BEST)
    assert (arch.space, arch.labels, arch.names_settings) == ("nb201", EDGE_LABELS, False)
    sized = Architecture(arch.choices, "nb201", SMALL)
    save_arch(sized, tmp_path / "a.yaml")
    again = load_arch(tmp_path / "a.yaml")
    assert again.choices == arch.choices and again.settings == sized.settings and again.names_settings
    assert again.metadata["arch_string"] == BEST and f"arch_string: '{BEST}'" in (tmp_path / "a.yaml").read_text()


def test_info_describes_the_space_and_reads_the_string(dsnas_main):
    r = dsnas_main("info", "--space", "nb201", "--json")
    out = json.loads(r.stdout)
    assert out["space"] == "nb201" and out["blocks"] == 6 and out["candidates"] == list(OPS)
    assert (out["cells"], out["edges_per_cell"], out["architectures"]) == (15, 6, 15625)
    assert 0 < out["mflops"]["min"] < out["mflops"]["mean"] < out["mflops"]["max"]
    r = dsnas_main("info", "--arch", BEST, "--input-size", "28", "--in-channels", "1", "--json")
    out = json.loads(r.stdout)
    assert out["arch_string"] == BEST and out["settings"]["input_size"] == 28 and out["mflops"] > 0
    r = dsnas_main("info", "--arch", "|skip~0|")
    assert_one_line_error(r.returncode, r.stderr)
    r = dsnas_main("info", "--space", "nb201", "--width", "2")
    assert_one_line_error(r.returncode, r.stderr)
    assert "unknown space setting(s): width" in r.stderr


def test_latency_table_times_edges_over_all_cells_and_the_reductions(space):
    from dsnas.latency import measure_latency

    table = measure_latency(spaces.build("nb201", {**SMALL, "cells_per_stage": 1}, init="torch"), repeats=3,
                            warmup=1, fit_children=2, holdout=2)
    assert list(table.blocks) == EDGE_LABELS and all(list(b) == list(OPS) for b in table.blocks.values())
    assert {"stem", "reduction.1", "reduction.2", "head", "call"} == set(table.fixed)
    rows, base = table.entries([list(OPS)] * 6, EDGE_LABELS)
    assert base > 0 and all(v >= 0 for row in rows for v in row)


def test_the_child_exports_to_onnx(space, tmp_path):
    pytest.importorskip("onnxruntime")
    from dsnas.export import export_onnx

    diff = export_onnx(space.child(from_string(BEST)), tmp_path / "c.onnx", 28, 1)
    assert diff is not None and diff <= 1e-4


@pytest.mark.slow
def test_a_search_and_the_baselines_run_on_fashion_mnist(tmp_path):
    """DSNAS, then random search, then the string trained from scratch: the whole loop on the
    embedded 28 px images; the saved child loads and computes what the run's child computed."""
    from dsnas.config import load_config
    from dsnas.export import load_child
    from dsnas.train import run_search

    result = run_search(load_config(None, TINY_RUN), tmp_path / "dsnas", quiet=True)
    arch = load_arch(tmp_path / "dsnas" / "arch.yaml")
    assert arch.space == "nb201" and arch.metadata["arch_string"] == to_string(arch.choices)
    assert result.metrics["top1"] is not None and (tmp_path / "dsnas" / "alpha.csv").exists()
    child = load_child(arch, tmp_path / "dsnas" / "child.safetensors").eval()
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(child(x), result.space.child(arch.choices).eval()(x))
    spos = run_search(load_config(None, TINY_RUN + ["method=random", "candidates=3", "select_images=64"]),
                      tmp_path / "random", quiet=True)
    assert spos.metrics["selection"]["evaluated"] == 3
    fixed = run_search(load_config(None, TINY_RUN + ["method=fixed", f"arch={BEST}"]), tmp_path / "fixed", quiet=True)
    assert load_arch(tmp_path / "fixed" / "arch.yaml").metadata["arch_string"] == BEST
    assert fixed.metrics["top1"] is not None


def test_bn_affine_false_drops_the_cells_bn_parameters_only_and_reaches_the_child(tmp_path):
    """The benchmark's search cells: BN without weight and bias on every edge's convolutions; the
    stem and the reductions keep theirs. A run's config key reaches the space, its arch file and
    the deployed child, which still equals the supernet's path."""
    from dsnas.config import load_config

    net = spaces.build("nb201", {**SMALL, "bn_affine": False}).eval()
    cell_bns = [m for cell in net.cells if hasattr(cell, "edges") for m in cell.modules()
                if isinstance(m, torch.nn.BatchNorm2d)]
    assert cell_bns and all(m.weight is None and m.bias is None for m in cell_bns)
    assert net.stem[1].weight is not None and net.lastact[0].weight is not None
    arch = from_string(BEST)
    DSNAS(net).set_path(arch)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(net.child(arch).eval()(x), net(x))
    cfg = load_config(None, TINY_RUN + ["bn_affine=false"])
    assert space_settings(check_run(cfg), 10, 1, 28)["bn_affine"] is False
    with pytest.raises(DsnasError, match="bn_affine must be true or false"):
        spaces.settings_of("nb201", {**SMALL, "bn_affine": "no"})


@pytest.mark.slow
def test_an_interrupted_search_resumes_bit_exact(tmp_path, monkeypatch):
    """Stopped right after its third checkpoint (mid-search), the run resumes in this process
    to the same alpha, child weights and history as an uninterrupted one."""
    from safetensors.torch import load_file

    import dsnas.train as train
    from dsnas.config import load_config

    cfg = load_config(None, TINY_RUN)
    train.run_search(cfg, tmp_path / "ref", quiet=True)
    real_save, saves = train.save_checkpoint, []

    class Stop(Exception):
        pass

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 3:
            raise Stop

    monkeypatch.setattr(train, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        train.run_search(load_config(None, TINY_RUN), tmp_path / "run", quiet=True)
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    assert not (tmp_path / "run" / "child.safetensors").exists()
    train.run_search(load_config(None, TINY_RUN), tmp_path / "run", resume=True, quiet=True)
    ref, run = (torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (tmp_path / "ref", tmp_path / "run"))
    assert run["search"]["fixed"] == ref["search"]["fixed"]
    for label in EDGE_LABELS:
        assert torch.equal(run["search"]["alphas"][label], ref["search"]["alphas"][label]), label
    a, b = (load_file(str(d / "child.safetensors")) for d in (tmp_path / "ref", tmp_path / "run"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("train_loss", "top1", "fixed", "entropy"):
        assert [h[key] for h in run["progress"]["history"]] == [h[key] for h in ref["progress"]["history"]], key
