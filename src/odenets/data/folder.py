"""Image folders: root/{train,test}/<class>/*.{png,jpg,jpeg}, decoded once into a uint8 cache.

Classes are the sub-folders of train/ and test/ together, sorted by name, so both splits
share one label numbering. The decoded split is saved as an uncompressed .npz keyed by a
hash of the sorted file list with sizes and modification times: a changed folder is read
again, an unchanged one loads in a fraction of a second. The cache lives under the user
cache folder ($ODENETS_CACHE, else $XDG_CACHE_HOME/odenets, else ~/.cache/odenets), in one
sub-folder per data folder (its name and a hash of its resolved path): the data folder is
never written into, since it may be shared, read-only to others or under version control.
$ODENETS_NO_CACHE=1 (the CLI's --no-cache) decodes every time and writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from odenets.data._io import atomic_write, cache_enabled, cache_root
from odenets.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
CACHE_FORMAT = 1  # bump when the cache layout changes so old files are ignored


def load_image_folder(
    root: str | os.PathLike,
    *,
    split: str,
    cache: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load one split of an image folder.

    Args:
        root: folder holding train/<class>/* and test/<class>/*.
        split: "train" or "test".
        cache: read and write the decoded cache (False decodes every time, writes nothing);
            default: on unless $ODENETS_NO_CACHE is set.
        cache_dir: the folder that holds the cache files of this data folder; default a
            sub-folder of the user cache folder ($ODENETS_CACHE, else
            $XDG_CACHE_HOME/odenets, else ~/.cache/odenets) named after the data folder.
        num_workers: decoding threads (default: up to 8, one per CPU).

    Returns:
        images uint8 (N, H, W, C) with C = 3 (or 1 for a grey folder), labels int64 (N,)
        and the sorted class names. Files are ordered by class, then by file name.
    """
    root = Path(root).expanduser()
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(
            f"image folder {split_dir} not found; expected {root}/{split}/<class>/*.png|jpg|jpeg"
        )
    class_names = _class_names(root)
    files = _list_files(root, split, class_names)
    if not files:
        raise DataError(
            f"no images (*.png, *.jpg, *.jpeg) under {split_dir}/<class>/; "
            f"classes found: {class_names}"
        )
    if cache is None:
        cache = cache_enabled()
    key = _cache_key(class_names, files)
    path = _cache_path(root, split, key, cache_dir) if cache else None
    if path is not None and path.is_file():
        cached = _read_cache(path, class_names)
        if cached is not None:
            return cached
    images, labels = _decode_all(split_dir, files, num_workers)
    if path is not None:
        _write_cache(path, images, labels, class_names)
    return images, labels, class_names


def _class_names(root: Path) -> list[str]:
    names = set()
    for split in SPLITS:
        if (root / split).is_dir():
            # Hidden folders (.ipynb_checkpoints, ...) are not classes.
            names.update(
                e.name for e in os.scandir(root / split) if e.is_dir() and e.name[0] != "."
            )
    if not names:
        raise DataError(f"no class folders under {root}/train or {root}/test")
    train, test = (_class_folders(root / split) for split in SPLITS)
    if train and test - train:
        raise DataError(
            f"{root}/test has classes with no folder in {root}/train: "
            f"{sorted(test - train)}; a model trained on {root}/train cannot predict them "
            "(every test class needs a train folder)"
        )
    return sorted(names)


def _class_folders(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {e.name for e in os.scandir(folder) if e.is_dir() and e.name[0] != "."}


def _list_files(root: Path, split: str, class_names: list[str]) -> list[tuple[int, str, int, int]]:
    """(label, 'class/name', size, mtime_ns) for every image, sorted by class then name."""

    def list_class(label: int) -> list[tuple[int, str, int, int]]:
        name = class_names[label]
        folder = root / split / name
        if not folder.is_dir():
            return []
        entries = [
            e for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file()
        ]
        out = []
        for e in sorted(entries, key=lambda e: e.name):
            st = e.stat()
            out.append((label, f"{name}/{e.name}", st.st_size, st.st_mtime_ns))
        return out

    # One stat per file dominates a cached load; the system calls overlap well in threads.
    with ThreadPoolExecutor(max_workers=min(8, len(class_names))) as pool:
        return [f for part in pool.map(list_class, range(len(class_names))) for f in part]


def _cache_key(class_names: list[str], files: list[tuple[int, str, int, int]]) -> str:
    h = hashlib.sha256(f"odenets-folder-cache v{CACHE_FORMAT}\n".encode())
    h.update(("\t".join(class_names) + "\n").encode())
    for _, rel, size, mtime in files:
        h.update(f"{rel}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()[:24]


def _cache_path(root: Path, split: str, key: str, cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        folder = Path(cache_dir).expanduser()
    else:
        # One sub-folder per data root, so two folders never share a cache file name.
        tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
        folder = cache_root() / "folders" / f"{root.resolve().name}-{tag}"
    return folder / f"{split}-{key}.npz"


def _images_path(path: Path) -> Path:
    # The images sit in a plain .npy beside the small .npz of labels and names: a .npy maps
    # straight into memory, while reading an .npz member copies it and checks a CRC.
    return path.with_name(path.stem + "-images.npy")


def _read_cache(path: Path, class_names: list[str]):
    try:
        with np.load(path, allow_pickle=False) as z:
            labels = z["labels"]
            names = [str(s) for s in z["class_names"]]
        # Copy-on-write map: pages are read on first use and writes stay in memory.
        images = np.asarray(np.load(_images_path(path), mmap_mode="c", allow_pickle=False))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        warnings.warn(f"ignoring unreadable cache {path} ({err}); decoding again", stacklevel=3)
        return None
    if names != class_names or images.ndim != 4 or len(images) != len(labels):
        warnings.warn(f"ignoring inconsistent cache {path}; decoding again", stacklevel=3)
        return None
    logger.debug("loaded %d images from cache %s", len(images), path)
    return images, labels.astype(np.int64, copy=False), names


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray, class_names: list[str]):
    try:
        # The .npz is written last: a cache counts only once both files are complete.
        with atomic_write(_images_path(path)) as f:
            np.save(f, images)
        with atomic_write(path) as f:
            np.savez(f, labels=labels, class_names=np.array(class_names))
    except OSError as err:
        warnings.warn(f"could not write the image cache {path}: {err}", stacklevel=3)
        return
    # Older caches of the same split describe a folder that no longer exists.
    split = path.name.split("-", 1)[0]
    keep = {path, _images_path(path)}
    for old in path.parent.glob(f"{split}-*.np[yz]"):
        if old not in keep:
            old.unlink(missing_ok=True)


def _decode_all(split_dir: Path, files, num_workers: int | None) -> tuple[np.ndarray, np.ndarray]:
    first = _open(split_dir / files[0][1])
    mode = "L" if first.mode in ("1", "L", "I", "I;16", "F") else "RGB"
    first = np.asarray(first.convert(mode))
    shape = first.shape if first.ndim == 3 else (*first.shape, 1)
    images = np.empty((len(files), *shape), dtype=np.uint8)  # (N, H, W, C)
    labels = np.array([f[0] for f in files], dtype=np.int64)

    def decode(i: int) -> None:
        path = split_dir / files[i][1]
        arr = np.asarray(_open(path).convert(mode))
        arr = arr.reshape(*arr.shape[:2], -1)
        if arr.shape != shape:
            raise DataError(
                f"{path} is {arr.shape[1]}x{arr.shape[0]} with {arr.shape[2]} channel(s); "
                f"expected every image of the folder to be {shape[1]}x{shape[0]} like "
                f"{split_dir / files[0][1]}"
            )
        images[i] = arr

    workers = num_workers or min(8, os.cpu_count() or 1)
    on_terminal = sys.stderr.isatty()
    if not on_terminal:
        logger.info("decoding %s images of %s", f"{len(files):,}", split_dir)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        bar = tqdm(
            pool.map(decode, range(len(files)), chunksize=256),
            total=len(files),
            desc=f"decoding {split_dir}",
            unit="img",
            leave=False,
            # Off a terminal a bar would fill a log with carriage returns: two lines instead.
            disable=not on_terminal,
        )
        for _ in bar:
            pass
    if not on_terminal:
        logger.info("decoded %s in %.1f s", split_dir, time.perf_counter() - started)
    return images, labels


def _open(path: Path):
    try:
        im = Image.open(path)
        im.load()
    except (OSError, SyntaxError) as err:
        raise DataError(f"cannot decode image {path}: {err}") from err
    return im
