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
import json
import os
import shlex
import sys
import types
import typing
from pathlib import Path

from odenets.commands._cache import add_cache_arguments
from odenets.errors import DivergenceError
from odenets.training import fit
from odenets.training.config import RECIPE_FIELDS, TrainConfig, list_recipes
from odenets.training.run_folder import RunFolder

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # as the shell reports a Ctrl-C

_EPILOG = """\
recipes: {recipes}. Milestones below 1 are fractions of --epochs, so the paper schedules
scale with --epochs. Under `torchrun --nproc_per_node N odenets train ...` the same command
trains with DistributedDataParallel (the global --batch-size is split across processes).
exit codes: 0 finished, 1 error, {diverged} diverged (non-finite loss; last good checkpoint kept),
130 interrupted (summary.json says "interrupted"; --resume continues).
"""


def _flag_kind(annotation) -> type:
    """int / float / str / bool / list / dict of a resolved annotation such as int | None."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) or annotation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG.format(recipes=", ".join(list_recipes()), diverged=EXIT_DIVERGED)
    annotations = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _flag_kind(annotations[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = f.metadata.get("default") or _shown(default, recipe=f.name in RECIPE_FIELDS)
        described = f.metadata.get("help", "").replace("{recipes}", ", ".join(list_recipes()))
        text = f"{described} (default: {shown})"
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


def _shown(default, *, recipe: bool) -> str:
    """A default as `--help` shows it: the recipe's, on / off for a switch, else the value."""
    if recipe:
        return "the recipe's"
    if isinstance(default, bool):
        return "on" if default else "off"
    return str(default)


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
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    values = {}
    out = Path(given.get("out", TrainConfig.out))
    run = RunFolder(out)
    if given.get("resume") and run.is_run:
        stored = run.read_config()["train"]
        values = {k: v for k, v in stored.items() if k in names}
        for key in ("progress", "restart"):  # never carried over from the stored run
            values.pop(key, None)
    values.update(given)
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
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
