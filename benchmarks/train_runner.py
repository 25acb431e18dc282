"""One (model, configuration) pair of the training-throughput benchmark, ready to time: the
configuration's features (see train_throughput.py), the model, optimizer and data source
behind one training step, and the FLOPs of one image. Imported by train_throughput.py, which
puts this folder on `sys.path`.
"""

from __future__ import annotations

import contextlib
from argparse import Namespace
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from _common import count_flops
from reference_nets import build_model
from torch import nn

from odenets.models.base import takes_check_input, to_channels_last

FEATURES = ("cl", "bf16", "compile", "graphs", "loader")


def parse_config(config: str, device: torch.device) -> frozenset[str]:
    """The features of a `--configs` entry ("eager" or "+"-joined), checked for this device."""
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


def _forward_loss(
    model: nn.Module, features: frozenset[str], device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy of the model's output, under bf16 autocast and torch.compile if asked."""
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if "bf16" in features
        else contextlib.nullcontext()
    )

    # As odenets' training loop: its loader's images are in [0, 1], the range check is off.
    unchecked = {"check_input": False} if takes_check_input(model) else {}

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with amp:
            return F.cross_entropy(model(x, **unchecked), y)

    if "compile" in features or "graphs" in features:
        mode = "reduce-overhead" if "graphs" in features else None
        forward_loss = torch.compile(forward_loss, mode=mode)
    return forward_loss


def _loader_batches(
    args: Namespace, device: torch.device, gen: torch.Generator, *, channels_last: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless augmented batches of seeded random uint8 images held by a DeviceLoader."""
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
        channels_last=channels_last,
        seed=args.seed,
    )
    return _batch_stream(loader)


def _batches(
    features: frozenset[str], args: Namespace, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The step's data: DeviceLoader batches ("loader") or one pre-staged batch, forever."""
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    if "loader" in features:
        return _loader_batches(args, device, gen, channels_last="cl" in features)
    memory_format = torch.channels_last if "cl" in features else torch.contiguous_format
    x = torch.rand(args.batch, 3, 32, 32, generator=gen).to(device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, args.num_classes, (args.batch,), generator=gen).to(device)
    return iter(lambda: (x, y), None)


def _training_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    forward_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    features: frozenset[str],
) -> Callable[[], None]:
    """One step: next batch, forward and loss, backward, SGD, then NAIS-Net's projection."""
    project = getattr(model, "project_", None)

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

    return step


def make_runner(name: str, config: str, args: Namespace, device: torch.device) -> Runner:
    """The seeded model in training mode with its SGD optimizer and data, as the config says."""
    features = parse_config(config, device)
    torch.manual_seed(args.seed)
    model = build_model(name, args.num_classes).to(device).train()
    if "cl" in features:
        to_channels_last(model)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    forward_loss = _forward_loss(model, features, device)
    batches = _batches(features, args, device)
    step = _training_step(model, opt, forward_loss, batches, features)
    return Runner(name, config, features, model, step)


def flops_per_image(name: str, num_classes: int) -> float:
    """Forward + backward FLOPs of one image, counted on a CPU copy with batch 2."""
    torch.manual_seed(0)
    model = build_model(name, num_classes).train()
    x = torch.rand(2, 3, 32, 32)
    y = torch.arange(2) % num_classes
    return count_flops(lambda: F.cross_entropy(model(x), y).backward()) / 2
