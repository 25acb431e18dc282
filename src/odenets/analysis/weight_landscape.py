"""Loss landscape in weight space with filter-normalised directions (Li et al., NeurIPS 2018).

A random Gaussian direction d has one entry per weight. Each filter of d is rescaled to
the norm of the same filter of the weights, so that the scale invariance of ReLU networks
does not distort the picture. A filter is a slice along dimension 0 of a 2-D or 4-D weight
(a row of a linear layer, an output channel of a convolution) and along dimensions 0 and 1
of a 3-D or 5-D per-step stack (S, out, ...) of NAIS-Net weights. Biases (names ending in
"bias") and parameters with at most one dimension larger than 1 (BatchNorm weights,
interpolation coefficients, per-channel scalars such as NAIS-Net's δ) get a zero
direction: they are left unperturbed, as Li et al. recommend.
The loss is computed in eval mode, and the weights are restored bitwise afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from odenets.analysis._common import eval_mode, per_sample_loss


def filter_normalized_direction(
    model: nn.Module, *, generator: torch.Generator
) -> list[torch.Tensor]:
    """One random direction tensor per parameter of ``model.parameters()`` (in that order).

    Args:
        generator: a CPU generator; the direction depends only on its state and the
            parameter shapes, not on the device.

    Returns:
        Tensors shaped and placed like the parameters: ‖d_f‖ = ‖w_f‖ for every filter f of
        a weight (zero filters stay zero), zero for biases and per-channel vectors (see
        the module notes).
    """
    directions = []
    for name, p in model.named_parameters():
        w = p.detach()
        if not perturbed(name, w):
            directions.append(torch.zeros_like(w))
            continue
        d = torch.randn(w.shape, generator=generator, dtype=torch.float64)
        lead = filter_dims(w)
        d_f = d.flatten(lead)  # (filters..., rest)
        w_f = w.double().cpu().flatten(lead)
        scale = w_f.norm(dim=-1) / d_f.norm(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
        d = (d_f * scale.unsqueeze(-1)).view(w.shape)
        directions.append(d.to(device=w.device, dtype=w.dtype))
    return directions


def perturbed(name: str, w: torch.Tensor) -> bool:
    """Whether a parameter gets a random direction: weights yes, biases and vectors no."""
    return not name.endswith("bias") and sum(size > 1 for size in w.shape) > 1


def filter_dims(w: torch.Tensor) -> int:
    """Leading dimensions that index filters: 1 for (out, ...) weights, 2 for per-step
    stacks (S, out, ...) (3-D fully connected or 5-D convolutional NAIS-Net weights)."""
    return 2 if w.dim() in (3, 5) else 1


def weight_landscape(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    alphas: Sequence[float] | np.ndarray,
    alphas2: Sequence[float] | np.ndarray | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Loss and accuracy at w + α·d1 (1-D) or w + α·d1 + β·d2 (2-D, when `alphas2` is given).

    Args:
        images: (N, C, H, W) float in [0, 1]; labels: (N,) int64.
        alphas: steps along d1 (units of the filter norms; 1 moves each filter by its norm).
        alphas2: steps along d2 for a surface.
        seed: seeds the directions (d1 first, then d2).

    Returns:
        1-D: ``{"alpha": (A,), "loss": (A,), "accuracy": (A,)}``; 2-D: also ``"alpha2"``
        (B,), with ``loss`` and ``accuracy`` of shape (A, B).
    """
    generator = torch.Generator().manual_seed(seed)
    d1 = filter_normalized_direction(model, generator=generator)
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas2 is None:
        steps = [[(a, 0.0)] for a in alphas]
        d2 = [torch.zeros_like(d) for d in d1]
    else:
        d2 = filter_normalized_direction(model, generator=generator)
        alphas2 = np.asarray(alphas2, dtype=np.float64)
        steps = [[(a, b) for b in alphas2] for a in alphas]
    loss = np.zeros((len(steps), len(steps[0])))
    accuracy = np.zeros_like(loss)
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    try:
        with eval_mode(model):
            for i, row in enumerate(steps):
                for j, (a, b) in enumerate(row):
                    _set_weights(params, saved, d1, d2, a, b)
                    per_loss, correct = per_sample_loss(
                        model, images, labels, batch_size=batch_size
                    )
                    loss[i, j] = float(per_loss.double().mean())
                    accuracy[i, j] = float(correct.double().mean())
    finally:
        with torch.no_grad():
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)
    if alphas2 is None:
        return {"alpha": alphas, "loss": loss[:, 0], "accuracy": accuracy[:, 0]}
    return {"alpha": alphas, "alpha2": alphas2, "loss": loss, "accuracy": accuracy}


@torch.no_grad()
def _set_weights(params, saved, d1, d2, a: float, b: float) -> None:
    for p, w, u, v in zip(params, saved, d1, d2, strict=True):
        p.copy_(w + a * u + b * v)
