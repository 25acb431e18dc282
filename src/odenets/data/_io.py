"""Small file helpers of the data package: atomic writes and the cache folder."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def cache_root() -> Path:
    """The user cache folder: $ODENETS_CACHE if set, else ~/.cache/odenets."""
    env = os.environ.get("ODENETS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "odenets"


def is_writable_dir(path: Path) -> bool:
    """True if `path` is a folder we may write into.

    The mode bits are checked as well as os.access: root passes os.access everywhere, but a
    folder whose mode grants nobody write access was made read-only on purpose.
    """
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        return False
    return bool(path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    On any error the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
