"""What every odenets network shares: normalisation inside the model, input checks, and a
small common surface (blocks, coefficients, NAIS blocks, depth statistics, parameter groups)
so analysis, training and evaluation code needs no `isinstance`."""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from odenets.models import layers
from odenets.models.nais_blocks import nais_blocks
from odenets.models.unrolled import depth_stats

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class Normalize(nn.Module):
    """Per-channel standardisation, (x - mean) / std, held as buffers.

    Models take pixels in [0, 1]; normalising inside keeps attacks and noise in pixel space.
    A single value is broadcast to every channel.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], in_chans: int):
        super().__init__()
        mean, std = _per_channel(mean, in_chans, "mean"), _per_channel(std, in_chans, "std")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive; got {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _per_channel(values: Sequence[float], in_chans: int, what: str) -> list[float]:
    values = [float(v) for v in (values if isinstance(values, Sequence) else [values])]
    if len(values) == 1:
        return values * in_chans
    if len(values) == in_chans:
        return values
    if in_chans != 3 and len(values) == 3:
        # CIFAR constants for grey or multispectral data: use their mean on every channel.
        return [sum(values) / 3.0] * in_chans
    raise ValueError(f"{what} needs 1 or {in_chans} values (in_chans={in_chans}); got {values}")


def check_images(x: torch.Tensor, in_chans: int) -> None:
    """Raise a clear error for input a model cannot take (type, dtype, shape), before any
    layer sees it. Reads only metadata: no reduction, no host sync."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of images; got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(
            f"expected floating-point images in [0, 1]; got dtype {x.dtype}. "
            "Convert uint8 images with images.float() / 255."
        )
    if x.dim() != 4:
        raise ValueError(
            f"expected images of shape (N, C, H, W); got {x.dim()} dimensions {tuple(x.shape)}"
        )
    if x.shape[1] != in_chans:
        raise ValueError(
            f"expected {in_chans} channels (N, {in_chans}, H, W); got shape {tuple(x.shape)}. "
            "Channels-last numpy images need .permute(0, 3, 1, 2)."
        )


_RANGE_HINT = (
    "Already normalised (e.g. torchvision Normalize)? odenets models normalise inside: pass "
    "the images in [0, 1] (or check_input=False where the caller has checked them)."
)


def check_pixel_range(x: torch.Tensor, *, sync: bool = True) -> None:
    """Refuse images outside [0, 1] (NaN and infinite values included).

    One fused min/max reduction. With `sync` (CPU, evaluation) its two values are read on
    the host and the error names them; otherwise (CUDA training steps and attack iterates,
    and always under torch.compile, which traces it into the graph without a break) an
    asynchronous device-side assert checks them, with no host sync: a failure surfaces as a
    device-side assertion at the next synchronisation.
    """
    if x.numel() == 0:
        return
    low, high = torch.aminmax(x.detach())
    if not sync or torch.compiler.is_compiling():
        torch._assert_async(
            (low >= 0) & (high <= 1), "images must be pixels in [0, 1]. " + _RANGE_HINT
        )
        return
    low, high = torch.stack([low, high]).tolist()  # one host read
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(
            f"images contain NaN or infinite values (got values in [{low:.4g}, {high:.4g}]); "
            "models take finite pixels in [0, 1]"
        )
    if not (0.0 <= low and high <= 1.0):
        scale = " Divide uint8 pixels by 255." if low >= 0 and 2 < high <= 255 else ""
        raise ValueError(
            f"images must be pixels in [0, 1]; got values in [{low:.4g}, {high:.4g}].{scale} "
            + _RANGE_HINT
        )


def takes_check_input(model: nn.Module) -> bool:
    """Whether `model(images, check_input=False)` is accepted (odenets networks, ensembles,
    torch.compile of either); callers that checked their images pass it to skip the check."""
    try:
        return "check_input" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # no signature to read (a C-implemented forward)
        return False


class OdeNet(nn.Module):
    """Base class of every registered network.

    Subclasses set `family` and `depth`, build `normalize`, and implement
    `forward_features` (normalised input -> pooled features) and `head`.

    `check_input` (default True; `create_model(..., check_input=False)` or set the attribute)
    makes `forward` refuse images outside [0, 1]; `model(x, check_input=False)` skips the
    check for one call, where the caller has checked its images already.
    """

    family: str = "network"
    depth: int = 0
    check_input: bool = True

    def __init__(self, *, in_chans: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.in_chans = in_chans
        self.normalize = Normalize(mean, std, in_chans)
        self._range_read = False  # a synchronous range check has run (see `forward`)

    def forward(self, images: torch.Tensor, *, check_input: bool | None = None) -> torch.Tensor:
        """Logits (N, num_classes) for images (N, in_chans, H, W) in [0, 1].

        Args:
            images: float pixels in [0, 1], not normalised (the model normalises inside).
            check_input: refuse images outside [0, 1] (ValueError naming their range);
                None takes `self.check_input`. False skips the check (one fused min/max
                reduction) where the caller has checked the images, e.g. a training loop
                over a loader of [0, 1] images, or an attack's clamped iterates.
        """
        check_images(images, self.in_chans)
        if self.check_input if check_input is None else check_input:
            self._check_range(images)
        return self.forward_normalized(self.normalize(images))

    def _check_range(self, images: torch.Tensor) -> None:
        # A CUDA training step or attack iterate (input needing a gradient) must not wait for
        # the host: after the model's first synchronous check, which gives the full error
        # message for the common mistake at once, they get the asynchronous device assert.
        per_step = images.is_cuda and (self.training or images.requires_grad)
        if torch.compiler.is_compiling() or (per_step and self._range_read):
            check_pixel_range(images, sync=False)
            return
        check_pixel_range(images)
        self._range_read = True

    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for input that is already standardised (the authors' convention)."""
        return self.head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- common surface -------------------------------------------------------------
    def example_input(
        self, batch: int = 2, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A random batch the model accepts: images (batch, in_chans, 32, 32) in [0, 1].

        Models for other inputs (e.g. vectors) override this, so smoke tests need no cases.
        """
        return torch.rand(batch, self.in_chans, 32, 32, generator=generator)

    def coefficients(self) -> torch.Tensor:
        """Effective interpolation coefficients λ_n, one per interpolating block (1-D,
        detached; empty for networks without interpolation). See `layers.coefficients`."""
        return layers.coefficients(self)

    def coefficient_parameters(self) -> list[nn.Parameter]:
        """The raw parameters behind `coefficients()` (for weight-decay exemption)."""
        return layers.coefficient_parameters(self)

    def nais_blocks(self) -> list[nn.Module]:
        """The NAIS-Net blocks of the network, in order (empty for other families)."""
        return nais_blocks(self)

    def depth_stats(self) -> dict[str, float]:
        """Mean and max unrolled steps per sample of the last forward pass, summed over the
        unrolled blocks (NAIS-Net family; empty for other networks)."""
        return depth_stats(self)

    def project_(self) -> None:
        """Apply stability projections in place (NAIS-Net); a no-op elsewhere."""
        for block in self.nais_blocks():
            block.project_()

    def param_groups(
        self, weight_decay: float, *, coefficient_weight_decay: float | None = None
    ) -> list[dict]:
        """Optimizer parameter groups.

        By default every parameter, the raw coefficients included, gets `weight_decay`, as
        in the authors' runs. Pass `coefficient_weight_decay=0.0` to exempt them.
        """
        coeff = self.coefficient_parameters()
        if coefficient_weight_decay is None or not coeff:
            return [{"params": list(self.parameters()), "weight_decay": weight_decay}]
        coeff_ids = {id(p) for p in coeff}
        rest = [p for p in self.parameters() if id(p) not in coeff_ids]
        return [
            {"params": rest, "weight_decay": weight_decay},
            {"params": coeff, "weight_decay": coefficient_weight_decay},
        ]


def _convolution_tensors(models: Sequence[nn.Module]) -> list[torch.Tensor]:
    """The 4-D parameters and buffers of `models`, each once (shared modules included)."""
    tensors = {id(t): t for m in models for t in (*m.parameters(), *m.buffers()) if t.dim() == 4}
    return list(tensors.values())


def to_channels_last(model: nn.Module) -> nn.Module:
    """channels_last for every 4-D parameter and buffer of `model`, in place.

    `Module.to(memory_format=torch.channels_last)` refuses models holding 5-D tensors (the
    stacked per-step kernels of untied NAIS blocks); those are left as they are.
    """
    for t in _convolution_tensors([model]):
        t.data = t.data.contiguous(memory_format=torch.channels_last)
    return model


@contextlib.contextmanager
def channels_last_weights(models: Sequence[nn.Module]) -> Iterator[None]:
    """channels_last 4-D parameters and buffers of `models` inside the block only.

    The tensors that were in another layout get it back on exit (their values copied back,
    so nothing done to them inside the block is lost); the modules are otherwise untouched.
    """
    changed = [
        (t, t.data)
        for t in _convolution_tensors(models)
        if not t.is_contiguous(memory_format=torch.channels_last)
    ]
    for t, data in changed:
        t.data = data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for t, original in reversed(changed):
            with torch.no_grad():
                original.copy_(t.data)
            t.data = original


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model without either)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
