"""Shared pieces of the benchmark scripts: command-line setup, machine description, timing,
FLOP counting, the device's measured matmul peak, result files and tables.

Timing rules used by every script: warm-up steps are run first and not timed; on CUDA the
time comes from CUDA events recorded on the stream (no host clock around asynchronous
work); on CPU from `time.perf_counter`; each figure is the median of several repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

import odenets
from odenets.device import resolve_device


def make_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose help shows the script's docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)


def setup_device(args: argparse.Namespace, *, cudnn_benchmark: bool = False) -> torch.device:
    """Apply `--threads`, resolve `--device` and, on CUDA if asked, turn on cuDNN autotuning."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if cudnn_benchmark and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def model_names(spec: str) -> list[str]:
    """The names of a comma-separated `--model` value, blanks dropped."""
    return [n.strip() for n in spec.split(",") if n.strip()]


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """Everything a reader needs to place a figure: hardware, software, current load."""
    info = {
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # The vector ISA torch dispatches to: bf16 is fast on CPU only with AVX-512 (BF16/AMX).
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "odenets_version": odenets.__version__,
        "platform": platform.platform(),
    }
    if hasattr(os, "getloadavg"):
        # Other processes on the machine slow every figure down; the load says how busy it was.
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda_version"] = torch.version.cuda
        info["cudnn_version"] = torch.backends.cudnn.version()
    return info


def print_machine(info: dict) -> None:
    keys = ["device", "gpu", "cpu", "cpu_cores", "torch_threads", "torch_version"]
    keys += ["odenets_version", "cuda_version", "load_average_1m"]
    print("  ".join(f"{k}={info[k]}" for k in keys if k in info))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, *, repeat: int = 1) -> float:
    """Seconds taken by `repeat` calls of `fn`, timed with CUDA events on a GPU.

    The caller has already run the warm-up. On CUDA the host only queues work, so the two
    events bracket the queued calls on the stream and the elapsed time is read after one
    synchronisation at the end.
    """
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return time.perf_counter() - t0


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn`, counted by `torch.utils.flop_counter.FlopCounterMode`.

    The counter sees matrix products and convolutions (2 FLOPs per multiply-add), forward
    and backward; elementwise work (BatchNorm, ReLU, the junction) is not counted, as usual.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def measure_peak_tflops(
    device: torch.device, dtype: torch.dtype, *, size: int | None = None, reps: int = 5
) -> float:
    """Measured peak of this device: the best TFLOP/s of a large square matmul in `dtype`.

    A measured figure, not the data-sheet one, so the fraction reported beside each
    configuration says how much of what this machine can actually do is used.
    """
    if size is None:
        # A CPU without native bf16 matmul (AVX2 only) runs bf16 at ~1 GFLOP/s: a 2048 matrix
        # would take minutes per product, and 512 already shows the peak.
        size = 8192 if device.type == "cuda" else (2048 if dtype == torch.float32 else 512)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    flops = 2.0 * size**3
    calls = 10 if device.type == "cuda" else 2
    best = min(time_call(lambda: torch.mm(a, b), device, repeat=calls) / calls for _ in range(reps))
    return flops / best / 1e12


def write_json(path: str | os.PathLike, obj: dict) -> None:
    """Write `obj` as JSON atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def settings_of(args: argparse.Namespace) -> dict:
    """The run's settings for a result file: every parsed flag but `--json` itself."""
    return {k: v for k, v in vars(args).items() if k != "json"}


def write_report(path: str | os.PathLike, obj: dict) -> None:
    """Write a result file with `write_json` and say where it went."""
    write_json(path, obj)
    print(f"wrote {path}")


def print_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> None:
    """Print rows as an aligned table; columns are (key, header, format spec)."""

    def cell(row: dict, key: str, spec: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        return format(value, spec) if spec else str(value)

    cells = [[cell(r, k, s) for k, _, s in columns] for r in rows]
    headers = [h for _, h, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
