"""What each run-folder file must hold: one schema per file kind, checked when it is read.

A file that is well-formed JSON of the wrong shape (a list for an object, a string for a
number, a count of 10**12) is refused with one line naming the file and the field, e.g.
``RUN/last.json: field "rng.python" missing (written by odenets 0.1.0?)``, instead of a
traceback far from the cause. Only the fields odenets reads are checked; others are free.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from odenets.errors import CheckpointError

MAX_CLASSES = 1_000_000  # far above any data set here; 10**12 classes is a corrupt file
MAX_CHANNELS = 4096
MAX_EPOCHS = 1_000_000


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(lo: int, hi: int | None = None) -> tuple[str, Callable[[Any], bool]]:
    text = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"
    return text, lambda v: _is_int(v) and v >= lo and (hi is None or v <= hi)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


STR = ("a string", lambda v: isinstance(v, str))
OBJECT = ("an object", lambda v: isinstance(v, dict))
LIST = ("a list", lambda v: isinstance(v, list))
NUMBER = ("a finite number", _number)
OPT_NUMBER = ("a finite number or null", lambda v: v is None or _number(v))
OPT_INT = ("an integer or null", lambda v: v is None or _is_int(v))
OPT_STR = ("a string or null", lambda v: v is None or isinstance(v, str))
ACCURACY = ("a number in [0, 1] or null", lambda v: v is None or (_number(v) and 0 <= v <= 1))
HEX64 = (
    "a SHA-256 (64 hex digits)",
    lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
)
STATUS = (
    "one of finished, diverged, failed, running, interrupted",
    lambda v: v in ("finished", "diverged", "failed", "running", "interrupted"),
)

# kind -> {dotted field: (required, (what, check))}
SCHEMAS: dict[str, dict[str, tuple[bool, tuple[str, Callable[[Any], bool]]]]] = {
    "config": {
        "model": (True, STR),
        "model_kwargs": (True, OBJECT),
        "dataset": (True, OBJECT),
        "dataset.name": (True, STR),
        "dataset.root": (False, OPT_STR),
        "dataset.num_classes": (True, _int(1, MAX_CLASSES)),
        "dataset.in_chans": (True, _int(1, MAX_CHANNELS)),
        "train": (True, OBJECT),
        "train.epochs": (False, _int(0, MAX_EPOCHS)),
        "train.batch_size": (False, _int(1)),
        "train.lr": (False, NUMBER),
        "train.seed": (False, ("an integer", _is_int)),
        "train.milestones": (False, LIST),
        "seed": (False, ("an integer", _is_int)),
    },
    "summary": {
        "status": (True, STATUS),
        "epochs_done": (False, _int(0, MAX_EPOCHS)),
        "epochs": (False, _int(0, MAX_EPOCHS)),
        "final_train_acc": (False, ACCURACY),
        "final_test_acc": (False, ACCURACY),
        "selected_epoch": (False, OPT_INT),
        "error": (False, OPT_STR),
    },
    "metrics": {
        "epoch": (True, _int(0, MAX_EPOCHS)),
        "train_acc": (False, ACCURACY),
        "test_acc": (False, ACCURACY),
        "val_acc": (False, ACCURACY),
    },
    "state": {
        "format": (True, STR),
        "format_version": (True, ("an integer", _is_int)),
        "checkpoint_id": (True, STR),
        "epoch": (True, _int(0, MAX_EPOCHS)),
        "optimizer": (True, OBJECT),
        "optimizer.param_groups": (True, LIST),
        "optimizer.state": (True, OBJECT),
        "rng": (True, OBJECT),
        "rng.numpy": (True, OBJECT),
        "rng.numpy.kind": (True, STR),
        "rng.numpy.pos": (True, _int(0, 624)),
        "rng.numpy.has_gauss": (True, _int(0, 1)),
        "rng.numpy.cached": (True, NUMBER),
        "rng.python": (True, OBJECT),
        "rng.python.version": (True, ("an integer", _is_int)),
        "rng.python.internal": (
            True,
            (
                "a list of 625 integers",
                lambda v: isinstance(v, list) and len(v) == 625 and all(map(_is_int, v)),
            ),
        ),
        "weights_sha256": (False, HEX64),
    },
    # the run fields of a checkpoint, checked when a run resumes from it
    "state_info": {
        "model": (True, STR),
        "model_kwargs": (True, OBJECT),
        "dataset": (True, OBJECT),
        "train": (True, OBJECT),
        "global_step": (True, _int(0)),
        "best_epoch": (True, _int(0, MAX_EPOCHS)),
        "best_score": (True, OPT_NUMBER),
        "wall_time_s": (True, NUMBER),
        "metrics": (False, ("an object or null", lambda v: v is None or isinstance(v, dict))),
        "partial_epoch": (
            False,
            ("an object or null", lambda v: v is None or isinstance(v, dict)),
        ),
    },
    "eval": {
        "clean": (True, NUMBER),
        "models": (True, LIST),
        "attacks": (False, LIST),
        "weights": (False, LIST),
    },
    "digests": {},  # file name -> {"sha256": ...}, checked in _check_digests
}

_MISSING = object()


def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def validate(kind: str, data: Any, where: str | os.PathLike) -> None:
    """Check `data` read from `where` against the schema of `kind`.

    Raises:
        CheckpointError: one line naming the file and the first bad field.
    """
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{where}: expected a JSON object; got {type(data).__name__} "
            f"({_short(data)}). The file is corrupt or not an odenets {kind} file"
        )
    if kind == "digests":
        _check_digests(data, where)
        return
    version = data.get("odenets_version")
    for field, (required, (what, check)) in SCHEMAS[kind].items():
        value = _get(data, field)
        if value is _MISSING:
            parent = field.rpartition(".")[0]
            if required and (not parent or isinstance(_get(data, parent), dict)):
                by = f"odenets {version}" if isinstance(version, str) else "another program"
                raise CheckpointError(f'{where}: field "{field}" missing (written by {by}?)')
            continue
        if not check(value):
            raise CheckpointError(f'{where}: field "{field}" must be {what}; got {_short(value)}')


def _check_digests(data: dict, where: str | os.PathLike) -> None:
    for name, entry in data.items():
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not HEX64[1](sha) or (
            entry.get("previous") is not None and not HEX64[1](entry["previous"])
        ):
            raise CheckpointError(
                f'{where}: field "{name}" must be {{"sha256": {HEX64[0]}}}; got {_short(entry)}'
            )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
