"""The pieces of the run loop, each without running a search: stages, the learning-rate
schedule, budget-aware early fix and derivation, the run checkpoint, the run folder."""

import pytest
import torch
from torch import nn

from dsnas import DSNAS, Choice, DsnasError
from dsnas.checkpoint import STATEFUL, RunState, load_checkpoint, restore_run, run_payload, save_checkpoint
from dsnas.config import Config
from dsnas.report import check_run_dir
from dsnas.build import lr_factor
from dsnas.methods import METHODS, method_of


def _cfg(**kw) -> Config:
    cfg = Config()
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.mark.parametrize("method, want", [
    ("dsnas", ["warmup", "search", "search", "finetune", "finetune"]),
    ("spos", ["supernet", "supernet", "supernet", "finetune", "finetune"]),
    ("random", ["supernet", "supernet", "supernet", "finetune", "finetune"]),
    ("fixed", ["train"] * 5),
])
def test_stage_of_every_method(method, want):
    cfg = _cfg(method=method, epochs=5, warmup_epochs=1, search_epochs=3)
    rules = method_of(cfg)
    assert [rules.stage(e, cfg) for e in range(5)] == want
    assert set(want) <= set(rules.stages)
    assert rules.switch_epoch(cfg) == (0 if method == "fixed" else 3)


def test_every_method_has_its_stage_rules():
    assert sorted(METHODS) == ["dsnas", "fixed", "random", "spos"]
    assert [m for m, rules in METHODS.items() if rules.learns_alpha] == ["dsnas"]
    assert sorted(m for m, rules in METHODS.items() if rules.holds_out) == ["random", "spos"]
    assert [m for m, rules in METHODS.items() if not rules.searches] == ["fixed"]


def test_stage_of_search_only_run_never_finetunes():
    cfg = _cfg(method="dsnas", epochs=3, warmup_epochs=0, search_epochs=3)
    assert [method_of(cfg).stage(e, cfg) for e in range(3)] == ["search"] * 3


def test_lr_factor_warms_up_linearly_then_cosine_to_zero():
    cfg = _cfg(epochs=10, lr_warmup_epochs=1)
    steps = 100  # per epoch: warm-up is steps 0..99, the cosine runs over the other 900
    assert lr_factor(0, steps, cfg) == pytest.approx(0.01)
    assert lr_factor(49, steps, cfg) == pytest.approx(0.5)
    assert lr_factor(99, steps, cfg) == pytest.approx(1.0)
    assert lr_factor(100, steps, cfg) == pytest.approx(1.0)
    assert lr_factor(550, steps, cfg) == pytest.approx(0.5)
    assert lr_factor(999, steps, cfg) == pytest.approx(0.0, abs=1e-4)
    assert lr_factor(1000, steps, cfg) == pytest.approx(0.0)
    values = [lr_factor(s, steps, cfg) for s in range(100, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_lr_factor_without_warmup_starts_at_one():
    cfg = _cfg(epochs=2, lr_warmup_epochs=0)
    assert lr_factor(0, 10, cfg) == 1.0
    assert lr_factor(10, 10, cfg) == pytest.approx(0.5)


def _budget_search(budget):
    model = nn.Sequential(*[Choice({"cheap": nn.Identity(), "dear": nn.Identity()}) for _ in range(3)])
    search = DSNAS(model, costs=[torch.tensor([1.0, 10.0])] * 3, budget=budget, early_fix=0.3)
    with torch.no_grad():
        for a in search.alphas:
            a.copy_(torch.tensor([0.0, 2.0]))  # every block is sure of its dear op: p = 0.12 / 0.88
    return search


def test_early_fix_keeps_a_completion_within_the_budget():
    # budget 21: one dear block (10 + 1 + 1 = 12) fits, two (10 + 10 + 1 = 21) fit, three (30) do not
    search = _budget_search(21.0)
    newly = search.early_fix()
    assert search.cheapest_completion() <= 21.0
    assert newly == [1, 2] and search.fixed() == [None, 1, 1]  # the first block stays open
    # the open block cannot take its dear op; the derived child is repaired to fit
    assert search.derive_within() == [0, 1, 1]


def test_early_fix_without_budget_fixes_every_confident_block():
    search = _budget_search(None)
    assert search.early_fix() == [0, 1, 2]
    assert search.derive_within() == [1, 1, 1]  # no budget: plain argmax


def test_early_fix_leaves_every_block_open_when_none_fits():
    search = _budget_search(11.5)  # one dear block alone already breaks it: 10 + 1 + 1 = 12
    assert search.early_fix() == []
    assert search.fixed() == [None, None, None]
    assert search.derive_within() == [0, 0, 0]


def _parts(seed: int) -> dict:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), Choice([nn.Identity(), nn.ReLU()]))
    search = DSNAS(model, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    arch_optimizer = torch.optim.Adam(search.alphas, lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (s + 1))
    return {"model": model, "search": search, "optimizer": optimizer, "arch_optimizer": arch_optimizer,
            "scheduler": scheduler, "scaler": torch.amp.GradScaler("cpu", enabled=False)}


def _train_a_little(parts: dict) -> None:
    for _ in range(3):
        parts["search"].sample()
        loss = parts["model"](torch.randn(2, 1, 5, 5)).square().mean()
        parts["optimizer"].zero_grad()
        loss.backward()
        parts["search"].compute_arch_grads()
        parts["arch_optimizer"].step()
        parts["optimizer"].step()
        parts["scheduler"].step()


def test_run_checkpoint_round_trip(tmp_path):
    a = _parts(0)
    _train_a_little(a)
    a["search"].choices[0].fix(1)
    state = RunState(epoch=2, step=5, global_step=17, history=[{"epoch": 1, "top1": 50.0}],
                     alpha_rows=[{"epoch": 0, "block": 0}], epoch_loss=torch.tensor(3.5), epoch_seen=5,
                     selection={"method": "spos"}, elapsed=12.5)
    payload = run_payload(a, state, [a["search"].generator.get_state()], None, {"seed": 0})
    assert set(STATEFUL) <= set(payload)
    save_checkpoint(tmp_path, payload, {"space": "toy"})

    b = _parts(1)  # different weights, optimizer state and generators
    restored = restore_run(load_checkpoint(tmp_path, {"space": "toy"}), b, rank=0)
    assert restored == state
    for k, v in a["model"].state_dict().items():
        assert torch.equal(v, b["model"].state_dict()[k]), k
    assert b["search"].fixed() == [1]
    assert torch.equal(b["search"].alphas[0], a["search"].alphas[0])
    assert b["scheduler"].state_dict()["last_epoch"] == 3
    # the next steps are the same: optimizers and every generator continue where they were
    _train_a_little(a)
    restore_run(load_checkpoint(tmp_path, {"space": "toy"}), b, rank=0)
    _train_a_little(b)
    for k, v in a["model"].state_dict().items():
        assert torch.equal(v, b["model"].state_dict()[k]), k


def test_check_run_dir(tmp_path):
    check_run_dir(tmp_path / "new", resume=False)
    check_run_dir(tmp_path, resume=False)  # empty
    (tmp_path / "x").write_text("")
    with pytest.raises(DsnasError, match="already exists and is not empty"):
        check_run_dir(tmp_path, resume=False)
    with pytest.raises(DsnasError, match="nothing to resume"):
        check_run_dir(tmp_path, resume=True)
    (tmp_path / "checkpoints").mkdir()
    check_run_dir(tmp_path, resume=True)
