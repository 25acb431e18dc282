"""The `odenets` command line. Thin: each subcommand lives in `odenets.commands.<name>`
with `add_arguments(parser)` and `run(args) -> int`; this file only wires them up."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import warnings

from odenets._version import __version__
from odenets.commands._cache import cache_settings
from odenets.errors import OdenetsError
from odenets.progress import JobLabelFilter, current_job_label

# name -> one-line help. The module odenets.commands.<name> implements it.
COMMANDS = {
    "models": "list the registered networks with their parameter counts",
    "data": "download CIFAR archives, write generated CIFAR-C noise sets",
    "train": "train a network with a paper recipe (resumable)",
    "evaluate": "clean, noise and adversarial accuracy of one run or an ensemble",
    "plot": "draw the analysis figures of both papers",
    "reproduce": "run the grid of trainings and evaluations behind a paper table",
    "report": "write report.md with our numbers beside the papers'",
    "demo": "offline demo on the embedded digits data set (a few minutes on CPU)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odenets",
        description="ODE-inspired robust and stable deep networks (In-ResNet, NAIS-Net).",
    )
    parser.add_argument("--version", action="version", version=f"odenets {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = _command_module(name)
        if module is None:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _command_module(name: str):
    try:
        return importlib.import_module(f"odenets.commands.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"odenets.commands.{name}":
            return None
        raise


@contextlib.contextmanager
def _log_to_stderr():
    """The library logs (one line per epoch, per job); a command shows those lines on stderr
    for its own duration only, and only on the main rank of a distributed run. While a grid
    runs a job, its lines start with the job's label ("[2/4] name:")."""
    log = logging.getLogger("odenets")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobLabelFilter())
    handler.setFormatter(logging.Formatter("%(job)s%(message)s"))
    main_rank = int(os.environ.get("RANK", "0")) == 0
    level = log.level
    if main_rank:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


@contextlib.contextmanager
def _warnings_as_lines(command: str):
    """Warnings show as one line each, "odenets <command>: warning: <message>", without the
    Python source line, for the command's duration."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        label = current_job_label()
        print(
            f"{label + ' ' if label else ''}odenets {command}: warning: {message}", file=sys.stderr
        )

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with _log_to_stderr(), _warnings_as_lines(args.command), cache_settings(args):
            return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not _is_user_error(err):
            raise  # a bug: its traceback is what a report needs
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"odenets {args.command}: error: {msg}", file=sys.stderr)
        return 1


def _is_user_error(err: BaseException) -> bool:
    """Whether `err` is a message meant for people, shown as one line with exit code 1:

    - odenets' own errors (`OdenetsError`: data, checkpoint and unknown-name errors);
    - a ValueError raised by odenets code, the library's way to refuse a value (the message
      names the value and what is accepted);
    - an OSError, which names its path.

    Anything else is a bug and keeps its traceback: a TypeError, a KeyError other than an
    unknown name, a ValueError raised inside torch, numpy or the standard library.
    """
    if isinstance(err, (OdenetsError, OSError)):
        return True
    return isinstance(err, ValueError) and _raised_in_odenets(err)


def _raised_in_odenets(err: BaseException) -> bool:
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    return module == "odenets" or module.startswith("odenets.")
