"""The GPU script parses, and the input-pipeline benchmark builds what it says: a tree of real
JPEGs of ImageNet-like sizes that both decoders read. (Timings are the benchmarks' job.)"""

import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_cuda_script_parses():
    r = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "cuda.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture()
def input_pipeline(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import input_pipeline

    return input_pipeline


@pytest.mark.slow
def test_synthetic_jpeg_tree(tmp_path, input_pipeline):
    from dsnas.data import load_data

    root = input_pipeline.make_tree(tmp_path, 30)
    files = sorted((root / "train").rglob("*.jpg"))
    assert len(files) == 30 and len(list((root / "val").rglob("*.jpg"))) == 10
    sizes = [Image.open(f).size for f in files]
    assert all(Image.open(f).format == "JPEG" for f in files[:5])
    assert 350 < sum(max(s) for s in sizes) / len(sizes) < 650 and min(min(s) for s in sizes) > 150
    data = load_data(str(root), input_size=64)
    for decode in ("workers", "device"):
        rate = input_pipeline.crops_per_second(data, decode, 0, 4, torch.device("cpu"), 2)
        assert rate > 0
    schedule = type("Schedule", (), {"epochs": 240, "search_epochs": 85})
    hours = input_pipeline.projection({"search": 1000.0, "child": 2000.0}, schedule)
    assert hours == pytest.approx((85 / 1000 + 155 / 2000) * 1_281_167 / 3600)


@pytest.fixture()
def nb201_quality(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import nb201_quality

    return nb201_quality


def test_the_remedies_study_tells_dead_and_parameter_free_cells_and_each_rows_pool(nb201_quality):
    q = nb201_quality
    assert q.dead("|none~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|") is False  # 0 -> 3 directly
    assert q.dead("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|") is True  # nothing reaches node 3
    assert q.dead("|skip_connect~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|nor_conv_1x1~2|") is False
    assert q.parameter_free("|skip_connect~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|skip_connect~2|")
    assert not q.parameter_free("|skip_connect~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|nor_conv_1x1~2|")
    assert q.uniform_kind(q.derivable(q.REMEDIES["paper"])) == "uniform"
    for row in ("darts_rule", "no_none", "loss_credit_darts_rule"):
        assert q.uniform_kind(q.derivable(q.REMEDIES[row])) == "uniform_no_none"
