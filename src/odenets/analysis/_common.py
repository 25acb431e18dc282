"""Small helpers shared by the analysis functions: eval mode, batched loss, block inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from odenets.models.base import model_device, takes_check_input


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the block and restore each module's mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@torch.no_grad()
def per_sample_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 256,
    check_input: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and correctness per sample, in batches, without gradients.

    Args:
        images: (N, C, H, W) float; labels: (N,) int64.
        check_input: False lets images outside [0, 1] through an odenets network (its
            `check_input`), e.g. for an unclamped slice of input space.

    Returns:
        (loss (N,) float32, correct (N,) bool), on the CPU.
    """
    device = model_device(model)
    kwargs = {} if check_input or not takes_check_input(model) else {"check_input": False}
    losses, correct = [], []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        logits = model(x, **kwargs).float()
        losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
        correct.append((logits.argmax(dim=1) == y).cpu())
    return torch.cat(losses), torch.cat(correct)


def block_inputs(
    model: nn.Module, images: torch.Tensor, blocks: Sequence[nn.Module] | None = None
) -> list[torch.Tensor]:
    """The input of each block (``model.blocks`` by default) in one forward pass of `images`.

    Returns:
        One detached tensor per block, in block order, each (N, C_i, H_i, W_i).
    """
    blocks = list(model.blocks if blocks is None else blocks)
    captured: dict[int, torch.Tensor] = {}

    def hook(index: int):
        def fn(module, args):
            captured.setdefault(index, args[0].detach())

        return fn

    handles = [b.register_forward_pre_hook(hook(i)) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            model(images.to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
    return [captured[i] for i in range(len(blocks))]
