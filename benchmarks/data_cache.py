"""First (decode) and cached load times of an image folder such as CIFAR-10 as JPEGs.

Usage: python benchmarks/data_cache.py ROOT [--cache-dir DIR | --user-cache] [--repeats 3]
           [--workers N] [--json FILE]

The first load decodes every image and writes the cache into a fresh folder (a temporary
one unless --cache-dir is given); the later loads read that cache. With --user-cache the
decoded cache goes where every odenets command looks for it ($ODENETS_CACHE, else the user
cache folder), so later commands on the same folder start from it; there the first load
decodes only if that cache holds no copy of the folder yet.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    machine_info,
    make_parser,
    print_machine,
    settings_of,
    write_report,
)

from odenets.data import load_image_folder  # noqa: E402


def parse_args(argv: list[str] | None) -> Namespace:
    p = make_parser(__doc__)
    p.add_argument("root", help="folder with train/<class>/* and test/<class>/*")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cache-dir", default=None, help="cache folder (default: a fresh temp)")
    where.add_argument(
        "--user-cache", action="store_true", help="the cache every odenets command reads"
    )
    p.add_argument("--repeats", type=int, default=3, help="cached loads to time")
    p.add_argument("--workers", type=int, default=None, help="decoding threads")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def time_split(args: Namespace, split: str, cache_dir: str | None) -> dict:
    """Seconds of the first load of one split and of `--repeats` cached loads after it."""
    t0 = time.perf_counter()
    images, labels, names = load_image_folder(
        args.root, split=split, cache_dir=cache_dir, num_workers=args.workers
    )
    first = time.perf_counter() - t0
    cached = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        load_image_folder(args.root, split=split, cache_dir=cache_dir)
        cached.append(time.perf_counter() - t0)
    row = {
        "split": split,
        "images": len(labels),
        "shape": list(images.shape[1:]),
        "classes": len(names),
        "first_load_s": first,
        "first_load_images_per_s": len(labels) / first,
        "cached_load_s": cached,
    }
    line = (
        f"{split:5s} {len(labels):6d} images {tuple(images.shape[1:])} "
        f"{len(names)} classes: first load {first:7.2f} s ({len(labels) / first:,.0f} img/s)"
    )
    if cached:
        median = sorted(cached)[len(cached) // 2]
        line += f", cached load best {min(cached):.3f} s, median {median:.3f} s"
    print(line, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info(torch.device("cpu"))
    print_machine(info)
    with tempfile.TemporaryDirectory(prefix="odenets-bench-") as tmp:
        cache_dir = None if args.user_cache else (args.cache_dir or tmp)
        workers = args.workers or f"default ({min(8, os.cpu_count() or 1)})"
        print(f"root {args.root}, cache {cache_dir or 'user cache'}, decoding threads {workers}")
        rows = [time_split(args, split, cache_dir) for split in ("train", "test")]
    if args.json:
        write_report(args.json, {"machine": info, "settings": settings_of(args), "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
