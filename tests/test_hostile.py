"""Hostile and malformed input: every case is one line on stderr and exit code 2 (or, for 16-bit
images, a correct conversion), and nothing outside the intended output is created or changed."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import SMALL, SRC_DIR, assert_one_line_error, cifar_folder, image_folders, random_arch, run_cli
from dsnas import Architecture, DsnasError, ShuffleNetChild, ShuffleNetSpace, load_arch, save_arch
from dsnas.config import load_config
from dsnas.data import load_data
from dsnas.export import export_onnx, load_child, save_weights
from dsnas.files import RunLock, atomic_path, write_text
from dsnas.spaces import ShuffleNetSettings


@pytest.fixture
def child_files(tmp_path):
    arch = Architecture(random_arch(5), settings=SMALL)
    save_arch(arch, tmp_path / "arch.yaml")
    torch.manual_seed(0)
    save_weights(ShuffleNetChild(arch.choices, ShuffleNetSettings(**SMALL)), tmp_path / "child.safetensors")
    return tmp_path / "arch.yaml", tmp_path / "child.safetensors"


def _call(dsnas_main_args, capsys) -> tuple[int, str, str]:
    """``dsnas.cli.main`` in this process; argparse's own exits are caught too."""
    from dsnas.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in dsnas_main_args])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def _snapshot(folder: Path) -> dict:
    return {p: (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


# --- outputs: special files, existing files, permissions ---------------------------------------------------
def test_atomic_write_never_replaces_a_fifo_device_folder_or_link(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "real.txt"
    target.write_text("keep")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    (tmp_path / "folder").mkdir()
    specials = [fifo, link, tmp_path / "folder"]
    try:
        os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        specials.append(tmp_path / "null")
    except PermissionError:  # not root: the FIFO covers the class
        pass
    for path in specials:
        before = path.lstat().st_mode
        with pytest.raises(DsnasError, match="symbolic link|not a regular file|a folder"):
            write_text(path, "x")
        assert path.lstat().st_mode == before
    assert target.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries


def test_atomic_write_respects_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
        os.umask(0o022)
        write_text(tmp_path / "b.txt", "x")
        assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_atomic_write_failure_leaves_the_target_and_no_temporary(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(DsnasError, match="cannot write .*No space left"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_export_refuses_existing_and_special_outputs(tmp_path, child_files, capsys):
    arch, weights = child_files
    old = tmp_path / "old.yaml"
    old.write_text("precious")
    rc, _, err = _call(["export", "--arch", arch, "--weights", weights, "--mmrazor", old], capsys)
    assert_one_line_error(rc, err)
    assert "already exists" in err and "--force" in err and old.read_text() == "precious"
    rc, out, err = _call(["export", "--arch", arch, "--weights", weights, "--mmrazor", old, "--force"], capsys)
    assert rc == 0 and load_arch(old).choices == load_arch(arch).choices
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for bad in (fifo, tmp_path, old / "under_a_file.onnx"):
        rc, _, err = _call(["export", "--arch", arch, "--weights", weights, "--onnx", bad, "--force"], capsys)
        assert_one_line_error(rc, err)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_export_mmrazor_to_stdout(child_files, capsys):
    arch, weights = child_files
    rc, out, err = _call(["export", "--arch", arch, "--weights", weights, "--mmrazor", "-"], capsys)
    assert rc == 0, err
    assert out.startswith("backbone.layers.0.0:") and "wrote" not in out


# --- silently wrong results ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_onnx_parity_check_fails_on_nan(tmp_path):
    child = ShuffleNetChild(random_arch(1), ShuffleNetSettings(**SMALL)).eval()
    with torch.no_grad():
        child.classifier.weight.fill_(float("nan"))
    with pytest.raises(DsnasError, match="differs from PyTorch by nan"):
        export_onnx(child, tmp_path / "c.onnx", 28, 1)


@pytest.mark.parametrize("bad", ["int64", "bool", "nan", "inf"])
def test_weights_with_wrong_dtype_or_values_are_refused(child_files, bad):
    arch, weights = child_files
    state = load_file(str(weights))
    key = next(k for k in state if k.endswith("classifier.weight"))
    if bad in ("int64", "bool"):
        state[key] = state[key].to(getattr(torch, bad))
    else:
        state[key][0, 0] = float(bad)
    save_file(state, str(weights))
    with pytest.raises(DsnasError, match="classifier.weight (is|holds)"):
        load_child(load_arch(arch), weights)


@pytest.mark.parametrize("images, labels, message", [
    (64, list(range(10)) * 6, "64 images and 60 labels"),
    (4, [0, 1, 99, 2], "label 99 is outside 0..9"),
    (4, [0, 1, -1, 2], "label -1 is outside 0..9"),
])
def test_cifar_labels_must_match_the_images(tmp_path, images, labels, message):
    cifar_folder(tmp_path / "cifar-10-batches-py", np.zeros((images, 3072), np.uint8), labels, train_batches=5)
    with pytest.raises(DsnasError, match=message):
        load_data(str(tmp_path))


def _gray(value: int = 100, size: int = 8, dtype=np.uint8):
    """Images of one gray ``value`` for `image_folders` (PIL reads uint16 as I;16)."""
    return lambda rng: np.full((size, size), value, dtype)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    image_folders(tmp_path, {"a": 2, "b": 2}, draw=_gray(32896, dtype=np.uint16))  # 32896 / 65535 * 255 = 128
    data = load_data(str(tmp_path))
    assert data.in_channels == 1
    assert int(data.train.images.min()) == int(data.train.images.max()) == 128


def test_decompression_bomb_is_an_error(tmp_path, monkeypatch):
    from PIL import Image

    image_folders(tmp_path, {"a": 1, "b": 1}, draw=_gray(size=32))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32 x 32 is then more than twice the limit
    with pytest.raises(DsnasError, match="cannot be read: .*decompression bomb"):
        load_data(str(tmp_path))


def test_zero_pixel_idx_images_and_single_image_batches(tmp_path, capsys):
    from test_data import make_idx_folder

    make_idx_folder(tmp_path / "empty_px", size=0)
    with pytest.raises(DsnasError, match="images are 0x0 pixels"):
        load_data(str(tmp_path / "empty_px"))
    make_idx_folder(tmp_path / "one_px", size=1)
    rc, _, err = _call(["search", "--data", tmp_path / "one_px", "--out", tmp_path / "r", "--set", "batch_size=1"],
                       capsys)
    assert_one_line_error(rc, err)
    assert "BatchNorm needs at least two" in err and not (tmp_path / "r").exists()


def test_one_class_or_an_empty_class_folder_is_refused(tmp_path):
    image_folders(tmp_path / "one", {"a": 3}, draw=_gray())
    with pytest.raises(DsnasError, match="one class folder"):
        load_data(str(tmp_path / "one"))
    image_folders(tmp_path / "empty", {"a": 3, "b": 0}, draw=_gray())
    with pytest.raises(DsnasError, match="class folder b holds no images"):
        load_data(str(tmp_path / "empty"))


@pytest.mark.parametrize("doc, message", [
    ("backbone.layers.0.0: shuffle_3x3\narchitecture.backbone.layers.0.0: shuffle_5x5\n", "named twice"),
    ("backbone.layers.0.0: shuffle_3x3\nbackbone.layers.00.000: shuffle_5x5\n", "named twice"),
    ("format: dsnas-arch/1\nchoices: []\nmetadata: [1, 2]\n", "'metadata' must be a mapping"),
])
def test_arch_files_that_say_one_thing_twice_or_the_wrong_shape(tmp_path, doc, message):
    (tmp_path / "a.yaml").write_text(doc)
    with pytest.raises(DsnasError, match=message):
        load_arch(tmp_path / "a.yaml")


# --- one writer per run folder ----------------------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import sys, time
    from dsnas.files import RunLock
    lock = RunLock(sys.argv[1]).acquire()  # held while the object lives
    print("locked", flush=True)
    time.sleep(60)
""")


@pytest.mark.slow
def test_a_run_folder_has_one_writer_and_a_dead_holder_leaves_no_lock(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DsnasError, match=f"in use by another dsnas process \\(pid {holder.pid}\\)"):
            RunLock(tmp_path).acquire()
        (tmp_path / "checkpoints").mkdir()
        write_text(tmp_path / "config.yaml", yaml.safe_dump(load_config().to_dict()))
        r = run_cli("search", "--resume", tmp_path)  # a live run cannot be resumed by a second process
        assert_one_line_error(r.returncode, r.stderr)
        assert f"in use by another dsnas process (pid {holder.pid})" in r.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(tmp_path).acquire()  # the kernel dropped the dead holder's lock
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    lock.release()


# --- flags and settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["eval", "--bn-recalibrate", "-5"],
    ["info", "--width", "9"],
    ["info", "--width", "inf"],
    ["info", "--num-classes", "2000000000"],
    ["info", "--input-size", "5000"],
    ["search", "--set", "width=9"],
    ["search", "--set", "seed=1e15"],
    ["search", "--set", "input_size=5000"],
    ["search", "--bogus-flag"],
    ["nonsense-command"],
])
def test_out_of_range_flags_are_one_line_errors(tmp_path, capsys, args, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    rc, _, err = _call(args, capsys)
    assert_one_line_error(rc, err)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("config", ["- 1\n- 2\n", "data: 123\n"])
def test_eval_of_a_run_whose_config_is_not_one(tmp_path, child_files, capsys, config):
    arch, weights = child_files
    run = tmp_path / "run"
    run.mkdir()
    for f in (arch, weights):
        (run / ("arch.yaml" if f.suffix == ".yaml" else "child.safetensors")).write_bytes(f.read_bytes())
    (run / "config.yaml").write_text(config)
    rc, _, err = _call(["eval", "--run", run], capsys)
    assert_one_line_error(rc, err)
    assert "pass --data" in err


# --- the sweep: every value-taking flag of every subcommand, fed hostile values -------------------------------
def _subcommands():
    import argparse

    from dsnas.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def _hostile_values(action, tmp: Path) -> list[str]:
    """Values no flag may accept: wrong numbers for typed flags, an unknown choice, and for
    paths and free text a FIFO, a folder of junk, a file of junk and a path under a file."""
    if action.choices:
        return ["bogus-choice"]
    if action.type not in (None, str):
        return ["-1", "nan", "abc", "1e400"]
    junk = tmp / "junk.bin"
    junk.write_bytes(b"\x00\xffnot yaml: [\x01")
    folder = tmp / "junk_dir"
    folder.mkdir(exist_ok=True)
    (folder / "junk.bin").write_bytes(b"\x00")
    fifo = tmp / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    return [str(fifo), str(folder), str(junk), str(junk / "under")]


def _sweep_cases():
    cases = []
    for name, parser in _subcommands().items():
        for action in parser._actions:
            if action.nargs == 0 or action.dest in ("help", "version"):
                continue
            cases.append(pytest.param(name, action.dest, id=f"{name}-{action.dest}"))
    return cases


def _base_args(command: str, tmp: Path, arch: Path, weights: Path) -> dict:
    """A valid invocation of each subcommand, by dest; the swept flag replaces its own entry."""
    return {"search": {"out": tmp / "fresh_run"},
            "train": {"arch": arch, "out": tmp / "fresh_run"},
            "eval": {"arch": arch, "weights": weights},
            "export": {"arch": arch, "weights": weights, "mmrazor": tmp / "m.yaml"},
            "info": {},
            "latency": {"out": tmp / "lut.yaml"},
            "import": {"checkpoint": weights, "out": tmp / "fresh_import"}}[command]


@pytest.mark.slow  # the whole sweep; the quick tier keeps the targeted cases above and below
@pytest.mark.parametrize("command, dest", _sweep_cases())
def test_hostile_matrix(tmp_path, capsys, monkeypatch, command, dest):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    arch = Architecture(random_arch(2), settings=SMALL)
    save_arch(arch, tmp_path / "arch.yaml")
    save_weights(ShuffleNetChild(arch.choices, ShuffleNetSettings(**SMALL)), tmp_path / "w.safetensors")
    parser = _subcommands()[command]
    action = next(a for a in parser._actions if a.dest == dest)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail(f"{command} --{dest}: a hostile value started real work"))
    for value in _hostile_values(action, tmp_path):
        args = {**_base_args(command, tmp_path, tmp_path / "arch.yaml", tmp_path / "w.safetensors"), dest: value}
        argv = [command]
        for a in parser._actions:
            if a.dest in args:
                argv += ([] if not a.option_strings else [a.option_strings[-1]]) + [str(args[a.dest])]
        before = _snapshot(tmp_path)
        signal.alarm(60)
        try:
            rc, _, err = _call(argv, capsys)
        finally:
            signal.alarm(0)
        assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, rc, err)
        assert _snapshot(tmp_path) == before, argv


# --- permissions --------------------------------------------------------------------------------------------
def _as_unprivileged():
    """A preexec function that drops root to 'nobody' (None when not root: permissions apply already)."""
    if os.geteuid() != 0:
        return None
    return lambda: (os.setgid(65534), os.setuid(65534))


@pytest.mark.slow
def test_permission_denied_is_one_line(tmp_path):
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="dsnas-perm-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        arch = Architecture(random_arch(4), settings=SMALL)
        save_arch(arch, shared / "arch.yaml")
        save_weights(ShuffleNetChild(arch.choices, ShuffleNetSettings(**SMALL)), shared / "w.safetensors")
        for f in shared.iterdir():
            f.chmod(0o644)
        locked = shared / "ro"
        locked.mkdir(mode=0o555)
        locked.chmod(0o555)
        env = {**os.environ, "PYTHONPATH": str(SRC_DIR), "OMP_NUM_THREADS": "1", "HOME": str(shared)}
        drop = _as_unprivileged()
        try:
            probe = subprocess.run([sys.executable, "-c", "import dsnas"], env=env, preexec_fn=drop,
                                   capture_output=True)
        except PermissionError:
            probe = None
        if probe is None or probe.returncode:
            pytest.skip("the unprivileged user cannot read this checkout or its Python")
        cases = [["export", "--arch", shared / "arch.yaml", "--weights", shared / "w.safetensors", "--mmrazor",
                  locked / "m.yaml"],
                 ["search", "--out", locked / "run", "--set", "epochs=1", "--set", "search_epochs=1"]]
        for args in cases:
            r = subprocess.run([sys.executable, "-m", "dsnas", *map(str, args)], env=env, preexec_fn=drop,
                               capture_output=True, text=True, timeout=300)
            assert "ermission denied" in assert_one_line_error(r.returncode, r.stderr), r.stderr
        assert list(locked.iterdir()) == []
    finally:
        import shutil

        shutil.rmtree(shared, ignore_errors=True)


def test_permission_errors_reach_the_user_as_one_line(tmp_path, capsys, monkeypatch, child_files):
    # what a read-only folder does to the writers, injected: root ignores real permissions
    import pathlib
    import tempfile

    arch, weights = child_files
    locked = tmp_path / "ro"
    real_mkstemp, real_mkdir = tempfile.mkstemp, pathlib.Path.mkdir

    def mkstemp(*a, dir=None, **kw):
        if str(dir).startswith(str(locked)):
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkstemp(*a, dir=dir, **kw)

    def mkdir(self, *a, **kw):
        if str(self).startswith(str(locked)):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    for args in (["export", "--arch", arch, "--weights", weights, "--mmrazor", locked / "m.yaml"],
                 ["search", "--out", locked / "run", "--set", "epochs=1", "--set", "search_epochs=1",
                  "--set", "train_limit=256", "--set", "test_limit=64"]):
        rc, _, err = _call(args, capsys)
        assert_one_line_error(rc, err)
        assert "Permission denied" in err
    assert not locked.exists()


def test_an_arch_file_asking_for_a_huge_classifier_is_refused_before_allocating(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("format: dsnas-arch/1\nsettings: {num_classes: 100000000}\nchoices: "
                                     + str(random_arch(1)).replace("'", "") + "\n")
    rc, _, err = _call(["info", "--arch", tmp_path / "a.yaml"], capsys)
    assert_one_line_error(rc, err)
    assert "num_classes must be an integer in 1..100000" in err


def test_the_readme_cifar_example_fits_the_default_budget():
    # `dsnas search --data path/to/cifar` runs the demo preset on a 32 px, 3-channel, 10-class space
    from dsnas.config import load_config
    from dsnas.plan import check_run

    cfg = check_run(load_config())
    cheapest = ShuffleNetSpace(10, 3, 32, cfg.space_settings["width"]).costs.bounds()["min"]
    assert cfg.budget_mflops >= cheapest
