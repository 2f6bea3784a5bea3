"""Atomic file writes: everything is written to a temporary name in the same folder, then renamed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_yaml(path: str | os.PathLike, what: str = "file"):
    """Parse a YAML file safely; a missing, unreadable or malformed file is a one-line `DsnasError`."""
    import yaml

    from .errors import DsnasError

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DsnasError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DsnasError(f"{what} {path} cannot be read: {e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DsnasError(f"{what} {path} is not valid YAML: {' '.join(str(e).split())}") from None
