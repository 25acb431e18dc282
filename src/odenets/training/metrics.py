"""Per-epoch model metrics beyond loss and accuracy: the learned coefficients of
interpolating networks, and the unrolled depth and stage-Jacobian spectral radius of NAIS
networks. Everything goes through the common network surface (no isinstance)."""

from __future__ import annotations

from typing import Any

import torch

from odenets.checkpoint import finite_or_none
from odenets.stability import state_jacobian_spectral_radius as radius_fn

PROBE_IMAGES = 16  # test images at which NAIS stage Jacobians are measured each epoch


def model_metrics(model, test_eval: dict[str, Any], probe: torch.Tensor) -> dict[str, Any]:
    """Coefficients of interpolating models; depth and spectral radius of NAIS models."""
    out: dict[str, Any] = {}
    coeff = model.coefficients() if hasattr(model, "coefficients") else torch.zeros(0)
    if coeff.numel():
        out["coefficients"] = [round(float(c), 6) for c in coeff.detach().cpu()]
    for key in ("depth_mean", "depth_max"):
        if key in test_eval:
            out[key] = test_eval[key]
    radius = max_stage_jacobian_radius(model, probe)
    if radius is not None:
        out["spectral_radius"] = radius  # the metrics.jsonl key
    return out


def inactive_coefficients(record: dict[str, Any] | None) -> list[int]:
    """The interpolating blocks (0-based, in module order) whose coefficient λ_n is 0 in a
    metrics.jsonl line (recorded to 6 decimals). A ReLU gives 0 (In-ResNet, λ-In-ResNet, and
    a ReLU gate whose every gate was closed on the last batch): while it is there it passes
    no gradient, so the block is a plain residual block whose raw parameters move by weight
    decay (and momentum) alone. A sigmoid coefficient rounds to 0 only below 5e-7."""
    return [i for i, lam in enumerate((record or {}).get("coefficients") or []) if lam == 0.0]


def inactive_message(record: dict[str, Any]) -> str:
    """A line saying which coefficients of an epoch's record are inactive ("" for none)."""
    dead = inactive_coefficients(record)
    if not dead:
        return ""
    n = len(record["coefficients"])
    blocks = ", ".join(str(i) for i in dead)
    if len(dead) == n:
        return (
            f"epoch {record['epoch']}: all {n} interpolation coefficients are 0: while they "
            "are, their ReLU passes no gradient and the network trains as a plain ResNet (the "
            "raw coefficients move by weight decay alone; --freeze-coefficients keeps them at "
            "their initial values)"
        )
    return (
        f"epoch {record['epoch']}: {len(dead)} of {n} interpolation coefficients are 0 "
        f"(interpolating blocks {blocks}): while they are, their ReLU passes no gradient and "
        "those blocks train as plain residual blocks (the raw coefficients move by weight "
        "decay alone; --freeze-coefficients keeps them at their initial values)"
    )


def max_stage_jacobian_radius(model, probe: torch.Tensor) -> float | None:
    """The largest stage-Jacobian spectral radius over the NAIS blocks and a few test images
    (None for a network without NAIS blocks).

    Each block's Jacobian is taken at its input u and its output state x(K) (close to the
    equilibrium when the block has converged), by
    `odenets.stability.state_jacobian_spectral_radius` (power iteration for large states).
    """
    blocks = model.nais_blocks() if hasattr(model, "nais_blocks") else []
    if not blocks:
        return None

    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        b.register_forward_hook(lambda m, args, out: seen.__setitem__(id(m), (args[0], out)))
        for b in blocks
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    radii = [
        float(radius_fn(b, seen[id(b)][1].float(), seen[id(b)][0].float(), iters=100).max())
        for b in blocks
        if id(b) in seen
    ]
    return finite_or_none(max(radii)) if radii else None
