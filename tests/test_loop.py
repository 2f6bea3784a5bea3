"""The pieces of the run loop, each without running a search: stages, the learning-rate
schedule, the run folder. (Budget-aware early fix is in test_search.py, the run checkpoint in
test_checkpoint.py.)"""

import pytest

from dsnas import DsnasError
from dsnas.config import Config
from dsnas.report import check_run_dir
from dsnas.methods import METHODS, get_method
from dsnas.run import lr_factor


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
    rules = get_method(cfg.method)
    assert [rules.stage(e, cfg).name for e in range(5)] == want
    assert set(want) <= {s.name for s in rules.stages}
    assert rules.switch_epoch(cfg) == (0 if method == "fixed" else 3)


def test_every_method_has_its_stage_rules():
    assert sorted(METHODS) == ["dsnas", "fixed", "random", "spos"]
    assert [m for m, rules in METHODS.items() if rules.learns_alpha] == ["dsnas"]
    assert sorted(m for m, rules in METHODS.items() if rules.holds_out) == ["random", "spos"]
    assert [m for m, rules in METHODS.items() if not rules.searches] == ["fixed"]


def test_what_each_stage_does():
    """The loop asks the stage, not its name: only the search gates, learns alpha and asks for fp32;
    the child stages train one fixed network; a baseline's supernet has no argmax child yet."""
    stages = {s.name: s for m in METHODS.values() for s in m.stages}
    assert sorted(stages) == ["finetune", "search", "supernet", "train", "warmup"]
    assert [n for n, s in stages.items() if s.gates] == ["search"]
    assert [n for n, s in stages.items() if s.learns_alpha] == ["search"]
    assert [n for n, s in stages.items() if s.full_precision] == ["search"]
    assert sorted(n for n, s in stages.items() if s.trains_child) == ["finetune", "train"]
    assert sorted(n for n, s in stages.items() if s.samples_path) == ["search", "supernet", "warmup"]
    assert [n for n, s in stages.items() if not s.has_child] == ["supernet"]


def test_stage_of_search_only_run_never_finetunes():
    cfg = _cfg(method="dsnas", epochs=3, warmup_epochs=0, search_epochs=3)
    assert [get_method(cfg.method).stage(e, cfg).name for e in range(3)] == ["search"] * 3


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
