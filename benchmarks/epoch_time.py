"""Wall time of one real training epoch on a cifar10-jpeg image folder, data loading included.

    python benchmarks/epoch_time.py path/to/cifar10-jpeg --model in_resnet110 --device cuda
    python benchmarks/epoch_time.py path/to/cifar10-jpeg --model resnet20 --device cpu \
        --limit 1024 --test-limit 1000

Runs `odenets.training.fit` for one epoch of the paper recipe (batch 128, SGD, augmentation)
into a temporary run folder and reports: the wall time of the whole call (reading the
images, or their decoded cache, building the model, the epoch, the test evaluation and the
checkpoint writes), the epoch time recorded in metrics.jsonl (training plus test
evaluation), and training images per second. The speed switches (bf16 autocast,
channels_last, torch.compile) take fit's defaults for the device unless given.
`--limit` trains on a fixed seeded subset, for CPUs.
"""

from __future__ import annotations

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
    setup_device,
    write_report,
)

from odenets.training import RunInfo, TrainConfig, fit  # noqa: E402


def _switch(value: str | None) -> bool | None:
    return None if value is None else value == "on"


def parse_args(argv: list[str] | None) -> Namespace:
    p = make_parser(__doc__)
    p.add_argument("data_root", help="folder with train/<class>/*.jpg and test/<class>/*.jpg")
    p.add_argument("--model", default="in_resnet110")
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=None, help="training images (default: all)")
    p.add_argument("--test-limit", type=int, default=None, help="test images (default: all)")
    p.add_argument("--batch", type=int, default=128)
    for flag in ("amp", "channels-last", "compile"):
        p.add_argument(f"--{flag}", choices=["on", "off"], default=None, help="default: fit's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def train_config(args: Namespace, device: torch.device, out: Path) -> TrainConfig:
    """One epoch of the paper recipe on the image folder, written to `out`."""
    return TrainConfig(
        model=args.model,
        dataset="folder",
        data_root=str(args.data_root),
        train_limit=args.limit,
        test_limit=args.test_limit,
        epochs=1,
        batch_size=args.batch,
        seed=args.seed,
        device=str(device),
        amp=_switch(args.amp),
        channels_last=_switch(args.channels_last),
        compile=_switch(args.compile),
        out=str(out),
        progress=False,
    )


def timed_fit(args: Namespace, device: torch.device) -> tuple[RunInfo, float]:
    """The finished run of one epoch in a temporary folder and the wall time of `fit`."""
    with tempfile.TemporaryDirectory(prefix="odenets-epoch-") as tmp:
        config = train_config(args, device, Path(tmp) / "run")
        t0 = time.perf_counter()
        run = fit(config)
        wall = time.perf_counter() - t0
    return run, wall


def epoch_result(args: Namespace, run: RunInfo, wall: float) -> dict:
    """The figures of the run: sizes, resolved speed switches, wall and epoch times."""
    epoch = run.metrics[-1]
    n_train = run.config["dataset"]["n_train"]
    train = run.config["train"]
    return {
        "model": args.model,
        "n_train": n_train,
        "n_test": run.config["dataset"]["n_test"],
        "batch": args.batch,
        "amp": train["amp"],
        "channels_last": train["channels_last"],
        "compile": train["compile"],
        "fit_wall_s": wall,
        "epoch_s": epoch["time_s"],
        "train_images_per_s_incl_eval": n_train / epoch["time_s"],
        "test_acc": epoch.get("test_acc"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup_device(args)
    info = machine_info(device)
    print_machine(info)
    run, wall = timed_fit(args, device)
    result = epoch_result(args, run, wall)
    for key, value in result.items():
        print(f"{key:30s} {value:.3f}" if isinstance(value, float) else f"{key:30s} {value}")
    if args.json:
        write_report(args.json, {"machine": info, "settings": vars(args), "result": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
