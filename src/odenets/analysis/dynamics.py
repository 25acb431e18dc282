"""NAIS-Net dynamics: the 1-D tanh block of the poster, and unrolled trained blocks.

The scalar block x(k+1) = x(k) + h·tanh(a·x(k) + b·u + c) has the fixed point
x̄ = -(b·u + c)/a; its local multiplier is 1 + h·a·tanh'(·), so with a = -10, h = 1 the
step overshoots (|1 + h·a| = 9 > 1 near the fixed point) and the state never settles,
while the projected a = -(1 - ε) (SPEC §5, fully connected projection for n = 1) gives a
multiplier in [0, 1) and convergence to x̄ for every input u.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from odenets.analysis._common import block_inputs, eval_mode
from odenets.models.nais_blocks import nais_blocks

# The poster's unstable example (SPEC §5).
UNSTABLE_1D = {"a": -10.0, "b": 1.0, "c": 0.0, "h": 1.0}


def scalar_tanh_trajectory(
    u: Sequence[float] | np.ndarray,
    *,
    a: float,
    b: float = 1.0,
    c: float = 0.0,
    h: float = 1.0,
    steps: int = 30,
    x0: float = 0.0,
) -> np.ndarray:
    """States x(0..steps) of the scalar tanh block for each input u.

    Returns:
        (len(u), steps + 1) float64 array; column k is x(k).
    """
    u = np.asarray(u, dtype=np.float64)
    traj = np.empty((len(u), steps + 1))
    x = np.full(len(u), float(x0))
    traj[:, 0] = x
    for k in range(steps):
        x = x + h * np.tanh(a * x + b * u + c)
        traj[:, k + 1] = x
    return traj


def project_scalar_a(a: float, *, eps: float = 0.01) -> float:
    """The fully connected stability projection of SPEC §5 for a 1-D block.

    With A = -r² - ε and δ = 1 - 2ε, r² is capped at δ, so the projected A lies in
    [-(1 - ε), -ε]. A value of `a` above -ε (not representable) is mapped to -ε.
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 1/2); got {eps}")
    r2 = max(-a - eps, 0.0)
    return -min(r2, 1.0 - 2.0 * eps) - eps


def has_converged(traj: np.ndarray, *, tol: float = 1e-6, window: int = 5) -> np.ndarray:
    """Whether each trajectory's last `window` steps all move by less than `tol`.

    Args:
        traj: (U, K + 1) states.

    Returns:
        (U,) bool array.
    """
    steps = np.abs(np.diff(traj[:, -(window + 1) :], axis=1))
    return np.all(steps < tol, axis=1)


def one_d_dynamics(
    u: Sequence[float] | np.ndarray = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0),
    *,
    steps: int = 30,
    eps: float = 0.01,
) -> dict[str, dict]:
    """The poster's comparison: the unstable block beside its projected, stable version.

    Returns:
        ``{"unstable": {...}, "stable": {...}}``, each with the block's ``a, b, c, h``,
        ``"u"`` (U,), ``"x"`` (U, steps + 1), ``"equilibrium"`` (U,) = -(b·u + c)/a and
        ``"converged"`` (U,) bool.
    """
    u = np.asarray(u, dtype=np.float64)
    out = {}
    stable_a = project_scalar_a(UNSTABLE_1D["a"], eps=eps)
    for name, a in (("unstable", UNSTABLE_1D["a"]), ("stable", stable_a)):
        params = {**UNSTABLE_1D, "a": a}
        x = scalar_tanh_trajectory(u, steps=steps, **params)
        out[name] = {
            **params,
            "u": u,
            "x": x,
            "equilibrium": -(params["b"] * u + params["c"]) / a,
            "converged": has_converged(x),
        }
    return out


def nais_state_differences(
    model: nn.Module, images: torch.Tensor, *, block_index: int = 0, steps: int = 30
) -> np.ndarray:
    """‖x(k+1) - x(k)‖ over `steps` unrolled steps of one trained NAIS block, per image.

    The block's input u is captured from a forward pass of `images`; the block is then
    unrolled from its own x(0) with its own update (beyond its trained K when its weights
    are tied; an untied block has weights for K steps only).

    Returns:
        (N, steps) float64 array of Euclidean norms per image.
    """
    nais = nais_blocks(model)
    if not nais:
        raise ValueError(f"{getattr(model, 'model_name', 'this model')} has no NAIS blocks")
    if not 0 <= block_index < len(nais):
        raise ValueError(f"block_index must be in [0, {len(nais) - 1}]; got {block_index}")
    block = nais[block_index]
    with eval_mode(model), torch.no_grad():
        (u,) = block_inputs(model, images, [block])
        bu = block.input_term(u)  # (S, N, *state)
        x = block.initial_state(u, bu)
        diffs = []
        for k in range(steps):
            new = block.step(x, bu[block.weight_index(k)], k)
            diffs.append((new - x).flatten(1).norm(dim=1))  # (N,)
            x = new
    return torch.stack(diffs, dim=1).double().cpu().numpy()
