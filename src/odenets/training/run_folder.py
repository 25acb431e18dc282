"""The run folder: one class owns its file names, its reads and its atomic writes.

A run folder (docs/design.md) holds config.json, metrics.jsonl, summary.json, the weights
files (final, best, last) with last.json, eval.json once evaluated, digests.json (the
SHA-256 of every weights file written) and .lock (held by the process writing the run).
Everything that reads or writes one goes through `RunFolder`; every JSON file read is
checked against its schema (`odenets.training.schemas`) so a bad file is a one-line error
naming the file and the field.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import logging
import os
import re
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from odenets.checkpoint import (
    append_jsonl,
    atomic_open,
    load_safetensors,
    read_json,
    read_jsonl,
    sha256_file,
    write_json_atomic,
    write_jsonl_atomic,
)
from odenets.errors import CheckpointError, OdenetsError
from odenets.training import schemas

logger = logging.getLogger("odenets.training")

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVAL = "eval.json"
FINAL_WEIGHTS = "final.safetensors"
BEST_WEIGHTS = "best.safetensors"
LAST_WEIGHTS = "last.safetensors"
LAST_JSON = "last.json"
DIGESTS = "digests.json"
LOCK = ".lock"
WEIGHTS_FILES = (FINAL_WEIGHTS, BEST_WEIGHTS, LAST_WEIGHTS)
# What `odenets evaluate` writes: eval.json for the whole test set, eval.limit-N.json with
# --limit N, eval.shard-i-of-n.json with --shard i/n (i from 1), eval.limit-N.shard-i-of-n.json.
_EVAL_FILE = re.compile(
    r"eval(?:\.limit-(?P<limit>\d+))?(?:\.shard-(?P<i>\d+)-of-(?P<n>\d+))?\.json"
)
# A further evaluation of a grid (a preset's `further_evaluations`): eval.<name>.json, the
# name in lower case letters, digits and "_" (no "-", so it never reads as a limit or shard).
FURTHER_EVAL_NAME = re.compile(r"[a-z][a-z0-9_]*")
_FURTHER_EVAL_FILE = re.compile(r"eval\.(?P<name>[a-z][a-z0-9_]*)\.json")


def further_eval_file(name: str) -> str:
    """The file of the further evaluation `name`: eval.<name>.json."""
    if not FURTHER_EVAL_NAME.fullmatch(name):
        raise ValueError(
            f"an evaluation name must be lower case letters, digits and '_', starting with a "
            f"letter; got {name!r}"
        )
    return f"eval.{name}.json"


def eval_file_name(*, limit: int | None = None, shard: tuple[int, int] | None = None) -> str:
    """The evaluation file of a run: eval.json, or with `limit` N and `shard` (i, n), i from 1,
    eval.limit-N.json, eval.shard-i-of-n.json, eval.limit-N.shard-i-of-n.json."""
    name = Path(EVAL).stem
    if limit is not None:
        name += f".limit-{limit}"
    if shard is not None:
        name += f".shard-{shard[0]}-of-{shard[1]}"
    return f"{name}.json"


def parse_eval_file_name(name: str) -> dict[str, Any] | None:
    """{"limit": N or None, "shard": (i, n) or None} of an evaluation file name, or None for
    a name `eval_file_name` does not give."""
    match = _EVAL_FILE.fullmatch(name)
    if match is None:
        return None
    limit, i, n = match.group("limit", "i", "n")
    return {
        "limit": None if limit is None else int(limit),
        "shard": None if i is None else (int(i), int(n)),
    }


class LockedError(OdenetsError):
    """Another live process holds the folder's lock."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder  # "pid 123 on host x"


class RunFolder:
    """A training run's folder: paths, validated reads, atomic writes, digests and lock.

    Example:
        >>> run = RunFolder("runs/x")  # doctest: +SKIP
        >>> run.read_summary().get("status")  # doctest: +SKIP
        'finished'
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    @property
    def is_run(self) -> bool:
        """Whether the folder holds a run (its config.json)."""
        return self.has(CONFIG)

    # --- JSON files --------------------------------------------------------------------

    def _read(self, name: str, kind: str) -> Any:
        data = read_json(self.path / name)
        schemas.validate(kind, data, self.path / name)
        return data

    def read_config(self) -> dict[str, Any]:
        if not self.is_run:
            raise CheckpointError(f"{self.path} is not a run folder: {CONFIG} is missing")
        return self._read(CONFIG, "config")

    def write_config(self, header: Mapping[str, Any]) -> None:
        write_json_atomic(self.path / CONFIG, header)

    def read_summary(self) -> dict[str, Any]:
        """summary.json, or {} while the run has not written one."""
        return self._read(SUMMARY, "summary") if self.has(SUMMARY) else {}

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json_atomic(self.path / SUMMARY, summary)

    def read_metrics(self) -> list[dict[str, Any]]:
        records = read_jsonl(self.path / METRICS)
        for i, record in enumerate(records, start=1):
            schemas.validate("metrics", record, f"{self.path / METRICS}, line {i}")
        return records

    def write_metrics(self, records: list[Mapping[str, Any]]) -> None:
        write_jsonl_atomic(self.path / METRICS, records)

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        append_jsonl(self.path / METRICS, record)

    def read_eval(self, name: str = EVAL) -> dict[str, Any] | None:
        """eval.json (or another evaluation file of `eval_files`), or None when absent."""
        return self._read(name, "eval") if self.has(name) else None

    def eval_files(self) -> list[str]:
        """The evaluation files of a subset or a shard (eval.limit-N.json, ...; not
        eval.json), sorted by name."""
        if not self.path.is_dir():
            return []
        return sorted(
            p.name
            for p in self.path.iterdir()
            if p.name != EVAL and parse_eval_file_name(p.name) and p.is_file()
        )

    def further_evals(self) -> list[str]:
        """The names of the further evaluations the folder holds (eval.<name>.json), sorted."""
        if not self.path.is_dir():
            return []
        found = (_FURTHER_EVAL_FILE.fullmatch(p.name) for p in self.path.iterdir())
        return sorted(m["name"] for m in found if m and self.has(m.string))

    def write_eval(self, result: Mapping[str, Any], name: str = EVAL) -> None:
        """eval.json, or the evaluation file `name` (e.g. `further_eval_file(...)`)."""
        write_json_atomic(self.path / name, result)

    def read_last_json(self) -> dict[str, Any] | None:
        return self._read(LAST_JSON, "state") if self.has(LAST_JSON) else None

    def write_last_json(self, state: Mapping[str, Any]) -> None:
        write_json_atomic(self.path / LAST_JSON, state)

    # --- weights and their digests ---------------------------------------------------------

    def read_digests(self) -> dict[str, dict[str, Any]]:
        """digests.json: file name -> {"sha256": hex, "previous": hex | absent}."""
        return self._read(DIGESTS, "digests") if self.has(DIGESTS) else {}

    def save_weights(
        self,
        name: str,
        tensors: Mapping[str, torch.Tensor],
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Write a weights file atomically and record its SHA-256 in digests.json.

        digests.json is written before the weights (accepting the old and the new digest)
        and after (the new one only), so a kill at any moment leaves a file whose digest is
        recorded. Returns the SHA-256 of the file written.
        """
        if name not in WEIGHTS_FILES:
            raise ValueError(f"weights file must be one of {WEIGHTS_FILES}; got {name!r}")
        plain = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
        data = save(plain, metadata=dict(metadata) if metadata else None)
        sha = hashlib.sha256(data).hexdigest()
        digests = self.read_digests()
        old = digests.get(name, {}).get("sha256")
        if old is None and self.has(name):
            old = sha256_file(self.path / name)  # a folder of an odenets without digests
        entry = {"sha256": sha, **({"previous": old} if old and old != sha else {})}
        write_json_atomic(self.path / DIGESTS, {**digests, name: entry})
        with atomic_open(self.path / name, "wb") as f:
            f.write(data)
        write_json_atomic(self.path / DIGESTS, {**digests, name: {"sha256": sha}})
        return sha

    def verify_weights(self, name: str) -> str:
        """The SHA-256 of a weights file, checked against digests.json.

        A file digests.json does not record (written by an odenets before 0.2) is accepted.

        Raises:
            CheckpointError: the file's digest is not the one recorded.
        """
        file = self.path / name
        stat = file.stat()
        sha = _sha256(str(file), stat.st_mtime_ns, stat.st_size)
        entry = self.read_digests().get(name)
        if entry is None:
            _note_unrecorded(str(file))
            return sha
        accepted = {entry["sha256"], entry.get("previous")}
        if sha not in accepted:
            raise CheckpointError(
                f"{file}: SHA-256 {sha} does not match {entry['sha256']} recorded in "
                f"{self.path / DIGESTS}; the file is corrupt or was changed. Restore it from "
                "a copy, or retrain"
            )
        return sha

    def load_weights(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(tensors, header metadata) of a weights file, its digest verified first."""
        if not self.has(name):
            raise CheckpointError(f"checkpoint {self.path / name} does not exist")
        self.verify_weights(name)
        return load_safetensors(self.path / name)

    # --- writers --------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *, what: str = "training") -> Iterator[None]:
        """Hold the folder's exclusive lock (see `hold_lock`)."""
        with hold_lock(self.path / LOCK, what=f"{what} {self.path}"):
            yield

    def remove_stale_temporaries(self) -> None:
        """Temporary files of writes a killed run left unfinished (never renamed). Called
        only under the folder's lock, so no live writer's file is removed."""
        if self.path.is_dir():
            for path in self.path.glob(".*.tmp"):
                path.unlink(missing_ok=True)


@functools.lru_cache(maxsize=256)
def _sha256(file: str, mtime_ns: int, size: int) -> str:
    """SHA-256 of a file, cached while its time stamp and size stay the same (the report
    and the grid's job states check every run's weights)."""
    return sha256_file(file)


@functools.lru_cache(maxsize=256)
def _note_unrecorded(file: str) -> None:
    logger.info("%s has no recorded SHA-256 (an older run folder); accepted", file)


# --- locks -------------------------------------------------------------------------------

_held: dict[str, int] = {}  # lock file -> depth, for the locks this process holds


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike, *, what: str) -> Iterator[None]:
    """Hold an exclusive OS lock (flock) on `path` for the block.

    The kernel drops the lock when the process ends, however it ends, so a kill -9 never
    leaves a stale lock. The file holds the holder's pid and host, for the refusal. A lock
    this process already holds is taken again (nested).

    Raises:
        LockedError: another process holds it; the message names its pid and host.
    """
    path = Path(path)
    key = str(path.resolve())
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _holder(fd)
            raise LockedError(
                f"{what} is locked by {holder}; wait for it to end, or stop it first",
                holder,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
    return text or "another process (pid unknown)"
