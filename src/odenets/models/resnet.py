"""Pre-activation CIFAR ResNets and the In-ResNet family.

Papers:
    He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016
    (pre-activation blocks). Yang, Liu, Bao, Shi, "Interpolation between Residual and
    Non-Residual Networks", ICML 2020 (arXiv 2006.05749).

A residual block is the forward-Euler step of dx/dt = f(x, t):

    ResNet:       x_{n+1} = x_n + f_n(x_n)

Damping the ODE, dx/dt = -λ x + ρ(λ) f(x, t), gives blocks that interpolate between a
residual block (λ = 0) and a plain layer x_{n+1} = f_n(x_n) (λ = 1):

    In-ResNet:    x_{n+1} = (1 - ReLU(λ_n)) x_n + f_n(x_n)                      (ρ = 1)
    λ-In-ResNet:  x_{n+1} = (1 - ReLU(λ_n)) x_n + (1 + ReLU(λ_n)) f_n(x_n)      (ρ = λ + 1)
    general:      x_{n+1} = (1 - act(d(x_n))) x_n + f_n(x_n), act in {ReLU, sigmoid},
                  d = λ_n (a scalar) or d(x) = W_d x + b_d (gating)
    ETD:          x_{n+1} = e^{-λ_n} x_n + (1 - e^{-λ_n}) / λ_n · (1 + λ_n) f_n(x_n)
                                                                   (ρ = λ + 1; f as λ → ∞)

One block class serves every variant: the residual function f (basic or bottleneck) and a
small junction (`odenets.models.layers`) that combines x_n and f_n(x_n). The registry holds
`<junction><depth>` (e.g. `in_resnet110`) for every registered junction and every depth in
`DEPTHS`, generated at the end of this file (7 x 6 = 42 networks): a new junction is one
class with `@register_junction(name)` and a `model_doc`.

The layout follows the In-ResNet authors' CIFAR code: a 3x3 stem with no BN or ReLU after
it; three stages of widths 16, 32, 64 (x4 for bottleneck) with strides 1, 2, 2; a BN-ReLU-1x1
projection where the shape changes; a BN-ReLU-average-pool-linear head. Only blocks with an
identity shortcut interpolate, and not the first block of the network (51 of 54 blocks at
depth 110 and 164). Coefficients are kept in the authors' raw form, so SGD with weight decay
moves them as in their runs (`param_groups(..., coefficient_weight_decay=0.0)` exempts them).

[decision]s for the variants without published code (details in `odenets.models.layers`):
the sigmoid variants keep d = logit(λ); the gates are 1x1 convolutions with bias (C -> C,
element-wise, or one gate per sample and channel with `gate="pooled"`), zero weights and
bias act⁻¹(λ₀) at initialisation, which adds C² + C parameters per interpolating block
(3.17 M in all at depth 164); ETD keeps k = λ with λ = ReLU(k). `lambda_init` is in λ units
for every variant; default U(0.20, 0.25) up to depth 110, U(0.10, 0.20) at 164.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from odenets.models.base import CIFAR_MEAN, CIFAR_STD, OdeNet
from odenets.models.fused import scaled_sum
from odenets.models.layers import (
    JUNCTIONS,
    LambdaRange,
    create_junction,
    on_junction_registered,
)
from odenets.models.registry import register_model

# depth -> (residual function, blocks per stage): 6N+2 for basic, 9N+2 for bottleneck.
DEPTHS = {
    20: ("basic", 3),
    32: ("basic", 5),
    44: ("basic", 7),
    56: ("basic", 9),
    110: ("basic", 18),
    164: ("bottleneck", 18),
}
STAGE_WIDTHS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)


LAMBDA_INIT: LambdaRange = (0.2, 0.25)  # the authors' initial λ range up to depth 110
DEEP_LAMBDA_INIT: LambdaRange = (0.1, 0.2)  # theirs at depth 164


def default_lambda_init(depth: int) -> LambdaRange:
    """The authors' initial λ range: U(0.20, 0.25) up to depth 110, U(0.10, 0.20) beyond."""
    return DEEP_LAMBDA_INIT if depth > 110 else LAMBDA_INIT


class BasicResidual(nn.Module):
    """f(x) = conv3x3(ReLU(BN(conv3x3(ReLU(BN(x)), stride)))), no conv bias."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """f(x), or scale·f(x) with 0-d `scale` folded into the last convolution's weights."""
        out = self.conv1(F.relu(self.bn1(x)))
        return _last_conv(self.conv2, F.relu(self.bn2(out)), scale)


class BottleneckResidual(nn.Module):
    """f(x) = 1x1 (to 4·planes) ∘ BN-ReLU ∘ 3x3 (stride) ∘ BN-ReLU ∘ 1x1 ∘ BN-ReLU."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """f(x), or scale·f(x) with 0-d `scale` folded into the last convolution's weights."""
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return _last_conv(self.conv3, F.relu(self.bn3(out)), scale)


def _last_conv(conv: nn.Conv2d, h: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """conv(h), or scale·conv(h) as conv(h) with weights scale·W (the conv has no bias): the
    scale costs a product over the weights instead of one over the activations, and so does
    its gradient (Σ W ⊙ dL/d(scale·W) instead of Σ f ⊙ dL/df)."""
    if scale is None:
        return conv(h)
    return F.conv2d(
        h, conv.weight * scale, None, conv.stride, conv.padding, conv.dilation, conv.groups
    )


RESIDUALS = {"basic": BasicResidual, "bottleneck": BottleneckResidual}


class Projection(nn.Module):
    """Projection shortcut where the shape changes: BN, ReLU, 1x1 conv (no bias)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_chs)
        self.conv = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.relu(self.bn(x)))


class ResBlock(nn.Module):
    """x_{n+1} = junction(shortcut(x_n), f(x_n)); f is evaluated once per call."""

    def __init__(self, f: nn.Module, shortcut: nn.Module | None, junction: nn.Module):
        super().__init__()
        self.f = f
        self.shortcut = shortcut
        self.junction = junction

    @property
    def interpolating(self) -> bool:
        return self.junction.interpolating

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        scalars = self.junction.scalars()
        if scalars is None or scalars[1] is None:
            return self.junction(skip, self.f(x))
        # a·skip + b·f(x) with b folded into f's last convolution (λ-In-ResNet, ETD): the
        # same function, two fewer passes over the activations forward and backward.
        a, b = scalars
        return scaled_sum(skip, self.f(x, scale=b), a)


class InResNetBlock(ResBlock):
    """A pre-activation residual block with a chosen junction, for any network.

    x_{n+1} = junction(shortcut(x_n), f(x_n)), e.g. (1 - λ) x_n + f(x_n) for the default
    "in_resnet" variant, with f and its initialisation as in the In-ResNet networks.
    `odenets.analysis.model_coefficients` reads λ from any module that contains such
    blocks.

    Args:
        channels: input channels C.
        variant: the junction, one of `odenets.models.layers.JUNCTIONS`: "resnet" (x + f),
            "in_resnet" (default), "lambda_in_resnet", "in_resnet_sig", "in_resnet_gating",
            "in_resnet_gating_sig", "etd_resnet" (formulas in `odenets.models.layers`).
        stride: 1 keeps H and W; 2 halves them. With a stride or a change of channels the
            shortcut is a projection (BN, ReLU, 1x1 conv) and the junction combines it
            with f (the paper's networks keep such blocks plain: variant="resnet").
        out_channels: output channels (default `channels`).
        residual: "basic" (two 3x3 convolutions, default) or "bottleneck" (1x1, 3x3, 1x1 to
            `out_channels`, which must then be a multiple of 4).
        lambda_init: (lo, hi): initial λ ~ U(lo, hi), in λ units; default (0.2, 0.25), the
            authors' range up to depth 110. Interpolating variants only.
        gate: "elementwise" (default) or "pooled"; gating variants only.

    Shapes: (N, channels, H, W) -> (N, out_channels, H / stride, W / stride).
    """

    def __init__(
        self,
        channels: int,
        *,
        variant: str = "in_resnet",
        stride: int = 1,
        out_channels: int | None = None,
        residual: str = "basic",
        lambda_init: LambdaRange | None = None,
        gate: str | None = None,
    ):
        if variant not in JUNCTIONS:
            raise ValueError(
                f"unknown variant {variant!r}{_did_you_mean(variant, JUNCTIONS)}; accepted: "
                f"{', '.join(sorted(JUNCTIONS))}"
            )
        if residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {sorted(RESIDUALS)}; got {residual!r}")
        out_channels = channels if out_channels is None else out_channels
        if channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be >= 1; got {channels} -> {out_channels}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2; got {stride!r}")
        cls = RESIDUALS[residual]
        if out_channels % cls.expansion:
            raise ValueError(
                f"a {residual} block needs out_channels divisible by {cls.expansion}; "
                f"got {out_channels}"
            )
        kwargs = _junction_kwargs(
            variant, lambda_init=lambda_init, gate=gate, default_range=LAMBDA_INIT
        )
        shortcut = (
            Projection(channels, out_channels, stride)
            if stride != 1 or channels != out_channels
            else None
        )
        f = cls(channels, out_channels // cls.expansion, stride)
        super().__init__(f, shortcut, create_junction(variant, out_channels, **kwargs))
        for module in (f, shortcut):
            if module is not None:
                _init_conv_bn(module)
        self.variant = variant


def _did_you_mean(name: str, names) -> str:
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class PreActResNet(OdeNet):
    """CIFAR pre-activation ResNet whose identity-shortcut blocks use a chosen junction.

    Args:
        depth: nominal depth, recorded in `model.depth` (6N+2 basic, 9N+2 bottleneck).
        block: residual function, "basic" or "bottleneck".
        blocks_per_stage: N, blocks in each of the three stages.
        junction: a name from `odenets.models.layers.JUNCTIONS`; also `model.family`.
        num_classes: classifier outputs.
        in_chans: image channels.
        mean, std: per-channel normalisation applied inside the model (pixels in [0, 1]).
        lambda_init: (lo, hi), initial λ_n ~ U(lo, hi) in λ units (interpolating junctions).
        gate: "elementwise" or "pooled" (gating junctions only).
    """

    def __init__(
        self,
        *,
        depth: int,
        block: str = "basic",
        blocks_per_stage: int,
        junction: str = "resnet",
        num_classes: int = 10,
        in_chans: int = 3,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
        lambda_init: LambdaRange | None = None,
        gate: str | None = None,
    ):
        super().__init__(in_chans=in_chans, mean=mean, std=std)
        if block not in RESIDUALS:
            raise ValueError(f"block must be one of {sorted(RESIDUALS)}; got {block!r}")
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1; got {blocks_per_stage}")
        self.family, self.depth, self.block_type = junction, depth, block
        junction_kwargs = _junction_kwargs(
            junction, lambda_init=lambda_init, gate=gate, default_range=default_lambda_init(depth)
        )
        residual = RESIDUALS[block]

        self.stem = nn.Conv2d(in_chans, STAGE_WIDTHS[0], 3, padding=1, bias=False)
        blocks, in_chs = [], STAGE_WIDTHS[0]
        for stage, (planes, stride) in enumerate(zip(STAGE_WIDTHS, STAGE_STRIDES, strict=True)):
            out_chs = planes * residual.expansion
            for j in range(blocks_per_stage):
                s = stride if j == 0 else 1
                shortcut = Projection(in_chs, out_chs, s) if s != 1 or in_chs != out_chs else None
                # The first block and the projection blocks stay plain residual (authors).
                plain = shortcut is not None or (stage == 0 and j == 0)
                name, kwargs = ("resnet", {}) if plain else (junction, junction_kwargs)
                f = residual(in_chs, planes, s)
                blocks.append(ResBlock(f, shortcut, create_junction(name, out_chs, **kwargs)))
                in_chs = out_chs
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.BatchNorm2d(in_chs)
        self.fc = nn.Linear(in_chs, num_classes)
        self.num_features = in_chs
        for module in [self.stem, self.norm] + [m for b in blocks for m in (b.f, b.shortcut)]:
            if module is not None:
                _init_conv_bn(module)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised images (N, C, H, W) -> pooled features (N, num_features)."""
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = F.relu(self.norm(x))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (N, num_features)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def interpolating_blocks(self) -> list[ResBlock]:
        return [b for b in self.blocks if b.interpolating]


def _junction_kwargs(name: str, *, lambda_init, gate, default_range: LambdaRange) -> dict:
    if name not in JUNCTIONS:
        raise ValueError(f"unknown junction {name!r}; known: {', '.join(sorted(JUNCTIONS))}")
    options = JUNCTIONS[name].options
    given = {"lambda_init": lambda_init, "gate": gate}
    for key, value in given.items():
        if value is not None and key not in options:
            accepted = ", ".join(options) if options else "no options"
            raise ValueError(f"{key} does not apply to {name!r} blocks (accepted: {accepted})")
    kwargs = {k: v for k, v in given.items() if v is not None and k in options}
    if "lambda_init" in options and lambda_init is None:
        kwargs["lambda_init"] = default_range
    return kwargs


def _init_conv_bn(module: nn.Module) -> None:
    # The authors' init: conv N(0, sqrt(2 / (k·k·out_channels))), BN weight 1 and bias 0.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _create_resnet(family: str, depth: int, **kwargs) -> PreActResNet:
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {sorted(DEPTHS)}; got {depth}")
    block, n = DEPTHS[depth]
    return PreActResNet(depth=depth, block=block, blocks_per_stage=n, junction=family, **kwargs)


# --- the zoo: every junction at every depth -------------------------------------------


def _register_networks(junction: str, cls: type) -> None:
    """Register ``<junction><depth>`` (e.g. ``in_resnet110``) for every depth in `DEPTHS`;
    the docstring comes from the junction's `model_doc`."""
    for depth in DEPTHS:
        register_model(_factory(junction, depth, cls.model_doc), kwargs_to=PreActResNet.__init__)


def _factory(junction: str, depth: int, doc: str):
    def factory(**kwargs) -> PreActResNet:
        return _create_resnet(junction, depth, **kwargs)

    factory.__name__ = factory.__qualname__ = f"{junction}{depth}"
    factory.__doc__ = doc.format(depth=depth, name=junction)
    return factory


on_junction_registered(_register_networks)
