"""Junctions: how a block combines its skip path x_n with its residual f_n(x_n).

Every In-ResNet variant is the same pre-activation block with a different junction, so the
variants differ in one small module each, chosen by name from `JUNCTIONS`:

    resnet                x + f                                          (plain residual)
    in_resnet             (1 - λ) x + f,            λ = ReLU(1 - k)       (k raw, authors)
    lambda_in_resnet      (1 - λ) x + (1 + λ) f,    λ = ReLU(k)           (ρ(λ) = λ + 1)
    in_resnet_sig         (1 - λ) x + f,            λ = sigmoid(d)
    in_resnet_gating      (1 - λ(x)) ⊙ x + f,       λ(x) = ReLU(W x + b)
    in_resnet_gating_sig  (1 - λ(x)) ⊙ x + f,       λ(x) = sigmoid(W x + b)
    etd_resnet            e^{-λ} x + (1 - e^{-λ}) / λ · (1 + λ) f,  λ = ReLU(k)  (exact ETD,
                          ρ(λ) = 1 + λ)

A junction takes `(x, fx)`, both (N, C, H, W), and returns x_{n+1}. Interpolating junctions
hold their raw coefficient parameters (`coefficient_parameters()`) and report the effective
λ_n (`coefficient()`); `lambda_init=(lo, hi)` is always in λ units.

A new junction is one class here: `@register_junction(name)` registers it and, through
`on_junction_registered`, its networks `<name><depth>` at every depth of
`odenets.models.resnet.DEPTHS`, which `create_model`, `odenets models`, `odenets train
--model` and presets then accept; its `model_doc` is their docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from odenets.models.fused import gated_conv_sum, gated_sum, scaled_sum

LambdaRange = tuple[float, float]

# Below this |λ| the ETD factor (1 - e^{-λ}) / λ is evaluated by its Taylor series (error
# below λ³/24 < 1e-13 there), which avoids 0/0 (and NaN gradients) at λ = 0.
_ETD_SERIES_BELOW = 1e-4

JUNCTIONS: dict[str, Callable[..., Junction]] = {}
# Called as hook(name, cls) for every junction, registered before or after the hook.
_ON_REGISTER: list[Callable[[str, type], None]] = []


def register_junction(name: str):
    """Class decorator: make a junction available to `create_junction(name)`.

    Registering a junction also registers its networks, ``<name><depth>`` at every depth of
    `odenets.models.resnet.DEPTHS` (see `on_junction_registered`).
    """

    def wrap(cls):
        if name in JUNCTIONS:
            raise ValueError(f"junction {name!r} is already registered")
        cls.name = name
        JUNCTIONS[name] = cls
        for hook in _ON_REGISTER:
            hook(name, cls)
        return cls

    return wrap


def on_junction_registered(hook: Callable[[str, type], None]) -> None:
    """Call `hook(name, cls)` for every junction registered so far and for every later one
    (`odenets.models.resnet` registers a junction's networks this way)."""
    _ON_REGISTER.append(hook)
    for name, cls in list(JUNCTIONS.items()):
        hook(name, cls)


def create_junction(name: str, channels: int, **kwargs) -> Junction:
    """Build the junction registered under `name` for a block of `channels` channels."""
    if name not in JUNCTIONS:
        raise ValueError(f"unknown junction {name!r}; known: {', '.join(sorted(JUNCTIONS))}")
    return JUNCTIONS[name](channels, **kwargs)


def _check_range(lambda_init: LambdaRange, *, open_unit: bool) -> LambdaRange:
    if len(lambda_init) != 2:
        raise ValueError(f"lambda_init must be a pair (lo, hi) in λ units; got {lambda_init}")
    try:
        lo, hi = (float(v) for v in lambda_init)
    except (TypeError, ValueError):
        raise ValueError(f"lambda_init must be two numbers (lo, hi); got {lambda_init}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"lambda_init must be finite numbers (λ units); got {lambda_init}")
    if not lo <= hi:
        raise ValueError(f"lambda_init must be (lo, hi) with lo <= hi; got {lambda_init}")
    if open_unit and not (0.0 < lo and hi < 1.0):
        raise ValueError(
            f"lambda_init for a sigmoid junction must lie in the open interval (0, 1); "
            f"got {lambda_init}"
        )
    if lo < 0.0:
        raise ValueError(f"lambda_init must be >= 0 (λ units); got {lambda_init}")
    return lo, hi


def _uniform(shape: tuple[int, ...], lambda_init: LambdaRange) -> torch.Tensor:
    # Draws from the global generator, like every nn layer init: torch.manual_seed governs it.
    lo, hi = lambda_init
    return torch.empty(shape).uniform_(lo, hi)


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p) - torch.log1p(-p)


class Junction(nn.Module):
    """Base junction: the plain residual sum x + f (no coefficient)."""

    name = "junction"
    interpolating = False
    options: tuple[str, ...] = ()  # keyword options the constructor accepts
    # Docstring of the network <name><depth> (e.g. in_resnet110); {depth} and {name} filled.
    model_doc = "Pre-activation ResNet-{depth} with {name!r} junctions."

    def forward(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        return x + fx

    def scalars(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(a, b) of x_{n+1} = a·x_n + b·f_n(x_n) as 0-d tensors (b None: 1) for a junction
        of that form, else None. A block whose f ends in a linear layer without bias folds
        b into that layer's weights (`odenets.models.resnet.ResBlock`)."""
        return None

    def coefficient(self) -> torch.Tensor:
        """Effective λ_n as a 0-d tensor (interpolating junctions only)."""
        raise TypeError(f"the {self.name!r} junction has no interpolation coefficient")

    def coefficient_parameters(self) -> list[nn.Parameter]:
        return []


@register_junction("resnet")
class ResidualJunction(Junction):
    """x_{n+1} = x_n + f_n(x_n)."""

    model_doc = "Pre-activation ResNet-{depth} (plain residual blocks)."

    def __init__(self, channels: int):
        super().__init__()


class _ScalarJunction(Junction):
    """A junction driven by one learnable raw scalar `k` (shape (1,), as in the authors'
    `ks` list) mapped to λ by `lambda_of`: x_{n+1} = a(λ)·x_n + b(λ)·f_n(x_n); subclasses set
    `lambda_of`, `raw_of` and `scales` (λ -> (a, b)).
    """

    interpolating = True
    options = ("lambda_init",)
    open_unit = False

    def __init__(self, channels: int, *, lambda_init: LambdaRange):
        super().__init__()
        lam = _uniform((1,), _check_range(lambda_init, open_unit=self.open_unit))
        self.k = nn.Parameter(self.raw_of(lam))

    def lambda_of(self, k: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def raw_of(self, lam: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scales(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(a, b) of a·x + b·f at λ (b None: 1)."""
        return 1 - lam, None

    def scalars(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        # λ as a 0-d tensor: the elementwise kernels take it as a scalar (faster than a
        # broadcast (1,) operand), and under bf16 autocast it does not promote the block
        # output to float32, as in a plain residual x + f.
        return self.scales(self.lambda_of(self.k).reshape(()))

    def forward(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        a, b = self.scalars()
        return scaled_sum(x, fx, a, b)

    def coefficient(self) -> torch.Tensor:
        return self.lambda_of(self.k.detach()).reshape(())

    def coefficient_parameters(self) -> list[nn.Parameter]:
        return [self.k]


@register_junction("in_resnet")
class InResNetJunction(_ScalarJunction):
    """x_{n+1} = (1 - λ) x_n + f_n(x_n), λ = ReLU(1 - k) with raw k as the authors keep it.

    Weight decay on k pulls it toward 0, i.e. λ toward 1 (the non-residual end), as in the
    authors' runs. λ has no upper bound: 1 - λ < 0 is possible.
    """

    model_doc = "In-ResNet-{depth}: (1 - ReLU(λ)) x + f, raw k with λ = ReLU(1 - k)."

    def lambda_of(self, k):
        return F.relu(1 - k)

    def raw_of(self, lam):
        return 1 - lam


@register_junction("lambda_in_resnet")
class LambdaInResNetJunction(_ScalarJunction):
    """x_{n+1} = (1 - λ) x_n + (1 + λ) f_n(x_n), λ = ReLU(k) (ρ(λ) = λ + 1).

    f_n is evaluated once (the authors' code evaluates it twice). Weight decay on k pulls λ
    toward 0 (the residual end).
    """

    model_doc = "λ-In-ResNet-{depth}: (1 - ReLU(λ)) x + (1 + ReLU(λ)) f."

    def lambda_of(self, k):
        return F.relu(k)

    def raw_of(self, lam):
        return lam.clone()

    def scales(self, lam):
        return 1 - lam, 1 + lam


@register_junction("in_resnet_sig")
class SigmoidJunction(_ScalarJunction):
    """x_{n+1} = (1 - λ) x_n + f_n(x_n), λ = sigmoid(d).

    [decision] The raw parameter is d = logit(λ), drawn from `lambda_init` in λ units, so the
    variant starts where In-ResNet starts; weight decay pulls d toward 0, i.e. λ toward 0.5.
    """

    model_doc = "In-ResNet-sig-{depth}: (1 - sigmoid(d)) x + f."

    open_unit = True

    def lambda_of(self, k):
        return torch.sigmoid(k)

    def raw_of(self, lam):
        return _logit(lam)


def etd_phi(lam: torch.Tensor) -> torch.Tensor:
    """φ₁(λ) = (1 - e^{-λ}) / λ, with its limit 1 at λ = 0 (safe value and gradient)."""
    small = lam.abs() < _ETD_SERIES_BELOW
    safe = torch.where(small, torch.ones_like(lam), lam)
    series = 1 - lam / 2 + lam * lam / 6
    return torch.where(small, series, -torch.expm1(-safe) / safe)


@register_junction("etd_resnet")
class ETDJunction(_ScalarJunction):
    """Exact first-order exponential time differencing of dx/dt = -λ x + ρ(λ) f with Δt = 1:
    x_{n+1} = e^{-λ} x_n + (1 - e^{-λ}) / λ · ρ(λ) f_n(x_n), ρ(λ) = 1 + λ.

    [decision] ρ(λ) = 1 + λ meets the paper's condition (7), ρ → 1 as λ → 0 and ρ ~ λ as
    λ → ∞, so the block runs from x + f (λ = 0, exactly) to the non-residual f (λ → ∞: the
    factor of f, (1 - e^{-λ})(1 + λ) / λ, tends to 1 and e^{-λ} to 0). With ρ = 1 a large λ
    would send the block to 0 instead. λ = ReLU(k) with raw k = λ (as λ-In-ResNet): damping
    stays non-negative, and weight decay pulls λ toward 0 (the residual end).
    """

    model_doc = "ETD-ResNet-{depth}: e^(-λ) x + (1 - e^(-λ)) / λ · (1 + λ) f."

    def lambda_of(self, k):
        return F.relu(k)

    def raw_of(self, lam):
        return lam.clone()

    def scales(self, lam):
        return torch.exp(-lam), etd_phi(lam) * (1 + lam)


class _GatingJunction(Junction):
    """x_{n+1} = (1 - λ(x_n)) ⊙ x_n + f_n(x_n), λ(x) = act(W x + b).

    [decision] W is a 1x1 convolution with bias (C -> C), so the gate is element-wise, as
    in highway networks; with `gate="pooled"` W acts on the spatially averaged input, one
    gate per sample and channel. W starts at zero and b at act⁻¹(λ₀) with λ₀ drawn per
    channel from `lambda_init`, so at initialisation the gate equals the In-ResNet λ.
    `coefficient()` is the mean gate over the last batch seen (before any batch: the gate
    at W = 0, i.e. the mean of act(b)).
    """

    interpolating = True
    options = ("lambda_init", "gate")
    open_unit = False
    sigmoid_gate = False  # the gate's activation in the fused step: sigmoid (True) or ReLU
    GATES = ("elementwise", "pooled")

    def __init__(self, channels: int, *, lambda_init: LambdaRange, gate: str = "elementwise"):
        super().__init__()
        if gate not in self.GATES:
            raise ValueError(f"gate must be one of {self.GATES}; got {gate!r}")
        self.gate = gate
        self.proj = nn.Conv2d(channels, channels, kernel_size=1, bias=True)
        lam = _uniform((channels,), _check_range(lambda_init, open_unit=self.open_unit))
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.bias.copy_(self.raw_of(lam))
        self._last_gate: torch.Tensor | None = None
        self._last_mean: torch.Tensor | None = None

    def act(self, d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def raw_of(self, lam: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        if self.gate == "elementwise" and self.training and torch.is_grad_enabled():
            # The 1x1 convolution inside the fused step, which also gives λ. Elsewhere (an
            # attack wants dL/dx only) the module and `gated_sum` let autograd skip dL/dW.
            out, lam = gated_conv_sum(
                x, fx, self.proj.weight, self.proj.bias, sigmoid=self.sigmoid_gate
            )
            self._last_gate, self._last_mean = lam, None
            return out
        source = x.mean(dim=(2, 3), keepdim=True) if self.gate == "pooled" else x
        d = self.proj(source)  # (N, C, H, W), or (N, C, 1, 1) when pooled
        # For `coefficient()`, the mean gate of the last batch, taken now: an element-wise
        # gate held past the forward would keep every block's (1.9 MB an image for
        # In-ResNet-gating-110: ~0.9 GB at the evaluation batch of 500). The fused step
        # above holds its λ instead, which autograd holds for the backward pass anyway,
        # and `coefficient()` averages it on demand.
        self._last_gate, self._last_mean = None, self.act(d.detach().float()).mean()
        return gated_sum(x, fx, d, sigmoid=self.sigmoid_gate)

    def coefficient(self) -> torch.Tensor:
        if self._last_mean is not None:
            return self._last_mean
        if self._last_gate is not None:  # λ of the last fused training step
            return self._last_gate.float().mean()
        return self.act(self.proj.bias.detach()).mean()

    def coefficient_parameters(self) -> list[nn.Parameter]:
        return [self.proj.weight, self.proj.bias]


@register_junction("in_resnet_gating")
class GatingJunction(_GatingJunction):
    __doc__ = _GatingJunction.__doc__ + "\n    Here act = ReLU; weight decay pulls λ toward 0.\n"
    model_doc = "In-ResNet-gating-{depth}: (1 - ReLU(W x + b)) ⊙ x + f."

    def act(self, d):
        return F.relu(d)

    def raw_of(self, lam):
        return lam.clone()


@register_junction("in_resnet_gating_sig")
class SigmoidGatingJunction(_GatingJunction):
    __doc__ = _GatingJunction.__doc__ + "\n    Here act = sigmoid; weight decay pulls λ to 0.5.\n"
    model_doc = "In-ResNet-gating-sig-{depth}: (1 - sigmoid(W x + b)) ⊙ x + f."

    open_unit = True
    sigmoid_gate = True

    def act(self, d):
        return torch.sigmoid(d)

    def raw_of(self, lam):
        return _logit(lam)


# --- junctions inside any module ------------------------------------------------------


def coefficients(module: nn.Module) -> torch.Tensor:
    """Effective λ_n of every interpolating junction inside `module` (itself included), in
    module order: 1-D, detached; empty when there is none.

    Works on any `nn.Module` (an odenets network, a custom network built from
    `odenets.InResNetBlock`, a single block). Scalar junctions report their λ_n, gating
    junctions the mean gate over the last batch they saw.
    """
    lams = [
        m.coefficient() for m in module.modules() if isinstance(m, Junction) and m.interpolating
    ]
    return torch.stack(lams) if lams else torch.zeros(0)


def coefficient_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The raw parameters behind `coefficients(module)`, in the same order (e.g. to exempt
    them from weight decay)."""
    return [
        p for m in module.modules() if isinstance(m, Junction) for p in m.coefficient_parameters()
    ]
