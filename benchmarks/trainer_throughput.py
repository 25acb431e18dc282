"""Training images/s through the trainer itself (`odenets.training.loop.train_one_epoch`).

    python benchmarks/trainer_throughput.py --model resnet20,in_resnet110 --device cpu

Unlike train_throughput.py, which times a bare step, this runs the trainer's epoch loop:
the device-resident loader with the paper's augmentation, loss and accuracy accumulated on
the device, the non-finite check, the stability projection, and the speed switches that
`fit` picks for the device (or those given). Random CIFAR-sized uint8 images stand in for
the data. Each repetition is one epoch of `--images` images; the first is a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import odenets
from odenets.data import DeviceLoader
from odenets.training.distributed import DistContext
from odenets.training.loop import StepContext, train_one_epoch


def images_per_second(name: str, args: argparse.Namespace, device: torch.device) -> list[float]:
    torch.manual_seed(0)
    model = odenets.create_model(name, num_classes=10).to(device)
    fmt = torch.channels_last if args.channels_last else torch.preserve_format
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.param_groups(1e-4), lr=0.01, momentum=0.9)
    net = torch.compile(model) if args.compile else model
    ctx = StepContext(
        model=model,
        net=net,
        eval_net=net,
        optimizer=optimizer,
        device=device,
        amp=args.amp,
        dist=DistContext(),
        check_every=1 if device.type == "cpu" else 100,
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images)
    loader = DeviceLoader(
        images,
        labels,
        batch_size=args.batch,
        device=device,
        shuffle=True,
        augment=True,
        channels_last=args.channels_last,
    )
    rates = []
    for rep in range(args.reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_one_epoch(ctx, loader.epoch(rep), epoch=rep + 1, lr=0.01, num_batches=len(loader))
        if device.type == "cuda":
            torch.cuda.synchronize()
        if rep > 0:  # the first epoch is the warm-up (and compilation)
            rates.append(args.images / (time.perf_counter() - start))
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="resnet20,in_resnet110", help="comma-separated names")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--images", type=int, default=512, help="images per timed epoch")
    p.add_argument("--reps", type=int, default=3, help="timed epochs (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    args = p.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    for key in ("amp", "channels_last", "compile"):  # fit's defaults: on for CUDA only
        if getattr(args, key) is None:
            setattr(args, key, device.type == "cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"batch {args.batch}, amp {args.amp}, channels_last {args.channels_last}, "
        f"compile {args.compile}"
    )
    print(f"{'model':<16} {'images/s (median)':>18} {'min':>8} {'max':>8}")
    for name in args.model.split(","):
        rates = images_per_second(name, args, device)
        print(f"{name:<16} {statistics.median(rates):>18.1f} {min(rates):>8.1f} {max(rates):>8.1f}")


if __name__ == "__main__":
    main()
