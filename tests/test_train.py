"""The training loop end to end on tiny settings: files, stages, finetune semantics, determinism, eval."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import tiny_config, without_figures
from dsnas.arch import load_arch
from dsnas.export import load_child
from dsnas.train import run_search

# three epochs (warm-up, search, finetune) and 200 test images
SETTINGS = ["test_limit=200", "epochs=3", "warmup_epochs=1", "search_epochs=2", "lr_warmup_epochs=1", "arch_lr=0.05",
            "eval_bn_recalibrate=128", "seed=3"]


def tiny_cfg(*extra):
    return tiny_config(*SETTINGS, *extra)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    return out, run_search(tiny_cfg(), out, quiet=True).metrics


@pytest.mark.slow
def test_search_writes_every_output(tiny_run):
    out, metrics = tiny_run
    for name in ("arch.yaml", "child.safetensors", "metrics.json", "alpha.csv", "alpha.png", "config.yaml",
                 "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("top1", "top5", "mflops", "macs_m", "params_m", "wall_s", "epochs", "world_size"):
        assert key in saved, key
    assert saved["epochs"] == 3 and saved["world_size"] == 1
    assert [h["stage"] for h in saved["history"]] == ["warmup", "search", "finetune"]
    arch = load_arch(out / "arch.yaml")
    assert arch.metadata["mflops"] == saved["mflops"]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["space"] == {"name": "shufflenet", "width": 0.25} and cfg["train_limit"] == 256
    rows = (out / "alpha.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,stage,block,label,shuffle_3x3")
    assert len(rows) == 1 + (1 + 3) * 20  # initial alpha, then every epoch
    assert rows[1].startswith("0,init,0,backbone.layers.0.0,0.25,0.25,0.25,0.25")
    assert (out / "alpha.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_child_weights_reproduce_reported_accuracy(tiny_run):
    """The exported child, loaded from its files, scores what the run reported."""
    out, metrics = tiny_run
    from dsnas.data import Loader, load_data
    from dsnas.evaluate import accuracy

    child = load_child(load_arch(out / "arch.yaml"), out / "child.safetensors")
    data = load_data()
    data.test = data.test.limit(200, 3)
    got = accuracy(child, Loader(data, "test", 256, 3, torch.device("cpu"), train=False))
    assert abs(got["top1"] - metrics["top1"]) < 1e-6


@pytest.mark.slow
def test_finetune_trains_only_the_child_and_resets_bn(tiny_run):
    out, _ = tiny_run
    before = torch.load(out / "checkpoints" / "prev.pt", weights_only=True)  # end of the search stage
    after = torch.load(out / "checkpoints" / "last.pt", weights_only=True)   # end of finetune
    arch = load_arch(out / "arch.yaml")
    ops = ["shuffle_3x3", "shuffle_5x5", "shuffle_7x7", "shuffle_xception"]
    chosen = {f"blocks.{i}.candidates.{ops.index(op)}." for i, op in enumerate(arch.choices)}
    steps = 256 // 64
    changed_unchosen, checked_bn = [], 0
    for key, value in after["model"].items():
        if not key.startswith("blocks."):
            continue
        prefix = ".".join(key.split(".")[:4]) + "."
        if prefix in chosen:
            if key.endswith("num_batches_tracked"):
                # reset at the switch, then one count per finetune step
                assert int(value) == steps, key
                checked_bn += 1
        elif not torch.equal(value, before["model"][key]):
            changed_unchosen.append(key)
    assert checked_bn > 0
    assert changed_unchosen == []
    first = "backbone.layers.0.0"
    assert before["search"]["alphas"][first].tolist() == after["search"]["alphas"][first].tolist()  # alpha frozen


@pytest.mark.slow
def test_same_seed_same_result(tiny_run, tmp_path):
    out, metrics = tiny_run
    with without_figures():
        again = run_search(tiny_cfg(), tmp_path / "again", quiet=True).metrics
    assert load_arch(tmp_path / "again" / "arch.yaml").choices == load_arch(out / "arch.yaml").choices
    a = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "again" / "checkpoints" / "last.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert again["top1"] == metrics["top1"]


@pytest.mark.slow
def test_budget_is_respected(tmp_path):
    from dsnas.spaces import ShuffleNetSpace

    table = ShuffleNetSpace(num_classes=10, in_channels=1, input_size=28, width=0.25).costs
    budget = round(table.bounds()["min"] + 0.05, 3)  # barely above the cheapest child
    metrics = run_search(tiny_cfg(f"budget_mflops={budget}", "penalty=0.5", "epochs=2", "test_limit=64",
                                  "eval_bn_recalibrate=0"), tmp_path / "b", quiet=True).metrics
    assert metrics["mflops"] <= budget
    assert metrics["within_budget"] is True


@pytest.mark.slow
def test_eval_command_matches(tiny_run):
    out, metrics = tiny_run
    env_path = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src")
    res = subprocess.run([sys.executable, "-m", "dsnas", "eval", "--run", str(out), "--json"],
                         capture_output=True, text=True, env={"PYTHONPATH": env_path, "OMP_NUM_THREADS": "1",
                                                              "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["images"] == 3000  # eval uses the whole test split of the run's data
    assert 0 <= got["top1"] <= 100
    assert (out / "eval.json").is_file()


@pytest.mark.slow
def test_non_finite_loss_stops_with_clear_error(tmp_path, monkeypatch):
    from dsnas import DsnasError, config

    out = tmp_path / "nan"
    monkeypatch.setitem(config.RANGES, "lr", config.Range(0, 1e31, open_low=True))  # a range that lets it diverge
    with pytest.raises(DsnasError, match=r"NaN or infinite at step \d+ of epoch 1"):
        cfg = tiny_cfg("epochs=2", "search_epochs=1", "warmup_epochs=0", "lr_warmup_epochs=0")
        cfg.lr = 1e30
        run_search(cfg, out, quiet=True)
    assert not (out / "checkpoints" / "last.pt").exists()
    assert (out / "config.yaml").exists()


def test_eval_with_data_of_other_channels_is_refused(tmp_path, capsys):
    """An RGB architecture evaluated on the 1-channel embedded data: one line, exit 2."""
    from dsnas.arch import Architecture, save_arch
    from dsnas.cli import main
    from dsnas.export import save_weights
    from dsnas.spaces import ShuffleNetChild, ShuffleNetSettings

    settings = ShuffleNetSettings(num_classes=10, in_channels=3, input_size=28, width=0.25)
    arch = Architecture(["shuffle_3x3"] * 20, settings=settings.as_dict())
    save_arch(arch, tmp_path / "a.yaml")
    save_weights(ShuffleNetChild(arch.choices, settings), tmp_path / "w.safetensors")
    assert main(["eval", "--arch", str(tmp_path / "a.yaml"), "--weights", str(tmp_path / "w.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 channels" in err[0] and "expects" in err[0]
