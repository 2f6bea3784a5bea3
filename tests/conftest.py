"""Shared helpers for the dsnas tests.

All tests run on the CPU. The models here run batch-1 (or tiny-batch) forwards, for which
intra-op threading only costs: on a small shared machine, OpenMP threads spinning against other
processes make a 224 px forward ~100x slower. So this process and every CLI subprocess use one
thread.

With pytest-xdist installed (the dev extra), the suite runs on one worker process per CPU core, at
most MAX_WORKERS; `-n N` asks for N, and `-n 0` or `-p no:xdist` runs it in this one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

TESTS_DIR = Path(__file__).resolve().parent
SRC_DIR = TESTS_DIR.parent / "src"

# The 20 blocks of the shufflenet space, in order (MMRazor's names).
BLOCK_KEYS = [f"backbone.layers.{s}.{j}" for s, r in enumerate((4, 4, 8, 4)) for j in range(r)]

# The shufflenet space of the embedded Fashion-MNIST subset, at width 0.25.
SMALL = {"num_classes": 10, "in_channels": 1, "input_size": 28, "width": 0.25}

# A search of a few seconds on the embedded set: 256 training and 64 test images, an epoch of
# search and one of finetuning. A test adds the settings it is about (of two key=value, the later wins).
TINY = ["width=0.25", "train_limit=256", "test_limit=64", "batch_size=64", "epochs=2", "warmup_epochs=0",
        "search_epochs=1", "eval_bn_recalibrate=64"]

MAX_WORKERS = 8  # past this many, the suite's time is that of its longest group of tests, not of its cores


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """One worker per core (pytest-xdist's -n auto), where there are several, unless the command
    line names a number, runs in one process (-p no:xdist) or needs one (--pdb, --collect-only);
    the tests go out to the workers by group (--dist loadgroup, see below) unless it names a way."""
    option = config.option
    if hasattr(config, "workerinput") or not hasattr(option, "numprocesses"):
        return
    if option.numprocesses is None and not (config.getoption("usepdb") or config.getoption("collectonly")):
        if config.hook.pytest_xdist_auto_num_workers(config=config) > 1:
            option.numprocesses = "auto"
            option.maxprocesses = option.maxprocesses or MAX_WORKERS
    if option.numprocesses and option.dist == "no":
        option.dist = "loadgroup"


# Under --dist loadgroup, the tests that share a module-scoped fixture (a run made once and read by
# several tests) are one group, which one worker runs, so that the fixture is made once. xdist finds
# groups in the test ids, which pytest 9.2 no longer lets it change (pytest-xdist issue 1386), so the
# first worker writes the groups to a file that the scheduler reads before it hands out any test.
def _groups_file(node) -> Path:
    return Path(tempfile.gettempdir()) / f"dsnas-test-groups-{node.workerinput['testrunuid']}.json"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    if node.config.getoption("dist") == "loadgroup" and node.workerinput["workerid"] == "gw0":
        node.workerinput["dsnas_groups"] = str(_groups_file(node))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class SharedFixtureGroups(LoadGroupScheduling):
        groups: dict[str, str] = {}

        def schedule(self):
            if self.collection is None:
                path = _groups_file(next(iter(self.registered_collections)))
                try:
                    self.groups = json.loads(path.read_text())
                    path.unlink()
                except (OSError, ValueError):
                    self.groups = {}
            super().schedule()

        def _split_scope(self, nodeid):
            return self.groups.get(nodeid) or super()._split_scope(nodeid)

    return SharedFixtureGroups(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """On an xdist worker: the slow tests first, so that the quick ones fill in at the end and the
    workers finish together; and the groups of tests, from the first worker."""
    worker = getattr(config, "workerinput", None)
    if worker is None:
        return
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    if "dsnas_groups" not in worker:
        return
    groups = {}
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        defs = getattr(item, "_fixtureinfo", None)
        if mark is not None:
            groups[item.nodeid] = str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        elif defs is not None and any(d[-1].scope == "module" for d in defs.name2fixturedefs.values()):
            groups[item.nodeid] = item.nodeid.split("::")[0]
    path = Path(worker["dsnas_groups"])
    path.with_suffix(".part").write_text(json.dumps(groups))
    path.with_suffix(".part").replace(path)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC_DIR) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    return env


def _command(args) -> list[str]:
    return [sys.executable, "-m", "dsnas", *[str(a) for a in args]]


def tiny_config(*extra: str):
    """The run configuration of ``TINY`` and then ``extra``."""
    from dsnas.config import load_config

    return load_config(None, [*TINY, *extra])


def set_flags(settings) -> list[str]:
    """``--set key=value`` for each of ``settings``, for a command line."""
    return [flag for s in settings for flag in ("--set", s)]


@contextmanager
def without_figures():
    """Runs made inside draw no alpha.png or credit.png: drawing them is most of a tiny run's time
    (about 4 s a run on one core). For the runs whose figures no test looks at, such as a repeat
    that is only compared with another run; the runs of test_train and test_credit draw theirs."""
    import dsnas.report as report

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "plot_alpha", lambda *args, **kwargs: None)
        mp.setattr(report, "plot_credit", lambda *args, **kwargs: None)
        yield


def run_cli(*args, timeout: float = 120) -> CliResult:
    """Run ``python -m dsnas ARGS`` as a subprocess with PYTHONPATH pointing at ``src``."""
    p = subprocess.run(_command(args), env=cli_env(), capture_output=True, text=True, timeout=timeout,
                       cwd=TESTS_DIR.parent)
    return CliResult(p.returncode, p.stdout, p.stderr)


def run_cli_many(arg_lists, timeout: float = 180) -> list[CliResult]:
    """Run several ``python -m dsnas`` commands at once (each starts a fresh interpreter, whose
    torch import dominates the time); results in the order given."""
    procs = [subprocess.Popen(_command(args), env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=TESTS_DIR.parent) for args in arg_lists]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append(CliResult(p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


@pytest.fixture
def dsnas_main(capsys):
    """Call ``dsnas.cli.main(argv)`` in this process; returns a CliResult."""
    from dsnas.cli import main

    def call(*args) -> CliResult:
        capsys.readouterr()
        rc = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(rc, captured.out, captured.err)

    return call


def dsnas_error(fn, *args, **kwargs) -> str:
    """The message of the `DsnasError` that ``fn(*args, **kwargs)`` raises; it must be one line."""
    from dsnas.errors import DsnasError

    with pytest.raises(DsnasError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def assert_one_line_error(returncode: int, stderr: str, stdout: str = "") -> str:
    """A refused command: exit code 2 and one line on stderr, no traceback (on stdout either, when
    given); returns that line."""
    assert returncode == 2, (returncode, stderr)
    assert "Traceback" not in stderr + stdout, stderr + stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


class RunsCode:
    """A pickle whose loading creates the file ``marker``: if the file exists, a loader ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def slow(*values) -> list:
    """Parameters that only the full run takes; the quick tier (-m "not slow") keeps the others."""
    return [pytest.param(v, marks=pytest.mark.slow) for v in values]


def random_arch(seed: int, num_blocks: int = 20) -> list[str]:
    from dsnas.spaces.shufflenet import OPS

    g = torch.Generator().manual_seed(seed)
    return [OPS[int(i)] for i in torch.randint(len(OPS), (num_blocks,), generator=g)]


@pytest.fixture(scope="session")
def table_224():
    """The cost table of the full-size space (224 px, 1000 classes, 3 channels), built once."""
    from dsnas import ShuffleNetSpace

    return ShuffleNetSpace().costs


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||."""
    return float((got - want).norm() / want.norm())


def cifar_folder(folder: Path, data, labels, train_batches: int = 1, test=None) -> Path:
    """A CIFAR-10 python folder: ``train_batches`` training batches (data_batch_1, ...) of ``data``
    and ``labels``, and a test_batch of ``test`` (data and labels; by default the same batch)."""
    import pickle

    folder.mkdir(parents=True)
    batch = pickle.dumps({b"data": data, b"labels": labels}, protocol=4)
    for i in range(1, train_batches + 1):
        (folder / f"data_batch_{i}").write_bytes(batch)
    (folder / "test_batch").write_bytes(batch if test is None else
                                        pickle.dumps({b"data": test[0], b"labels": test[1]}, protocol=2))
    return folder


def image_folders(root: Path, classes=("cat", "dog"), per_class: int = 3, draw=None, suffix: str = ".png") -> Path:
    """An ImageFolder tree, train/ and val/ alike: a folder of ``per_class`` images for each of
    ``classes`` (or a mapping of class to its number of images); ``draw(rng)`` makes each image as
    an array (default: 80 x 80 RGB noise, from one generator seeded 0); JPEGs at quality 90."""
    import numpy as np
    from PIL import Image

    counts = classes if isinstance(classes, dict) else dict.fromkeys(classes, per_class)
    rng = np.random.default_rng(0)
    draw = draw or (lambda rng: rng.integers(0, 256, (80, 80, 3), dtype=np.uint8))
    for split in ("train", "val"):
        for name, n in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                options = {"quality": 90} if suffix == ".jpg" else {}
                Image.fromarray(draw(rng)).save(folder / f"{i}{suffix}", **options)
    return root
