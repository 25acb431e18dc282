"""Model registry in the style of timm: `@register_model`, `create_model`, `list_models`."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
import sys
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
        ValueError: if an override is not a keyword of the model; the message lists those
            it accepts.
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(
            f"unknown model {name!r}.{hint} See odenets.list_models() for the "
            f"{len(_MODELS)} available names."
        )
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer; got {value!r}")
    factory = _MODELS[name]
    options = _keywords(factory)
    unknown = sorted(set(overrides) - set(options or overrides))
    if unknown:
        raise _unknown_keywords(name, unknown, options)
    try:
        model = factory(num_classes=num_classes, in_chans=in_chans, **overrides)
    except TypeError as err:
        # A factory taking **kwargs passes them on: Python names the function that refused.
        found = re.search(r"^([\w.]+)\(\) got an unexpected keyword argument '(\w+)'", str(err))
        if found is None or found[2] not in overrides:
            raise
        options = _keywords(_resolve(found[1], err))
        raise _unknown_keywords(name, [found[2]], options, via=found[1]) from None
    model.model_name = name
    return model


def _unknown_keywords(name, unknown, options, via=None) -> ValueError:
    accepts = f"its keywords go to {via}(), which accepts" if via else "it accepts"
    return ValueError(
        f"model {name!r} has no keyword {', '.join(map(repr, unknown))}; {accepts} "
        f"{', '.join(options or []) or 'no others'} besides num_classes and in_chans"
    )


def _keywords(fn: Callable | None) -> list[str] | None:
    """The optional keyword arguments of `fn` (None when it takes **kwargs)."""
    if fn is None:
        return None
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [
        p.name
        for p in params
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.default is not p.empty
        and p.name not in ("num_classes", "in_chans")
    ]


def _resolve(qualname: str, err: TypeError) -> Callable | None:
    """The function named `qualname` in the module where the refused call was made."""
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    obj = sys.modules.get(tb.tb_frame.f_globals.get("__name__", ""))
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj if callable(obj) else None
