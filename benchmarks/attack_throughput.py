"""Adversarial attack throughput: images/s of PGD-20 and APGD-CE, float32, on test-size data.

    python benchmarks/attack_throughput.py --model in_resnet110 --device cuda --n 10000
    python benchmarks/attack_throughput.py --model resnet20 --device cpu --n 128 \
        --data path/to/cifar10-jpeg --json runs/bench/attack_cpu.json

The attacks are the library's own (`odenets.robustness.create_attack`), L∞ radius 8/255 in
pixel units, on the model in eval mode. Images are the first `--n` test images of a
cifar10-jpeg folder (`--data`) or seeded uniform noise of the same shape; the cost of an
attack does not depend on the weights, so an untrained model gives the same figure. One
repetition attacks all `--n` images in batches of `--batch`; one untimed batch warms up;
the median over `--reps` repetitions is reported, timed with CUDA events on a GPU.
"""

from __future__ import annotations

import itertools
import statistics
import sys
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    machine_info,
    make_parser,
    model_names,
    print_machine,
    print_table,
    settings_of,
    setup_device,
    synchronize,
    time_call,
    write_report,
)

import odenets  # noqa: E402
from odenets.models.base import to_channels_last  # noqa: E402
from odenets.robustness import create_attack  # noqa: E402

TABLE_COLUMNS = [
    ("model", "model", ""),
    ("layout", "layout", ""),
    ("attack", "attack", ""),
    ("steps", "steps", ""),
    ("n", "images", ""),
    ("seconds", "seconds", ".2f"),
    ("images_per_s", "images/s", ".1f"),
    ("seconds_per_10k", "s per 10k", ".1f"),
]


def parse_args(argv: list[str] | None) -> Namespace:
    p = make_parser(__doc__)
    p.add_argument("--model", default="in_resnet110", help="comma-separated model names")
    p.add_argument("--device", default="auto")
    p.add_argument("--n", type=int, default=None, help="images attacked (cuda 10000, cpu 128)")
    p.add_argument("--batch", type=int, default=None, help="attack batch (cuda 2500, cpu 64)")
    p.add_argument("--attacks", nargs="+", default=["pgd", "apgd_ce"])
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--apgd-steps", type=int, default=100)
    p.add_argument("--eps", type=float, default=8 / 255, help="pixel units")
    p.add_argument("--data", default=None, help="cifar10-jpeg root; default synthetic images")
    p.add_argument(
        "--layouts",
        nargs="+",
        choices=["channels_last", "contiguous"],
        default=["channels_last"],
        help="weight layouts to time (default: channels_last, as odenets.robustness.evaluate)",
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def fill_device_defaults(args: Namespace, device: torch.device) -> None:
    """Image count and attack batch left unset get the device's defaults."""
    on_gpu = device.type == "cuda"
    args.n = args.n or (10_000 if on_gpu else 128)
    args.batch = min(args.batch or (2500 if on_gpu else 64), args.n)


def load_images(args: Namespace) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images float (N, 3, 32, 32) in [0, 1], labels (N,), source description)."""
    if args.data:
        from odenets.data import load_image_folder

        images, labels, _ = load_image_folder(args.data, split="test")
        images = torch.as_tensor(images[: args.n]).permute(0, 3, 1, 2).float() / 255
        return images, torch.as_tensor(labels[: args.n]), f"{args.data} (test, first {args.n})"
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.rand(args.n, 3, 32, 32, generator=gen)
    return images, torch.randint(0, 10, (args.n,), generator=gen), "synthetic uniform"


def attacked_model(name: str, layout: str, seed: int, device: torch.device) -> nn.Module:
    """The seeded model in eval mode, its weights in the given layout."""
    torch.manual_seed(seed)
    model = odenets.create_model(name, num_classes=10).to(device).eval()
    if layout == "channels_last":
        to_channels_last(model)
    return model


def attack_times(
    attack: Callable[..., object],
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    args: Namespace,
    device: torch.device,
) -> list[float]:
    """Seconds of each repetition attacking every image in batches, after one untimed batch."""

    def run_all() -> None:
        for i in range(0, len(labels), args.batch):
            attack(model, images[i : i + args.batch], labels[i : i + args.batch])

    attack(model, images[: args.batch], labels[: args.batch])  # warm-up
    synchronize(device)
    return [time_call(run_all, device) for _ in range(args.reps)]


def benchmark_row(
    name: str,
    layout: str,
    attack_name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    args: Namespace,
    device: torch.device,
) -> dict:
    """Time one attack on one model in one layout; the result row, also printed in brief."""
    model = attacked_model(name, layout, args.seed, device)
    steps = args.pgd_steps if attack_name.startswith("pgd") else args.apgd_steps
    attack = create_attack(attack_name, eps=args.eps, steps=steps, seed=args.seed)
    times = attack_times(attack, model, images, labels, args, device)
    seconds = statistics.median(times)
    print(
        f"{name} ({layout}) {attack_name}-{steps}: {len(labels) / seconds:.1f} images/s",
        flush=True,
    )
    return {
        "model": name,
        "layout": layout,
        "attack": attack_name,
        "steps": steps,
        "n": len(labels),
        "batch": args.batch,
        "seconds": seconds,
        "seconds_reps": times,
        "images_per_s": len(labels) / seconds,
        "seconds_per_10k": seconds * 10_000 / len(labels),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup_device(args, cudnn_benchmark=True)
    fill_device_defaults(args, device)
    info = machine_info(device)
    print_machine(info)
    images, labels, source = load_images(args)
    images, labels = images.to(device), labels.to(device)
    print(f"data: {source}, {len(labels)} images, batch {args.batch}")

    cases = itertools.product(model_names(args.model), args.layouts, args.attacks)
    rows = [benchmark_row(*case, images, labels, args, device) for case in cases]
    print()
    print_table(rows, TABLE_COLUMNS)
    if args.json:
        settings = settings_of(args)
        settings["data_source"] = source
        write_report(args.json, {"machine": info, "settings": settings, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
