"""torchrun's environment variables checked as torchrun sets them: a rank past the world, a
world that is not a number, a multi-process world without its rendezvous address."""

from __future__ import annotations

import pytest

from conftest import assert_one_line_error, dsnas_error
from dsnas.runtime import launch_env

TORCHRUN = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("env, expected", [
    ({}, (1, 0, 0)),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", **TORCHRUN}, (4, 3, 1)),
    ({"WORLD_SIZE": " 2 ", "RANK": "0", **TORCHRUN}, (2, 0, 0)),
])
def test_what_torchrun_sets_is_read(env, expected):
    assert launch_env(env) == expected


@pytest.mark.parametrize("env, message", [
    ({"RANK": "5", "WORLD_SIZE": "1"}, "RANK must be below WORLD_SIZE"),
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE must be a whole number, got 'abc'"),
    ({"WORLD_SIZE": "0"}, "name no process"),
    ({"RANK": "-1"}, "RANK must be a whole number"),
    ({"WORLD_SIZE": "9" * 5000}, "WORLD_SIZE must be a whole number"),
    ({"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2", "RANK": "0", **TORCHRUN}, "do not fit"),
    ({"LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "2", **TORCHRUN}, "do not fit"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, "needs the environment variable MASTER_ADDR"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "http"}, "MASTER_PORT must be a port"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "70000"}, "MASTER_PORT must be a port"),
])
def test_what_torchrun_would_never_set_is_refused(env, message):
    msg = dsnas_error(launch_env, env)
    assert message in msg and len(msg) < 300


def test_a_search_under_a_rank_past_the_world_writes_nothing(tmp_path, dsnas_main, monkeypatch):
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "1")
    r = dsnas_main("search", "--out", tmp_path / "run", "--set", "epochs=1", "--set", "search_epochs=1",
                   "--set", "warmup_epochs=0")
    assert_one_line_error(r.returncode, r.stderr)
    assert "RANK must be below WORLD_SIZE" in r.stderr and not (tmp_path / "run").exists()
