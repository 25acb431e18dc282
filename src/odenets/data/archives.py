"""The official CIFAR-10 and CIFAR-100 archives, python or binary, extracted or not.

A root folder may hold the archive itself (`cifar-10-python.tar.gz`, ...), its extracted
folder (`cifar-10-batches-py/`, ...), or be that folder. Members are read straight from the
tar.gz when it is not extracted. Python batches are pickles, and unpickling runs code: they
go through `_restricted_load`, which admits only the types a CIFAR batch holds (dict, list,
str, bytes, int and numpy arrays) and refuses every other global by name. Binary batches
are fixed-size records (label byte(s) then 3,072 pixel bytes) and need no pickle.

Pixel layout of both formats: 1,024 red, 1,024 green, 1,024 blue values per image, each a
32x32 plane in row order; returned here as uint8 (N, 32, 32, 3).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from odenets.checkpoint import write_json_atomic
from odenets.data._io import cache_root
from odenets.data.download import base_url, download_file, file_md5
from odenets.errors import DataError

logger = logging.getLogger(__name__)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
FORMATS = ("python", "binary")
LABEL_KINDS = ("fine", "coarse")
PIXELS = 32 * 32 * 3


@dataclass(frozen=True)
class ArchiveSpec:
    """Where one official archive keeps what."""

    filename: str  # the .tar.gz as published
    md5: str  # of the .tar.gz, from the CIFAR page
    folder: str  # top folder inside the archive
    train: tuple[str, ...]  # member files of the training split, in order
    test: tuple[str, ...]
    meta: tuple[str, ...]  # class-name files: python meta pickle, or text files


ARCHIVES: dict[tuple[str, str], ArchiveSpec] = {
    ("cifar10", "python"): ArchiveSpec(
        "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), ("batches.meta",),
    ),
    ("cifar100", "python"): ArchiveSpec(
        "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python",
        ("train",), ("test",), ("meta",),
    ),
    ("cifar10", "binary"): ArchiveSpec(
        "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", "cifar-10-batches-bin",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",),
        ("batches.meta.txt",),
    ),
    ("cifar100", "binary"): ArchiveSpec(
        "cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8", "cifar-100-binary",
        ("train.bin",), ("test.bin",), ("fine_label_names.txt", "coarse_label_names.txt"),
    ),
}  # fmt: skip


def archive_spec(name: str, fmt: str) -> ArchiveSpec:
    if (name, fmt) not in ARCHIVES:
        if name not in ("cifar10", "cifar100"):
            raise ValueError(f"unknown CIFAR data set {name!r}; choose 'cifar10' or 'cifar100'")
        raise ValueError(f"unknown archive format {fmt!r}; choose one of {FORMATS}")
    return ARCHIVES[(name, fmt)]


def download_cifar(
    name: str,
    root: str | os.PathLike,
    *,
    format: str = "python",
    url: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download an official CIFAR archive into `root` unless a verified copy is there.

    Args:
        name: "cifar10" or "cifar100".
        root: folder for the archive (created if needed).
        format: "python" or "binary".
        url: full URL of the archive; default `$ODENETS_CIFAR_URL` (or the CIFAR page)
            followed by the official file name.
        retries: further attempts after an interrupted transfer, each resuming.
        timeout: seconds without data before an attempt fails.
        progress: show a progress bar.

    Returns:
        the path of the verified archive.
    """
    spec = archive_spec(name, format)
    return download_file(
        url or base_url() + spec.filename,
        Path(root).expanduser() / spec.filename,
        md5=spec.md5,
        retries=retries,
        timeout=timeout,
        progress=progress,
    )


def load_cifar(
    name: str,
    root: str | os.PathLike,
    *,
    split: str = "train",
    download: bool = False,
    label_kind: str = "fine",
    format: str | None = None,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a split of the official CIFAR-10 or CIFAR-100.

    Args:
        name: "cifar10" or "cifar100".
        root: folder holding the archive, its extracted folder, or being that folder.
        split: "train" (50,000 images) or "test" (10,000).
        download: fetch the archive into `root` if it is not there (md5-verified).
        label_kind: CIFAR-100 "fine" (100 classes) or "coarse" (20); CIFAR-10 has only fine.
        format: "python" or "binary"; None takes whichever is present, python first
            (and downloads python).
        verify: check an archive's md5 against the official one before reading it (paid
            once per file: the digest is cached by size and time stamp). False for a known
            private copy. Extracted folders have no official digest and are not checked.

    Returns:
        images uint8 (N, 32, 32, 3) and labels int64 (N,).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if label_kind not in LABEL_KINDS:
        raise ValueError(f"label_kind must be one of {LABEL_KINDS}; got {label_kind!r}")
    if name == "cifar10" and label_kind != "fine":
        raise ValueError("CIFAR-10 has one label per image; label_kind must be 'fine'")
    source = _find_source(name, Path(root).expanduser(), format, download)
    if verify and source.is_archive:
        verify_archive(source.path, source.spec)
    members = source.spec.train if split == "train" else source.spec.test
    raws = source.read_many(members)
    images, labels = [], []
    for member, raw in zip(members, raws, strict=True):
        x, y = (_parse_python if source.fmt == "python" else _parse_binary)(
            raw, source.describe(member), name, label_kind
        )
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def cifar_class_names(
    name: str, root: str | os.PathLike | None = None, *, label_kind: str = "fine"
) -> list[str]:
    """Class names in label order, read from the archive's meta file.

    CIFAR-10 falls back to the published names when no meta file is found; CIFAR-100
    falls back to "class_<i>" with a warning.
    """
    count = 10 if name == "cifar10" else (100 if label_kind == "fine" else 20)
    names = None
    if root is not None:
        try:
            source = _find_source(name, Path(root).expanduser(), None, download=False)
            names = _read_names(source, label_kind)
        except DataError:
            names = None
    if names is not None and len(names) == count:
        return names
    if name == "cifar10":
        return list(CIFAR10_CLASSES)
    warnings.warn(f"no readable {name} meta file under {root}; using class_<i>", stacklevel=2)
    return [f"class_{i}" for i in range(count)]


class _Source:
    """One archive or extracted folder of a given format; reads members as bytes."""

    def __init__(self, spec: ArchiveSpec, fmt: str, path: Path, is_archive: bool):
        self.spec, self.fmt, self.path, self.is_archive = spec, fmt, path, is_archive

    def describe(self, member: str) -> str:
        if self.is_archive:
            return f"{self.path}:{self.spec.folder}/{member}"
        return str(self.path / member)

    def read(self, member: str) -> bytes:
        return self.read_many([member])[0]

    def read_many(self, members) -> list[bytes]:
        """The bytes of each member, in order; one pass over the archive."""
        layout = f"{self.spec.folder}/ with {', '.join(self.spec.train + self.spec.test)}"
        if not self.is_archive:
            out = []
            for member in members:
                file = self.path / member
                if not file.is_file():
                    raise DataError(f"{file} is missing; expected the official layout ({layout})")
                out.append(file.read_bytes())
            return out
        found = _read_tar(self.path, self.spec, set(members))
        for member in members:
            if member not in found:
                raise DataError(
                    f"{self.path} has no member {self.spec.folder}/{member}; expected the "
                    f"official layout ({layout})"
                )
        return [found[m] for m in members]


def _find_source(name: str, root: Path, fmt: str | None, download: bool) -> _Source:
    formats = FORMATS if fmt is None else (fmt,)
    for f in formats:
        spec = archive_spec(name, f)
        for folder in (root / spec.folder, root):
            if folder.is_dir() and any((folder / m).is_file() for m in spec.train + spec.test):
                return _Source(spec, f, folder, is_archive=False)
        if (root / spec.filename).is_file():
            return _Source(spec, f, root / spec.filename, is_archive=True)
    if download:
        spec = archive_spec(name, formats[0])
        path = download_cifar(name, root, format=formats[0])
        return _Source(spec, formats[0], path, is_archive=True)
    expected = " or ".join(
        f"{archive_spec(name, f).filename} / {archive_spec(name, f).folder}/" for f in formats
    )
    raise DataError(
        f"no {name} data under {root}: expected {expected}. "
        f"Download with `odenets data download {name} --root {root}` or download=True."
    )


def verify_archive(path: Path, spec: ArchiveSpec) -> None:
    """Refuse an archive whose md5 is not the official one.

    Raises:
        DataError: the md5 differs; the message names both digests.
    """
    got = cached_md5(path)
    if got != spec.md5:
        raise DataError(
            f"{path}: md5 {got} is not the official {spec.md5} of {spec.filename} (a corrupt "
            "or changed copy). Delete it and download it again, or pass --no-verify "
            "(verify=False) for a known private copy"
        )


_MD5_CACHE = "archive-md5.json"


def cached_md5(path: Path) -> str:
    """The md5 of a file, cached in the user cache folder by path, size and time stamp (a
    CIFAR archive is read at every run; hashing it costs about a second)."""
    stat = path.stat()
    key = str(path.resolve())
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    cache = cache_root() / _MD5_CACHE
    try:
        entries = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        entries = {}
    if not isinstance(entries, dict):
        entries = {}
    entry = entries.get(key)
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()):
        md5 = entry.get("md5")
        if isinstance(md5, str):
            return md5
    md5 = file_md5(path)
    entries[key] = {**stamp, "md5": md5}
    try:
        write_json_atomic(cache, entries)
    except OSError as err:  # a read-only home: pay the hash again next time
        logger.info("could not cache the md5 of %s in %s: %s", path, cache, err)
    return md5


def _read_tar(path: Path, spec: ArchiveSpec, wanted: set[str]) -> dict[str, bytes]:
    """The regular members spec.folder/<name> with name in `wanted`, read into memory."""
    out = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                parts = info.name.strip("/").split("/")
                if info.isfile() and len(parts) == 2 and parts[0] == spec.folder:
                    if parts[1] in wanted:
                        out[parts[1]] = tar.extractfile(info).read()
                        if len(out) == len(wanted):
                            break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(
            f"{path} is truncated or corrupt ({type(err).__name__}: {err}); expected the "
            f"official {spec.filename} (md5 {spec.md5}, {_md5_note(path, spec)}). "
            "Delete it and download it again."
        ) from err
    return out


def _md5_note(path: Path, spec: ArchiveSpec) -> str:
    try:
        got = file_md5(path)
    except OSError:
        return "unreadable"
    return "md5 matches" if got == spec.md5 else f"this file's md5 is {got}"


def _parse_python(raw: bytes, where: str, name: str, label_kind: str):
    batch = _restricted_load(raw, where)
    if not isinstance(batch, dict):
        raise DataError(f"{where}: expected a pickled dict batch; got {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    key = "labels" if name == "cifar10" else f"{label_kind}_labels"
    if "data" not in batch or key not in batch:
        raise DataError(
            f"{where}: expected keys 'data' and {key!r} of a {name} batch; got {sorted(batch)}"
        )
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != PIXELS:
        raise DataError(
            f"{where}: 'data' must be a uint8 array (N, {PIXELS}); "
            f"got {getattr(data, 'shape', type(data).__name__)}"
        )
    labels = np.asarray(batch[key], dtype=np.int64)
    return _to_images(data.astype(np.uint8, copy=False), labels, where, name, label_kind)


def _parse_binary(raw: bytes, where: str, name: str, label_kind: str):
    label_bytes = 1 if name == "cifar10" else 2
    record = label_bytes + PIXELS
    if len(raw) == 0 or len(raw) % record:
        raise DataError(
            f"{where}: {len(raw)} bytes is not a whole number of {record}-byte {name} "
            "records (truncated or not a CIFAR binary batch)"
        )
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    # CIFAR-100 records: coarse label byte, fine label byte, pixels.
    column = 0 if name == "cifar10" or label_kind == "coarse" else 1
    return _to_images(
        rows[:, label_bytes:], rows[:, column].astype(np.int64), where, name, label_kind
    )


def _to_images(data: np.ndarray, labels: np.ndarray, where: str, name: str, label_kind: str):
    count = 10 if name == "cifar10" else (100 if label_kind == "fine" else 20)
    if labels.shape != (len(data),):
        raise DataError(f"{where}: {len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= count):
        raise DataError(
            f"{where}: labels must be in 0..{count - 1} for {name} ({label_kind}); "
            f"got {labels.min()}..{labels.max()}"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    return np.ascontiguousarray(images), labels


def _read_names(source: _Source, label_kind: str) -> list[str] | None:
    if source.fmt == "binary":
        member = source.spec.meta[0] if label_kind == "fine" else source.spec.meta[-1]
        text = source.read(member).decode("utf-8", errors="replace")
        return [line.strip() for line in text.splitlines() if line.strip()]
    meta = _restricted_load(source.read(source.spec.meta[0]), source.describe(source.spec.meta[0]))
    if not isinstance(meta, dict):
        return None
    meta = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in meta.items()}
    names = meta.get("label_names", meta.get(f"{label_kind}_label_names"))
    if not isinstance(names, list):
        return None
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# The largest array a CIFAR batch may ask for: a batch is 10,000 x 3,072 bytes (30 MB); a
# crafted pickle asking for terabytes is refused before anything is allocated.
MAX_ARRAY_BYTES = 1 << 30


class _TooLarge(Exception):
    pass


def _array_bytes(shape, dtype) -> int:
    dims = (shape,) if isinstance(shape, int) else shape
    if not isinstance(dims, tuple) or not all(isinstance(d, int) for d in dims):
        return 0  # not a shape: numpy itself refuses it
    try:
        itemsize = np.dtype(dtype).itemsize if dtype is not None else 8
    except TypeError:
        itemsize = 8
    return math.prod(max(d, 0) for d in dims) * max(itemsize, 1)


def _check_size(shape, dtype) -> None:
    size = _array_bytes(shape, dtype)
    if size > MAX_ARRAY_BYTES:
        raise _TooLarge(f"it asks for an array of shape {shape} ({size:,} bytes)")


def _bounded_ndarray(shape, dtype=float, *args, **kwargs):
    """np.ndarray(...), refusing a shape whose array would be too large."""
    _check_size(shape, dtype)
    return np.ndarray(shape, dtype, *args, **kwargs)


def _bounded_reconstruct(subtype, shape, dtype):
    """numpy's _reconstruct (what an array pickles as), with the size check; the pickle's
    reference to numpy.ndarray arrives here as `_bounded_ndarray`."""
    _check_size(shape, dtype)
    if subtype is _bounded_ndarray:
        subtype = np.ndarray
    return _numpy_reconstruct()(subtype, shape, dtype)


def _bounded_dtype(*args, **kwargs):
    dtype = np.dtype(*args, **kwargs)
    if dtype.itemsize > MAX_ARRAY_BYTES:
        raise _TooLarge(f"it asks for a dtype of {dtype.itemsize:,} bytes per item")
    return dtype


# The globals a pickled CIFAR batch references: numpy arrays pickle as
# _reconstruct(ndarray, shape, dtype) + state, under numpy.core (numpy 1, and the official
# files) or numpy._core (numpy 2). dict, list, str, bytes and int need no global. Each is
# wrapped so that no call can allocate more than MAX_ARRAY_BYTES.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _bounded_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _bounded_reconstruct,
    ("numpy", "ndarray"): lambda: _bounded_ndarray,
    ("numpy", "dtype"): lambda: _bounded_dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    def __init__(self, file, where: str):
        super().__init__(file, encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str):
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise DataError(
                f"{self.where}: refusing to unpickle the global {module}.{name}; a CIFAR batch "
                "only holds dicts, lists, strings, bytes, ints and numpy arrays "
                "(allowed globals: "
                + ", ".join(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)
                + "). The file is not an official CIFAR batch."
            )
        return factory()


def _restricted_load(raw: bytes, where: str):
    try:
        return _CifarUnpickler(io.BytesIO(raw), where).load()
    except DataError:
        raise
    except (_TooLarge, MemoryError, OverflowError) as err:
        raise DataError(
            f"{where}: not an official CIFAR batch: {str(err) or 'it asks for too much memory'} "
            f"(a batch holds at most {MAX_ARRAY_BYTES:,} bytes)"
        ) from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as err:
        raise DataError(f"{where}: not a readable CIFAR python batch ({err})") from err
