"""Model registry in the style of timm: `@register_model`, `create_model`, `list_models`."""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
from collections.abc import Callable

from torch import nn

from odenets.errors import UnknownNameError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
# name -> the callable that receives the keywords of a factory taking **kwargs (checked
# against its signature instead).
_KWARGS_TO: dict[str, Callable] = {}


def register_model(
    fn: Callable[..., nn.Module] | None = None, *, kwargs_to: Callable | None = None
):
    """Register a model constructor under its function name.

    The constructor takes keyword arguments only (`num_classes`, `in_chans` and any
    model-specific overrides) and returns an `nn.Module`. A constructor that takes
    ``**kwargs`` and passes them on names the callable that receives them with
    ``@register_model(kwargs_to=...)``, so `create_model` can check them against its
    signature.
    """
    if fn is None:
        return functools.partial(register_model, kwargs_to=kwargs_to)
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    if kwargs_to is None:
        _KWARGS_TO.pop(name, None)
    else:
        _KWARGS_TO[name] = kwargs_to
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of registered models, optionally filtered by a glob pattern."""
    names = sorted(_MODELS)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(
    name: str, *, num_classes: int = 10, in_chans: int = 3, check_input: bool = True, **overrides
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from `list_models()`, e.g. ``"in_resnet110"``.
        num_classes: size of the classifier output.
        in_chans: channels of the input images (3 for CIFAR, 1 for grey-scale data).
        check_input: the model's `check_input`: refuse images outside [0, 1] (e.g. images
            already normalised: the model normalises inside). False skips that check on
            every call; `model(x, check_input=False)` skips it for one call.
        **overrides: model-specific keyword arguments (e.g. ``lambda_init=(0.2, 0.25)``).

    Returns:
        The model, in training mode, taking images in [0, 1] of shape (N, in_chans, H, W).

    Raises:
        UnknownNameError (a KeyError): if the name is unknown; the message suggests close
            matches.
        ValueError: if an override is not a keyword of the model (or of the callable it
            passes its keywords to, see `register_model`); the message lists those it accepts.
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown model {name!r}.{hint} See odenets.list_models() for the "
            f"{len(_MODELS)} available names."
        )
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer; got {value!r}")
    factory = _MODELS[name]
    receiver = factory
    if _takes_var_keywords(factory) and name in _KWARGS_TO:
        receiver = _KWARGS_TO[name]
    if not _takes_var_keywords(receiver):
        unknown = sorted(set(overrides) - set(_keyword_names(receiver)))
        if unknown:
            via = None if receiver is factory else receiver.__qualname__
            raise _unknown_keywords(name, unknown, _optional_keywords(receiver), via=via)
    model = factory(num_classes=num_classes, in_chans=in_chans, **overrides)
    model.model_name = name
    model.check_input = bool(check_input)
    return model


def _unknown_keywords(name, unknown, options, via=None) -> ValueError:
    accepts = f"its keywords go to {via}(), which accepts" if via else "it accepts"
    return ValueError(
        f"model {name!r} has no keyword {', '.join(map(repr, unknown))}; {accepts} "
        f"{', '.join(options) or 'no others'} besides num_classes, in_chans and check_input"
    )


def _parameters(fn: Callable) -> list[inspect.Parameter]:
    # `self` of an `__init__` named by kwargs_to is not a keyword a caller can give.
    return [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def _takes_var_keywords(fn: Callable) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in _parameters(fn))


def _keyword_names(fn: Callable) -> list[str]:
    """Every name `fn` accepts as a keyword."""
    return [p.name for p in _parameters(fn) if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _optional_keywords(fn: Callable) -> list[str]:
    """The keywords of `fn` that have a default, in order, other than num_classes and in_chans
    (the ones an error message offers)."""
    return [
        p.name
        for p in _parameters(fn)
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.default is not p.empty
        and p.name not in ("num_classes", "in_chans")
    ]
