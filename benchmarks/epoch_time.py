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

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_machine, write_json  # noqa: E402

from odenets.device import resolve_device  # noqa: E402
from odenets.training import TrainConfig, fit  # noqa: E402


def _switch(value: str | None) -> bool | None:
    return None if value is None else value == "on"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    info = machine_info(device)
    print_machine(info)
    with tempfile.TemporaryDirectory(prefix="odenets-epoch-") as tmp:
        config = TrainConfig(
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
            out=str(Path(tmp) / "run"),
            progress=False,
        )
        t0 = time.perf_counter()
        run = fit(config)
        wall = time.perf_counter() - t0
    epoch = run.metrics[-1]
    n_train = run.config["dataset"]["n_train"]
    train = run.config["train"]
    result = {
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
    for key, value in result.items():
        print(f"{key:30s} {value:.3f}" if isinstance(value, float) else f"{key:30s} {value}")
    if args.json:
        write_json(args.json, {"machine": info, "settings": vars(args), "result": result})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
