"""NAIS-Net: Non-Autonomous Input-Output Stable networks (Ciccone, Gallieri, Masci,
Osendorfer, Gomez, NeurIPS 2018, arXiv 1804.07209).

Each block is a time-invariant, non-autonomous system unrolled for K steps:

    x(k+1) = x(k) + h σ(A x(k) + B u + b),   k = 0 .. K-1,   h ∈ (0, 1],   σ ∈ {tanh, ReLU}

The block input u enters every step (B u + b is computed once per block); x(K) is the next
block's input. With `stable=True`, A is kept where the stage Jacobian has spectral radius
below one (projections in `odenets.stability`), so a block converges to an input-dependent
equilibrium and can be unrolled until its state stops changing (`tol`, `max_steps`).

Choices made here (the papers are silent):
- x(0) = 0 by default (`x0="zeros"`); `x0="input"` starts from u.
- `tied=False` gives every step its own A(k), B(k), b(k), for comparison.
- No BatchNorm inside the unrolled steps. In the CIFAR networks BatchNorm sits only where
  the state is not iterated: after the stem convolution, after each strided transition
  convolution between stages (so each stage's first block sees a standardised input), and
  before the head (BN, ReLU, global average pool, linear).
- `naisnet1` starts from x(0) = u: with x(0) = 0 and one step, A would never act
  (x(1) = h σ(B u + b), a plain layer) and would receive no gradient.
- `stable=False` trains the same blocks without the constraint (A free, initialised at the
  same projected point): the paper's unconstrained baseline.
- `resnet_sh10` is the autonomous counterpart: x(0) = u, B = 0, A free,
  x(k+1) = x(k) + h σ(A x(k) + b), weights shared over the steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from odenets.models.base import CIFAR_MEAN, CIFAR_STD, OdeNet
from odenets.models.registry import register_model
from odenets.stability import centre_mask, project_conv_, project_fc_

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


class NaisBlock(UnrolledBlock):
    """Fully connected NAIS block on states (N, features) with inputs (N, in_features).

    With `stable=True`, A = -RᵀR - εI with R of shape (rank, features) (rank ≤ features,
    0 < ε < 1/2), and `project_()` applies the Frobenius reprojection of R.
    """

    def __init__(
        self,
        features: int,
        in_features: int | None = None,
        *,
        steps: int = 10,
        h: float = 1.0,
        act: str = "tanh",
        x0: str = "zeros",
        tied: bool = True,
        stable: bool = True,
        eps: float = 0.01,
        rank: int | None = None,
        tol: float | None = None,
        max_steps: int | None = None,
    ):
        super().__init__(steps=steps, h=h, act=act, x0=x0, tied=tied, tol=tol, max_steps=max_steps)
        in_features = features if in_features is None else in_features
        rank = features if rank is None else rank
        if features < 1 or in_features < 1:
            raise ValueError(
                f"features and in_features must be >= 1; got {features}, {in_features}"
            )
        if not 1 <= rank <= features:
            raise ValueError(f"rank must be in [1, features={features}]; got {rank}")
        if x0 == "input" and in_features != features:
            raise ValueError(
                f"x0='input' needs in_features == features; got {in_features} != {features}"
            )
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5); got {eps}")
        self.features, self.in_features, self.eps, self.stable = features, in_features, eps, stable
        s = self.n_weights
        r = torch.randn(s, rank, features) / math.sqrt(features)
        project_fc_(r, eps)
        if stable:
            self.r = nn.Parameter(r)  # (S, rank, n)
        else:
            # Free A, started at the same projected point as the stable block.
            self.a = nn.Parameter(self._a_from_r(r))  # (S, n, n)
        bound = 1.0 / math.sqrt(in_features)
        self.b_weight = nn.Parameter(torch.empty(s, features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(s, features).uniform_(-bound, bound))

    def _a_from_r(self, r: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)
        return -(r.mT @ r) - self.eps * eye

    def state_weights(self) -> torch.Tensor:
        return self._a_from_r(self.r) if self.stable else self.a  # (S, n, n)

    def state_matrix(self, k: int = 0) -> torch.Tensor:
        """A (or A(k) for untied blocks), (features, features)."""
        return self.state_weights()[self.weight_index(k)]

    def input_matrix(self, k: int = 0) -> torch.Tensor:
        """B (or B(k)), (features, in_features)."""
        return self.b_weight[self.weight_index(k)]

    def apply_state(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return x @ a.mT

    def input_map(self, u: torch.Tensor, k: int = 0) -> torch.Tensor:
        return u @ self.input_matrix(k).mT

    def input_term(self, u: torch.Tensor) -> torch.Tensor:
        if u.dim() != 2 or u.shape[1] != self.in_features:
            raise ValueError(f"expected input (N, {self.in_features}); got {tuple(u.shape)}")
        return torch.einsum("snm,bm->sbn", self.b_weight, u) + self.bias[:, None, :]

    @torch.no_grad()
    def project_(self) -> None:
        if self.stable:
            project_fc_(self.r, self.eps)


class NaisConvBlock(UnrolledBlock):
    """Convolutional NAIS block on states (N, channels, H, W).

    A and B are k×k convolutions (stride 1, zero padding k//2). With `stable=True` the
    centre tap of every c→c kernel of A is -1 + δ_c with a learnable δ (clipped to
    [-1 + η, 1 - η] in the forward pass and by `project_()`), and `project_()` applies the
    Gershgorin reprojection (`odenets.stability.project_conv_`, which also says why it
    gives ρ(J) < 1 for h ≤ 1).
    """

    def __init__(
        self,
        channels: int,
        in_channels: int | None = None,
        *,
        kernel_size: int = 3,
        steps: int = 10,
        h: float = 1.0,
        act: str = "relu",
        x0: str = "zeros",
        tied: bool = True,
        stable: bool = True,
        eps: float = 0.01,
        eta: float = 0.05,
        tol: float | None = None,
        max_steps: int | None = None,
    ):
        super().__init__(steps=steps, h=h, act=act, x0=x0, tied=tied, tol=tol, max_steps=max_steps)
        in_channels = channels if in_channels is None else in_channels
        if channels < 1 or in_channels < 1:
            raise ValueError(
                f"channels and in_channels must be >= 1; got {channels}, {in_channels}"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a centre tap is needed); got {kernel_size}")
        if x0 == "input" and in_channels != channels:
            raise ValueError(
                f"x0='input' needs in_channels == channels; got {in_channels} != {channels}"
            )
        if not 0.0 < eps < eta < 1.0:
            raise ValueError(f"need 0 < eps < eta < 1; got eps={eps}, eta={eta}")
        self.channels, self.in_channels, self.kernel_size = channels, in_channels, kernel_size
        self.eps, self.eta, self.stable = eps, eta, stable
        s, c, k = self.n_weights, channels, kernel_size
        self.register_buffer("centre", centre_mask(c, k), persistent=False)  # (C, C, k, k)
        std = math.sqrt(2.0 / (k * k * c))
        weight = torch.randn(s, c, c, k, k) * std
        delta = torch.zeros(s, c)
        project_conv_(weight, delta, eps=eps, eta=eta)
        self.a_weight = nn.Parameter(weight)  # (S, C, C, k, k)
        # δ exists only under the constraint; the free baseline starts at the same kernel.
        self.delta = nn.Parameter(delta) if stable else None  # (S, C)
        self.b_weight = nn.Parameter(torch.randn(s, c, in_channels, k, k) * std)
        self.bias = nn.Parameter(torch.zeros(s, c))

    def state_weights(self) -> torch.Tensor:
        if not self.stable:
            return self.a_weight
        delta = self.delta.clamp(-1.0 + self.eta, 1.0 - self.eta)
        centre = (-1.0 + delta)[:, :, None, None, None]  # (S, C, 1, 1, 1)
        return self.a_weight * (1.0 - self.centre) + self.centre * centre

    def state_kernel(self, k: int = 0) -> torch.Tensor:
        """The effective A kernel of step k, (C, C, k, k)."""
        return self.state_weights()[self.weight_index(k)]

    def apply_state(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, a, padding=self.kernel_size // 2)

    def input_map(self, u: torch.Tensor, k: int = 0) -> torch.Tensor:
        return F.conv2d(u, self.b_weight[self.weight_index(k)], padding=self.kernel_size // 2)

    def input_term(self, u: torch.Tensor) -> torch.Tensor:
        if u.dim() != 4 or u.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W); got {tuple(u.shape)}")
        s, c = self.n_weights, self.channels
        # All steps' B(k) u + b(k) in one convolution: (N, S*C, H, W) -> (S, N, C, H, W).
        w = self.b_weight.reshape(s * c, self.in_channels, self.kernel_size, self.kernel_size)
        out = F.conv2d(u, w, self.bias.reshape(s * c), padding=self.kernel_size // 2)
        return out.view(u.shape[0], s, c, *out.shape[2:]).transpose(0, 1)

    @torch.no_grad()
    def project_(self) -> None:
        if self.stable:
            project_conv_(self.a_weight, self.delta, eps=self.eps, eta=self.eta)


class SharedResidualBlock(UnrolledBlock):
    """Autonomous residual block with weights shared over the steps (ResNet-SH):
    x(0) = u, x(k+1) = x(k) + h σ(A x(k) + b), A a free k×k convolution. The input only
    sets the initial state. The A init is scaled by 1/sqrt(K) so that K steps start near
    the size of one residual branch."""

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 3,
        steps: int = 10,
        h: float = 1.0,
        act: str = "relu",
        tied: bool = True,
        tol: float | None = None,
        max_steps: int | None = None,
    ):
        super().__init__(
            steps=steps, h=h, act=act, x0="input", tied=tied, tol=tol, max_steps=max_steps
        )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd; got {kernel_size}")
        self.channels, self.kernel_size = channels, kernel_size
        s, c, k = self.n_weights, channels, kernel_size
        std = math.sqrt(2.0 / (k * k * c)) / math.sqrt(steps)
        self.a_weight = nn.Parameter(torch.randn(s, c, c, k, k) * std)
        self.bias = nn.Parameter(torch.zeros(s, c))

    def state_weights(self) -> torch.Tensor:
        return self.a_weight

    def apply_state(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, a, padding=self.kernel_size // 2)

    def input_term(self, u: torch.Tensor) -> torch.Tensor:
        # No B u: only the bias, broadcast over the batch and the image. (S, N, C, 1, 1)
        return self.bias[:, None, :, None, None].expand(-1, u.shape[0], -1, 1, 1)


# --- networks -----------------------------------------------------------------------


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout)
    )


class _UnrolledNetMixin:
    """Surface shared by the NAIS-Net family: depth statistics and step sizes."""

    blocks: nn.ModuleList

    def nais_blocks(self) -> list[nn.Module]:
        return [b for b in self.blocks if isinstance(b, (NaisBlock, NaisConvBlock))]

    def step_sizes(self) -> torch.Tensor:
        """h of every block, (n_blocks,)."""
        return torch.tensor([b.h for b in self.blocks])

    def depth_stats(self) -> dict[str, float]:
        """Per-sample network depth of the last forward: unrolled steps summed over the
        blocks; mean and max over the batch. Empty before the first forward."""
        steps = [b.last_steps for b in self.blocks]
        if not steps or any(s is None for s in steps):
            return {}
        total = torch.stack(steps, dim=1).sum(dim=1).double()  # (N,)
        return {"mean": float(total.mean()), "max": float(total.max())}


class UnrolledCifarNet(_UnrolledNetMixin, OdeNet):
    """ResNet-20 layout with unrolled blocks: stem conv + BN, 3 stages of `blocks_per_stage`
    blocks (widths 16/32/64), a strided 3x3 conv + BN between stages, head BN, ReLU, global
    average pool, linear. `make_block(channels)` builds each block."""

    def __init__(
        self,
        make_block: Callable[[int], UnrolledBlock],
        *,
        num_classes: int,
        in_chans: int,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 3,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
    ):
        super().__init__(in_chans=in_chans, mean=mean, std=std)
        if blocks_per_stage < 1 or not widths:
            raise ValueError(
                f"need widths and blocks_per_stage >= 1; got {widths}, {blocks_per_stage}"
            )
        self.blocks_per_stage = blocks_per_stage
        self.stem = _conv_bn(in_chans, widths[0], 1)
        self.transitions = nn.ModuleList(
            _conv_bn(w_in, w_out, 2) for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.blocks = nn.ModuleList(make_block(w) for w in widths for _ in range(blocks_per_stage))
        self.bn = nn.BatchNorm2d(widths[-1])
        self.fc = nn.Linear(widths[-1], num_classes)
        steps = self.blocks[0].steps
        self.depth = len(self.blocks) * steps + len(self.transitions) + 2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (N, 16, H, W)
        for i, block in enumerate(self.blocks):
            if i > 0 and i % self.blocks_per_stage == 0:
                x = self.transitions[i // self.blocks_per_stage - 1](x)  # halves H and W
            x = block(x)
        x = F.relu(self.bn(x))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (N, 64)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


class NaisNet(UnrolledCifarNet):
    family = "naisnet"


class SharedResNet(UnrolledCifarNet):
    family = "resnet_sh"


class NaisMLP(_UnrolledNetMixin, OdeNet):
    """Fully connected NAIS-Net for vectors (N, in_features) -> logits (N, num_classes):
    `blocks` NAIS blocks of width `hidden` (the first takes u = the input vector through
    its B), then a linear head. Inputs are used as given (no normalisation)."""

    family = "naisnet"

    def __init__(
        self,
        *,
        num_classes: int,
        in_features: int,
        hidden: int,
        blocks: int,
        block_kwargs: dict,
    ):
        super().__init__(in_chans=1, mean=(0.0,), std=(1.0,))
        if in_features < 1 or hidden < 1 or blocks < 1:
            raise ValueError(
                "in_features, hidden and blocks must be >= 1; "
                f"got {in_features}, {hidden}, {blocks}"
            )
        self.in_features = in_features
        self.blocks = nn.ModuleList(
            NaisBlock(hidden, in_features if i == 0 else hidden, **block_kwargs)
            for i in range(blocks)
        )
        self.fc = nn.Linear(hidden, num_classes)
        self.depth = blocks * self.blocks[0].steps + 1

    def example_input(self, batch: int = 2, *, generator: torch.Generator | None = None):
        return torch.rand(batch, self.in_features, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for float vectors (N, in_features)."""
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
            raise TypeError(f"expected a float tensor (N, {self.in_features}); got {x!r:.80}")
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected input (N, {self.in_features}); got {tuple(x.shape)}")
        return self.forward_normalized(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x  # (N, hidden)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


# --- constructors and presets ---------------------------------------------------------


def _create_naisnet(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    steps: int,
    h: float = 1.0,
    act: str = "relu",
    x0: str = "zeros",
    tied: bool = True,
    stable: bool = True,
    eps: float = 0.01,
    eta: float = 0.05,
    tol: float | None = None,
    max_steps: int | None = None,
    widths: Sequence[int] = (16, 32, 64),
    blocks_per_stage: int = 3,
) -> NaisNet:
    def make_block(channels: int) -> NaisConvBlock:
        return NaisConvBlock(
            channels,
            steps=steps,
            h=h,
            act=act,
            x0=x0,
            tied=tied,
            stable=stable,
            eps=eps,
            eta=eta,
            tol=tol,
            max_steps=max_steps,
        )

    return NaisNet(
        make_block,
        num_classes=num_classes,
        in_chans=in_chans,
        widths=widths,
        blocks_per_stage=blocks_per_stage,
    )


@register_model
def naisnet1(**kwargs) -> NaisNet:
    """NAIS-Net1: ResNet-20 layout, one step per block, x(0) = u (see the module notes)."""
    return _create_naisnet(**{"steps": 1, "x0": "input", **kwargs})


@register_model
def naisnet10(**kwargs) -> NaisNet:
    """NAIS-Net10: ResNet-20 layout, each block unrolled 10 times with tied weights."""
    return _create_naisnet(**{"steps": 10, **kwargs})


@register_model
def resnet_sh10(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    steps: int = 10,
    h: float = 1.0,
    act: str = "relu",
    tied: bool = True,
    tol: float | None = None,
    max_steps: int | None = None,
) -> SharedResNet:
    """ResNet-SH10: the same layout with autonomous residual blocks shared over 10 steps."""

    def make_block(channels: int) -> SharedResidualBlock:
        return SharedResidualBlock(
            channels, steps=steps, h=h, act=act, tied=tied, tol=tol, max_steps=max_steps
        )

    return SharedResNet(make_block, num_classes=num_classes, in_chans=in_chans)


@register_model
def nais_mlp(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    in_features: int = 2,
    hidden: int = 32,
    blocks: int = 2,
    steps: int = 10,
    h: float = 1.0,
    act: str = "tanh",
    x0: str = "zeros",
    tied: bool = True,
    stable: bool = True,
    eps: float = 0.01,
    tol: float | None = None,
    max_steps: int | None = None,
) -> NaisMLP:
    """Fully connected NAIS-Net for vector data (e.g. 2-D synthetic sets); `in_chans` is
    accepted for the registry's sake and ignored: inputs are (N, in_features)."""
    del in_chans
    block_kwargs = dict(
        steps=steps,
        h=h,
        act=act,
        x0=x0,
        tied=tied,
        stable=stable,
        eps=eps,
        tol=tol,
        max_steps=max_steps,
    )
    if x0 == "input" and in_features != hidden:
        raise ValueError(
            f"x0='input' needs in_features == hidden (the state starts at the input); "
            f"got in_features={in_features}, hidden={hidden}"
        )
    return NaisMLP(
        num_classes=num_classes,
        in_features=in_features,
        hidden=hidden,
        blocks=blocks,
        block_kwargs=block_kwargs,
    )
