"""Accuracy of a model on clean or perturbed images, in batches on the model's device."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from odenets.models.base import model_device
from odenets.progress import WorkLog
from odenets.robustness.base import inference_state

DEFAULT_BATCH_SIZE = 500

logger = logging.getLogger(__name__)


def correct_mask(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    attack: Callable | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    indices: torch.Tensor | None = None,
    progress: bool = False,
    desc: str | None = None,
    log: WorkLog | None = None,
    within: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which samples the model classifies correctly, after `attack` if one is given.

    Args:
        model: images (N, C, H, W) in [0, 1] -> logits; put in eval mode for the call.
        images: float (N, C, H, W) in [0, 1], on any device (moved batch by batch).
        labels: int64 (N,).
        attack: `attack(model, images, labels, indices=...) -> images`, or None for clean.
        batch_size: samples per forward pass (and per attack call).
        indices: int64 (N,) positions in the whole evaluation set (keys of the attacks'
            random draws); defaults to 0..N-1.
        progress: a tqdm bar (on a terminal). Without it, a pass with a `desc` logs one
            line at its end (count correct, seconds), and through `log`, the ETA of the
            whole evaluation and a line now and then during a long pass.
        log: the evaluation's `WorkLog` (passes and their costs); None: this pass alone.
        within: bool (N,): count a sample correct only where it is True (the clean-correct
            mask: a robust sample is correct both clean and attacked), in the result and
            in the lines logged, so they give the numbers of the tables.

    Returns:
        Bool tensor (N,) on the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if indices is None:
        indices = torch.arange(len(images))
    device = model_device(model)
    out = torch.zeros(len(images), dtype=torch.bool)
    starts = range(0, len(images), batch_size)
    # Without a bar (off a terminal: a batch job's log), lines say how far the work has come.
    lines = None if progress or not desc else (log or WorkLog(logger))
    if lines is not None:
        bound = bool(getattr(attack, "stops_early", False))
        lines.start_pass(desc, pass_cost(attack, len(images)), at_most=bound)
    with inference_state(model, device.type):
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
            stop = start + batch_size
            x = images[start:stop].to(device=device, dtype=torch.float32)
            y = labels[start:stop].to(device)
            if attack is not None:
                x = attack(model, x, y, indices=indices[start:stop])
            with torch.no_grad():
                logits = model(x)
            if start == 0:
                # Once per call, over every label (on their own device, usually the CPU):
                # a check per batch would cost two host syncs each on CUDA.
                _check_label_range(labels, logits.shape[-1])
            out[start:stop] = (logits.argmax(dim=1) == y).cpu()
            if within is not None:
                out[start:stop] &= within[start:stop]
            if lines is not None:
                done = min(stop, len(images))
                lines.progress(done, int(out[:done].sum()), len(images))
    if lines is not None:
        lines.end_pass(int(out.sum()), len(out))
    return out


def pass_cost(attack: Callable | None, n: int) -> float:
    """The cost of scoring `n` images after `attack` (None: clean), in forward-pass
    equivalents (`Perturbation.cost`; 1 for a callable that does not say)."""
    per_image = attack.cost() if attack is not None and hasattr(attack, "cost") else 1.0
    return per_image * n


def _check_label_range(labels: torch.Tensor, num_classes: int) -> None:
    """A label outside the model's classes would count as misclassified, silently."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must be in 0..{num_classes - 1} (the model has {num_classes} classes); "
            f"got {int(labels.min())}..{int(labels.max())}"
        )


def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    attack: Callable | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> float:
    """Fraction in [0, 1] of images classified correctly (after `attack`, if given).

    Example:
        >>> import torch
        >>> from odenets.robustness import accuracy, create_attack
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
        >>> x, y = torch.rand(8, 3, 4, 4), torch.zeros(8, dtype=torch.long)
        >>> 0.0 <= accuracy(model, x, y, attack=create_attack("fgsm", eps=8 / 255)) <= 1.0
        True
    """
    if len(images) == 0:
        raise ValueError("accuracy of an empty set is undefined; got 0 images")
    mask = correct_mask(
        model, images, labels, attack=attack, batch_size=batch_size, progress=progress
    )
    return mask.float().mean().item()
