"""Small file helpers of the data package: atomic writes and the cache folder."""

from __future__ import annotations

import os
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


def atomic_write(path: str | os.PathLike):
    """Binary atomic write (temporary file, fsync, rename); see odenets.checkpoint."""
    return atomic_open(path, "wb")
