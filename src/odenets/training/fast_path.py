"""The fast path of a training run, with a safe fallback when a feature fails on first use.

On CUDA a run turns on bf16 autocast and torch.compile by default, and CUDA graphs on
request (`cuda_graphs`, compile mode "reduce-overhead"). Each can fail the first time it
runs on a new machine: inductor cannot build (no working C++ compiler, Triton missing), a
CUDA graph capture fails or runs out of memory. Such a failure drops the feature to the
next safer configuration, with one warning naming the feature and the cause, and the step
is run again:

    compile + cuda_graphs  ->  compile  ->  eager        amp  ->  float32

The failures are raised inside the forward or backward pass, before the optimizer step, so
the weights and optimizer state the step starts from are unchanged. Errors that are not a
fast-path failure (a bug, an out-of-memory without CUDA graphs) propagate. `settings()` is
what config.json records under "fast_path": the configuration that actually ran and every
fallback taken.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("odenets.training")

FEATURES = ("cuda_graphs", "compile", "amp")  # the order in which a failure is blamed


@dataclass
class FastPath:
    """The fast-path features in use and how to (re)build the networks that use them."""

    model: nn.Module  # the plain model
    wrap: Callable[[nn.Module], nn.Module]  # DDP (or identity), applied before compiling
    device: torch.device
    amp: bool  # bf16 autocast
    compile: bool  # torch.compile of the training and evaluation forwards
    cuda_graphs: bool  # CUDA graphs (compile mode "reduce-overhead")
    fallbacks: list[dict[str, str]] = field(default_factory=list)  # [{"feature", "cause"}]
    on_change: Callable[[dict[str, Any]], None] | None = None  # called with settings()

    def __post_init__(self) -> None:
        if self.cuda_graphs and self.device.type != "cuda":
            self._drop("cuda_graphs", f"needs a CUDA device; got {self.device}", notify=False)
        if self.cuda_graphs and not self.compile:
            self._drop("cuda_graphs", "needs compile (--compile)", notify=False)
        if self.compile and self.device.type == "cuda" and not _has_triton():
            self._drop("compile", "Triton is not installed", notify=False)
        self.build()

    def build(self) -> None:
        """(Re)build `net` (training forward) and `eval_net` for the features now on."""
        torch._dynamo.reset()  # forget compiled code and cached failures of earlier builds
        net = self.wrap(self.model)
        if self.compile:
            mode = "reduce-overhead" if self.cuda_graphs else None
            net = torch.compile(net, mode=mode)
        self.net = net
        self.eval_net = torch.compile(self.model) if self.compile else self.model

    def settings(self) -> dict[str, Any]:
        return {
            "amp": self.amp,
            "compile": self.compile,
            "cuda_graphs": self.cuda_graphs,
            "fallbacks": list(self.fallbacks),
        }

    def run(self, fn: Callable[[], Any]) -> Any:
        """`fn()`, run again on the next safer configuration after each fast-path failure."""
        while True:
            try:
                return fn()
            except Exception as err:  # noqa: BLE001 - classified below, else re-raised
                feature = self._blame(err)
                if feature is None:
                    raise
                self._drop(feature, _cause(err))
                self.build()

    def _blame(self, err: BaseException) -> str | None:
        """The feature `err` comes from, or None when it is no fast-path failure."""
        text = _describe(err)
        frames = " ".join(f.filename for f in traceback.extract_tb(err.__traceback__))
        if self.cuda_graphs and (
            isinstance(err, torch.OutOfMemoryError)
            or "cudagraph" in frames
            or any(w in text.lower() for w in ("graph capture", "cuda graph", "capturing"))
        ):
            return "cuda_graphs"
        if self.compile and (
            "torch/_dynamo" in frames
            or "torch/_inductor" in frames
            or _is_compile_error(err)
            or "triton" in text.lower()
        ):
            return "compile"
        if self.amp and "bfloat16" in text.lower() and "not" in text.lower():
            return "amp"
        return None

    def _drop(self, feature: str, cause: str, *, notify: bool = True) -> None:
        setattr(self, feature, False)
        if feature == "compile":
            self.cuda_graphs = False  # graphs come through compile
        nxt = _next_configuration(self)
        self.fallbacks.append({"feature": feature, "cause": cause})
        message = f"{feature} failed ({cause}); continuing with {nxt}"
        logger.warning(message)
        if notify and self.on_change is not None:
            self.on_change(self.settings())


def _next_configuration(fp: FastPath) -> str:
    parts = ["bf16" if fp.amp else "float32"]
    if fp.compile:
        parts.append("compile + CUDA graphs" if fp.cuda_graphs else "compile")
    else:
        parts.append("eager")
    return ", ".join(parts)


def _is_compile_error(err: BaseException) -> bool:
    from torch._dynamo import exc

    kinds = tuple(
        k
        for k in (getattr(exc, "BackendCompilerFailed", None), getattr(exc, "InductorError", None))
        if k is not None
    )
    return isinstance(err, kinds) if kinds else False


def _describe(err: BaseException) -> str:
    """The error and its causes as one string (inductor wraps the compiler's error)."""
    parts, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        parts.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return " | ".join(parts)


def _cause(err: BaseException) -> str:
    """One short line: the innermost error's type and first line of its message."""
    inner = err
    while inner.__cause__ is not None:
        inner = inner.__cause__
    lines = [s for s in str(inner).strip().splitlines() if s.strip()] or [""]
    first = lines[0].strip()
    if len(first) > 200:
        first = first[:197] + "..."
    return f"{type(inner).__name__}: {first}" if first else type(inner).__name__


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return True  # cannot tell: let the first compile decide
    return bool(has_triton())
