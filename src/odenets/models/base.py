"""What every odenets network shares: normalisation inside the model, input checks, and a
small common surface (blocks, coefficients, NAIS blocks, depth statistics, parameter groups)
so analysis, training and evaluation code needs no `isinstance`."""

from __future__ import annotations

import contextlib
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


def check_images(x: torch.Tensor, in_chans: int, *, check_finite: bool = True) -> None:
    """Raise a clear error for input a model cannot take, before any layer sees it."""
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
    # The finiteness check is one reduction plus a host sync: skipped while tracing, and
    # by the caller for CUDA training steps and attack iterations, where a sync per step
    # costs throughput.
    if check_finite and not torch.compiler.is_compiling() and not torch.isfinite(x).all():
        raise ValueError("images contain NaN or infinite values")


class OdeNet(nn.Module):
    """Base class of every registered network.

    Subclasses set `family` and `depth`, build `normalize`, and implement
    `forward_features` (normalised input -> pooled features) and `head`.
    """

    family: str = "network"
    depth: int = 0

    def __init__(self, *, in_chans: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.in_chans = in_chans
        self.normalize = Normalize(mean, std, in_chans)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images (N, in_chans, H, W) in [0, 1]."""
        on_cuda = isinstance(images, torch.Tensor) and images.is_cuda
        # Inputs that need a gradient on CUDA are an attack's iterates, built from images the
        # attack checked once (odenets.robustness): no sync per step for them either.
        per_step = on_cuda and (self.training or images.requires_grad)
        check_images(images, self.in_chans, check_finite=not per_step)
        return self.forward_normalized(self.normalize(images))

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
