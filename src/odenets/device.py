"""Device names as users give them: "auto", "cpu", "cuda", "cuda:1", ..."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" picks the first CUDA device when there is one, else the CPU.

    Raises:
        ValueError: for a CUDA device when CUDA is not available, or a name torch rejects.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda[:N]'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available; use 'cpu'")
    return device
