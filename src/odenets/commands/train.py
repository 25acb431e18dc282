"""`odenets train`: train a network with a recipe into a resumable run folder.

Every field of `odenets.training.TrainConfig` is a flag (`batch_size` -> `--batch-size`);
flags not given keep the recipe's value (or, with --resume, the run's stored value).

Exit codes: 0 finished, 1 usage/data/checkpoint error, 3 training diverged (non-finite
loss; the last good checkpoint is kept and summary.json says "diverged"), 130 interrupted
(Ctrl-C; summary.json says "interrupted" and --resume continues).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import shlex
import sys
import types
import typing
from pathlib import Path

from odenets.commands import add_cache_arguments

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # as the shell reports a Ctrl-C

_EPILOG = """\
recipes: {recipes}. Milestones below 1 are fractions of --epochs, so the paper schedules
scale with --epochs. Under `torchrun --nproc_per_node N odenets train ...` the same command
trains with DistributedDataParallel (the global --batch-size is split across processes).
exit codes: 0 finished, 1 error, {diverged} diverged (non-finite loss; last good checkpoint kept),
130 interrupted (summary.json says "interrupted"; --resume continues).
"""


def _field_help() -> dict[str, str]:
    """The short comment after each TrainConfig field, used as its flag's help."""
    from odenets.training import TrainConfig

    source = inspect.getsource(TrainConfig)
    pattern = re.compile(r"^\s+(\w+): [^=]+=.*?#\s*(.+)$", re.MULTILINE)
    return {name: text.strip() for name, text in pattern.findall(source)}


def _base_type(annotation) -> type:
    """int / float / str / bool / list / dict from an annotation such as 'int | None'."""
    hints = annotation
    if isinstance(hints, str):
        hints = eval(hints, {"Any": typing.Any}, {})  # TrainConfig uses builtin types only
    if isinstance(hints, types.UnionType) or typing.get_origin(hints) is typing.Union:
        hints = next(a for a in typing.get_args(hints) if a is not type(None))
    return typing.get_origin(hints) or hints


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from odenets.training import TrainConfig, list_recipes
    from odenets.training.config import RECIPE_FIELDS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG.format(recipes=", ".join(list_recipes()), diverged=EXIT_DIVERGED)
    helps = _field_help()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(f.type)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "the recipe's" if f.name in RECIPE_FIELDS else default
        text = f"{helps.get(f.name, '')} (default: {shown})"
        common = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind is list:
            parser.add_argument(flag, nargs="+", type=float, metavar="M", **common)
        elif kind is dict:
            parser.add_argument(flag, type=_json_object, metavar="JSON", **common)
        else:
            parser.add_argument(flag, type=kind, metavar=f.name.upper(), **common)
    add_cache_arguments(parser)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"lambda_init\": [0.3, 0.4]}}'; got {text!r}"
        ) from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object; got {text!r}")
    return value


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of the given flags; with --resume, unset flags come from the run."""
    from odenets.checkpoint import read_json
    from odenets.training import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    values = {}
    out = Path(given.get("out", TrainConfig.out))
    if given.get("resume") and (out / "config.json").is_file():
        stored = read_json(out / "config.json").get("train", {})
        values = {k: v for k, v in stored.items() if k in names}
        values.pop("progress", None)
    values.update(given)
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    from odenets.errors import DivergenceError
    from odenets.training import fit

    config = config_from_args(args)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        info = fit(config)
    except DivergenceError as err:
        print(f"odenets train: diverged: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        if main_rank:
            resume = shlex.join(["odenets", "train", "--resume", "--out", str(config.out)])
            print(f"interrupted; continue with: {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if main_rank:
        s = info.summary
        test = s.get("final_test_acc")
        shown = f"{100 * test:.2f}%" if test is not None else "n/a"
        print(
            f"{s['status']}: {s['epochs_done']}/{s['epochs']} epochs, test accuracy {shown}, "
            f"{s['wall_time_s']:.0f} s -> {info.path}"
        )
    return 0
