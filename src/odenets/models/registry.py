"""Model registry in the style of timm: `@register_model`, `create_model`, `list_models`."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model constructor under its function name.

    The constructor takes keyword arguments only (`num_classes`, `in_chans` and any
    model-specific overrides) and returns an `nn.Module`.
    """
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of registered models, optionally filtered by a glob pattern."""
    names = sorted(_MODELS)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(name: str, *, num_classes: int = 10, in_chans: int = 3, **overrides) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from `list_models()`, e.g. ``"in_resnet110"``.
        num_classes: size of the classifier output.
        in_chans: channels of the input images (3 for CIFAR, 1 for grey-scale data).
        **overrides: model-specific keyword arguments (e.g. ``lambda_init=(0.2, 0.25)``).

    Returns:
        The model, in training mode, taking images in [0, 1] of shape (N, in_chans, H, W).

    Raises:
        KeyError: if the name is unknown; the message suggests close matches.
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(
            f"unknown model {name!r}.{hint} See odenets.list_models() for the "
            f"{len(_MODELS)} available names."
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1; got {in_chans}")
    model = _MODELS[name](num_classes=num_classes, in_chans=in_chans, **overrides)
    model.model_name = name
    return model
