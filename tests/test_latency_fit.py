"""The fit of a latency table to children timed end to end, and its held-out validation, on a
synthetic timing model: a child costs the sum of known per-op costs, a fixed part, a context
term and noise, and parts "timed alone" cost less than in a network. No real timing is asserted.
Also the format: version 3 round-trips, versions 1 and 2 still load, bad numbers in the new
fields are one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from torch import nn

from conftest import assert_one_line_error, dsnas_error
from dsnas.agreement import agreement, kendall_tau
from dsnas.files import dump_yaml, parse_yaml
from dsnas.latency import load_latency, measure_latency, save_latency
from dsnas.latency_fit import RIDGES, choose_ridge, fit_entries, predict

BLOCKS, CANDIDATES = 20, 4


class Model:
    """True costs: ``ops[b][c]`` ms per op, ``fixed`` ms per child, and a context term (an extra
    fraction of the ops' sum, what a network adds around its parts) with relative noise."""

    def __init__(self, seed: int = 0, noise: float = 0.0, context: float = 0.15):
        self.rng = np.random.default_rng(seed)
        self.ops = self.rng.uniform(0.1, 0.6, (BLOCKS, CANDIDATES))
        self.fixed, self.noise, self.context = 0.8, noise, context
        # timed alone: hot cache, so too low, and unevenly so (what a single scale cannot fix)
        self.alone = self.ops * self.rng.uniform(0.6, 1.0, self.ops.shape)

    def archs(self, n: int) -> list[list[int]]:
        return [list(map(int, self.rng.integers(CANDIDATES, size=BLOCKS))) for _ in range(n)]

    def time(self, arch: list[int]) -> float:
        ops = sum(self.ops[b, c] for b, c in enumerate(arch))
        return float((self.fixed + (1 + self.context) * ops) * (1 + self.noise * self.rng.standard_normal()))


def test_the_fit_recovers_known_per_op_costs():
    """With many children and little noise, the fitted entries are the true per-op costs (the
    context term is proportional, so it is in each op's cost in a network), much closer than
    the lookup prior; so are the totals, the fixed part with them."""
    m = Model(noise=0.002)
    archs = m.archs(400)
    truth = (1 + m.context) * m.ops
    prior = m.alone.tolist()
    rows, fixed = fit_entries(archs, [m.time(a) for a in archs], prior, 0.5, ridge=0.25)
    fitted = np.array(rows)
    # one offset per block is not identifiable from sums (it trades with the fixed part); the
    # differences between a block's candidates and the total are
    gap = (lambda rows: np.abs(np.diff(rows, axis=1) - np.diff(truth, axis=1)))
    assert gap(fitted).max() < 0.01 and gap(np.array(prior)).mean() > 0.03
    assert fixed + fitted.min(axis=1).sum() == pytest.approx(m.fixed + truth.min(axis=1).sum(), rel=0.005)


def test_with_few_children_or_a_strong_ridge_the_fit_stays_with_the_lookup():
    m = Model(noise=0.02)
    prior = m.alone.tolist()
    assert fit_entries([], [], prior, 0.5, 4.0) == (prior, 0.5)
    archs = m.archs(60)
    times = [m.time(a) for a in archs]
    rows, fixed = fit_entries(archs, times, prior, 0.5, ridge=1e6)
    assert np.allclose(rows, prior, atol=1e-3) and fixed == pytest.approx(0.5, abs=1e-2)
    loose = np.array(fit_entries(archs, times, prior, 0.5, ridge=1.0)[0])
    assert np.abs(loose - np.array(prior)).mean() > 0.02  # a weak pull lets the timings move it


def test_the_ridge_is_chosen_by_how_noisy_the_timings_are():
    """Clean timings that the prior misses: the weakest pull; timings that are the prior plus
    noise (nothing to learn): the strongest."""
    m = Model()
    prior = m.alone.tolist()
    archs = m.archs(80)
    clean = choose_ridge(archs, [m.time(a) for a in archs], prior, 0.5)
    noise = np.random.default_rng(1).standard_normal(80)
    pure_noise = choose_ridge(archs, [predict(prior, 0.5, a) * (1 + 0.05 * e) for a, e in zip(archs, noise)],
                              prior, 0.5)
    assert clean == min(RIDGES) and pure_noise == max(RIDGES)


def test_no_entry_is_negative_and_the_others_make_up_for_one_held_at_zero():
    """Timings that would pull one entry below zero: it is held at zero and the rest refitted,
    so the fitted sums still match the timings (clipping after one solve would not)."""
    prior = [[1.0, 1.0], [1.0, 1.0]]
    archs = [[0, 0], [0, 1], [1, 0], [1, 1]] * 3
    truth = {(0, 0): 1.0, (0, 1): 3.0, (1, 0): 3.0, (1, 1): 5.0}  # block 0 candidate 0 "costs" -1 with fixed 2
    times = [truth[tuple(a)] for a in archs]
    rows, fixed = fit_entries(archs, times, prior, 2.0, ridge=1e-6)
    assert min(min(r) for r in rows) >= 0 and fixed >= 0
    assert [predict(rows, fixed, a) for a in archs[:4]] == pytest.approx(times[:4], abs=1e-3)


def test_agreement_is_kendall_tau_and_relative_errors():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # 2 concordant pairs, 1 discordant
    found = agreement([11.0, 18.0, 30.0], [10.0, 20.0, 30.0])  # +10%, -10%, 0%
    assert found == {"tau": 1.0, "median_error_pct": pytest.approx(10.0), "max_error_pct": pytest.approx(10.0)}
    assert math.isnan(agreement([1.0, 1.0], [2.0, 2.0])["tau"])


# --- measure_latency on the synthetic model: a fake timer and stand-in children -----------------
class Arch(nn.Module):
    """What `measure_latency` times for a child: only the architecture, for the fake timer."""

    def __init__(self, arch):
        super().__init__()
        self.arch = list(arch)

    def forward(self, x):
        return x


@pytest.fixture(scope="module")
def demo_space():
    from dsnas import ShuffleNetSpace

    return ShuffleNetSpace(10, 1, 28, 0.25, init="torch")


def _fake_timing(mp: pytest.MonkeyPatch, space, model: Model) -> list:
    """`measure_latency` on ``space`` with the timer replaced by ``model``: each candidate of
    block b costs ``alone[b][c]`` timed alone, a child `Model.time`, the fixed parts 0.1 ms and
    a call nothing. Returns the list the children's (architecture, ms) are appended to."""
    import dsnas.latency

    cost = {id(op): float(model.alone[b, c]) for b, choice in enumerate(space.choices)
            for c, op in enumerate(choice.candidates)}
    timed_children = []

    class FakeTimer:
        def __init__(self, *args, **kwargs):
            self.rounds = 1

        def many(self, jobs, progress=None):
            out = []
            for module, _ in jobs:
                if isinstance(module, Arch):
                    timed_children.append((module.arch, model.time(module.arch)))
                    out.append({"ms": timed_children[-1][1], "spread": 0.0})
                else:  # the identity that measures a call's own cost costs nothing here
                    out.append({"ms": 0.0 if isinstance(module, nn.Identity) else cost.get(id(module), 0.1),
                                "spread": 0.0})
            return out

    mp.setattr(dsnas.latency, "_Timer", FakeTimer)
    mp.setattr(space, "child", lambda arch: Arch(arch))
    return timed_children


@pytest.fixture
def synthetic(monkeypatch, demo_space):
    model = Model(seed=3, noise=0.003)
    return demo_space, model, _fake_timing(monkeypatch, demo_space, model)


def test_a_measured_table_is_fitted_and_checked_on_children_it_never_saw(synthetic):
    space, model, timed = synthetic
    table = measure_latency(space, fit_children=100, holdout=30)
    names = [c.names for c in space.choices]
    held_out = timed[100:]
    assert len(timed) == 130 and table.fit["children"] == 100 and table.validation["children"] == 30
    rows, base = table.entries(names, space.labels)
    expected = agreement([predict(rows, base, a) for a, _ in held_out], [ms for _, ms in held_out])
    assert table.validation["tau"] == pytest.approx(expected["tau"], abs=1e-4)
    assert table.validation["median_error_pct"] == pytest.approx(expected["median_error_pct"], abs=1e-4)
    lookup_rows, lookup_base = table.entries(names, space.labels, fitted=False)
    lookup = agreement([predict(lookup_rows, lookup_base, a) for a, _ in held_out], [ms for _, ms in held_out])
    assert table.validation["lookup"]["median_error_pct"] == pytest.approx(lookup["median_error_pct"], abs=1e-4)
    # the fit is what makes the table predict: the lookup alone misses by far more
    assert table.validation["tau"] > 0.9 and table.validation["median_error_pct"] < 1.0
    assert table.validation["lookup"]["median_error_pct"] > 2 * table.validation["median_error_pct"]
    truth = (1 + model.context) * model.ops
    assert np.abs(np.diff(rows, axis=1) - np.diff(truth, axis=1)).max() < 0.05


def test_without_children_the_table_is_the_lookup_and_is_not_checked(synthetic, tmp_path):
    space, model, timed = synthetic
    table = measure_latency(space, fit_children=0, holdout=0)
    assert timed == [] and table.fit == {"children": 0, "ridge": 4.0, "scale": 1.0, "seed": 12345}
    assert table.validation is None
    rows, _ = table.entries([c.names for c in space.choices], space.labels)
    assert np.allclose(rows, model.alone, atol=1e-4)
    save_latency(table, tmp_path / "lut.yaml")
    assert load_latency(tmp_path / "lut.yaml") == table


# --- the format ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def v3_text(demo_space, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("v3") / "lut.yaml"
    with pytest.MonkeyPatch.context() as mp:
        _fake_timing(mp, demo_space, Model(seed=4, noise=0.003))
        save_latency(measure_latency(demo_space, fit_children=12, holdout=4), path)
    return path.read_text()


@pytest.fixture
def v3(v3_text, tmp_path):
    path = tmp_path / "lut.yaml"
    path.write_text(v3_text)
    return path


def test_version_3_round_trips(v3):
    doc = parse_yaml(v3.read_text())
    assert doc["format"] == "dsnas-latency/3" and "scale" not in doc["measured"]
    assert set(doc["fit"]) == {"children", "ridge", "scale", "seed"}
    assert set(doc["validation"]) == {"children", "seed", "tau", "median_error_pct", "max_error_pct", "lookup"}
    table = load_latency(v3)
    again = v3.with_name("again.yaml")
    save_latency(table, again)
    assert again.read_text() == v3.read_text() and load_latency(again) == table


def test_versions_1_and_2_still_load_and_predict_with_their_scale(v3, tmp_path):
    doc = parse_yaml(v3.read_text())
    old = {"format": "dsnas-latency/2", "space": doc["space"], "settings": doc["settings"],
           "measured": {**doc["measured"], "scale": 2.0},
           "fixed": {k: {"ms": e["lookup"], "spread": e["spread"]} for k, e in doc["fixed"].items()},
           "blocks": {label: {op: {"ms": e["lookup"], "spread": e["spread"]} for op, e in b.items()}
                      for label, b in doc["blocks"].items()}}
    v1 = {**old, "format": "dsnas-latency/1", "blocks": list(old["blocks"].values())}
    labels, names = list(old["blocks"]), [list(b) for b in old["blocks"].values()]
    for data in (old, v1):
        path = tmp_path / "old.yaml"
        path.write_text(dump_yaml(data, sort_keys=False))
        table = load_latency(path)
        assert table.fit is None and table.validation is None
        rows, base = table.entries(names, labels)
        assert rows[0][0] == pytest.approx(2.0 * old["blocks"][labels[0]][names[0][0]]["ms"])
        assert base == pytest.approx(2.0 * sum(e["ms"] for e in old["fixed"].values()))
        save_latency(table, tmp_path / "saved.yaml")  # a table without a fit is written as version 2
        assert parse_yaml((tmp_path / "saved.yaml").read_text())["format"] == "dsnas-latency/2"


def _broken(v3, change) -> str:
    doc = parse_yaml(v3.read_text())
    change(doc)
    bad = v3.with_name("bad.yaml")
    bad.write_text(dump_yaml(doc, sort_keys=False))
    return dsnas_error(load_latency, bad)


def _set(section: str, key: str, value):
    return lambda doc: doc[section].__setitem__(key, value)


@pytest.mark.parametrize("change, expected", [
    (_set("fit", "children", -1), "needs fit with children"),
    (_set("fit", "children", 2.5), "needs fit with children"),
    (_set("fit", "ridge", math.nan), "needs fit with children"),
    (_set("fit", "ridge", -1.0), "needs fit with children"),
    (_set("fit", "scale", 0), "needs fit with children"),
    (_set("fit", "scale", "1.1"), "needs fit with children"),
    (_set("fit", "seed", True), "needs fit with children"),
    (lambda doc: doc.pop("fit"), "needs fit with children"),
    (_set("validation", "children", 1), "needs validation with children"),
    (_set("validation", "tau", 1.5), "needs validation with children"),
    (_set("validation", "tau", math.nan), "needs validation with children"),
    (_set("validation", "median_error_pct", -3.0), "needs validation with children"),
    (_set("validation", "max_error_pct", math.inf), "needs validation with children"),
    (_set("validation", "lookup", {"tau": 0.5}), "needs validation with children"),
    (_set("validation", "lookup", None), "needs validation with children"),
    (_set("measured", "scale", 1.2), "keeps as fit.scale"),
    (lambda doc: next(iter(doc["blocks"].values()))["shuffle_3x3"].pop("lookup"), "lookup >= 0"),
    (lambda doc: doc["fixed"]["stem"].__setitem__("lookup", math.nan), "lookup >= 0"),
    (lambda doc: doc.__setitem__("format", "dsnas-latency/4"), "this version reads"),
])
def test_a_bad_number_in_the_new_fields_is_a_one_line_error(v3, change, expected):
    assert expected in _broken(v3, change)


def test_a_held_out_tau_may_be_null_when_the_timings_tie(v3):
    doc = parse_yaml(v3.read_text())
    doc["validation"]["tau"] = None
    v3.write_text(dump_yaml(doc, sort_keys=False))
    assert load_latency(v3).validation["tau"] is None


def test_info_refuses_a_table_with_a_bad_fit(v3, dsnas_main):
    doc = parse_yaml(v3.read_text())
    doc["fit"]["ridge"] = "strong"
    v3.write_text(dump_yaml(doc, sort_keys=False))
    r = dsnas_main("info", "--latency", v3)
    assert "needs fit with children" in assert_one_line_error(r.returncode, r.stderr)


SPACE_FLAGS = ("--num-classes", "10", "--in-channels", "1", "--input-size", "28", "--set", "width=0.25", "--quiet")


@pytest.mark.parametrize("flags, expected", [
    (("--holdout", "1"), "held-out children 0 or a whole number in 2.."),
    (("--fit-children", "100001"), "fit children a whole number in 0..100000"),
    (("--ridge", "nan"), "ridge a number in 0..1e+06"),
    (("--ridge", "-1"), "ridge a number in 0..1e+06"),
])
def test_latency_refuses_bad_fit_options_before_measuring(tmp_path, dsnas_main, monkeypatch, flags, expected):
    import dsnas.latency

    def timer(*args, **kwargs):
        raise AssertionError("measured before checking")

    monkeypatch.setattr(dsnas.latency, "_Timer", timer)
    r = dsnas_main("latency", "--out", tmp_path / "lut.yaml", *SPACE_FLAGS, *flags)
    assert expected in assert_one_line_error(r.returncode, r.stderr)
    assert not (tmp_path / "lut.yaml").exists()


def test_latency_reports_the_held_out_check_on_the_terminal(tmp_path, dsnas_main, synthetic, monkeypatch):
    import dsnas.spaces

    space, _, _ = synthetic
    monkeypatch.setattr(dsnas.spaces, "build", lambda *args, **kwargs: space)
    r = dsnas_main("latency", "--out", tmp_path / "lut.yaml", *SPACE_FLAGS, "--fit-children", "20",
                   "--holdout", "8")
    assert r.returncode == 0, r.stderr
    table = load_latency(tmp_path / "lut.yaml")
    v = table.validation
    assert f"fitted to 20 children timed end to end (ridge {table.fit['ridge']:g}" in r.stdout
    assert (f"on 8 held-out children: tau {v['tau']:.3f}, median error {v['median_error_pct']:.1f}% "
            f"(max {v['max_error_pct']:.1f}%); the lookup alone: tau {v['lookup']['tau']:.3f}") in r.stdout
