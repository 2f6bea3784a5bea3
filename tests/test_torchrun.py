"""torchrun with two gloo ranks: a rank that dies stops the run, `--resume` under torchrun
finishes it with the result of an uninterrupted run, and the same two ranks spread over two
nodes (two launchers, one process each) give the same result as on one node."""

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import TINY, set_flags

pytestmark = pytest.mark.slow  # every test runs searches under torchrun

SRC = str(Path(__file__).resolve().parents[1] / "src")
SETTINGS = [*TINY, "train_limit=512", "arch_lr=0.05", "eval_bn_recalibrate=0", "checkpoint_every=2", "seed=2",
            "early_fix=0.05"]

# rank 1 exits abruptly at its 6th architecture step (mid-epoch, after the step-4 checkpoint)
DYING = textwrap.dedent("""
    import os, sys
    import dsnas.search as search
    real = search.DSNAS.compute_arch_grads
    calls = {"n": 0}
    once = os.environ.get("DIE_ONCE")  # a file: rank 1 dies only where it does not exist yet, and makes it
    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if os.environ.get("RANK") == "1" and calls["n"] == 6 and not (once and os.path.exists(once)):
            if once:
                open(once, "w").close()
            os._exit(17)
        return real(self, *args, **kwargs)
    search.DSNAS.compute_arch_grads = dying
    from dsnas.cli import main
    sys.exit(main(sys.argv[1:]))
""")


# rank 1 has the launcher signalled at its 5th architecture step, as SLURM signals a job's launcher
SIGNALLING = textwrap.dedent("""
    import os, signal, sys
    import dsnas.search as search
    real, calls = search.DSNAS.compute_arch_grads, {"n": 0}
    def signalling(self, *args, **kwargs):
        calls["n"] += 1
        if os.environ.get("RANK") == "1" and calls["n"] == 5:
            os.kill(os.getppid(), signal.SIGTERM)
        return real(self, *args, **kwargs)
    search.DSNAS.compute_arch_grads = signalling
    from dsnas.cli import main
    sys.exit(main(sys.argv[1:]))
""")


# rank 1 stalls for 12 s at its 6th architecture step (alive: its heartbeat goes on)
STALLING = textwrap.dedent("""
    import os, sys, time
    import dsnas.search as search
    real, calls = search.DSNAS.compute_arch_grads, {"n": 0}
    def stalling(self, *args, **kwargs):
        calls["n"] += 1
        if os.environ.get("RANK") == "1" and calls["n"] == 6:
            time.sleep(12)
        return real(self, *args, **kwargs)
    search.DSNAS.compute_arch_grads = stalling
    from dsnas.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _torchrun(args, tmp_path, script=None, restarts=0, env=None):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **(env or {})}
    # a group that restarts meets again through c10d rendezvous (--standalone), as on a cluster
    where = ["--standalone"] if restarts else ["--master-port", _port()]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *where,
                "--max-restarts", str(restarts)]
    if script is None:
        cmd = launcher + ["-m", "dsnas", *args]
    else:
        path = tmp_path / "dying.py"
        path.write_text(script)
        cmd = launcher + [str(path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _search(out):
    return ["search", "--quiet", "--out", str(out), *set_flags(SETTINGS)]


def _same_result(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "child.safetensors")), load_file(str(b / "child.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ka = torch.load(a / "checkpoints" / "last.pt", weights_only=True)
    kb = torch.load(b / "checkpoints" / "last.pt", weights_only=True)
    ca, cb = ka["search"], kb["search"]
    assert ca["fixed"] == cb["fixed"] and ca["alphas"].keys() == cb["alphas"].keys()
    assert all(torch.equal(ca["alphas"][k], cb["alphas"][k]) for k in ca["alphas"])
    # the whole supernet, BN statistics of every op included (averaged over ranks at epoch ends)
    assert ka["model"].keys() == kb["model"].keys()
    assert all(torch.equal(ka["model"][k], kb["model"][k]) for k in ka["model"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torchrun")
    ref = _torchrun(_search(tmp / "ref"), tmp)
    assert ref.returncode == 0, ref.stderr[-2000:]
    return tmp / "ref"


def test_dead_rank_stops_run_and_resume_matches(reference, tmp_path):
    died = _torchrun(_search(tmp_path / "run"), tmp_path, script=DYING)
    assert died.returncode != 0
    said = [line for line in died.stderr.splitlines() if line.startswith("dsnas: error:")]
    assert len(said) == 1 and re.search(r"rank 1 of 2 \(last at step \d of epoch 1\) ended or stopped answering",
                                        said[0]), died.stderr[-3000:]
    assert "--resume" in said[0]
    assert not (tmp_path / "run" / "child.safetensors").exists()
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    resumed = _torchrun(["search", "--quiet", "--resume", str(tmp_path / "run")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _same_result(reference, tmp_path / "run")


def test_a_stalled_rank_is_named_within_the_timeout(tmp_path):
    stalled = _torchrun(_search(tmp_path / "run") + ["--set", "dist_timeout_s=4"], tmp_path, script=STALLING)
    assert stalled.returncode != 0
    said = [line for line in stalled.stderr.splitlines() if line.startswith("dsnas: error:")]
    assert len(said) == 1, stalled.stderr[-3000:]
    assert re.search(r"rank 1 of 2 \(at step 6 of epoch 1\) did not reach the exchange within dist_timeout_s "
                     r"\(4 s\)", said[0]), said[0]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_sigterm_to_the_launcher_stops_every_rank_at_one_checkpointed_step(reference, tmp_path):
    stopped = _torchrun(_search(tmp_path / "run"), tmp_path, script=SIGNALLING)
    assert stopped.returncode != 0
    assert stopped.stderr.count("SIGTERM: stopped before step") == 1, stopped.stderr[-2000:]  # rank 0 says it
    assert not (tmp_path / "run" / "child.safetensors").exists()
    resumed = _torchrun(["search", "--quiet", "--resume", str(tmp_path / "run")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _same_result(reference, tmp_path / "run")


# rank 1 exits abruptly at its DIE_AT-th training step, once (the epoch has 8 steps; the finetune starts at 9)
DYING_AT_STEP = textwrap.dedent("""
    import os, sys
    import dsnas.train as train
    real, calls, once = train.train_step, {"n": 0}, os.environ["DIE_ONCE"]
    def dying(*args, **kwargs):
        calls["n"] += 1
        if os.environ.get("RANK") == "1" and calls["n"] == int(os.environ["DIE_AT"]) and not os.path.exists(once):
            open(once, "w").close()
            os._exit(17)
        return real(*args, **kwargs)
    train.train_step = dying
    from dsnas.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("moment, script, at", [
    ("mid_epoch_after_a_checkpoint", DYING, None),
    ("last_step_before_the_epoch_end_checkpoint", DYING_AT_STEP, 8),
    ("in_the_finetune_stage", DYING_AT_STEP, 11),
])
def test_torchrun_restarts_a_dead_worker_with_the_same_command_line(reference, tmp_path, moment, script, at):
    once = tmp_path / "died"
    run = _torchrun([*_search(tmp_path / "run"), "--resume"], tmp_path, script=script, restarts=1,
                    env={"DIE_ONCE": str(once), **({"DIE_AT": str(at)} if at else {})})
    assert run.returncode == 0, run.stderr[-2000:]
    assert once.exists()  # rank 1 did die, and the restarted group resumed from the last checkpoint
    _same_result(reference, tmp_path / "run")


# Each node's launcher environment: torchrun sets OMP_NUM_THREADS=1 only on a node of several ranks,
# so nodes of one rank each may differ. Rank 0's count (or --set threads) holds for every rank.
LAYOUTS = {"both_one_thread": ({"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "1"}, []),
           "node_1_two_threads": ({"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "2"}, []),
           "unset_but_threads_set": ({}, {}, ["--set", "threads=1"])}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_nodes_match_one_node(reference, tmp_path, layout):
    """Two launchers on this host, each a node with one process (static rendezvous): global
    ranks 0 and 1 with LOCAL_RANK 0 on both. Only global rank 0 writes the run's files, and every
    rank takes one thread count, so the result is that of one node with two ranks."""
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    port = _port()
    out = tmp_path / "nodes"
    *envs, extra = LAYOUTS[layout]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port,
                               "--max-restarts", "0", "-m", "dsnas", *_search(out), *extra],
                              env={**base, "PYTHONPATH": SRC, **envs[node]}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for node in (0, 1)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
    _same_result(reference, out)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["world_size"] == 2 and saved["threads"] == 1


# SLURM's commands as the batch script uses them, on one machine: srun runs its command, scontrol
# names this host and records a requeue.
FAKE_SRUN = '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n'
FAKE_SCONTROL = ('#!/usr/bin/env bash\nif [ "$1" = show ]; then echo 127.0.0.1; '
                 'else echo "$@" >> "$REQUEUED"; fi\n')


def test_the_slurm_script_checkpoints_requeues_and_resumes_with_its_own_command_line(reference, tmp_path):
    """SIGUSR1 to the batch shell (--signal=B:USR1), as SLURM sends it before the time limit: the
    ranks stop at one checkpointed step, the job asks to be requeued, and the same script run
    again finishes the run with the result of an uninterrupted one."""
    import time

    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": "77", "SLURM_NNODES": "1",
           "SLURM_JOB_NODELIST": "node1", "GPUS_PER_NODE": "2", "OUT": str(run), "RDZV_PORT": _port(),
           "REQUEUED": str(tmp_path / "requeued"),
           "PATH": os.pathsep.join([str(fakes), str(Path(sys.executable).parent), os.environ["PATH"]])}
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm_search.sh"
    args = ["bash", str(script), "--quiet", *sum((["--set", s] for s in SETTINGS), [])]
    job = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "last.pt").exists() and time.time() < deadline and job.poll() is None:
        time.sleep(0.2)
    job.send_signal(__import__("signal").SIGUSR1)
    _, err = job.communicate(timeout=300)
    assert job.returncode != 0 and err.count("SIGTERM: stopped before step") == 1, err[-3000:]
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "77"]
    assert not (run / "child.safetensors").exists()
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    _same_result(reference, run)
