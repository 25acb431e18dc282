"""Atomic JSON and safetensors file helpers shared by training, evaluation and reports.

Every write goes to a temporary file in the destination folder, is flushed and fsync'ed,
then renamed over the destination, so a reader (or a resumed run) sees either the old file
or the new one, never half of one. Loading never unpickles: tensors come only from
safetensors files, and a pickle checkpoint (``.pt``, ``.pth``, ``.pkl``) is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import torch
from safetensors import safe_open
from safetensors.torch import save

from odenets.errors import CheckpointError

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


class FileWriteError(OSError):
    """A file could not be written (full disk, I/O error); `filename` is the destination."""


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    On any error the temporary file is removed and `path` is left untouched.

    Raises:
        FileWriteError: the operating system refused the write; it names `path` (not the
            temporary file).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise FileWriteError(err.errno, err.strerror, str(path)) from err
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual mode
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, FileWriteError):
            raise FileWriteError(err.errno, err.strerror, str(path)) from err
        raise
    _fsync_dir(path.parent)


def write_in_place(path: str | os.PathLike, obj: Any) -> None:
    """Overwrite a small JSON file in place, without a temporary file: for recording a
    failure when the disk is full (the file's existing block is reused). Not atomic."""
    data = (json.dumps(obj, indent=2, default=_json_default, allow_nan=False) + "\n").encode()
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate(len(data))
        f.flush()
        os.fsync(f.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _dump(obj: Any, f: TextIO, *, indent: int | None) -> None:
    # allow_nan=False: NaN is not JSON; callers store non-finite values as null or strings.
    json.dump(obj, f, indent=indent, default=_json_default, allow_nan=False, ensure_ascii=False)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write `obj` as UTF-8 JSON to `path` atomically (temporary file, fsync, rename)."""
    with atomic_open(Path(path), "w") as f:
        _dump(obj, f, indent=indent)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file raises CheckpointError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} does not exist") from err
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON (corrupt or truncated?): {err}") from err


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON object as a line to `path`, durably.

    The whole file is rewritten atomically with the new line at the end, so a crash never
    leaves a partial line (files here hold one line per epoch: small).
    """
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    line = json.dumps(record, default=_json_default, allow_nan=False, ensure_ascii=False)
    with atomic_open(path, "w") as f:
        f.write(old + line + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records: list[Mapping[str, Any]]) -> None:
    """Replace `path` with one JSON line per record, atomically."""
    with atomic_open(Path(path), "w") as f:
        for r in records:
            f.write(json.dumps(r, default=_json_default, allow_nan=False, ensure_ascii=False))
            f.write("\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file (missing file: empty list); a bad line raises CheckpointError."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}, line {i}, is not valid JSON: {err}") from err
    return records


def finite_or_none(x: float) -> float | None:
    """`x` as a float, or None when it is NaN or infinite (JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"refusing to load {path}: {path.suffix} files are pickles, and unpickling runs "
            "arbitrary code. odenets reads weights only from .safetensors files."
        )


def save_safetensors_atomic(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Save tensors (any device) to a safetensors file atomically.

    Tensors are copied to contiguous CPU memory first, so views and tensors that share
    storage (which safetensors refuses) are fine.

    Returns:
        The SHA-256 of the file written (hex), for an integrity check on loading.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"safetensors files must end in .safetensors; got {path.name}")
    plain = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    data = save(plain, metadata=dict(metadata) if metadata else None)
    with atomic_open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_safetensors(
    path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file without unpickling anything.

    Returns:
        (tensors, metadata): a dict of tensors on `device` and the header's string metadata.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or is a pickle file.
    """
    path = Path(path)
    _refuse_pickle(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be read ({err}). "
            "Delete it to start over, or restore it from a copy."
        ) from err
    return tensors, metadata
