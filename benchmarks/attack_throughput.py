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

import argparse
import itertools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    machine_info,
    print_machine,
    print_table,
    synchronize,
    time_call,
    write_json,
)

import odenets  # noqa: E402
from odenets.device import resolve_device  # noqa: E402
from odenets.models.base import to_channels_last  # noqa: E402
from odenets.robustness import create_attack  # noqa: E402


def load_images(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images float (N, 3, 32, 32) in [0, 1], labels (N,), source description)."""
    if args.data:
        from odenets.data import load_image_folder

        images, labels, _ = load_image_folder(args.data, split="test")
        images = torch.as_tensor(images[: args.n]).permute(0, 3, 1, 2).float() / 255
        return images, torch.as_tensor(labels[: args.n]), f"{args.data} (test, first {args.n})"
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.rand(args.n, 3, 32, 32, generator=gen)
    return images, torch.randint(0, 10, (args.n,), generator=gen), "synthetic uniform"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    args.n = args.n or (10_000 if on_gpu else 128)
    args.batch = min(args.batch or (2500 if on_gpu else 64), args.n)
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    info = machine_info(device)
    print_machine(info)
    images, labels, source = load_images(args)
    images, labels = images.to(device), labels.to(device)
    print(f"data: {source}, {len(labels)} images, batch {args.batch}")

    rows = []
    names = [m.strip() for m in args.model.split(",") if m.strip()]
    for name, layout, attack_name in itertools.product(names, args.layouts, args.attacks):
        torch.manual_seed(args.seed)
        model = odenets.create_model(name, num_classes=10).to(device).eval()
        if layout == "channels_last":
            to_channels_last(model)
        steps = args.pgd_steps if attack_name.startswith("pgd") else args.apgd_steps
        attack = create_attack(attack_name, eps=args.eps, steps=steps, seed=args.seed)

        def run_all(attack=attack, model=model) -> None:
            for i in range(0, len(labels), args.batch):
                attack(model, images[i : i + args.batch], labels[i : i + args.batch])

        attack(model, images[: args.batch], labels[: args.batch])  # warm-up
        synchronize(device)
        times = [time_call(run_all, device) for _ in range(args.reps)]
        seconds = statistics.median(times)
        rows.append(
            {
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
        )
        print(
            f"{name} ({layout}) {attack_name}-{steps}: {len(labels) / seconds:.1f} images/s",
            flush=True,
        )

    print()
    print_table(
        rows,
        [
            ("model", "model", ""),
            ("layout", "layout", ""),
            ("attack", "attack", ""),
            ("steps", "steps", ""),
            ("n", "images", ""),
            ("seconds", "seconds", ".2f"),
            ("images_per_s", "images/s", ".1f"),
            ("seconds_per_10k", "s per 10k", ".1f"),
        ],
    )
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        settings["data_source"] = source
        write_json(args.json, {"machine": info, "settings": settings, "results": rows})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
