"""Loss landscape in input space (the In-ResNet paper's figure with CIFAR-C inputs).

The mean cross-entropy over a batch of images x is traced along x + t·d for two directions
d of L∞ norm 1: the attack direction sign(∇ₓ loss) (the FGSM direction, specific to each
model) and a random sign direction (seeded, shared by every model so that models are
compared on the same line). With ±1 entries, |t| is the L∞ distance from x in pixel units.

**[decision]** Perturbed points are clamped to [0, 1] by default, so every point of the
curve is a valid image; pass ``clamp=False`` for the raw linear slice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from odenets.analysis._common import eval_mode, per_sample_loss
from odenets.data.corruptions import apply_noise
from odenets.models.base import model_device


def attack_direction(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 256
) -> torch.Tensor:
    """sign(∇ₓ CE(model(x), y)) per image, with the model in eval mode.

    Args:
        images: (N, C, H, W) float in [0, 1]; labels: (N,) int64.

    Returns:
        (N, C, H, W) float tensor of -1, 0, +1 on the CPU.
    """
    device = model_device(model)
    out = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device).clone().requires_grad_(True)
            y = labels[start : start + batch_size].to(device)
            # Summed loss: the gradient of each image is its own, whatever the batch.
            loss = F.cross_entropy(model(x).float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            out.append(grad.sign().cpu())
    return torch.cat(out)


def random_sign_direction(shape: Sequence[int], *, generator: torch.Generator) -> torch.Tensor:
    """A Rademacher direction: independent ±1 entries, (shape) float on the CPU."""
    bits = torch.randint(0, 2, tuple(shape), generator=generator)
    return bits.float() * 2.0 - 1.0


def _mean_loss_at(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    offset: torch.Tensor,
    *,
    clamp: bool,
    batch_size: int,
) -> float:
    x = images + offset
    if clamp:
        x = x.clamp(0.0, 1.0)
    # Unclamped points leave [0, 1] on purpose: the model's range check is off for them.
    loss, _ = per_sample_loss(model, x, labels, batch_size=batch_size, check_input=clamp)
    return float(loss.double().mean())


def input_landscape_1d(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    directions: Mapping[str, torch.Tensor],
    ts: Sequence[float] | np.ndarray,
    *,
    clamp: bool = True,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Mean loss along each direction.

    Args:
        images: (N, C, H, W) float in [0, 1]; labels: (N,) int64.
        directions: name -> (N, C, H, W) direction (e.g. from `attack_direction`).
        ts: the step sizes t (pixel units for sign directions).

    Returns:
        ``{"t": (T,), name: (T,) mean cross-entropy for each direction}``.
    """
    ts = np.asarray(ts, dtype=np.float64)
    result = {"t": ts}
    with eval_mode(model):
        for name, d in directions.items():
            _check_direction(d, images, name)
            result[name] = np.array(
                [
                    _mean_loss_at(model, images, labels, t * d, clamp=clamp, batch_size=batch_size)
                    for t in ts
                ]
            )
    return result


def input_landscape_2d(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    d1: torch.Tensor,
    d2: torch.Tensor,
    ts1: Sequence[float] | np.ndarray,
    ts2: Sequence[float] | np.ndarray,
    *,
    clamp: bool = True,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Mean loss over the plane x + t1·d1 + t2·d2.

    Returns:
        ``{"t1": (T1,), "t2": (T2,), "loss": (T1, T2)}`` with ``loss[i, j]`` at
        (ts1[i], ts2[j]).
    """
    _check_direction(d1, images, "d1")
    _check_direction(d2, images, "d2")
    ts1, ts2 = np.asarray(ts1, dtype=np.float64), np.asarray(ts2, dtype=np.float64)
    loss = np.zeros((len(ts1), len(ts2)))
    with eval_mode(model):
        for i, t1 in enumerate(ts1):
            for j, t2 in enumerate(ts2):
                offset = t1 * d1 + t2 * d2
                loss[i, j] = _mean_loss_at(
                    model, images, labels, offset, clamp=clamp, batch_size=batch_size
                )
    return {"t1": ts1, "t2": ts2, "loss": loss}


def noisy_images(
    images: torch.Tensor, noise: str | None, severity: int, *, seed: int
) -> torch.Tensor:
    """CIFAR-C style noisy copies of `images` (unchanged when ``noise`` is None)."""
    if noise is None:
        return images

    generator = torch.Generator().manual_seed(seed)
    return apply_noise(images, noise, severity, generator=generator)


def input_landscape(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    radius: float = 16 / 255,
    points: int = 21,
    points_2d: int = 0,
    seed: int = 0,
    clamp: bool = True,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """The 1-D curves (attack and random direction) and, if ``points_2d``, the 2-D surface.

    The random direction depends only on `seed` and the image shape, so several models
    called with the same images and seed are compared along the same random line.

    Args:
        images: (N, C, H, W) float in [0, 1] (already noisy if wanted, see `noisy_images`).
        radius: T, the largest |t| (pixel units; 16/255 by default).
        points: samples of t in [-T, T] for the curves (odd, so t = 0 is one of them).
        points_2d: samples per axis of the surface (attack × random); 0 skips it.

    Returns:
        ``{"t", "attack", "random", "loss_at_origin"}`` and, with a surface,
        ``{"t1", "t2", "surface"}`` (``surface[i, j]`` at attack t1[i], random t2[j]).
    """
    if radius <= 0 or radius > 1:
        raise ValueError(f"radius must be in (0, 1] (pixel units); got {radius}")
    if points < 2:
        raise ValueError(f"points must be >= 2; got {points}")
    generator = torch.Generator().manual_seed(seed)
    directions = {
        "attack": attack_direction(model, images, labels, batch_size=batch_size),
        "random": random_sign_direction(images.shape, generator=generator),
    }
    ts = np.linspace(-radius, radius, points)
    result = input_landscape_1d(
        model, images, labels, directions, ts, clamp=clamp, batch_size=batch_size
    )
    with eval_mode(model):
        loss, _ = per_sample_loss(model, images, labels, batch_size=batch_size)
    result["loss_at_origin"] = np.float64(loss.double().mean())
    if points_2d:
        grid = np.linspace(-radius, radius, points_2d)
        surface = input_landscape_2d(
            model,
            images,
            labels,
            directions["attack"],
            directions["random"],
            grid,
            grid,
            clamp=clamp,
            batch_size=batch_size,
        )
        result.update(t1=surface["t1"], t2=surface["t2"], surface=surface["loss"])
    return result


def _check_direction(d: torch.Tensor, images: torch.Tensor, name: str) -> None:
    if d.shape != images.shape:
        raise ValueError(
            f"direction {name!r} has shape {tuple(d.shape)}; it must match the images "
            f"{tuple(images.shape)}"
        )
