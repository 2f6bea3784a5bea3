"""The gate credit and its remedies: the BN identity, the loss credit's exact expectation, never_pick,
the per-epoch credit statistics a run writes, and the nb201 candidate set."""

import csv
import itertools
import math

import pytest
import torch
from torch import nn

from conftest import dsnas_error, tiny_config
from dsnas.plan import check_run, search_rules, space_settings
from dsnas import DSNAS, Choice
from dsnas.config import load_config
from dsnas.spaces import build
from dsnas.spaces.nb201 import NB201Settings, NB201Space, from_string, make_op, to_string

NO_NONE = "skip_connect,nor_conv_1x1,nor_conv_3x3,avg_pool_3x3"


# --- what the paper's credit measures ---------------------------------------------------------
def test_gate_credit_of_an_op_ending_in_batch_bn_is_gamma_and_beta_times_their_gradients():
    """r = dL/dZ = sum_c (gamma_c dL/dgamma_c + beta_c dL/dbeta_c) for O = BN(...) in training mode:
    the credit of such an op is zero wherever its BN weights are at a stationary point."""
    torch.manual_seed(0)
    op = make_op("nor_conv_3x3", 6)
    with torch.no_grad():
        op[2].weight.uniform_(0.5, 1.5)
        op[2].bias.uniform_(-0.5, 0.5)
    model = nn.Sequential(Choice({"conv": op, "skip": nn.Identity()}), nn.Flatten(), nn.Linear(6 * 5 * 5, 3))
    search = DSNAS(model)
    search.arm([0])
    x, y = torch.randn(8, 6, 5, 5), torch.randint(3, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    bn = op[2]
    identity = (bn.weight * bn.weight.grad).sum() + (bn.bias * bn.bias.grad).sum()
    torch.testing.assert_close(search.choices[0].mask.grad, identity, rtol=1e-4, atol=1e-7)


def test_the_credit_of_none_is_exactly_zero():
    model = nn.Sequential(Choice({"none": make_op("none", 3), "conv": make_op("nor_conv_1x1", 3)}), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 2))
    search = DSNAS(model)
    search.arm([0])
    nn.functional.cross_entropy(model(torch.randn(4, 3, 4, 4)), torch.tensor([0, 1, 0, 1])).backward()
    assert float(search.choices[0].mask.grad) == 0.0


# --- the loss credit ------------------------------------------------------------------------
class Scaled(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


class Squared(nn.Module):
    """Two blocks of scalings, then a loss that is not linear in the gates: the gate credit is
    then only a first-order estimate, while the loss credit stays exact."""

    def __init__(self, scales):
        super().__init__()
        self.blocks = nn.ModuleList(Choice([Scaled(s) for s in row]) for row in scales)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return ((x - 1.0) ** 2).sum()


def _nonlinear_toy(credit):
    model = Squared([[0.0, 0.5, 2.0], [1.0, -1.0, 3.0]])
    search = DSNAS(model, credit=credit)
    with torch.no_grad():
        search.alphas[0].copy_(torch.tensor([0.3, -0.2, 0.1]))
        search.alphas[1].copy_(torch.tensor([-0.5, 0.4, 0.0]))
    return model, search


def _path_average(model, search, x, baseline):
    """The alpha-gradient averaged over every path with its probability, and the exact gradient
    of E_s[L]; the loss baseline is held at ``baseline`` for every path."""
    alphas = [a.detach().clone().requires_grad_(True) for a in search.alphas]
    probs = [p.clone() for p in search.probs()]
    mean, expected = [torch.zeros_like(a) for a in search.alphas], 0.0
    for path in itertools.product(*[range(len(c)) for c in search.choices]):
        search.baseline.copy_(torch.tensor([baseline, 1.0]))
        search.arm(list(path))
        loss = model(x)
        loss.backward()
        search.compute_arch_grads(loss=loss)
        prob = math.prod(float(p[s]) for p, s in zip(probs, path))
        for m, a in zip(mean, search.alphas):
            m += prob * a.grad
        expected = expected + math.prod(torch.softmax(a, 0)[s] for a, s in zip(alphas, path)) * loss.detach()
    return mean, torch.autograd.grad(expected, alphas)


@pytest.mark.parametrize("baseline", [0.0, 2.5, -7.0])
def test_the_loss_credit_is_exact_for_a_loss_not_linear_in_the_gates_whatever_the_baseline(baseline):
    model, search = _nonlinear_toy("loss")
    mean, exact = _path_average(model, search, torch.tensor([1.5]), baseline)
    for m, e in zip(mean, exact):
        torch.testing.assert_close(m, e, atol=1e-5, rtol=1e-5)


def test_the_gate_credit_is_not_exact_there():
    model, search = _nonlinear_toy("gate")
    mean, exact = _path_average(model, search, torch.tensor([1.5]), 0.0)
    assert max(float((m - e).abs().max()) for m, e in zip(mean, exact)) > 0.1


def test_the_loss_baseline_is_a_bias_corrected_running_mean():
    model, search = _nonlinear_toy("loss")
    losses = []
    for _ in range(5):
        search.sample()
        loss = model(torch.tensor([1.5]))
        loss.backward()
        search.compute_arch_grads(loss=loss)
        losses.append(float(loss.detach()))
    weights = [0.9 ** (len(losses) - 1 - i) for i in range(len(losses))]
    expected = sum(w * v for w, v in zip(weights, losses)) / sum(weights)
    assert float(search.baseline[0] / search.baseline[1]) == pytest.approx(expected, rel=1e-6)


def test_the_loss_credit_needs_the_loss_and_unknown_credits_are_refused():
    model, search = _nonlinear_toy("loss")
    search.sample()
    model(torch.tensor([1.5])).backward()
    with pytest.raises(ValueError, match="loss"):
        search.compute_arch_grads()
    with pytest.raises(ValueError, match="credit"):
        DSNAS(model, credit="reinforce")


# --- never_pick: DARTS's rule -----------------------------------------------------------------
def _three_ops(never_pick=()):
    model = nn.Sequential(Choice({"none": nn.Identity(), "a": nn.Identity(), "b": nn.Identity()}),
                          Choice({"a": nn.Identity(), "b": nn.Identity()}))
    return DSNAS(model, never_pick=never_pick)


def _set(search, block, probs):
    with torch.no_grad():
        search.alphas[block].copy_(torch.log(torch.tensor(probs)))


def test_derive_and_early_fix_never_pick_the_excluded_op():
    search = _three_ops(["none"])
    _set(search, 0, [0.8, 0.15, 0.05])
    assert search.derive()[0] == 1  # the strongest op that is not none
    # among a and b the conditional probabilities are 0.75 / 0.25: a margin of 0.5 >= 0.3
    assert search.early_fix() == [0] and search.choices[0].fixed == 1
    plain = _three_ops()
    _set(plain, 0, [0.8, 0.15, 0.05])
    assert plain.derive()[0] == 0


def test_early_fix_waits_while_the_pickable_ops_are_level():
    search = _three_ops(["none"])
    _set(search, 0, [0.9, 0.05, 0.05])  # none leads, but between a and b nothing is decided
    assert search.early_fix() == [] and search.choices[0].fixed is None


def test_the_budget_repair_never_swaps_to_an_excluded_op():
    model = nn.Sequential(Choice({"none": nn.Identity(), "a": nn.Identity(), "b": nn.Identity()}))
    search = DSNAS(model, costs=[[0.0, 1.0, 3.0]], budget=2.0, never_pick=["none"])
    _set(search, 0, [0.1, 0.1, 0.8])
    assert search.derive_within() == [1]


def test_never_pick_names_are_checked():
    with pytest.raises(ValueError, match="no candidate"):
        _three_ops(["nnone"])
    with pytest.raises(ValueError, match="no candidate to pick"):
        _three_ops(["a", "b", "none"])


# --- the credit statistics a search keeps -----------------------------------------------------
def test_credit_statistics_count_and_sum_each_sampled_candidates_credit():
    model, search = _nonlinear_toy("gate")
    seen = {}
    for _ in range(40):
        search.sample()
        loss = model(torch.tensor([1.5]))
        loss.backward()
        rewards = [float(c.mask.grad) for c in search.choices]
        search.compute_arch_grads(loss=loss)
        for i, (c, r) in enumerate(zip(search.choices, rewards)):
            seen.setdefault((i, c.active), []).append(r)
    stats = search.take_credit_stats()
    for (i, k), rs in seen.items():
        assert int(stats[i][k, 0]) == len(rs)
        assert float(stats[i][k, 1]) == pytest.approx(sum(rs), rel=1e-5, abs=1e-6)
        assert float(stats[i][k, 2]) == pytest.approx(sum(r * r for r in rs), rel=1e-5, abs=1e-6)
    assert all(float(t.abs().sum()) == 0 for t in search.take_credit_stats())  # taken: a new epoch starts at 0


def test_credit_state_round_trips_and_an_older_state_starts_it_at_zero():
    model, search = _nonlinear_toy("loss")
    for _ in range(3):
        search.sample()
        loss = model(torch.tensor([1.5]))
        loss.backward()
        search.compute_arch_grads(loss=loss)
    state = search.state_dict()
    _, other = _nonlinear_toy("loss")
    other.load_state_dict(state)
    assert torch.equal(other.baseline, search.baseline)
    assert all(torch.equal(a, b) for a, b in zip(other.credit_stats, search.credit_stats))
    del state["credit"]
    other.load_state_dict(state)
    assert float(other.baseline.abs().sum()) == 0


# --- the nb201 candidate set ------------------------------------------------------------------
def test_nb201_without_none_has_4096_cells_whose_strings_stay_nb201_strings():
    s = NB201Settings(channels=4, cells_per_stage=1, ops=NO_NONE)
    space = NB201Space(s)
    assert all(c.names == NO_NONE.split(",") for c in space.choices)
    assert space.describe()["architectures"] == 4096
    assert NB201Space.decisions(s)[0][1] == NO_NONE.split(",")
    cell = ["skip_connect", "nor_conv_3x3", "avg_pool_3x3", "nor_conv_1x1", "skip_connect", "nor_conv_3x3"]
    assert from_string(to_string(cell)) == cell
    by_index = NB201Space.footprint(s, [NO_NONE.split(",").index(op) for op in cell])
    assert by_index == NB201Space.footprint(s, cell)


def test_nb201_ops_are_checked_and_spelled_one_way():
    assert NB201Settings(ops="nor_conv_3x3, skip_connect").ops == "skip_connect,nor_conv_3x3"
    for bad in ("", "none,none", "conv_5x5", 3):
        with pytest.raises(ValueError, match="ops"):
            NB201Settings(ops=bad)


def test_credit_and_never_pick_resolve_by_space_and_are_checked(tmp_path):
    shufflenet = build("shufflenet", {"width": 0.25, "input_size": 28, "in_channels": 1})
    nb201 = build("nb201", {"channels": 4, "cells_per_stage": 1})
    cfg = load_config(None, [])
    assert search_rules(check_run(cfg), shufflenet) == {"credit": "gate", "never_pick": []}
    assert search_rules(check_run(cfg), nb201) == {"credit": NB201Space.credit,
                                       "never_pick": [n for n in NB201Space.never_pick.split(",") if n]}
    assert search_rules(check_run(load_config(None, ["credit=gate", "never_pick="])), nb201) == {"credit": "gate",
                                                                                      "never_pick": []}
    assert "credit" in dsnas_error(load_config, None, ["credit=exact"])


@pytest.mark.slow
def test_a_search_writes_the_credit_of_every_epoch(tmp_path):
    from dsnas.train import run_search

    cfg = tiny_config("space=nb201", "channels=4", "cells_per_stage=1", "batch_size=32", "epochs=3", "search_epochs=2",
                      "eval_bn_recalibrate=0", "credit=loss")
    run_search(cfg, tmp_path / "run", quiet=True)
    rows = list(csv.DictReader(open(tmp_path / "run" / "credit.csv")))
    assert {r["epoch"] for r in rows} == {"1", "2"} and {r["stage"] for r in rows} == {"search"}
    assert {r["candidate"] for r in rows if r["candidate"] == "none"} <= {"none"}
    assert all(float(r["gate_mean"]) == 0.0 for r in rows if r["candidate"] == "none")
    assert all("credit_mean" in r for r in rows)
    per_epoch = sum(int(r["samples"]) for r in rows if r["epoch"] == "1")
    assert per_epoch <= 6 * (256 // 32)  # one sample per open edge and step
    assert (tmp_path / "run" / "credit.png").stat().st_size > 0


def test_an_nb201_search_leaves_none_out_unless_told_and_a_fixed_cell_keeps_every_op():
    search = load_config(None, ["space=nb201"])
    assert space_settings(check_run(search), 10, 1, 28)["ops"] == NB201Space.search_settings["ops"]
    assert "none" not in space_settings(check_run(search), 10, 1, 28)["ops"].split(",")
    everything = load_config(None, ["space=nb201", "ops=" + ",".join(NB201Settings().candidates())])
    assert space_settings(check_run(everything), 10, 1, 28)["ops"].split(",")[0] == "none"
    fixed = load_config(None, ["space=nb201", "method=fixed", "arch=|none~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|"])
    assert "ops" not in space_settings(check_run(fixed), 10, 1, 28)  # the space's default: all five, none included


def test_a_cell_is_collapsed_when_no_convolution_is_on_a_path_from_input_to_output():
    assert _collapsed(["none", "nor_conv_1x1", "none", "none", "none", "none"])  # the conv feeds nothing
    assert _collapsed(["avg_pool_3x3", "none", "skip_connect", "avg_pool_3x3", "none", "none"])
    assert not _collapsed(["none", "none", "none", "nor_conv_3x3", "none", "none"])


def test_a_run_saved_before_the_remedies_resumes_with_the_papers_rules(tmp_path):
    from dsnas.config import load_run_config

    saved = load_config(None, ["space=nb201"]).to_dict()
    saved.update(space="nb201", channels=8, cells_per_stage=1, width=0.25)  # the top-level keys of that time
    for key in ("credit", "never_pick"):
        del saved[key]
    (tmp_path / "config.yaml").write_text(__import__("yaml").safe_dump(saved))
    cfg = load_run_config(tmp_path)
    assert (cfg.credit, cfg.never_pick) == ("gate", "")
    assert space_settings(check_run(cfg), 10, 1, 28)["ops"] == NB201Settings().ops


# The command, at the ground truth's size on the embedded data (1 thread, as every test runs).
GT_SIZE = ["space=nb201", "budget_mflops=0", "channels=8", "cells_per_stage=1", "train_limit=6000", "epochs=4",
           "search_epochs=3"]


def _collapsed(cell: list[str]) -> bool:
    """No convolution on any edge that a path from the cell's input to its output uses (a dead cell
    has no such path at all)."""
    from dsnas.spaces.nb201 import EDGES

    live = [(i, j, op) for (j, i), op in zip(EDGES, cell) if op != "none"]
    forward, backward = {0}, {3}
    for i, j, _ in sorted(live, key=lambda e: e[1]):
        if i in forward:
            forward.add(j)
    for i, j, _ in sorted(live, key=lambda e: -e[0]):
        if j in backward:
            backward.add(i)
    return not any(op.startswith("nor_conv") and i in forward and j in backward for i, j, op in live)


def _found(tmp_path, name, sets):
    from dsnas.arch import load_arch
    from dsnas.train import run_search

    run_search(load_config(None, [*GT_SIZE, *sets]), tmp_path / name, quiet=True)
    return load_arch(tmp_path / name / "arch.yaml").choices


@pytest.mark.slow
def test_with_the_remedies_off_a_seed_collapses_and_with_the_defaults_no_seed_does(tmp_path):
    paper = _found(tmp_path, "paper", ["seed=2", "credit=gate", "never_pick=", "ops=" + NB201Settings().ops])
    assert _collapsed(paper), paper
    for seed in (0, 1, 2):
        cell = _found(tmp_path, f"default{seed}", [f"seed={seed}"])
        assert "none" not in cell and not _collapsed(cell), (seed, cell)
