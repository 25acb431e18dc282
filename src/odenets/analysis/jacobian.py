"""Stability per block: Jacobian spectral norms (ResNet family) and stage-Jacobian spectral
radii (NAIS-Net), per image.

The spectral norm ‖J‖₂ of a block's Jacobian at an input is found by power iteration on
JᵀJ with forward-mode (J v, a JVP) and reverse-mode (Jᵀ w, a VJP) products, so J is
never formed. In eval mode a block acts on each image independently, so the batch
Jacobian is block-diagonal and one power iteration with per-image normalisation gives
every image's norm at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from odenets.analysis._common import block_inputs, eval_mode
from odenets.models.nais_blocks import nais_blocks
from odenets.stability import spectral_radius, state_jacobian_spectral_radius


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def power_iteration(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rmatvec: Callable[[torch.Tensor], torch.Tensor],
    v0: torch.Tensor,
    *,
    iters: int = 30,
) -> torch.Tensor:
    """Largest singular value of a batch of linear maps J (one per leading index).

    Args:
        matvec: v (N, *in) -> J v (N, *out), acting on each sample separately.
        rmatvec: w (N, *out) -> Jᵀ w (N, *in).
        v0: (N, *in) start vectors (random, so almost surely not orthogonal to the top
            singular vector).
        iters: iterations of v <- JᵀJ v / ‖JᵀJ v‖.

    Returns:
        (N,) estimates of ‖J‖₂ = ‖J v‖ for the final unit vector v (a lower bound that
        converges to the norm).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1; got {iters}")
    tiny = torch.finfo(v0.dtype).tiny
    v = v0 / _per_sample_norm(v0).clamp_min(tiny)
    for _ in range(iters):
        w = rmatvec(matvec(v))
        v = w / _per_sample_norm(w).clamp_min(tiny)
    return matvec(v).flatten(1).norm(dim=1)


def jacobian_spectral_norm(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    iters: int = 30,
    generator: torch.Generator,
) -> torch.Tensor:
    """‖∂fn/∂x‖₂ at x, per sample, for a function acting on each sample independently.

    Args:
        fn: (N, *in) -> (N, *out), e.g. a block in eval mode.
        x: (N, *in) the point of linearisation.
        generator: CPU generator for the start vectors.

    Returns:
        (N,) spectral norms.
    """
    x = x.detach()
    _, vjp_fn = torch.func.vjp(fn, x)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(fn, (x,), (v,))[1]

    def rmatvec(w: torch.Tensor) -> torch.Tensor:
        return vjp_fn(w)[0]

    v0 = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    with torch.no_grad():
        return power_iteration(matvec, rmatvec, v0, iters=iters).detach()


def block_jacobian_norms(
    model: nn.Module, images: torch.Tensor, *, iters: int = 30, seed: int = 0
) -> np.ndarray:
    """Spectral norm of each block's Jacobian at its input, per image (eval mode).

    Returns:
        (N, len(model.blocks)) float64 array.
    """
    generator = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        inputs = block_inputs(model, images)
        columns = [
            jacobian_spectral_norm(block, x, iters=iters, generator=generator)
            for block, x in zip(model.blocks, inputs, strict=True)
        ]
    return torch.stack(columns, dim=1).double().cpu().numpy()


def nais_spectral_radii(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """Spectral radius of each NAIS block's stage Jacobian at its final state, per image.

    The block input u is captured from a forward pass; the stage Jacobian
    I + h·diag(σ'(A x + B u + b))·A is evaluated at the state the block reaches
    (via `odenets.stability.state_jacobian_spectral_radius`).

    Returns:
        (N, len(nais_blocks(model))) float64 array.
    """
    nais = nais_blocks(model)
    with eval_mode(model):
        inputs = block_inputs(model, images, nais)
        columns = []
        for block, u in zip(nais, inputs, strict=True):
            with torch.no_grad():
                x = block(u)
            radius = state_jacobian_spectral_radius(block, x, u)
            columns.append(torch.as_tensor(radius).reshape(len(u)).double().cpu())
    return torch.stack(columns, dim=1).numpy()


def nais_active_radii(
    model: nn.Module, images: torch.Tensor, *, iters: int = 200, seed: int = 0
) -> np.ndarray:
    """ρ(I + h·A) of each NAIS block: the stage Jacobian where every unit is active (σ' = 1).

    For ReLU blocks the Jacobian at a state has eigenvalue 1 for every inactive unit, so its
    spectral radius is 1 whenever a unit is off; this radius is what the stability
    projection controls. Untied blocks use the weights of step 0. `images` only sets the
    state shape.

    Returns:
        (len(nais_blocks(model)),) float64 array.
    """
    generator = torch.Generator().manual_seed(seed)
    nais = nais_blocks(model)
    radii = []
    with eval_mode(model), torch.no_grad():
        inputs = block_inputs(model, images[:1], nais)
        for block, u in zip(nais, inputs, strict=True):
            a = block.state_weights()[0]
            state = block.input_term(u)[0]  # (1, *state), only its shape is used
            v0 = torch.randn(state.shape, generator=generator, dtype=state.dtype)

            def matvec(v, block=block, a=a):
                return v + block.h * block.apply_state(v, a)

            radii.append(float(spectral_radius(matvec, v0.to(state.device), iters=iters)[0]))
    return np.array(radii)


def stability_per_block(
    model: nn.Module, images: torch.Tensor, *, iters: int = 30, seed: int = 0
) -> dict:
    """NAIS models: stage-Jacobian spectral radii; others: block-Jacobian spectral norms.

    Returns:
        ``{"quantity": "spectral_radius" | "jacobian_norm", "values": (N, blocks)}``; NAIS
        models also ``"active_radius"`` (blocks,), see `nais_active_radii`.
    """
    if nais_blocks(model):
        return {
            "quantity": "spectral_radius",
            "values": nais_spectral_radii(model, images),
            "active_radius": nais_active_radii(model, images, seed=seed),
        }
    values = block_jacobian_norms(model, images, iters=iters, seed=seed)
    return {"quantity": "jacobian_norm", "values": values}
