"""Two gloo processes on the CPU: alpha, the fixed set, the architecture and the weights stay
bitwise identical across ranks; the consistency check fires when they do not."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import tiny_config
from dsnas import DSNAS, Choice, DsnasError

pytestmark = pytest.mark.slow  # two gloo processes per test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)


# every space and design the search runs distributed: the default, the official ShuffleNet design
# (BN without affine, as the SPOS supernet), and the nb201 cells (one decision shared by all cells)
SPACES = {"shufflenet": [], "official": ["design=official", "width=0.5", "bn_affine=false", "bn_eps=1e-5", "budget_mflops=0"],
          "nb201": ["space=nb201", "channels=4", "cells_per_stage=1", "budget_mflops=0"]}


def _search_worker(rank, world, port, folder, extra=()):
    _env(rank, world, port)
    from dsnas.train import run_search

    cfg = tiny_config("test_limit=128", "epochs=3", "warmup_epochs=1", "search_epochs=2", "arch_lr=0.05",
                      "eval_bn_recalibrate=0", "seed=5", "early_fix=0.05", *extra)
    res = run_search(cfg, os.path.join(folder, "run"), quiet=True)
    torch.save({"alphas": [a.detach() for a in res.search.alphas], "fixed": res.search.fixed(),
                "arch": res.search.derive(), "model": res.space.state_dict(), "paths": res.search.path,
                "metrics": {k: v for k, v in res.metrics.items() if k != "history"}},
               os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("space", SPACES)
def test_two_ranks_end_bitwise_identical(tmp_path, space):
    mp.spawn(_search_worker, args=(2, _free_port(), str(tmp_path), SPACES[space]), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for a, b in zip(r0["alphas"], r1["alphas"]):
        assert torch.equal(a, b)
    assert any(float(a.abs().max()) > 0 for a in r0["alphas"])  # alpha did move
    assert r0["fixed"] == r1["fixed"] and r0["arch"] == r1["arch"]
    for key in r0["model"]:
        if "num_batches" in key:
            continue  # how often a rank ran an op's BN differs with its paths
        assert torch.equal(r0["model"][key], r1["model"][key]), key  # BN statistics averaged over ranks too
    assert r0["metrics"]["world_size"] == 2
    assert r0["metrics"]["top1"] == r1["metrics"]["top1"]  # accuracy aggregated over ranks
    assert (tmp_path / "run" / "metrics.json").is_file()
    # the reported accuracy is that of the saved child, evaluated here in one process
    from dsnas.config import load_config
    from dsnas.data import Loader, load_data
    from dsnas.evaluate import accuracy
    from dsnas.arch import load_arch
    from dsnas.export import load_child

    cfg = load_config(None, ["test_limit=128", "seed=5", *SPACES[space]])
    data = load_data()
    data.test = data.test.limit(cfg.test_limit, cfg.seed)
    child = load_child(load_arch(tmp_path / "run" / "arch.yaml"), tmp_path / "run" / "child.safetensors")
    top1 = accuracy(child, Loader(data, "test", 256, 0, torch.device("cpu"), train=False))["top1"]
    assert abs(top1 - r0["metrics"]["top1"]) < 0.01


def _mismatch_worker(rank, world, port, folder):
    _env(rank, world, port)
    from dsnas.runtime import check_consistent

    dist.init_process_group("gloo")
    model = torch.nn.Sequential(*[Choice([torch.nn.Identity(), torch.nn.Identity()]) for _ in range(3)])
    search = DSNAS(model)
    check_consistent(search.alphas, search.fixed(), 0)  # identical: passes
    if rank == 1:
        with torch.no_grad():
            search.alphas[2][0] += 1e-7
    try:
        check_consistent(search.alphas, search.fixed(), 1)
        outcome = "passed"
    except DsnasError as e:
        outcome = str(e)
    with open(os.path.join(folder, f"out{rank}.txt"), "w") as f:
        f.write(outcome)
    dist.destroy_process_group()


def test_consistency_check_fires_when_alpha_differs(tmp_path):
    mp.spawn(_mismatch_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        text = (tmp_path / f"out{rank}.txt").read_text()
        assert "ranks [1]" in text and "diverged" in text, text
