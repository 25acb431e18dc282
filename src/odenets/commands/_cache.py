"""The decoded-image cache flags of the commands that load image folders: --cache-dir DIR
and --no-cache, applied as the environment variables that `odenets.data` reads."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex

# The variables that odenets.data reads; set here, they reach the worker processes too.
_CACHE_ENV = ("ODENETS_CACHE", "ODENETS_NO_CACHE")


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """--cache-dir DIR / --no-cache, for the commands that load image folders."""
    group = parser.add_argument_group("decoded-image cache of --dataset folder")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=None,
        help="keep the decoded images under DIR (default: $ODENETS_CACHE, else "
        "$XDG_CACHE_HOME/odenets, else ~/.cache/odenets; never inside the data folder)",
    )
    choice.add_argument(
        "--no-cache",
        action="store_true",
        default=False,
        help="decode the image folder every time and write no cache (default: cache)",
    )


def cache_flags(args: argparse.Namespace) -> str:
    """The cache flags given, as shell words to append to a printed command ('' if none)."""
    if getattr(args, "no_cache", False):
        return " --no-cache"
    cache_dir = getattr(args, "cache_dir", None)
    return f" --cache-dir {shlex.quote(os.path.abspath(cache_dir))}" if cache_dir else ""


@contextlib.contextmanager
def cache_settings(args: argparse.Namespace):
    """Apply --cache-dir / --no-cache for the command's duration (as the environment
    variables that odenets.data reads, so worker processes see them too)."""
    saved = {name: os.environ.get(name) for name in _CACHE_ENV}
    if getattr(args, "cache_dir", None):
        os.environ["ODENETS_CACHE"] = os.path.abspath(os.path.expanduser(args.cache_dir))
    if getattr(args, "no_cache", False):
        os.environ["ODENETS_NO_CACHE"] = "1"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
