"""Small file helpers of the data package: atomic writes and the cache folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from odenets.checkpoint import atomic_open


def cache_root() -> Path:
    """The user cache folder: $ODENETS_CACHE, else $XDG_CACHE_HOME/odenets, else
    ~/.cache/odenets. The data folders themselves are never written into."""
    env = os.environ.get("ODENETS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "odenets"


def cache_enabled() -> bool:
    """False when $ODENETS_NO_CACHE is set to a non-empty value other than "0"."""
    return os.environ.get("ODENETS_NO_CACHE", "") in ("", "0")


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
