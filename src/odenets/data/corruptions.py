"""CIFAR-10-C / CIFAR-100-C noise corruptions: generated (seeded) or loaded from the official
files.

Formulas of Hendrycks & Dietterich (ICLR 2019) for 32x32 images, x in [0, 1], the result
clipped to [0, 1]; the uint8 sets are then x * 255 truncated, as in the official files:

- gaussian: x + N(0, c^2)                      c = 0.04, 0.06, 0.08, 0.09, 0.10
- shot:     Poisson(x c) / c                   c = 500, 250, 100, 75, 50
- impulse:  salt-and-pepper, each value set to 0 or 1 (even odds) with probability c
                                               c = 0.01, 0.02, 0.03, 0.05, 0.07
- speckle:  x + x N(0, c^2)                    c = 0.06, 0.10, 0.12, 0.16, 0.20

The official files were drawn without a recorded seed, so they cannot be regenerated
bit-exactly: generated sets are a stand-in with the same statistics. The official layout
is `<name>.npy`, uint8 (5 N, 32, 32, 3), severity 1 first, and `labels.npy`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from odenets.data._io import atomic_write
from odenets.errors import DataError
from odenets.progress import format_duration

logger = logging.getLogger(__name__)

NOISE_CORRUPTIONS = ("gaussian", "shot", "impulse", "speckle")
SEVERITIES = (1, 2, 3, 4, 5)
SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise std, pixel units in [0, 1]
    "shot": (500, 250, 100, 75, 50),  # photons per unit intensity (fewer = noisier)
    "impulse": (0.01, 0.02, 0.03, 0.05, 0.07),  # share of values set to 0 or 1
    "speckle": (0.06, 0.10, 0.12, 0.16, 0.20),  # std of the multiplicative noise
}
CHUNK = 2048  # images per step of `corrupt`, to bound memory on large sets
# The names of the official CIFAR-10-C / CIFAR-100-C files, accepted wherever the short ones are.
CIFAR_C_NAMES = {f"{name}_noise": name for name in NOISE_CORRUPTIONS}


def corruption_name(name: str) -> str:
    """The short name ("gaussian") of a noise corruption given either way ("gaussian" or the
    official file name "gaussian_noise")."""
    short = CIFAR_C_NAMES.get(name, name)
    if short not in SEVERITY_PARAMS:
        accepted = ", ".join(f"{n} ({n}_noise)" for n in NOISE_CORRUPTIONS)
        raise ValueError(f"unknown noise corruption {name!r}; choose one of {accepted}")
    return short


def _gaussian(x: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    return x + c * _randn(x, gen)


def _shot(x: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    return torch.poisson((x * c).to(gen.device), generator=gen).to(x.device) / c


def _impulse(x: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    hit = _rand(x, gen) < c
    salt = _rand(x, gen) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def _speckle(x: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    return x + x * (c * _randn(x, gen))


_NOISES: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "gaussian": _gaussian,
    "shot": _shot,
    "impulse": _impulse,
    "speckle": _speckle,
}


# Draws happen on the generator's device and move to x's: a CPU generator gives the same
# noise whether the images are on the CPU or a GPU.
def _randn(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)


def _rand(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)


def severity_param(name: str, severity: int) -> float:
    """The parameter c of corruption `name` ("gaussian" or "gaussian_noise") at `severity`."""
    name = corruption_name(name)
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer in 1..5; got {severity!r}")
    return SEVERITY_PARAMS[name][severity - 1]


def apply_noise(
    x: torch.Tensor, name: str, severity: int, *, generator: torch.Generator
) -> torch.Tensor:
    """Corrupt float images with CIFAR-C noise, without uint8 truncation.

    Args:
        x: float (N, C, H, W) (any shape works) in [0, 1].
        name: "gaussian", "shot", "impulse" or "speckle" (or the official names
            "gaussian_noise", ...).
        severity: 1..5.
        generator: the noise depends only on its state; it is drawn on the generator's
            device (a CPU generator gives the same noise for CPU and GPU images).

    Returns:
        float tensor shaped like x, clipped to [0, 1].
    """
    c = severity_param(name, severity)
    name = corruption_name(name)
    if not torch.is_floating_point(x):
        raise TypeError(f"apply_noise takes float images in [0, 1]; got {x.dtype}")
    return _NOISES[name](x, c, generator).clamp_(0.0, 1.0)


def corrupt(images: np.ndarray, name: str, severity: int, *, seed: int) -> np.ndarray:
    """Corrupt uint8 images as the CIFAR-C files do (float64, clip, x 255, truncate).

    Args:
        images: uint8 (N, H, W, C).
        name: "gaussian", "shot", "impulse" or "speckle" (or the official names
            "gaussian_noise", ...).
        severity: 1..5.
        seed: the output depends only on (images, name, severity, seed).

    Returns:
        uint8 (N, H, W, C).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"corrupt takes uint8 images (N, H, W, C); got {images.dtype}")
    severity_param(name, severity)  # validates before any work
    gen = torch.Generator().manual_seed(int(seed))
    out = np.empty_like(images)
    for start in range(0, len(images), CHUNK):
        # float64 so that untouched values survive the round trip v / 255 * 255 exactly.
        x = torch.from_numpy(images[start : start + CHUNK]).to(torch.float64) / 255.0
        y = apply_noise(x, name, severity, generator=gen)
        out[start : start + CHUNK] = (y * 255.0).to(torch.uint8).numpy()  # truncates
    return out


def corruption_seed(seed: int, name: str, severity: int) -> int:
    """Seed of one (corruption, severity) of a generated set, so each can be redrawn alone."""
    index = NOISE_CORRUPTIONS.index(corruption_name(name))
    return int(np.random.SeedSequence([seed, index, severity]).generate_state(1)[0])


def write_cifar_c(
    images: np.ndarray,
    labels: np.ndarray,
    out: str | os.PathLike,
    *,
    names: Sequence[str] = NOISE_CORRUPTIONS,
    seed: int = 0,
) -> list[Path]:
    """Write generated noise sets in the official layout: <name>.npy and labels.npy.

    Args:
        images: uint8 (N, H, W, C) clean test images; labels: (N,).
        out: folder to write into (created).
        names: corruptions to generate.
        seed: base seed; severity s of corruption k uses `corruption_seed(seed, k, s)`.

    Returns:
        the written files, labels.npy last.
    """
    out = Path(out)
    images, labels = np.asarray(images), np.asarray(labels, dtype=np.int64)
    written = []
    names = [corruption_name(name) for name in names]
    on_terminal = sys.stderr.isatty()
    bar = tqdm(
        total=len(names) * len(SEVERITIES),
        desc="corrupting",
        unit="set",
        leave=False,
        disable=not on_terminal,  # no carriage-return bar in a batch job's log: lines instead
    )
    started = time.perf_counter()
    for k, name in enumerate(names, start=1):
        if not on_terminal:
            logger.info(
                "building noise set %s (%d/%d): %d severities of %s images",
                name, k, len(names), len(SEVERITIES), f"{len(images):,}",
            )  # fmt: skip
        parts = []
        for s in SEVERITIES:
            parts.append(corrupt(images, name, s, seed=corruption_seed(seed, name, s)))
            bar.update()
        stack = np.concatenate(parts)  # (5 N, H, W, C), severity 1 first
        path = out / f"{name}.npy"
        with atomic_write(path) as f:
            np.save(f, stack)
        written.append(path)
        if not on_terminal:
            elapsed = time.perf_counter() - started
            eta = elapsed / k * (len(names) - k)  # the sets cost alike
            logger.info(
                "built %s in %s so far%s", path, format_duration(elapsed),
                f", ETA {format_duration(eta)}" if k < len(names) else ", done",
            )  # fmt: skip
    bar.close()
    with atomic_write(out / "labels.npy") as f:
        np.save(f, np.tile(labels, len(SEVERITIES)))
    return [*written, out / "labels.npy"]


def load_cifar_c(
    root: str | os.PathLike, name: str, severity: int
) -> tuple[np.ndarray, np.ndarray]:
    """One severity of a CIFAR-10-C / CIFAR-100-C file (official or generated).

    Args:
        root: folder with <name>.npy (uint8 (5 N, H, W, C), severity 1 first) and
            labels.npy ((5 N,) as published, or (N,)).
        name: corruption name, e.g. "gaussian" (the official files say "gaussian_noise";
            both spellings are looked for).
        severity: 1..5.

    Returns:
        images uint8 (N, H, W, C) and labels int64 (N,).
    """
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer in 1..5; got {severity!r}")
    root = Path(root).expanduser()
    path = _find_npy(root, corruption_name(name))
    labels_path = root / "labels.npy"
    if not labels_path.is_file():
        raise DataError(f"{labels_path} is missing; expected labels.npy beside {path.name}")
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path} or {labels_path}: {err}") from err
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) % 5:
        raise DataError(
            f"{path} holds {images.dtype} {images.shape}; expected uint8 (5 N, H, W, C), "
            "five severities of N images, severity 1 first (official: (50000, 32, 32, 3))"
        )
    n = len(images) // 5
    if labels.ndim != 1 or len(labels) not in (n, 5 * n):
        raise DataError(
            f"{labels_path} holds shape {labels.shape}; expected ({5 * n},) or ({n},) labels "
            f"for {path.name} of {len(images)} images"
        )
    rows = slice((severity - 1) * n, severity * n)
    labels = labels[rows] if len(labels) == 5 * n else labels
    return np.array(images[rows]), labels.astype(np.int64)


def _find_npy(root: Path, name: str) -> Path:
    for candidate in (name, f"{name}_noise"):
        if (root / f"{candidate}.npy").is_file():
            return root / f"{candidate}.npy"
    present = sorted(p.stem for p in root.glob("*.npy") if p.stem != "labels")
    raise DataError(
        f"no {name}.npy (or {name}_noise.npy) in {root}; expected a CIFAR-10-C / CIFAR-100-C "
        f"folder (files found: {', '.join(present) or 'none'})"
    )
