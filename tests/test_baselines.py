"""The baselines in the training loop (`dsnas search --method spos|random`) and training a given
architecture from scratch (`dsnas train ARCH`): stages, held-out ranking, budget, outputs."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, assert_one_line_error, set_flags
from dsnas.arch import Architecture, load_arch, save_arch
from dsnas.config import load_config
from dsnas.data import Split, hold_out, load_data
from dsnas.train import run_search

SETTINGS = [*TINY, "train_limit=384", "test_limit=128", "lr_warmup_epochs=0.5", "select_images=128", "candidates=6",
            "population=3", "budget_mflops=2.2", "seed=5"]


def cfg(*extra):
    return load_config(None, SETTINGS + list(extra))


def read_candidates(out):
    with open(out / "candidates.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def spos_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("spos") / "r"
    return out, run_search(cfg("method=spos"), out, quiet=True)


@pytest.mark.slow
def test_spos_trains_uniform_supernet_then_finetunes_the_best_candidate(spos_run):
    out, result = spos_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "spos"
    assert [h["stage"] for h in m["history"]] == ["supernet", "finetune"]
    assert m["history"][0]["top1"] is None and m["history"][1]["top1"] == m["top1"]
    assert all(float(a.detach().abs().max()) == 0.0 for a in result.search.alphas)  # alpha is never trained
    rows = read_candidates(out)
    assert len(rows) == 6 and m["selection"]["evaluated"] == 6
    assert [int(r["generation"]) for r in rows] == [0, 0, 0, 1, 1, 1]
    assert all(float(r["mflops"]) <= 2.2 for r in rows)
    assert len({tuple(r[f"block_{i}"] for i in range(20)) for r in rows}) == 6
    assert all(0 < float(r["held_out_loss"]) < 10 for r in rows)  # cross-entropy, recorded for each candidate
    top = max(float(r["held_out_top1"]) for r in rows)
    winners = [r for r in rows if float(r["held_out_top1"]) == top]
    winner = min(winners, key=lambda r: float(r["mflops"]))
    arch = load_arch(out / "arch.yaml")
    assert arch.choices == [winner[f"block_{i}"] for i in range(20)]
    assert m["selection"]["best_held_out_top1"] == top
    assert m["mflops"] <= 2.2 and m["within_budget"]
    assert not (out / "alpha.csv").exists() and not (out / "alpha.png").exists()


@pytest.mark.slow
def test_ranking_images_are_held_out_of_weight_training(spos_run):
    out, result = spos_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["train_images"] == 384 - 128 and m["selection"]["held_out_images"] == 128


def test_hold_out_splits_disjointly_and_covers_everything():
    data = load_data()
    data.train = Split(torch.arange(1000, dtype=torch.int64).view(1000, 1, 1, 1).to(torch.uint8).repeat(1, 1, 2, 2),
                       torch.arange(1000))  # labels carry the index of every image
    kept, held = hold_out(data, 300, seed=1)
    a, b = set(kept.train.labels.tolist()), set(held.test.labels.tolist())
    assert len(b) == 300 and not a & b and a | b == set(range(1000))
    assert len(kept.test) == len(data.test)  # the real test split is untouched
    again = hold_out(data, 300, seed=1)[1].test.labels
    assert torch.equal(again, held.test.labels)


@pytest.mark.slow
def test_random_search_ending_on_the_supernet_reports_the_inherited_child(tmp_path):
    out = tmp_path / "r"
    m = run_search(cfg("method=random", "epochs=1"), out, quiet=True).metrics
    assert [h["stage"] for h in m["history"]] == ["supernet"]
    assert m["top1"] is not None and 0 <= m["top1"] <= 100
    rows = read_candidates(out)
    assert {r["generation"] for r in rows} == {"0"} and len(rows) == 6
    assert load_arch(out / "arch.yaml").metadata["created_by"].endswith("random")


@pytest.mark.slow
def test_baseline_runs_are_deterministic(spos_run, tmp_path):
    out, _ = spos_run
    again = tmp_path / "again"
    run_search(cfg("method=spos"), again, quiet=True)
    assert (again / "candidates.csv").read_text() == (out / "candidates.csv").read_text()
    a, b = load_file(out / "child.safetensors"), load_file(again / "child.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_train_fixed_architecture_from_scratch(spos_run, tmp_path, dsnas_main):
    out, _ = spos_run
    given = load_arch(out / "arch.yaml")
    run = tmp_path / "scratch"
    r = dsnas_main("train", out / "arch.yaml", "--quiet", "--out", run, *set_flags(SETTINGS))
    assert r.returncode == 0, r.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["method"] == "fixed" and [h["stage"] for h in m["history"]] == ["train", "train"]
    assert load_arch(run / "arch.yaml").choices == given.choices
    assert m["train_images"] == 384  # nothing held out
    # from scratch: the trained child differs from the spos child, which inherited supernet weights
    a, b = load_file(out / "child.safetensors"), load_file(run / "child.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_train_an_mmrazor_subnet_on_the_runs_own_data(spos_run, tmp_path, dsnas_main):
    # MMRazor's subnet YAML names ops only; the run's data and width size the network
    out, _ = spos_run
    given = load_arch(out / "arch.yaml")
    subnet = tmp_path / "subnet.yaml"
    save_arch(given, subnet, mmrazor=True)
    run = tmp_path / "from_mmrazor"
    r = dsnas_main("train", subnet, "--quiet", "--out", run, *set_flags(SETTINGS + ["epochs=1"]))
    assert r.returncode == 0, r.stderr
    trained = load_arch(run / "arch.yaml")
    assert trained.choices == given.choices and trained.settings == given.settings


@pytest.mark.slow
def test_train_refuses_an_architecture_of_another_space(spos_run, tmp_path, dsnas_main):
    out, _ = spos_run
    arch = load_arch(out / "arch.yaml")
    other = tmp_path / "wide.yaml"
    save_arch(Architecture(arch.choices, "shufflenet", {**arch.settings, "width": 0.5}), other)
    r = dsnas_main("train", other, "--out", tmp_path / "x", *set_flags(SETTINGS))
    assert r.returncode == 2
    assert "does not fit this run's space: width 0.5 (this run: 0.25)" in r.stderr
    assert not (tmp_path / "x").exists()
    r = dsnas_main("train", tmp_path / "missing.yaml", "--out", tmp_path / "y")
    assert r.returncode == 2 and "missing.yaml" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("sets, message", [
    (["method=evolution"], "method must be one of dsnas, spos, random, fixed"),
    (["method=fixed"], "method fixed needs arch"),
    (["arch=a.yaml"], "arch is only used with method fixed"),
    (["method=spos", "eval_bn_recalibrate=0"], "method spos needs eval_bn_recalibrate >= 1"),
    (["method=random", "candidates=0"], "method random needs candidates >= 1"),
    (["method=spos", "population=1"], "population must be >= 2"),
    (["method=spos", "mutation_prob=1.5"], "mutation_prob must be in [0, 1]"),
])
def test_bad_method_settings_are_one_line_errors(sets, message, dsnas_main, tmp_path):
    r = dsnas_main("search", "--out", tmp_path / "r", *set_flags(sets))
    assert message in assert_one_line_error(r.returncode, r.stderr)


def test_method_flag_and_resume_conflict(dsnas_main, tmp_path):
    r = dsnas_main("search", "--method", "spos", "--resume", tmp_path)
    assert r.returncode == 2 and "--method" in r.stderr


def test_over_tight_budget_is_reported_before_training(tmp_path, dsnas_main):
    r = dsnas_main("search", "--method", "random", "--out", tmp_path / "r",
                   *set_flags(SETTINGS + ["budget_mflops=1.0", "epochs=1"]))
    assert r.returncode == 2 and "budget_mflops 1 is below the cheapest architecture of this space (1.8" in r.stderr
    assert not (tmp_path / "r").exists()


def test_train_without_an_architecture_is_a_clear_error(dsnas_main):
    r = dsnas_main("train")
    assert r.returncode == 2 and "dsnas train needs an architecture file" in r.stderr


@pytest.mark.slow
def test_default_hold_out_is_a_tenth_of_the_training_images(tmp_path):
    m = run_search(cfg("method=random", "epochs=1", "select_images=0", "candidates=2"), tmp_path / "r",
                   quiet=True).metrics
    assert m["selection"]["held_out_images"] == 38 and m["train_images"] == 384 - 38
