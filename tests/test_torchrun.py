"""torchrun with two gloo ranks: a rank that dies stops the run, and `--resume` under torchrun
finishes it with the result of an uninterrupted run."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

SRC = str(Path(__file__).resolve().parents[1] / "src")
SETTINGS = ["width=0.25", "train_limit=512", "test_limit=64", "batch_size=64", "epochs=2", "warmup_epochs=0",
            "search_epochs=1", "arch_lr=0.05", "eval_bn_recalibrate=0", "checkpoint_every=2", "seed=2",
            "early_fix=0.05"]

# rank 1 exits abruptly at its 6th architecture step (mid-epoch, after the step-4 checkpoint)
DYING = textwrap.dedent("""
    import os, sys
    import dsnas.search as search
    real = search.DSNAS.compute_arch_grads
    calls = {"n": 0}
    def dying(self):
        calls["n"] += 1
        if os.environ.get("RANK") == "1" and calls["n"] == 6:
            os._exit(17)
        return real(self)
    search.DSNAS.compute_arch_grads = dying
    from dsnas.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _torchrun(args, tmp_path, script=None):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", _port(),
                "--max-restarts", "0"]
    if script is None:
        cmd = launcher + ["-m", "dsnas", *args]
    else:
        path = tmp_path / "dying.py"
        path.write_text(script)
        cmd = launcher + [str(path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _search(out):
    args = ["search", "--quiet", "--out", str(out)]
    for s in SETTINGS:
        args += ["--set", s]
    return args


def test_dead_rank_stops_run_and_resume_matches(tmp_path):
    ref = _torchrun(_search(tmp_path / "ref"), tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]
    died = _torchrun(_search(tmp_path / "run"), tmp_path, script=DYING)
    assert died.returncode != 0
    assert not (tmp_path / "run" / "child.safetensors").exists()
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    resumed = _torchrun(["search", "--quiet", "--resume", str(tmp_path / "run")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_file(str(tmp_path / "ref" / "child.safetensors")), load_file(str(tmp_path / "run" / "child.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)["search"]
    cb = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["search"]
    assert ca["fixed"] == cb["fixed"] and all(torch.equal(x, y) for x, y in zip(ca["alphas"], cb["alphas"]))
