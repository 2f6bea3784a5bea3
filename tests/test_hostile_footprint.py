"""Settings that are each in range but together describe an enormous network (100,000 classes x
1024 channels x 4096 px x width 8): refused from the settings alone, before anything is built,
in every space and on every path that builds a network; the limit can be raised."""

from __future__ import annotations

import pytest
import torch
import yaml

import conftest
from conftest import assert_one_line_error, dsnas_error
from dsnas import spaces
from dsnas.choice import labelled_choices
from dsnas.config import Config
from test_hostile_memory import run_capped

# each in range, together some hundred gigabytes
HUGE = {"shufflenet": {"num_classes": 100_000, "in_channels": 1024, "input_size": 4096, "width": 8.0},
        "nb201": {"num_classes": 100_000, "in_channels": 1024, "input_size": 4096, "channels": 256,
                  "cells_per_stage": 32},
        "mobilenet": {"num_classes": 100_000, "in_channels": 1024, "input_size": 4096, "width": 8.0}}
SMALL = {"shufflenet": conftest.SMALL,
         "nb201": {"num_classes": 10, "in_channels": 1, "input_size": 28, "channels": 8, "cells_per_stage": 2},
         "mobilenet": {"num_classes": 10, "in_channels": 1, "input_size": 28, "width": 0.25}}
# the candidate with the most feature maps (a block that lacks it, such as mobilenet's first, has one candidate)
HEAVIEST = {"shufflenet": "shuffle_xception", "nb201": "nor_conv_3x3", "mobilenet": "mb_k7e6"}


def _settings(name: str, mapping: dict):
    return spaces.settings_of(name, mapping)


def _measured(model: torch.nn.Module, settings) -> int:
    """Feature-map elements that ``model``'s layers write for one image (a forward on the meta
    device, which allocates nothing)."""
    written = [0]
    hooks = [m.register_forward_hook(lambda mod, i, out: written.__setitem__(0, written[0] + out.numel()))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, settings.in_channels, settings.input_size, settings.input_size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return written[0]


CASES = [("shufflenet", SMALL["shufflenet"]), ("shufflenet", {**SMALL["shufflenet"], "design": "official",
                                                              "width": 1.5, "bn_affine": False}),
         ("shufflenet", {"input_size": 64, "num_classes": 7}), ("nb201", SMALL["nb201"]), ("nb201", {"input_size": 16}),
         ("nb201", {**SMALL["nb201"], "bn_affine": False}), ("mobilenet", SMALL["mobilenet"]),
         ("mobilenet", {"input_size": 64, "num_classes": 7, "width": 1.5})]


@pytest.mark.parametrize("name,mapping", CASES)
def test_footprint_counts_the_network_it_describes(name, mapping):
    """The estimate is the supernet's and a child's exact parameter count, and at least the
    feature maps its layers write on the largest path (plus the joins they do not count)."""
    settings = _settings(name, mapping)
    cls = spaces.space_class(name)
    with torch.device("meta"):
        supernet = cls.from_settings(settings, "torch")
        choices = [names[i % len(names)] for i, (_, names) in enumerate(cls.decisions(settings))]
        child = cls.child_from(choices, settings, "torch")
    for model, footprint in ((supernet, cls.footprint(settings)), (child, cls.footprint(settings, choices))):
        assert footprint.params == sum(p.numel() for p in model.parameters())
    fallback = spaces.SpaceMixin.footprint.__func__(cls, settings)  # a space that counts nothing itself
    assert fallback.params == cls.footprint(settings).params
    for _, choice in labelled_choices(supernet):
        choice.active = choice.index(HEAVIEST[name]) if HEAVIEST[name] in choice.names else 0
    written = _measured(supernet, settings)
    assert written <= cls.footprint(settings).activations <= 1.5 * written


@pytest.mark.parametrize("name", sorted(spaces.SPACES))
def test_every_space_refuses_the_product_before_building(name, monkeypatch):
    settings = _settings(name, HUGE[name])  # each setting is in range
    cls = spaces.space_class(name)
    built = []
    monkeypatch.setattr(cls, "from_settings", classmethod(lambda c, *a: built.append(a)))
    monkeypatch.setattr(cls, "child_from", staticmethod(lambda *a: built.append(a)))
    msg = dsnas_error(spaces.build, name, HUGE[name])
    assert f"the {name} network" in msg and "over the 2 GB limit" in msg and "--max-model-gb" in msg
    choices = [names[0] for _, names in cls.decisions(settings)]
    assert "over the 2 GB limit" in dsnas_error(spaces.build_child, name, choices, HUGE[name])
    assert not built
    # with the limit raised it builds (the stand-in's None is then refused as no network)
    assert "inconsistent" in dsnas_error(spaces.build, name, HUGE[name], max_model_gb=1e6)
    assert built


@pytest.mark.slow  # a fresh interpreter under the cap
def test_refused_within_the_memory_cap_and_in_no_time():
    """The estimate allocates nothing: under a 2 GiB cap the issue's settings are refused, and the
    small network still builds."""
    messages = run_capped(f"""
        import time
        from dsnas import spaces
        start = time.time()
        refused(spaces.build, "shufflenet", {HUGE['shufflenet']!r})
        refused(spaces.build, "nb201", {HUGE['nb201']!r})
        refused(spaces.build, "mobilenet", {HUGE['mobilenet']!r})
        assert time.time() - start < 5, time.time() - start
        spaces.build("shufflenet", {SMALL['shufflenet']!r})
    """)
    assert len(messages) == 3 and all("GB limit" in m for m in messages)


def _arch_file(path, name: str, settings: dict) -> str:
    choices = [names[0] for _, names in spaces.space_class(name).decisions(_settings(name, settings))]
    path.write_text(yaml.safe_dump({"format": "dsnas-arch/1", "space": name, "settings": settings,
                                    "choices": choices}))
    return str(path)


@pytest.mark.parametrize("name", sorted(spaces.SPACES))
def test_info_eval_export_refuse_a_huge_arch_file(name, tmp_path, dsnas_main):
    arch = _arch_file(tmp_path / "arch.yaml", name, HUGE[name])
    weights = tmp_path / "child.safetensors"
    weights.write_bytes(b"never read")
    for args in (("info", "--arch", arch), ("eval", "--arch", arch, "--weights", weights),
                 ("export", "--arch", arch, "--weights", weights, "--mmrazor", tmp_path / "subnet.yaml")):
        r = dsnas_main(*args)
        assert "GB limit" in assert_one_line_error(r.returncode, r.stderr, r.stdout), args
    assert not (tmp_path / "subnet.yaml").exists()


def test_the_limit_is_a_flag_and_a_config_key(tmp_path, dsnas_main, capsys):
    r = dsnas_main("info", "--space", "nb201", "--input-size", "64", "--max-model-gb", "0.01")
    assert "over the 0.01 GB limit" in assert_one_line_error(r.returncode, r.stderr)
    assert dsnas_main("info", "--space", "nb201", "--input-size", "64", "--json").returncode == 0
    with pytest.raises(SystemExit) as e:  # argparse's one-line error
        dsnas_main("info", "--max-model-gb", "0")
    assert e.value.code == 2 and "--max-model-gb: expected a number in (0, " in capsys.readouterr().err
    assert "max_model_gb" in dsnas_error(Config(max_model_gb=0.0).validate)
    assert "max_model_gb" in dsnas_error(Config(max_model_gb=float("inf")).validate)


RUN = ["--set", "train_limit=64", "--set", "test_limit=32", "--set", "batch_size=32", "--set", "epochs=1",
       "--set", "warmup_epochs=0", "--set", "search_epochs=0", "--set", "lr_warmup_epochs=0", "--quiet"]


def test_search_train_resume_and_latency_refuse_past_the_configs_limit(tmp_path, dsnas_main):
    limit = ["--set", "max_model_gb=0.001", "--set", "width=2"]
    r = dsnas_main("search", *RUN, *limit, "--out", tmp_path / "search")
    assert "over the 0.001 GB limit" in assert_one_line_error(r.returncode, r.stderr)
    arch = _arch_file(tmp_path / "arch.yaml", "shufflenet", {"num_classes": 10, "in_channels": 1, "input_size": 28,
                                                               "width": 2.0})
    r = dsnas_main("train", arch, *RUN, *limit, "--out", tmp_path / "train")
    assert "GB limit" in assert_one_line_error(r.returncode, r.stderr)
    assert not (tmp_path / "search").exists() and not (tmp_path / "train").exists()
    run = tmp_path / "resumed"
    (run / "checkpoints").mkdir(parents=True)  # a run whose config.yaml was edited to a huge network
    saved = {**Config(max_model_gb=0.001, train_limit=64, test_limit=32, batch_size=32).to_dict(),
             "space": {"name": "shufflenet", "width": 8.0}}
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    r = dsnas_main("search", "--resume", run, "--quiet")
    assert "GB limit" in assert_one_line_error(r.returncode, r.stderr)
    r = dsnas_main("latency", "--out", tmp_path / "lut.yaml", "--num-classes", "10", "--in-channels", "1",
                   "--input-size", "28", *limit, "--quiet")
    assert "GB limit" in assert_one_line_error(r.returncode, r.stderr)
    assert not (tmp_path / "lut.yaml").exists()


def test_import_refuses_past_the_limit(tmp_path, dsnas_main):
    from published_checkpoints import checkpoint, fixture

    path = tmp_path / "dsnas.pth.tar"
    torch.save(checkpoint(fixture("dsnas-child")), path)
    r = dsnas_main("import", path, "--out", tmp_path / "run", "--bn-eps", "0.01", "--max-model-gb", "0.001")
    assert "over the 0.001 GB limit" in assert_one_line_error(r.returncode, r.stderr)
    assert not (tmp_path / "run").exists()
