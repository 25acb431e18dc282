"""Small file helpers of the data package: atomic writes and the cache folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from odenets.checkpoint import atomic_open


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


def atomic_write(path: str | os.PathLike):
    """Binary atomic write (temporary file, fsync, rename); see odenets.checkpoint."""
    return atomic_open(path, "wb")
