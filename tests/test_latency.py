"""Latency tables: the file format, refusal of a table for another space, latency as a cost on
the same code path as MFLOPs, `info --measure`, and a search under a binding latency budget.
No timing is asserted here; how well a table predicts is benchmarks/latency_lut.py's job."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SMALL, TINY, assert_one_line_error, set_flags
from dsnas import DSNAS, DsnasError, ShuffleNetSpace
from dsnas.latency import LatencyTable, load_latency, measure_latency, save_latency

SPACE = SMALL  # the embedded set's space


@pytest.fixture(scope="module")
def lut(tmp_path_factory):
    path = tmp_path_factory.mktemp("lut") / "lut.yaml"
    table = measure_latency(ShuffleNetSpace(**SPACE, init="torch"), warmup=1, repeats=3, fit_children=6, holdout=3)
    save_latency(table, path)
    return path, table


@pytest.mark.slow
def test_table_round_trip(lut):
    path, table = lut
    again = load_latency(path, table.settings)
    assert again == table
    assert again.measured["backend"] == "torch" and again.measured["batch"] == 1
    assert len(again.blocks) == 20 and set(again.fixed) == {"stem", "head", "call"}
    assert all(e["ms"] >= 0 and e["lookup"] > 0 and e["spread"] >= 0 for b in again.blocks.values()
               for e in b.values())
    assert again.fit["children"] == 6 and again.validation["children"] == 3


@pytest.mark.slow
def test_a_search_reads_the_fitted_entries_and_the_lookup_is_kept(lut):
    """A search adds up the fitted entries (``ms``); the lookup they were fitted from is the parts
    timed alone times the fit's calibration scale."""
    _, table = lut
    labels = list(table.blocks)
    names = [list(table.blocks[label]) for label in labels]
    k = table.fit["scale"]
    assert k > 0
    rows, base = table.entries(names, labels)
    lookup, lookup_base = table.entries(names, labels, fitted=False)
    entry = table.blocks[labels[3]][names[3][1]]
    assert rows[3][1] == entry["ms"] and base == pytest.approx(sum(v["ms"] for v in table.fixed.values()))
    assert lookup[3][1] == pytest.approx(k * entry["lookup"])
    assert lookup_base == pytest.approx(k * sum(v["lookup"] for v in table.fixed.values()))


@pytest.mark.slow
def test_a_table_for_another_space_is_refused(lut, tmp_path, dsnas_main):
    path, table = lut
    with pytest.raises(DsnasError, match="is for space settings"):
        load_latency(path, {**table.settings, "width": 0.5})
    r = dsnas_main("info", "--latency", path, "--input-size", "32", "--num-classes", "10", "--in-channels", "1",
                   "--width", "0.25")
    assert r.returncode == 2 and "is for space settings" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: dsnas-latency/1\nsettings: {}\nfixed: {stem: {ms: -1}}\nblocks: [{a: {ms: 1}}]\n")
    with pytest.raises(DsnasError, match="finite ms >= 0"):
        load_latency(bad)
    bad.write_text(path.read_text().replace("  width: 0.25", "  width: 0.25\n  depth: 3"))
    with pytest.raises(DsnasError, match="unknown space setting.*depth"):
        load_latency(bad)
    r = dsnas_main("info", "--latency", bad)
    assert "depth" in assert_one_line_error(r.returncode, r.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("key, value", [("threads", "x"), ("rounds", 0), ("batch", 10**9), ("repeats", True),
                                        ("backend", "tvm"), ("precision", "int8"), ("device", "tpu")])
def test_a_table_with_a_bad_measured_record_is_refused(lut, tmp_path, key, value):
    """The record that end-to-end timings reuse is checked on load: a one-line error, no traceback."""
    import yaml

    path, table = lut
    data = yaml.safe_load(path.read_text())
    data["measured"][key] = value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(DsnasError, match=f"measured.{key}"):
        load_latency(bad)


def test_latency_drives_the_penalty_like_mflops():
    # latency entries = 3 x MFLOPs: lambda on latency must equal 3 lambda on MFLOPs, step for step
    space = ShuffleNetSpace(**SPACE, init="torch")
    counted = space.costs
    fake = LatencyTable(space.settings.as_dict(),
                        {label: {op: {"ms": 3 * v} for op, v in zip(names, row)}
                         for label, names, row in zip(counted.labels, counted.names, counted.entries["mflops"])},
                        {"stem": {"ms": 3 * counted.base["mflops"]}})
    with_latency = counted.with_latency(fake)
    budget = counted.bounds()["min"]  # every path is at or above it: the penalty applies
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    grads = []
    for metric, scale, penalty in (("mflops", 1.0, 0.3), ("latency_ms", 3.0, 0.1), ("latency_ms", 3.0, 0.0)):
        search = DSNAS(space, costs=with_latency, metric=metric, budget=scale * budget, penalty=penalty,
                       generator=torch.Generator().manual_seed(0))
        search.sample()
        space(x).sum().backward()
        search.compute_arch_grads()
        grads.append(torch.cat([a.grad for a in search.alphas]))
        space.zero_grad(set_to_none=True)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    assert not torch.allclose(grads[1], grads[2], atol=1e-3)  # and the penalty did act


@pytest.mark.slow
def test_info_measure_runs(lut, tmp_path, dsnas_main):
    from conftest import random_arch

    from dsnas import Architecture, save_arch

    path, _ = lut
    save_arch(Architecture(random_arch(3), settings=SPACE), tmp_path / "a.yaml")
    r = dsnas_main("info", "--arch", tmp_path / "a.yaml", "--latency", path, "--measure", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["latency_ms"] > 0 and out["measured_ms"] > 0


@pytest.mark.slow
def test_info_costs_an_mmrazor_subnet_in_the_tables_space(lut, tmp_path, dsnas_main):
    """An MMRazor subnet names no space, so `info --latency` costs it in the table's space."""
    from conftest import random_arch

    from dsnas import Architecture, save_arch

    path, table = lut
    choices = random_arch(4)
    save_arch(Architecture(choices), tmp_path / "subnet.yaml", mmrazor=True)
    r = dsnas_main("info", "--arch", tmp_path / "subnet.yaml", "--latency", path, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    space = ShuffleNetSpace(**SPACE, init="torch")
    assert out["settings"] == space.settings.as_dict()
    assert out["latency_ms"] == pytest.approx(space.costs.with_latency(table).total(choices, "latency_ms"), abs=1e-3)


@pytest.mark.slow
def test_info_of_the_space_gives_the_latency_range(lut, dsnas_main):
    """With a table, `info` of the whole space reports the latency range beside the counted costs;
    the space is the table's unless flags say otherwise."""
    path, table = lut
    rows, base = table.entries([list(b) for b in table.blocks.values()], list(table.blocks))
    r = dsnas_main("info", "--latency", path, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["latency_ms"]["min"] == pytest.approx(base + sum(min(x) for x in rows), abs=1e-3)
    assert out["latency_ms"]["min"] < out["latency_ms"]["mean"] < out["latency_ms"]["max"]
    assert set(out) >= {"mflops", "macs_m", "params_m"}


@pytest.mark.slow
def test_search_under_a_binding_latency_budget(lut, tmp_path, dsnas_main):
    path, table = lut
    rows, base = table.entries([list(b) for b in table.blocks.values()], list(table.blocks))
    low, mean = base + sum(min(r) for r in rows), base + sum(sum(r) / len(r) for r in rows)
    budget = low + 0.3 * (mean - low)  # below what a uniform draw costs on average: it binds
    sets = [*TINY, "train_limit=384", "test_limit=128", "lr_warmup_epochs=0.5", "arch_lr=0.3", "cost=latency",
            f"latency_table={path}", f"budget_ms={budget}", "penalty=1.0", "seed=3"]
    r = dsnas_main("search", "--quiet", "--out", tmp_path / "run", *set_flags(sets))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["cost"] == "latency" and m["within_budget"] is True
    assert m["latency_ms"] <= budget


def test_cost_latency_needs_a_table(dsnas_main, tmp_path):
    r = dsnas_main("search", "--out", tmp_path / "x", "--set", "cost=latency")
    assert r.returncode == 2 and "needs latency_table" in r.stderr


@pytest.mark.slow
def test_a_table_for_a_space_whose_data_is_elsewhere(dsnas_main, tmp_path):
    """On a target device without the dataset, the space's shape comes from flags: no data is read."""
    absent = tmp_path / "no-such-data"
    shape = ["--num-classes", "7", "--in-channels", "3", "--input-size", "32"]
    args = ["latency", "--set", f"data={absent}", "--set", "width=0.25", "--repeats", "1", "--warmup", "0", "--quiet"]
    r = dsnas_main(*args, "--out", tmp_path / "lut.yaml", *shape)
    assert r.returncode == 0, r.stderr
    assert load_latency(tmp_path / "lut.yaml").settings == ShuffleNetSpace(7, 3, 32, 0.25).settings.as_dict()
    r = dsnas_main(*args, "--out", tmp_path / "lut2.yaml", *shape[:4])  # no size: the data would give it
    assert r.returncode == 2 and "does not exist" in r.stderr and not (tmp_path / "lut2.yaml").exists()
