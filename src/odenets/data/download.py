"""Resumable, md5-verified downloads (of the official CIFAR archives: `archives.download_cifar`).

The bytes go to `<file>.part`; an interrupted transfer keeps it and the next attempt asks
the server for the rest (HTTP Range). Only a complete file whose md5 matches is renamed to
its final name, so a failed download never replaces a file that is already there; a wrong
md5 removes the partial file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from odenets.errors import DataError

logger = logging.getLogger(__name__)

# The CIFAR page of the University of Toronto; $ODENETS_CIFAR_URL replaces it (a mirror,
# or a local server in tests).
DEFAULT_BASE_URL = "https://www.cs.toronto.edu/~kriz/"
CHUNK = 1 << 16


def base_url() -> str:
    url = os.environ.get("ODENETS_CIFAR_URL", DEFAULT_BASE_URL)
    return url if url.endswith("/") else url + "/"


def file_md5(path: str | os.PathLike) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch `url` to `dest` through `dest.part`, resuming, and verify its md5."""
    dest = Path(dest)
    if dest.is_file():
        got = file_md5(dest)
        if got == md5:
            return dest
        logger.warning("%s has md5 %s, expected %s; downloading it again", dest, got, md5)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout=timeout, progress=progress)
            break
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            if isinstance(err, urllib.error.HTTPError):
                if err.code == 416 and part.exists():  # nothing left to fetch: verify it
                    break
                raise DataError(f"downloading {url} failed: HTTP {err.code} {err.reason}") from err
            done = part.stat().st_size if part.exists() else 0
            if attempt == retries and not part.exists():
                raise DataError(f"downloading {url} failed ({err}); nothing was received") from err
            if attempt == retries:
                raise DataError(
                    f"downloading {url} was interrupted after {done:,} bytes ({err}); the "
                    f"partial file {part} is kept and the next download resumes from it"
                ) from err
            logger.warning("download of %s interrupted at %d bytes (%s); resuming", url, done, err)
    got = file_md5(part)
    if got != md5:
        part.unlink(missing_ok=True)
        raise DataError(
            f"the file downloaded from {url} has md5 {got}, expected {md5}; removed the "
            f"partial file {part}" + (f" ({dest} is left as it was)" if dest.exists() else "")
        )
    with open(part, "rb") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """Append the rest of `url` to `part`, starting where it ends."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "odenets"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if start and response.status != 206:
            start = 0  # the server ignored the range: start over
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with (
            open(part, "ab" if start else "wb") as f,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while block := response.read(CHUNK):
                f.write(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    if total is not None and part.stat().st_size < total:
        raise http.client.IncompleteRead(b"", total - part.stat().st_size)
