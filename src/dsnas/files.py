"""Files: outputs checked before work and written atomically (a temporary name in the same
folder, then renamed), every YAML read within bounds, JSON written strictly, one writer per run
folder, and SIGTERM turned into an unwinding exception so that no temporary is left."""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import socket
import stat
import tempfile
from pathlib import Path

from .errors import QUOTE_LIMIT, DsnasError


def check_path_text(path: str | os.PathLike) -> None:
    """Refuse a path that is not valid UTF-8 text (bytes the locale could not decode, kept as
    surrogates): libraries that encode paths themselves, TensorBoard's writer among them, fail
    on it half-way through a run."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise DsnasError(f"the path {str(path)!r} is not valid UTF-8; name it in UTF-8 (or run under a "
                         "UTF-8 locale)") from None


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` may be written only if it is missing or a regular file: never a device, FIFO,
    folder or symbolic link, whose replacement by a file would damage something else; and its
    name must be text (`check_path_text`)."""
    check_path_text(path)
    path = Path(path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return path
    except OSError as e:
        raise DsnasError(f"cannot write {path}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise DsnasError(f"{path} is a symbolic link; give the path of the file itself")
    if not stat.S_ISREG(st.st_mode):
        raise DsnasError(f"{path} is {_kind(st)}; outputs are written only to regular files")
    return path


def check_creatable(path: str | os.PathLike) -> None:
    """Refuse before any work an output whose folder cannot take a new file (read-only, no
    permission, a file in the way): a file is created in the nearest existing folder and
    removed at once. Root passes permission bits, not a read-only file system."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DsnasError(f"cannot write {path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DsnasError(f"cannot write {path}: {e.strerror or e}") from None


def check_readable(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` must be a regular file (or a link to one): reading a FIFO or a device would
    block or never end."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DsnasError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise DsnasError(f"{what} {path} cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DsnasError(f"{what} {path} is {_kind(st)}")
    return path


def _kind(st: os.stat_result) -> str:
    return "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread while `sigterm_unwinds` is active, so that every
    ``finally`` runs: temporaries are removed, the run lock released."""


def _in_this_process_only(handler):
    """``handler`` for this process; a process forked from it (a DataLoader worker) that gets the
    signal dies as the signal would kill it."""
    import signal

    owner = os.getpid()

    def handle(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        handler(signum, frame)

    return handle


@contextlib.contextmanager
def sigterm_unwinds():
    """Turn SIGTERM into `Terminated` in this process (a forked DataLoader worker still dies as
    the signal would kill it), restoring the previous handler afterwards."""
    import signal

    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, _in_this_process_only(handler))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class PreemptionSignals:
    """While active (a ``with`` block in the main thread): SIGTERM and SIGUSR1, the signals SLURM
    and torchrun send ahead of a kill, are only recorded (``signum``), for the training loop to
    stop at an agreed step; a forked worker still dies as the signal would kill it."""

    NAMES = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self) -> "PreemptionSignals":
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may take signals: a run in another thread keeps the defaults
        def record(signum, frame):
            self.signum = signum

        for name in self.NAMES:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, _in_this_process_only(record))
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _temporary_prefix(path: Path) -> str:
    """``.<name>.<host>-<pid>.``: the temporaries of ``path`` say which process made them."""
    return f".{path.name}.{socket.gethostname()}-{os.getpid()}."


def _remove_stale_temporaries(path: Path) -> None:
    """Temporaries of ``path`` that a killed writer on this host left (SIGKILL, power loss): those
    whose process no longer runs. Others' live ones, and other hosts', are left alone."""
    host = f".{path.name}.{socket.gethostname()}-"
    for old in path.parent.glob(f"{glob.escape(host)}*.tmp"):
        pid = old.name[len(host):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            with contextlib.suppress(OSError):
                old.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it runs, as another user
        return True
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, replace: bool = True):
    """Yield a unique temporary path next to ``path``; on success it is fsynced and renamed onto
    ``path`` with the permissions a plain ``open`` would give. ``path`` must be missing or a
    regular file; a failure (disk full, no permission, an error raised inside) leaves ``path`` as
    it was and no temporary (under `sigterm_unwinds`, SIGTERM too). Temporaries of ``path`` that
    a killed writer left are removed first. Unless ``replace``, a ``path`` that exists by then
    is not replaced: of two writers racing to one new path, the second fails."""
    path = check_writable(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        check_writable(path)  # nothing special appeared there meanwhile
        if replace:
            os.replace(tmp, path)
        else:
            _rename_new(Path(tmp), path)
    except OSError as e:
        raise DsnasError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _rename_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if no file has it: a hard link fails on a taken name
    (the temporary is removed by the caller)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise DsnasError(f"{path} already exists; pass --force to replace it") from None
    except OSError:  # a file system without hard links: check, then rename
        if path.exists():
            raise DsnasError(f"{path} already exists; pass --force to replace it") from None
        os.replace(tmp, path)


def json_text(value, indent: int | None = None) -> str:
    """``value`` as strict JSON: NaN and infinities, which ``json`` would write as bare ``NaN``
    that no other reader parses, are refused (the values that could be NaN are checked before)."""
    import json

    try:
        return json.dumps(value, indent=indent, allow_nan=False)
    except ValueError as e:
        raise DsnasError(f"refusing to write JSON with NaN or infinite values ({e})") from None


def write_text(path: str | os.PathLike, text: str, replace: bool = True) -> None:
    with atomic_path(path, replace) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes, replace: bool = True) -> None:
    with atomic_path(path, replace) as tmp:
        tmp.write_bytes(data)


YAML_MAX_BYTES = 1 << 20  # configs, arch files, latency tables and run configs are a few kB
YAML_MAX_DEPTH = 32        # their deepest nesting is 4
YAML_MAX_DIGITS = 64       # no setting needs a longer integer (Python refuses over 4300 digits)


@functools.cache
def _bounded_loader():
    """PyYAML's SafeLoader without what lets a small file take gigabytes or the stack: aliases
    (437 bytes of nested anchors expand to billions of nodes), nesting deeper than
    `YAML_MAX_DEPTH` (the composer recurses once per level) and integers longer than
    `YAML_MAX_DIGITS`."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, f"found alias *{event.anchor}; aliases are not "
                                                  "allowed", event.start_mark)
            if self.depth >= YAML_MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nesting deeper than {YAML_MAX_DEPTH} levels",
                                                  event.start_mark)
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_yaml_int(self, node):
            if len(node.value) > YAML_MAX_DIGITS:
                raise yaml.constructor.ConstructorError(None, None, f"an integer of {len(node.value)} characters",
                                                        node.start_mark)
            return super().construct_yaml_int(node)

    BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)
    return BoundedLoader


def parse_yaml(text: str):
    """Parse YAML text with the bounded safe loader; malformed or refused text raises ``yaml.YAMLError``."""
    import yaml

    try:
        return yaml.load(text, Loader=_bounded_loader())  # noqa: S506 - a SafeLoader subclass
    except (ValueError, TypeError, AttributeError, OverflowError) as e:  # a tagged value its constructor refuses
        raise yaml.YAMLError(f"a value cannot be read ({str(e)[:QUOTE_LIMIT]})") from None


@functools.cache
def _no_alias_dumper():
    import yaml

    class NoAliasDumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:
            return True

    return NoAliasDumper


def dump_yaml(data, **options) -> str:
    """YAML text that `parse_yaml` reads back: safe types only, and an object referenced twice
    written out twice rather than as an alias."""
    import yaml

    return yaml.dump(data, Dumper=_no_alias_dumper(), **options)


def read_yaml(path: str | os.PathLike, what: str = "file"):
    """Parse a YAML file safely and within bounds (`parse_yaml`, at most `YAML_MAX_BYTES`); a
    missing, unreadable, oversized or malformed file is a one-line `DsnasError`."""
    import yaml

    path = check_readable(path, what)
    try:
        with open(path, "rb") as f:
            raw = f.read(YAML_MAX_BYTES + 1)
        if len(raw) > YAML_MAX_BYTES:
            raise DsnasError(f"{what} {path} is larger than {YAML_MAX_BYTES >> 20} MiB, far more than any {what} holds")
        text = raw.decode()
    except FileNotFoundError:
        raise DsnasError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DsnasError(f"{what} {path} cannot be read: {e}") from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as e:
        raise DsnasError(f"{what} {path} is not valid YAML: {' '.join(str(e).split())}") from None


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``<folder>/.lock``, held until
    `release` or the end of the process. The kernel drops it when its holder dies, so a killed
    run leaves no stale lock behind and can be resumed at once."""

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / self.NAME
        self._file = None

    def acquire(self) -> "RunLock":
        import fcntl

        check_writable(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError as e:
            raise DsnasError(f"cannot lock {self.path.parent}: {e.strerror or e}") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise DsnasError(f"{self.path.parent} is in use by another dsnas process (pid {holder}); wait for it "
                             "to finish, or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the lock
            self._file = None
