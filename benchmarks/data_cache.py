"""First (decode) and cached load times of an image folder such as CIFAR-10 as JPEGs.

Usage: python benchmarks/data_cache.py ROOT [--cache-dir DIR] [--repeats 3]

The first load decodes every image and writes the cache into a fresh folder (a temporary
one unless --cache-dir is given); the later loads read that cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from odenets.data import load_image_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder with train/<class>/* and test/<class>/*")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: a fresh temp)")
    parser.add_argument("--repeats", type=int, default=3, help="cached loads to time")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="odenets-bench-") as tmp:
        cache_dir = args.cache_dir or tmp
        print(f"root {args.root}, cache {cache_dir}, {os.cpu_count()} CPUs")
        for split in ("train", "test"):
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
            print(
                f"{split:5s} {len(labels):6d} images {tuple(images.shape[1:])} "
                f"{len(names)} classes: first load {first:7.2f} s "
                f"({len(labels) / first:,.0f} img/s), cached load best {min(cached):.3f} s, "
                f"median {sorted(cached)[len(cached) // 2]:.3f} s"
            )


if __name__ == "__main__":
    main()
