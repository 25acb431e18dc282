"""`odenets data download|corrupt`: fetch the official CIFAR archives; write generated CIFAR-C
noise sets in the official layout."""

from __future__ import annotations

import argparse
import time

from odenets.commands._cache import add_cache_arguments
from odenets.data.archives import download_cifar
from odenets.data.corruptions import NOISE_CORRUPTIONS, corruption_name, write_cifar_c
from odenets.data.datasets import load_dataset


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    d = sub.add_parser(
        "download",
        help="download an official CIFAR archive (resumable, md5-verified)",
        description="Download an official CIFAR archive into --root (resumable, md5-verified).",
    )
    d.add_argument("name", choices=("cifar10", "cifar100"))
    d.add_argument("--root", required=True, help="folder for the archive")
    d.add_argument(
        "--format",
        choices=("python", "binary"),
        default="python",
        help="archive format: python (pickled batches) or binary (default: python)",
    )
    d.add_argument("--url", default=None, help="full URL of the archive (default: CIFAR page)")
    d.add_argument(
        "--retries", type=int, default=3, help="resumed attempts after a drop (default: 3)"
    )
    d.set_defaults(data_run=_download)

    c = sub.add_parser(
        "corrupt",
        help="write generated CIFAR-C noise sets (<name>.npy + labels.npy)",
        description=(
            "Corrupt a test set with the CIFAR-C noise corruptions at severities 1-5 and write "
            "<name>.npy (uint8 (5N, H, W, C), severity 1 first) and labels.npy."
        ),
    )
    c.add_argument("--root", required=True, help="data folder of the clean test set")
    add_cache_arguments(c)
    c.add_argument(
        "--dataset",
        choices=("cifar10", "cifar100", "folder"),
        default="cifar10",
        help="data set of the clean test set under --root (default: cifar10)",
    )
    c.add_argument("--out", required=True, help="folder to write the .npy files into")
    c.add_argument("--seed", type=int, default=0, help="base seed of the noise (default: 0)")
    c.add_argument(
        "--corruptions",
        nargs="+",
        default=None,
        metavar="NAME",
        help="subset of gaussian, shot, impulse, speckle (the official file names "
        "gaussian_noise, ... too; default: all four)",
    )
    c.set_defaults(data_run=_corrupt)


def run(args: argparse.Namespace) -> int:
    return args.data_run(args)


def _download(args: argparse.Namespace) -> int:
    path = download_cifar(
        args.name, args.root, format=args.format, url=args.url, retries=args.retries
    )
    print(f"{args.name} ({args.format}): {path} (md5 verified)")
    return 0


def _corrupt(args: argparse.Namespace) -> int:
    names = [corruption_name(n) for n in args.corruptions or NOISE_CORRUPTIONS]
    data = load_dataset(args.dataset, root=args.root, split="test")
    t0 = time.perf_counter()
    paths = write_cifar_c(data.images, data.labels, args.out, names=names, seed=args.seed)
    print(
        f"{args.dataset} test set ({len(data)} images, {data.images.shape[1]}x"
        f"{data.images.shape[2]}): wrote {len(names)} corruption(s) x 5 severities in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    for path in paths:
        print(f"  {path}")
    return 0
