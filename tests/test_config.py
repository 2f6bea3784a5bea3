"""Run configuration: presets, YAML files, ``--set`` overrides, one-line errors (also through the CLI)."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import pytest
import yaml

from conftest import assert_one_line_error, dsnas_error, run_cli_many
from dsnas.config import Config, builtin_configs, load_config, load_run_config
from dsnas.plan import check_run, full_space_settings

CONFIGS = Path(str(resources.files("dsnas") / "configs"))
KNOWN = {f.name for f in dataclasses.fields(Config)}


def preset(name: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


DEMO = preset("demo")


def assert_matches(cfg: Config, preset: dict) -> None:
    """``cfg`` holds the defaults, overridden by ``preset`` and its section for ``cfg``'s space."""
    data = dict(preset)
    sections = data.pop("spaces", {})
    want = Config().to_dict()
    for mapping in (data, sections.get(cfg.space, {})):
        for key, value in mapping.items():
            if key == "space":
                want["space"] = {**want["space"], **value} if isinstance(value, dict) else {"name": value}
            else:
                want[key] = value
    got, defaults = cfg.to_dict(), Config().to_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value) if isinstance(value, float) else got[key] == value, (key, got[key])
        assert isinstance(got[key], type(defaults[key])), (key, got[key])


# --- presets --------------------------------------------------------------------------------------
def test_default_is_demo():
    assert_matches(load_config(), DEMO)
    assert_matches(load_config("demo"), DEMO)
    assert DEMO["data"] == "embedded"


@pytest.mark.parametrize("name", ["fmnist", "imagenet"])
def test_presets_load(name):
    assert_matches(load_config(name), preset(name))


def test_preset_name_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    # a run folder called demo/ in the working directory must not shadow the preset
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert_matches(load_config(), DEMO)
    assert_matches(load_config("demo"), DEMO)
    (tmp_path / "fmnist").write_text("epochs: 7\nsearch_epochs: 3\nwarmup_epochs: 0\n")  # a file of that name is read instead
    assert load_config("fmnist").epochs == 7


def test_builtin_presets_listed():
    assert set(builtin_configs()) >= {"demo", "fmnist", "imagenet"}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_presets_use_known_keys(path):
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data
    sections = data.pop("spaces", {})
    assert set(data) <= KNOWN, set(data) - KNOWN
    for space, keys in sections.items():
        assert set(keys) <= KNOWN, set(keys) - KNOWN
        load_config(str(path), [f"space={space}"])
    load_config(str(path))  # and validate as a file path too


def test_a_file_section_for_the_runs_space_applies_before_the_overrides(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("epochs: 20\nsearch_epochs: 4\nwarmup_epochs: 0\nbudget_mflops: 2.5\nspaces:\n  nb201: {budget_mflops: 0, epochs: 6}\n")
    assert load_config(str(f)).budget_mflops == 2.5  # the default space: its section does not apply
    nb201 = load_config(str(f), ["space=nb201"])
    assert (nb201.budget_mflops, nb201.epochs) == (0.0, 6)
    assert load_config(str(f), ["space=nb201", "epochs=9"]).epochs == 9
    f.write_text("spaces: [nb201]\n")
    assert "spaces" in dsnas_error(load_config, str(f), [])
    f.write_text("spaces:\n  nb201: {epoch: 3}\n")
    assert "epoch" in dsnas_error(load_config, str(f), ["space=nb201"])


def test_the_demo_runs_in_the_nb201_space_with_nothing_else():
    cfg = load_config(None, ["space=nb201"])
    assert cfg.budget_mflops == 0 and cfg.space_settings == {"channels": 8, "cells_per_stage": 1}
    assert "width" not in check_run(cfg).space_settings  # the demo's width is ShuffleNet's


def test_config_file_and_overrides(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("epochs: 20\nsearch_epochs: 10\nwarmup_epochs: 2\nlr: 0.05\nwidth: 1\n")
    cfg = load_config(str(f), ["lr=0.3"])
    width = check_run(cfg).space_settings["width"]
    assert cfg.epochs == 20 and width == 1.0 and isinstance(width, float)
    assert cfg.lr == 0.3
    assert cfg.batch_size == Config().batch_size  # keys a file leaves out keep the defaults, not demo's


def test_empty_config_file_gives_defaults(tmp_path):
    f = tmp_path / "empty.yaml"
    f.write_text("# nothing\n")
    assert_matches(load_config(str(f)), {})


# --- overrides ------------------------------------------------------------------------------------
def test_set_float_exponent():
    cfg = load_config(None, ["lr=1e-3"])  # YAML 1.1 reads 1e-3 as a string
    assert isinstance(cfg.lr, float) and cfg.lr == 0.001
    cfg = load_config(None, ["weight_decay=5e-5", "arch_lr=2E-2"])
    assert cfg.weight_decay == 5e-5 and cfg.arch_lr == 0.02


def test_set_int():
    cfg = load_config(None, ["epochs=5", "search_epochs=4"])
    assert cfg.epochs == 5 and type(cfg.epochs) is int
    assert cfg.search_epochs == 4


def test_set_bool():
    cfg = load_config(None, ["channels_last=false"])
    assert cfg.channels_last is False
    assert load_config(None, ["channels_last=true"]).channels_last is True


def test_set_str():
    assert load_config(None, ["data=/some/path"]).data == "/some/path"
    assert load_config(None, ["data=123"]).data == "123"  # str keys keep the text as typed
    assert load_config(None, ["data=1e-3"]).data == "1e-3"
    assert load_config(None, ["data=007"]).data == "007"  # not YAML's int 7
    assert load_config(None, ["data=yes"]).data == "yes"  # not YAML 1.1's bool
    assert load_config(None, ["data=/a: b"]).data == "/a: b"


def test_set_later_wins_and_int_to_float():
    cfg = load_config(None, ["lr=0.1", "lr=0.2", "space.width=1"])
    assert cfg.lr == 0.2
    width = check_run(cfg).space_settings["width"]
    assert width == 1.0 and isinstance(width, float)


# --- errors ---------------------------------------------------------------------------------------
def test_unknown_key_set():
    msg = dsnas_error(load_config, None, ["nosuchkey=1"])
    assert "nosuchkey" in msg and "unknown" in msg


def test_unknown_key_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 20\nlearning_rate: 0.1\n")
    msg = dsnas_error(load_config, str(f))
    assert "learning_rate" in msg and "unknown" in msg and "c.yaml" in msg


@pytest.mark.parametrize("item, key", [("epochs=abc", "epochs"), ("lr=fast", "lr"), ("channels_last=maybe", "channels_last"),
                                       ("epochs=2.5", "epochs"), ("batch_size=true", "batch_size"), ("lr=[1]", "lr")])
def test_wrong_type(item, key):
    msg = dsnas_error(load_config, None, [item])
    assert key in msg and item.split("=", 1)[1].lower() in msg.lower()


def test_set_without_equals():
    msg = dsnas_error(load_config, None, ["lr"])
    assert "key=value" in msg and "'lr'" in msg


@pytest.mark.parametrize("item, key", [
    ("lr=-1", "lr"),
    ("lr=0", "lr"),
    ("batch_size=0", "batch_size"),
    (f"warmup_epochs={DEMO['search_epochs'] + 1}", "warmup_epochs"),
    (f"search_epochs={DEMO['epochs'] + 1}", "search_epochs"),
    ("early_fix=0", "early_fix"),
    ("early_fix=1.5", "early_fix"),
    ("lr=.inf", "lr"),
    ("lr=inf", "lr"),
    ("lr=nan", "lr"),
    ("momentum=-0.5", "momentum"),
    ("device=gpu", "device"),
    ("amp=fp8", "amp"),
])
def test_out_of_range(item, key):
    msg = dsnas_error(load_config, None, [item])
    assert key in msg


def test_early_fix_one_is_allowed():
    assert load_config(None, ["early_fix=1"]).early_fix == 1.0


def test_malformed_yaml(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("epochs: [1, 2\nlr: {\n")
    msg = dsnas_error(load_config, str(f))
    assert "broken.yaml" in msg and "YAML" in msg


def test_yaml_not_a_mapping(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- epochs\n- 3\n")
    msg = dsnas_error(load_config, str(f))
    assert "list.yaml" in msg and "mapping" in msg


def test_missing_config_file(tmp_path):
    msg = dsnas_error(load_config, str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in msg and "does not exist" in msg
    msg = dsnas_error(load_config, "nosuchpreset")
    assert "nosuchpreset" in msg


def test_config_path_is_a_folder(tmp_path):
    msg = dsnas_error(load_config, str(tmp_path))
    assert str(tmp_path) in msg


# --- through the CLI (subprocesses, run at once) --------------------------------------------------
METRICS = '{"top1": 12.5, "note": "keep me"}\n'


@pytest.fixture(scope="module")
def cli_errors(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    broken = base / "broken.yaml"
    broken.write_text("epochs: [1, 2\n")
    existing = base / "existing"
    existing.mkdir()
    (existing / "metrics.json").write_text(METRICS)
    cases = {
        "unknown": ["search", "--set", "nosuchkey=1", "--out", base / "out_unknown"],
        "range": ["search", "--set", "lr=-1", "--out", base / "out_range"],
        "yaml": ["search", "--config", broken, "--out", base / "out_yaml"],
        "exists": ["search", "--quiet", "--out", existing],
    }
    results = dict(zip(cases, run_cli_many(list(cases.values()))))
    return base, results


@pytest.mark.slow
@pytest.mark.parametrize("case, words", [("unknown", ["nosuchkey"]), ("range", ["lr"]),
                                         ("yaml", ["broken.yaml", "YAML"]), ("exists", ["--resume"])])
def test_cli_one_line_error(cli_errors, case, words):
    _, results = cli_errors
    r = results[case]
    line = assert_one_line_error(r.returncode, r.stderr, r.stdout)
    assert line.startswith("dsnas: error:")
    for w in words:
        assert w in line


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown", "range", "yaml"])
def test_cli_config_error_creates_nothing(cli_errors, case):
    base, _ = cli_errors
    assert not (base / f"out_{case}").exists()


@pytest.mark.slow
def test_cli_existing_run_untouched(cli_errors):
    base, _ = cli_errors
    existing = base / "existing"
    assert [p.name for p in existing.iterdir()] == ["metrics.json"]
    assert (existing / "metrics.json").read_text() == METRICS


# --- the space's settings, under its name -----------------------------------------------------------
def test_space_settings_nest_under_the_space_in_files_and_on_the_command_line(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("space: {name: nb201, channels: 8, ops: 'nor_conv_3x3,skip_connect'}\n")
    cfg = check_run(load_config(str(f), ["space.cells_per_stage=2"]))
    assert (cfg.space, cfg.space_settings) == ("nb201", {"cells_per_stage": 2, "channels": 8,
                                                         "ops": "nor_conv_3x3,skip_connect"})
    assert cfg.to_dict()["space"] == {"name": "nb201", "cells_per_stage": 2, "channels": 8,
                                      "ops": "nor_conv_3x3,skip_connect"}
    assert check_run(load_config(None, ["space.width=0.5"])).space_settings == {"width": 0.5}
    # naming another space drops what the file gave for the one before; the line's own settings are the space's
    assert load_config(None, ["space=nb201"]).space_settings == {"channels": 8, "cells_per_stage": 1}
    assert "no setting 'width'" in dsnas_error(check_run, load_config(None, ["space.width=0.5", "space=nb201"]))


@pytest.mark.parametrize("items, words", [
    (["init=xavier"], ["init", "xavier", "aligned"]),
    (["space=nb201", "space.width=0.5"], ["nb201", "no setting", "width", "channels"]),
    (["space.width=0"], ["width", "(0, 8]"]),
    (["space.num_classes=3"], ["num_classes", "data"]),
    (["space=nosuch"], ["space", "nosuch", "shufflenet"]),
    (["space.design=fancy"], ["design", "fancy"]),
    (["jpeg_decode=gpu"], ["jpeg_decode", "gpu"]),
])
def test_the_space_checks_its_own_settings_in_one_line(items, words):
    msg = dsnas_error(check_run, load_config(None, items))
    assert all(w in msg for w in words), msg


@pytest.mark.parametrize("item", ["space.=1", "space.a.b=1", "space.width=[1]", "space.width=.nan"])
def test_malformed_space_keys_are_config_errors(item):
    assert "space" in dsnas_error(load_config, None, [item])


def test_the_flat_keys_of_older_files_still_load(tmp_path):
    f = tmp_path / "old.yaml"
    f.write_text("space: nb201\nwidth: 0.25\nchannels: 8\ncells_per_stage: 1\nops: ''\nbn_eps: 0.01\n")
    cfg = check_run(load_config(str(f)))
    assert cfg.space_settings == {"cells_per_stage": 1, "channels": 8}  # width and bn_eps are ShuffleNet's
    assert check_run(load_config(None, ["width=0.5"])).space_settings == {"width": 0.5}
    # the later of a flat key and its nested form wins
    assert check_run(load_config(None, ["width=0.5", "space.width=0.75"])).space_settings == {"width": 0.75}
    assert check_run(load_config(None, ["space.width=0.75", "width=0.5"])).space_settings == {"width": 0.5}


def test_an_old_run_config_resumes_with_the_settings_it_ran_with(tmp_path):
    old = {k: v for k, v in Config().to_dict().items() if k != "space"}
    old.update(space="nb201", width=1.0, design="mmrazor", bn_affine=True, bn_eps=0.01, dropout=0.0, channels=8,
               cells_per_stage=1, credit="loss", never_pick="none")  # no ops: it predates the key
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    cfg = check_run(load_run_config(tmp_path))
    assert cfg.space_settings["ops"].split(",")[0] == "none"  # all five, as it searched
    assert full_space_settings(cfg) == {**full_space_settings(check_run(load_config(None, [
        "space=nb201", "space.channels=8", "space.cells_per_stage=1", "space.ops=" + cfg.space_settings["ops"]]))),
        "bn_affine": True}
    # what a run writes now loads as it was written
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert check_run(load_run_config(tmp_path)).to_dict() == cfg.to_dict()
