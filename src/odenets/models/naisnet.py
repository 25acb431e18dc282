"""NAIS-Net: Non-Autonomous Input-Output Stable networks (Ciccone, Gallieri, Masci,
Osendorfer, Gomez, NeurIPS 2018, arXiv 1804.07209).

Each block is a time-invariant, non-autonomous system unrolled for K steps:

    x(k+1) = x(k) + h σ(A x(k) + B u + b),   k = 0 .. K-1,   h ∈ (0, 1],   σ ∈ {tanh, ReLU}

The block input u enters every step (B u + b is computed once per block); x(K) is the next
block's input. With `stable=True`, A is kept where the stage Jacobian has spectral radius
below one (projections in `odenets.stability`), so a block converges to an input-dependent
equilibrium and can be unrolled until its state stops changing (`tol`, `max_steps`).

This file holds the networks and their presets; the unrolling is in
`odenets.models.unrolled` and the blocks in `odenets.models.nais_blocks`.

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

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from odenets.models.base import CIFAR_MEAN, CIFAR_STD, OdeNet
from odenets.models.nais_blocks import NaisBlock, NaisConvBlock, SharedResidualBlock
from odenets.models.registry import register_model
from odenets.models.unrolled import UnrolledBlock

__all__ = [
    "NaisMLP",
    "NaisNet",
    "SharedResNet",
    "UnrolledCifarNet",
    "nais_mlp",
    "naisnet1",
    "naisnet10",
    "resnet_sh10",
]

# --- networks -----------------------------------------------------------------------


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout)
    )


class _UnrolledNetMixin:
    """Surface shared by the NAIS-Net family beyond `OdeNet`'s: step sizes."""

    blocks: nn.ModuleList

    def step_sizes(self) -> torch.Tensor:
        """h of every block, (n_blocks,)."""
        return torch.tensor([b.h for b in self.blocks])


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

    def forward(self, x: torch.Tensor, *, check_input: bool | None = None) -> torch.Tensor:
        """Logits (N, num_classes) for float vectors (N, in_features).

        Vectors are taken as given (no normalisation, no range), so `check_input` only keeps
        the signature of the image networks; type and shape are always checked.
        """
        del check_input
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
    make_block = partial(
        NaisConvBlock,
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


@register_model(kwargs_to=_create_naisnet)
def naisnet1(**kwargs) -> NaisNet:
    """NAIS-Net1: ResNet-20 layout, one step per block, x(0) = u (see the module notes)."""
    return _create_naisnet(**{"steps": 1, "x0": "input", **kwargs})


@register_model(kwargs_to=_create_naisnet)
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
