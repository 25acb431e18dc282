"""Training throughput of one network, one configuration at a time.

    python benchmarks/train_throughput.py --model in_resnet110 --batch 128 --device cpu
    python benchmarks/train_throughput.py --model in_resnet110,ref_in_resnet110 \
        --configs eager --reps 7 --json runs/bench/cpu.json

A configuration is `eager` (float32, NCHW, eager PyTorch) or a `+`-joined set of features
added to it:

    cl        channels_last memory format for the model and the batch
    bf16      bf16 autocast; weights, BatchNorm parameters and running statistics stay float32
    compile   torch.compile of the forward pass and loss (backward compiled with it)
    graphs    CUDA graphs for the fixed-shape step (torch.compile mode="reduce-overhead";
              CUDA only)
    loader    batches drawn from odenets.data.DeviceLoader (data resident on the device,
              random crop and flip there) instead of one pre-staged batch

One step is forward, cross-entropy, backward, SGD (momentum 0.9, weight decay 1e-4) and,
for NAIS-Net, the stability projection. FLOPs per image are counted once with
FlopCounterMode (forward and backward, convolutions and matrix products) and turned into
achieved TFLOP/s, also given as a fraction of this device's measured matmul peak in the
configuration's compute dtype. Repetitions of all (model, configuration) pairs are
interleaved, so a change in machine load affects every row alike.

Besides the registered odenets models, `--model` takes plain eager re-implementations of
the same architecture, written the straightforward way, for comparison:

    ref_resnet{D}             pre-activation ResNet
    ref_in_resnet{D}          In-ResNet, junction written out in eager PyTorch
    ref_lambda_in_resnet{D}   λ-In-ResNet as in the authors' code: f evaluated twice
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    count_flops,
    machine_info,
    measure_peak_tflops,
    print_machine,
    print_table,
    synchronize,
    time_call,
    write_json,
)

import odenets  # noqa: E402
from odenets.device import resolve_device  # noqa: E402
from odenets.models.base import to_channels_last  # noqa: E402

FEATURES = ("cl", "bf16", "compile", "graphs", "loader")
DEFAULT_CONFIGS = {
    "cpu": ["eager", "cl", "cl+bf16", "compile", "cl+compile", "cl+loader"],
    "cuda": [
        "eager",
        "cl",
        "cl+bf16",
        "cl+bf16+compile",
        "cl+bf16+compile+graphs",
        "cl+bf16+compile+graphs+loader",
    ],
}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


# --- plain eager re-implementations (the comparison baseline) ----------------------------
class _RefBlock(nn.Module):
    """Pre-activation basic block: BN, ReLU, conv3x3 (stride), BN, ReLU, conv3x3."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, stride, bias=False)
            )

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))


class RefNet(nn.Module):
    """The CIFAR pre-activation ResNet of the In-ResNet experiments in plain eager PyTorch.

    `junction` is "resnet" (x + f), "in_resnet" ((1 - ReLU(λ)) x + f, λ = ReLU(1 - k)) or
    "lambda_twice" ((1 - ReLU(k)) x + f + ReLU(k) f with f evaluated twice, as the authors'
    λ-In-ResNet does). The first block and the two downsampling blocks stay residual.
    """

    def __init__(self, depth: int, junction: str, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.junction = junction
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        blocks, cin = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(_RefBlock(cin, width, stride if i == 0 else 1))
                cin = width
        self.blocks = nn.ModuleList(blocks)
        self.ks = nn.Parameter(torch.empty(len(blocks)).uniform_(0.75, 0.80))
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1((images - self.mean) / self.std)
        for i, block in enumerate(self.blocks):
            if i == 0 or block.shortcut is not None or self.junction == "resnet":
                identity = x if block.shortcut is None else block.shortcut(x)
                x = identity + block.f(x)
            elif self.junction == "in_resnet":
                lam = F.relu(1 - self.ks[i])
                x = (1 - F.relu(lam)) * x + block.f(x)
            else:
                lam = F.relu(self.ks[i])
                x = (1 - lam) * x + block.f(x) + lam * block.f(x)
        x = F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1)
        return self.fc(x)


REF_JUNCTIONS = {
    "ref_resnet": "resnet",
    "ref_in_resnet": "in_resnet",
    "ref_lambda_in_resnet": "lambda_twice",
}


def build_model(name: str, num_classes: int) -> nn.Module:
    for prefix, junction in REF_JUNCTIONS.items():
        depth = name.removeprefix(prefix)
        if name.startswith(prefix) and depth.isdigit():
            if (int(depth) - 2) % 6:
                raise SystemExit(f"{name}: reference nets need depth 6N+2; got {depth}")
            return RefNet(int(depth), junction, num_classes)
    return odenets.create_model(name, num_classes=num_classes)


# --- one (model, configuration) pair ------------------------------------------------------
def parse_config(config: str, device: torch.device) -> frozenset[str]:
    features = frozenset() if config == "eager" else frozenset(config.split("+"))
    unknown = sorted(features - set(FEATURES))
    if unknown:
        raise SystemExit(
            f"unknown feature(s) {unknown} in --configs {config!r}; "
            f"use 'eager' or '+'-joined features from {list(FEATURES)}"
        )
    if "graphs" in features and device.type != "cuda":
        raise SystemExit(f"--configs {config!r}: CUDA graphs need a CUDA device; got {device}")
    return features


def _batch_stream(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


@dataclass
class Runner:
    """A model, its optimizer and a data source, ready to take timed training steps."""

    name: str
    config: str
    features: frozenset[str]
    model: nn.Module
    step: object  # () -> None
    warmup_s: float = 0.0

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if "bf16" in self.features else torch.float32


def make_runner(name: str, config: str, args: argparse.Namespace, device: torch.device) -> Runner:
    features = parse_config(config, device)
    torch.manual_seed(args.seed)
    model = build_model(name, args.num_classes).to(device).train()
    memory_format = torch.channels_last if "cl" in features else torch.contiguous_format
    if "cl" in features:
        to_channels_last(model)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    project = getattr(model, "project_", None)
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if "bf16" in features
        else contextlib.nullcontext()
    )

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with amp:
            return F.cross_entropy(model(x), y)

    if "compile" in features or "graphs" in features:
        mode = "reduce-overhead" if "graphs" in features else None
        forward_loss = torch.compile(forward_loss, mode=mode)

    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    if "loader" in features:
        from odenets.data import DeviceLoader

        n = max(args.loader_images, 2 * args.batch)
        images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, args.num_classes, (n,), generator=gen)
        loader = DeviceLoader(
            images.numpy(),
            labels.numpy(),
            batch_size=args.batch,
            device=device,
            shuffle=True,
            augment=True,
            drop_last=True,
            channels_last="cl" in features,
            seed=args.seed,
        )
        batches = _batch_stream(loader)
    else:
        x = torch.rand(args.batch, 3, 32, 32, generator=gen).to(device)
        x = x.contiguous(memory_format=memory_format)
        y = torch.randint(0, args.num_classes, (args.batch,), generator=gen).to(device)
        batches = iter(lambda: (x, y), None)

    def step() -> None:
        xb, yb = next(batches)
        if "graphs" in features:
            # Tells the CUDA-graph trees that the previous step's outputs are dead.
            torch.compiler.cudagraph_mark_step_begin()
        loss = forward_loss(xb, yb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if project is not None:
            with torch.no_grad():
                project()

    return Runner(name, config, features, model, step)


def flops_per_image(name: str, num_classes: int) -> float:
    """Forward + backward FLOPs of one image, counted on a CPU copy with batch 2."""
    torch.manual_seed(0)
    model = build_model(name, num_classes).train()
    x = torch.rand(2, 3, 32, 32)
    y = torch.arange(2) % num_classes
    return count_flops(lambda: F.cross_entropy(model(x), y).backward()) / 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="in_resnet110", help="comma-separated model names")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--configs", nargs="+", default=None, help="default: a ladder per device")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    p.add_argument("--steps", type=int, default=None, help="steps per repetition")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (compile included)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--loader-images", type=int, default=None, help="images held by the loader")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    args.steps = args.steps or (20 if on_gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 2)
    args.loader_images = args.loader_images or (50_000 if on_gpu else 4 * args.batch)
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    configs = args.configs or DEFAULT_CONFIGS[device.type]
    names = [n.strip() for n in args.model.split(",") if n.strip()]
    info = machine_info(device)
    print_machine(info)

    flops = {}
    for name in names:
        flops[name] = flops_per_image(name, args.num_classes)
        print(f"{name}: {flops[name] / 1e9:.4f} GFLOP per image (forward + backward, counted)")
        print(
            f"{name}: one training step of batch {args.batch} = "
            f"{flops[name] * args.batch / 1e9:.1f} GFLOP",
            flush=True,
        )

    runners = []
    for name in names:
        for config in configs:
            runner = make_runner(name, config, args, device)
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                runner.step()
            synchronize(device)
            runner.warmup_s = time.perf_counter() - t0
            runners.append(runner)
            print(f"warmed up {name} [{config}] in {runner.warmup_s:.1f} s", flush=True)

    # The peak is measured before and after the timed steps and the larger figure kept, so a
    # burst of load from other processes during one measurement does not lower it.
    dtypes = sorted({r.dtype for r in runners}, key=str)
    peaks = {dt: measure_peak_tflops(device, dt) for dt in dtypes}
    times: dict[int, list[float]] = {i: [] for i in range(len(runners))}
    for rep in range(args.reps):
        for i, runner in enumerate(runners):
            times[i].append(time_call(runner.step, device, repeat=args.steps) / args.steps)
        print(f"repetition {rep + 1}/{args.reps} done", flush=True)

    peaks = {dt: max(peaks[dt], measure_peak_tflops(device, dt)) for dt in dtypes}
    rows = []
    for i, runner in enumerate(runners):
        step_s = statistics.median(times[i])
        tflops = flops[runner.name] * args.batch / step_s / 1e12
        rows.append(
            {
                "model": runner.name,
                "config": runner.config,
                "batch": args.batch,
                "step_s": step_s,
                "step_s_reps": times[i],
                # The fastest repetition: the least disturbed by other processes.
                "step_s_min": min(times[i]),
                "images_per_s": args.batch / step_s,
                "gflop_per_image": flops[runner.name] / 1e9,
                "tflops": tflops,
                "peak_tflops": peaks[runner.dtype],
                "peak_fraction": tflops / peaks[runner.dtype],
                "dtype": str(runner.dtype).removeprefix("torch."),
                "warmup_s": runner.warmup_s,
            }
        )

    print()
    print_table(
        rows,
        [
            ("model", "model", ""),
            ("config", "config", ""),
            ("step_s", "step s", ".4f"),
            ("step_s_min", "min s", ".4f"),
            ("images_per_s", "images/s", ".1f"),
            ("tflops", "TFLOP/s", ".4f"),
            ("peak_tflops", "peak", ".3f"),
            ("peak_fraction", "of peak", ".1%"),
            ("warmup_s", "warm-up s", ".1f"),
        ],
    )
    print(
        "peak TFLOP/s measured with a square matmul: "
        + ", ".join(f"{str(k).removeprefix('torch.')} {v:.3f}" for k, v in peaks.items())
    )
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        settings["configs"] = configs
        write_json(args.json, {"machine": info, "settings": settings, "results": rows})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
