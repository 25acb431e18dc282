"""Pattern-dependent depth of NAIS-Nets: how many steps each block takes per input when it
is unrolled until its state stops changing (Ciccone et al., NeurIPS 2018)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from odenets.models.nais_blocks import nais_blocks

__all__ = ["adaptive_depth", "measure_depth"]


@contextmanager
def adaptive_depth(model: nn.Module, *, tol: float, max_steps: int) -> Iterator[nn.Module]:
    """Within the block, every NAIS block inside `model` (any `nn.Module`) unrolls until
    ‖x(k+1) - x(k)‖ / (‖x(k)‖ + 1e-12) < tol per sample, or `max_steps`; the blocks'
    previous settings are restored on exit."""
    blocks = nais_blocks(model)
    saved = [(b.tol, b.max_steps) for b in blocks]
    try:
        for b in blocks:
            b.set_adaptive(tol, max_steps)
        yield model
    finally:
        for b, (old_tol, old_max) in zip(blocks, saved, strict=True):
            b.set_adaptive(old_tol, old_max)


@torch.no_grad()
def measure_depth(
    model: nn.Module,
    images: torch.Tensor,
    *,
    tol: float,
    max_steps: int,
    batch_size: int = 256,
) -> torch.Tensor:
    """Steps used by every NAIS block for every input, with adaptive unrolling.

    Args:
        model: any `nn.Module` with NAIS blocks inside (e.g. ``naisnet10``, or a custom
            network built with `odenets.NaisConvBlock`); run in eval mode.
        images: inputs the model takes, (N, C, H, W) in [0, 1] (or (N, F) for ``nais_mlp``).
        tol: relative-change tolerance (> 0). max_steps: cap on steps per block (>= 1).
        batch_size: inputs per forward pass; the result does not depend on it.

    Returns:
        int64 tensor (N, n_nais_blocks); entry (i, j) is the number of updates block j
        applied to input i, in [1, max_steps].
    """
    blocks = nais_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no NAIS blocks to measure")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    was_training = model.training
    model.eval()
    rows = []
    try:
        with adaptive_depth(model, tol=tol, max_steps=max_steps):
            for start in range(0, images.shape[0], batch_size):
                model(images[start : start + batch_size])
                rows.append(torch.stack([b.last_steps.cpu() for b in blocks], dim=1))
    finally:
        model.train(was_training)
    return torch.cat(rows, dim=0)
