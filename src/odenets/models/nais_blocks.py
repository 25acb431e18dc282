"""NAIS-Net blocks: fully connected and convolutional non-autonomous blocks with their
stability reprojection (`project_`), and the autonomous shared-weight residual block of the
ResNet-SH baseline. All unroll through `odenets.models.unrolled.UnrolledBlock`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from odenets.models.unrolled import UnrolledBlock
from odenets.stability import centre_mask, project_conv_, project_fc_


def _check_fc_options(features: int, in_features: int, *, rank: int, x0: str, eps: float) -> None:
    if features < 1 or in_features < 1:
        raise ValueError(f"features and in_features must be >= 1; got {features}, {in_features}")
    if not 1 <= rank <= features:
        raise ValueError(f"rank must be in [1, features={features}]; got {rank}")
    if x0 == "input" and in_features != features:
        raise ValueError(
            f"x0='input' needs in_features == features; got {in_features} != {features}"
        )
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5); got {eps}")


def _check_conv_options(
    channels: int, in_channels: int, *, kernel_size: int, x0: str, eps: float, eta: float
) -> None:
    if channels < 1 or in_channels < 1:
        raise ValueError(f"channels and in_channels must be >= 1; got {channels}, {in_channels}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (a centre tap is needed); got {kernel_size}")
    if x0 == "input" and in_channels != channels:
        raise ValueError(
            f"x0='input' needs in_channels == channels; got {in_channels} != {channels}"
        )
    if not 0.0 < eps < eta < 1.0:
        raise ValueError(f"need 0 < eps < eta < 1; got eps={eps}, eta={eta}")


class NaisBlock(UnrolledBlock):
    """Fully connected NAIS block on states (N, features) with inputs (N, in_features).

    With `stable=True`, A = -RᵀR - εI with R of shape (rank, features) (rank ≤ features,
    0 < ε < 1/2), and `project_()` applies the Frobenius reprojection of R.

    Usable in any network (`odenets.NaisBlock`); the defaults are the paper's block: K = 10
    steps with tied weights, h = 1, tanh, x(0) = 0, stable, full rank, ε = 0.01.
    Shapes: (N, in_features) -> (N, features).
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
        _check_fc_options(features, in_features, rank=rank, x0=x0, eps=eps)
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

    Usable in any network (`odenets.NaisConvBlock`; `odenets.stability.project_(net)` after
    each optimiser step); the defaults are the block of NAIS-Net10: K = 10 steps with tied
    weights, h = 1, ReLU, 3x3 kernels, x(0) = 0, stable, ε = 0.01, η = 0.05.
    Shapes: (N, in_channels, H, W) -> (N, channels, H, W).
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
        _check_conv_options(channels, in_channels, kernel_size=kernel_size, x0=x0, eps=eps, eta=eta)
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


def nais_blocks(module: nn.Module) -> list[UnrolledBlock]:
    """The NAIS blocks (`NaisBlock`, `NaisConvBlock`) inside `module`, itself included, in
    module order; works on any `nn.Module`."""
    return [m for m in module.modules() if isinstance(m, (NaisBlock, NaisConvBlock))]


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
