"""Forward + backward time of each junction alone, against the plain residual sum x + f.

    python benchmarks/junction_time.py --threads 1 --reps 60
    python benchmarks/junction_time.py --dtype bfloat16 --channels-last

A whole training step of a 56-layer net takes over a second on CPU and varies by several
per cent with machine load, so a few per cent of junction overhead is hard to see there.
This script times what differs between the In-ResNet variants and a ResNet: the junction
(x, f(x)) -> x_{n+1}, forward and backward (gradients for x, f(x) and the coefficients), at
the three stage shapes of a CIFAR ResNet at batch 128. Each figure is the fastest of
`--reps` repetitions (the least disturbed by other processes), and the overhead of a whole
step is estimated as the sum over the network's blocks of (junction - plain sum).

Each junction is timed as a block uses it: λ-In-ResNet and ETD, whose blocks fold the factor
b of f(x) into f's last convolution, as a·x + f plus the product of b with a 3x3 weight
tensor; with `--dtype bfloat16` under bf16 autocast, as in training. The element-wise gated
junctions are timed twice in the same process: as a training step runs them (the gate's
convolution inside the fused step) and, in the rows marked "(conv as a module)", as the
convolution module followed by `gated_sum`, the form evaluation uses.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    machine_info,
    make_parser,
    print_machine,
    print_table,
    write_report,
)

from odenets.models.fused import gated_sum, scaled_sum  # noqa: E402
from odenets.models.layers import JUNCTIONS, create_junction  # noqa: E402
from odenets.models.resnet import default_lambda_init  # noqa: E402

# (channels, spatial size) of the three stages of a CIFAR ResNet.
STAGES = ((16, 32), (32, 16), (64, 8))


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--depth", type=int, default=56, help="depth whose blocks are summed")
    p.add_argument("--reps", type=int, default=60, help="repetitions; the fastest is kept")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def time_junction(name: str, channels: int, size: int, args, *, module_gate: bool = False) -> float:
    """Fastest forward + backward of one junction, in seconds; `module_gate`: a gated
    junction's convolution as a module, then `gated_sum`."""
    gen = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    shape = (args.batch, channels, size, size)
    kwargs = {} if name == "resnet" else {"lambda_init": default_lambda_init(args.depth)}
    if name.endswith("_sig"):
        kwargs = {"lambda_init": (0.2, 0.25)}
    junction = create_junction(name, channels, **kwargs).to(memory_format=fmt)
    x = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    fx = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    grad = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    x.requires_grad_(True)
    fx.requires_grad_(True)
    # The weights of f's last 3x3 convolution: a block folds the junction's b into them.
    weight = torch.randn(channels, channels, 3, 3, generator=gen).requires_grad_(True)
    inputs = [x, fx, *junction.parameters()]
    amp = dtype == torch.bfloat16  # as in training: the gate's convolution under autocast

    def once():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            if module_gate:
                d = junction.proj(x)
                out = gated_sum(x, fx, d, sigmoid=junction.sigmoid_gate)
                torch.autograd.grad(out, inputs, grad)
                return
            scalars = junction.scalars()
            if scalars is None or scalars[1] is None:
                torch.autograd.grad(junction(x, fx), inputs, grad)
                return
            a, b = scalars  # as in `ResBlock`: b scales f's last weights, not f(x)
            out = scaled_sum(x, fx, a)
            scaled = (weight * b).sum()
        torch.autograd.grad([out, scaled], [*inputs, weight], [grad, torch.ones(())])

    for _ in range(3):
        once()
    best = float("inf")
    for _ in range(args.reps):
        t0 = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - t0)
    return best


def blocks_per_stage(depth: int) -> int:
    from odenets.models.resnet import DEPTHS

    return DEPTHS[depth][1]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(torch.device("cpu"))
    print_machine(info)
    n = blocks_per_stage(args.depth)
    rows = []
    plain = {stage: time_junction("resnet", *stage, args) for stage in STAGES}
    timed = [(name, False) for name in sorted(JUNCTIONS)]
    timed += [(name, True) for name in sorted(JUNCTIONS) if name.startswith("in_resnet_gating")]
    for name, module_gate in timed:
        times = {
            stage: time_junction(name, *stage, args, module_gate=module_gate) for stage in STAGES
        }
        # Interpolating junctions sit in every block but the first of each stage.
        extra = sum((times[s] - plain[s]) * (n - 1) for s in STAGES)
        label = f"{name} (conv as a module)" if module_gate else name
        row = {"junction": label, "dtype": args.dtype, "channels_last": args.channels_last}
        for (c, size), t in times.items():
            row[f"ms_{c}x{size}"] = t * 1e3
        row[f"step_overhead_ms_depth{args.depth}"] = 0.0 if name == "resnet" else extra * 1e3
        rows.append(row)
        print(f"timed {label}", flush=True)
    columns = [("junction", "junction", "")]
    columns += [(f"ms_{c}x{s}", f"({args.batch},{c},{s},{s}) ms", ".3f") for c, s in STAGES]
    columns += [(f"step_overhead_ms_depth{args.depth}", f"+ms per step, depth {args.depth}", ".1f")]
    print()
    print_table(rows, columns)
    if args.json:
        write_report(args.json, {"machine": info, "settings": vars(args), "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
