"""The shared unrolling of NAIS-Net blocks and their baselines.

`UnrolledBlock` runs x(k+1) = x(k) + h σ(A(k) x(k) + c(k)), c = B u + b, for K fixed steps or
per sample until the state stops changing (`set_adaptive`), and exposes the stage Jacobian
J = I + h diag(σ'(z)) A (`state_jvp`, `state_operator`) used by `odenets.stability`. The
concrete parametrisations of A and B live in `odenets.models.nais_blocks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": F.relu,
}
X0_MODES = ("zeros", "input")


def _check_options(*, steps: int, h: float, act: str, x0: str) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps (K) must be an integer >= 1; got {steps!r}")
    if not 0.0 < float(h) <= 1.0:
        raise ValueError(f"h must be in (0, 1] (the stability results need h <= 1); got {h}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}; got {act!r}")
    if x0 not in X0_MODES:
        raise ValueError(f"x0 must be one of {X0_MODES}; got {x0!r}")


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)  # (N,)


class UnrolledBlock(nn.Module):
    """Shared unrolling: x(k+1) = x(k) + h σ(A(k) x(k) + c(k)), with c = B u + b.

    Subclasses provide `input_term(u)` -> (S, N, *state) (S = 1 when tied, else K),
    `state_weights()` -> (S, ...) and `apply_state(x, a)`. After each forward,
    `last_steps` holds the steps each sample took, a (N,) int64 tensor.
    """

    def __init__(
        self,
        *,
        steps: int,
        h: float,
        act: str,
        x0: str,
        tied: bool,
        tol: float | None,
        max_steps: int | None,
    ):
        super().__init__()
        _check_options(steps=steps, h=h, act=act, x0=x0)
        self.steps, self.h, self.act, self.x0, self.tied = steps, float(h), act, x0, bool(tied)
        self.n_weights = 1 if self.tied else steps
        self.last_steps: torch.Tensor | None = None
        self.set_adaptive(tol, max_steps)

    def set_adaptive(self, tol: float | None, max_steps: int | None = None) -> None:
        """Unroll until ‖x(k+1) - x(k)‖ / (‖x(k)‖ + 1e-12) < tol per sample (or `max_steps`,
        default K); `tol=None` restores the fixed K steps."""
        if tol is not None and not float(tol) > 0.0:
            raise ValueError(f"tol must be > 0 (or None for fixed unrolling); got {tol}")
        if max_steps is not None and (
            isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1
        ):
            raise ValueError(f"max_steps must be an integer >= 1 or None; got {max_steps!r}")
        if not self.tied and max_steps is not None and max_steps > self.steps:
            raise ValueError(
                f"an untied block has weights for {self.steps} steps only; got "
                f"max_steps={max_steps}. Use tied=True to unroll further."
            )
        self.tol = None if tol is None else float(tol)
        self.max_steps = max_steps

    def weight_index(self, k: int) -> int:
        """Index into the stacked per-step weights for step k (always 0 when tied)."""
        if k < 0 or (not self.tied and k >= self.steps):
            limit = "k >= 0" if self.tied else f"0 <= k < {self.steps}"
            raise ValueError(f"step index must satisfy {limit}; got {k}")
        return 0 if self.tied else k

    def activation(self, z: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.act](z)

    def step(self, x: torch.Tensor, bu: torch.Tensor, k: int = 0) -> torch.Tensor:
        """One update x(k) -> x(k+1), given c = B u + b for that step (`input_term(u)[i]`)."""
        return self._step(x, bu, self.state_weights()[self.weight_index(k)])

    def _step(self, x: torch.Tensor, bu: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        # x + h σ(A x + c) with two full-size passes fewer: c is added in place to the fresh
        # product A x (its backward needs neither), and h is folded into the final add.
        return torch.add(x, self.activation(self.apply_state(x, a).add_(bu)), alpha=self.h)

    # --- the stage Jacobian J = I + h diag(σ'(z)) A, explicitly (used by odenets.stability)
    def activation_derivative(self, z: torch.Tensor) -> torch.Tensor:
        if self.act == "tanh":
            return 1.0 - torch.tanh(z) ** 2
        return (z > 0).to(z.dtype)

    def state_jvp(
        self, x: torch.Tensor, bu: torch.Tensor, v: torch.Tensor, k: int = 0
    ) -> torch.Tensor:
        """J v at state x (N, *state) for each sample, with c = B u + b given as `bu`."""
        a = self.state_weights()[self.weight_index(k)]
        d = self.activation_derivative(self.apply_state(x, a) + bu)
        return v + self.h * d * self.apply_state(v, a)

    def state_operator(self, state_shape: tuple[int, ...], k: int = 0) -> torch.Tensor:
        """A of step k as a dense (n, n) matrix on flattened states of `state_shape` (for a
        convolution: the Toeplitz matrix with zero padding)."""
        a = self.state_weights()[self.weight_index(k)]
        n = math.prod(state_shape)
        basis = torch.eye(n, dtype=a.dtype, device=a.device).view(n, *state_shape)
        return self.apply_state(basis, a).reshape(n, n).T  # column j = A e_j

    def initial_state(self, u: torch.Tensor, bu: torch.Tensor) -> torch.Tensor:
        if self.x0 == "input":
            return u
        return torch.zeros_like(bu[0])

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        bu = self.input_term(u)  # (S, N, *state), once per block
        weights = self.state_weights()  # (S, ...), once per block
        x = self.initial_state(u, bu)
        if self.tol is None:
            for k in range(self.steps):
                i = 0 if self.tied else k
                x = self._step(x, bu[i], weights[i])
            self.last_steps = torch.full((x.shape[0],), self.steps, dtype=torch.long)
            return x
        return self._forward_adaptive(x, bu, weights)

    def _forward_adaptive(self, x, bu, weights) -> torch.Tensor:
        # Converged samples are frozen (dropped from the active set), so each sample's
        # output is exactly the fixed unroll with its own number of steps.
        max_steps = self.max_steps or self.steps
        taken = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        active = torch.arange(x.shape[0], device=x.device)
        for k in range(max_steps):
            i = 0 if self.tied else k
            xa = x.index_select(0, active)
            new = self._step(xa, bu[i].index_select(0, active), weights[i])
            rel = _norms(new - xa) / (_norms(xa) + 1e-12)
            x = x.index_copy(0, active, new)
            taken[active] += 1
            active = active[rel >= self.tol]
            if active.numel() == 0:
                break
        self.last_steps = taken.cpu()
        return x

    def project_(self) -> None:
        """Stability projection in place (no-op unless the block has a constraint)."""

    def extra_repr(self) -> str:
        adaptive = f", tol={self.tol}, max_steps={self.max_steps}" if self.tol else ""
        return (
            f"steps={self.steps}, h={self.h}, act={self.act}, x0={self.x0}, "
            f"tied={self.tied}{adaptive}"
        )


def depth_stats(module: nn.Module) -> dict[str, float]:
    """Per-sample depth of the last forward pass of `module` (any `nn.Module`): the steps
    every unrolled block inside it took, summed over the blocks; {"mean", "max"} over the
    batch. Empty without unrolled blocks, or before they have all run."""
    steps = [m.last_steps for m in module.modules() if isinstance(m, UnrolledBlock)]
    if not steps or any(s is None for s in steps):
        return {}
    total = torch.stack(steps, dim=1).sum(dim=1).double()  # (N,)
    return {"mean": float(total.mean()), "max": float(total.max())}
