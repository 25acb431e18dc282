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
    ref_in_resnet_gating{D}   In-ResNet-gating: 1x1 convolution, then the gate by autograd
    ref_in_resnet_gating_sig{D}  the same with a sigmoid gate

Several processes sharing one device (their total images/s): start N copies with the same
`--barrier DIR --barrier-count N`. Each warms up, then waits until all N have, so the timed
steps of all of them overlap; the JSON records each process's timed window (Unix seconds).
`--no-peak` skips the matmul peak, which would disturb the others' timed steps.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    machine_info,
    make_parser,
    measure_peak_tflops,
    model_names,
    print_machine,
    print_table,
    settings_of,
    setup_device,
    synchronize,
    time_call,
    write_report,
)
from train_runner import Runner, flops_per_image, make_runner  # noqa: E402

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
TABLE_COLUMNS = [
    ("model", "model", ""),
    ("config", "config", ""),
    ("step_s", "step s", ".4f"),
    ("step_s_min", "min s", ".4f"),
    ("images_per_s", "images/s", ".1f"),
    ("tflops", "TFLOP/s", ".4f"),
    ("peak_tflops", "peak", ".3f"),
    ("peak_fraction", "of peak", ".1%"),
    ("warmup_s", "warm-up s", ".1f"),
]


def parse_args(argv: list[str] | None) -> Namespace:
    p = make_parser(__doc__)
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
    p.add_argument("--barrier", default=None, help="folder shared by processes timed together")
    p.add_argument("--barrier-count", type=int, default=1, help="processes that share --barrier")
    p.add_argument("--barrier-timeout", type=float, default=600.0, help="seconds to wait for them")
    p.add_argument("--no-peak", action="store_true", help="do not measure the matmul peak")
    args = p.parse_args(argv)
    if args.barrier_count < 1:
        p.error(f"--barrier-count must be >= 1; got {args.barrier_count}")
    return args


def fill_device_defaults(args: Namespace, device: torch.device) -> None:
    """Steps, warm-up and loader size left unset get the device's defaults."""
    on_gpu = device.type == "cuda"
    args.steps = args.steps or (20 if on_gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 2)
    args.loader_images = args.loader_images or (50_000 if on_gpu else 4 * args.batch)


def count_model_flops(names: list[str], args: Namespace) -> dict[str, float]:
    """FLOPs per image of each model, printed with the cost of one training step."""
    flops = {}
    for name in names:
        flops[name] = flops_per_image(name, args.num_classes)
        print(f"{name}: {flops[name] / 1e9:.4f} GFLOP per image (forward + backward, counted)")
        print(
            f"{name}: one training step of batch {args.batch} = "
            f"{flops[name] * args.batch / 1e9:.1f} GFLOP",
            flush=True,
        )
    return flops


def warm_up(runner: Runner, steps: int, device: torch.device) -> None:
    """Take `steps` untimed steps (compilation included) and record their wall time."""
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        runner.step()
    synchronize(device)
    runner.warmup_s = time.perf_counter() - t0


def warmed_up_runners(
    names: list[str], configs: list[str], args: Namespace, device: torch.device
) -> list[Runner]:
    """A warmed-up runner per (model, configuration) pair, in that order."""
    runners = []
    for name in names:
        for config in configs:
            runner = make_runner(name, config, args, device)
            warm_up(runner, args.warmup, device)
            runners.append(runner)
            print(f"warmed up {name} [{config}] in {runner.warmup_s:.1f} s", flush=True)
    return runners


def interleaved_step_times(
    runners: list[Runner], device: torch.device, *, reps: int, steps: int
) -> list[list[float]]:
    """Seconds per step of each runner, one figure per repetition; each repetition times
    every runner in turn, so a change in machine load affects every runner alike."""
    times: list[list[float]] = [[] for _ in runners]
    for rep in range(reps):
        for runner, runner_times in zip(runners, times, strict=True):
            runner_times.append(time_call(runner.step, device, repeat=steps) / steps)
        print(f"repetition {rep + 1}/{reps} done", flush=True)
    return times


def wait_for_barrier(folder: str, count: int, timeout: float) -> None:
    """Say this process is ready (a file in `folder`) and wait until `count` processes are."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{os.getpid()}.ready").touch()
    deadline = time.monotonic() + timeout
    while (ready := len(list(path.glob("*.ready")))) < count:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"--barrier {folder}: {ready} of --barrier-count {count} processes ready "
                f"after {timeout:g} s; the others did not start or failed"
            )
        time.sleep(0.02)


def time_runners(
    runners: list[Runner], args: Namespace, device: torch.device
) -> tuple[list[list[float]], dict[torch.dtype, float], tuple[float, float]]:
    """Interleaved step times of every runner, the device's peak TFLOP/s per dtype (none
    with `--no-peak`) and the timed window in Unix seconds."""
    # The peak is measured before and after the timed steps and the larger figure kept, so a
    # burst of load from other processes during one measurement does not lower it.
    dtypes = [] if args.no_peak else sorted({r.dtype for r in runners}, key=str)
    peaks = {dt: measure_peak_tflops(device, dt) for dt in dtypes}
    if args.barrier:
        wait_for_barrier(args.barrier, args.barrier_count, args.barrier_timeout)
    synchronize(device)
    start = time.time()
    times = interleaved_step_times(runners, device, reps=args.reps, steps=args.steps)
    synchronize(device)
    window = (start, time.time())
    peaks = {dt: max(peaks[dt], measure_peak_tflops(device, dt)) for dt in dtypes}
    return times, peaks, window


def result_row(
    runner: Runner, times: list[float], flops: float, peak: float | None, batch: int
) -> dict:
    """One result: median and fastest step time, throughput and the fraction of peak (None
    where no peak was measured)."""
    step_s = statistics.median(times)
    tflops = flops * batch / step_s / 1e12
    return {
        "model": runner.name,
        "config": runner.config,
        "batch": batch,
        "step_s": step_s,
        "step_s_reps": times,
        # The fastest repetition: the least disturbed by other processes.
        "step_s_min": min(times),
        "images_per_s": batch / step_s,
        "gflop_per_image": flops / 1e9,
        "tflops": tflops,
        "peak_tflops": peak,
        "peak_fraction": tflops / peak if peak else None,
        "dtype": str(runner.dtype).removeprefix("torch."),
        "warmup_s": runner.warmup_s,
    }


def print_results(rows: list[dict], peaks: dict[torch.dtype, float]) -> None:
    print()
    print_table(rows, TABLE_COLUMNS)
    if peaks:
        print(
            "peak TFLOP/s measured with a square matmul: "
            + ", ".join(f"{str(k).removeprefix('torch.')} {v:.3f}" for k, v in peaks.items())
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup_device(args, cudnn_benchmark=True)
    fill_device_defaults(args, device)
    configs = args.configs or DEFAULT_CONFIGS[device.type]
    names = model_names(args.model)
    info = machine_info(device)
    print_machine(info)

    flops = count_model_flops(names, args)
    runners = warmed_up_runners(names, configs, args, device)
    times, peaks, window = time_runners(runners, args, device)
    rows = [
        result_row(r, t, flops[r.name], peaks.get(r.dtype), args.batch)
        for r, t in zip(runners, times, strict=True)
    ]
    print_results(rows, peaks)
    if args.json:
        settings = settings_of(args)
        settings["configs"] = configs
        report = {"machine": info, "settings": settings, "results": rows}
        report["timed_window_unix_s"] = list(window)
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
