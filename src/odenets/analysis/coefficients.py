"""Learned interpolation coefficients λ_n of the In-ResNet family (SPEC §2).

The forward-Euler step of dx/dt = -λ x is stable for λ·Δt in [0, 2] (|1 - λ| ≤ 1 with
Δt = 1); the paper's figure shows most learned coefficients inside that range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from odenets.models.layers import coefficient_parameters, coefficients
from odenets.training.runs import load_run, read_run

# Stable range of λ·Δt for the forward-Euler scheme, Δt = 1 (|1 - λ| <= 1).
STABLE_RANGE = (0.0, 2.0)


def model_coefficients(model: nn.Module) -> dict[str, np.ndarray]:
    """The effective λ_n of a model's interpolating blocks and the raw parameters behind them.

    Args:
        model: any `nn.Module`: a registered network, or a custom one built from
            `odenets.InResNetBlock`s (the junctions inside it are found by walking it).

    Returns:
        ``{"lambda": (n,) float64, "raw": (m,) float64}``: ``lambda`` holds the λ_n of the
        interpolating junctions in module order (empty without interpolation; for a
        registered network, ``model.coefficients()``), ``raw`` the concatenated raw
        parameters behind them (``model.coefficient_parameters()``).
    """
    with torch.no_grad():
        lam = coefficients(model).detach().double().cpu().reshape(-1).numpy()
        params = [p.detach().double().cpu().reshape(-1) for p in coefficient_parameters(model)]
    raw = torch.cat(params).numpy() if params else np.zeros(0)
    return {"lambda": lam, "raw": raw}


def coefficient_history(metrics: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """λ_n over epochs from the lines of a run's ``metrics.jsonl``.

    Returns:
        ``{"epoch": (E,) int, "lambda": (E, n) float}``, only epochs that recorded
        coefficients; ``n = 0`` when none did.
    """
    rows = [m for m in metrics if m.get("coefficients")]
    if not rows:
        return {"epoch": np.zeros(0, dtype=np.int64), "lambda": np.zeros((0, 0))}
    widths = {len(m["coefficients"]) for m in rows}
    if len(widths) != 1:
        raise ValueError(f"coefficients change length across epochs: {sorted(widths)}")
    epoch = np.array([int(m["epoch"]) for m in rows], dtype=np.int64)
    lam = np.array([m["coefficients"] for m in rows], dtype=np.float64)
    return {"epoch": epoch, "lambda": lam}


def summarize_over_seeds(values: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Mean, standard deviation, minimum and maximum of λ_n over runs (one row per run).

    Args:
        values: one (n,) array of coefficients per run; all of the same length.

    Returns:
        ``{"values": (R, n), "mean": (n,), "std": (n,), "min": (n,), "max": (n,)}``;
        ``std`` is the population standard deviation (0 for a single run).
    """
    lengths = {len(v) for v in values}
    if len(lengths) != 1:
        raise ValueError(f"runs have different numbers of coefficients: {sorted(lengths)}")
    table = np.stack([np.asarray(v, dtype=np.float64) for v in values])  # (R, n)
    return {
        "values": table,
        "mean": table.mean(axis=0),
        "std": table.std(axis=0),
        "min": table.min(axis=0),
        "max": table.max(axis=0),
    }


def run_coefficients(run_dirs: Sequence[str | Path]) -> dict[str, dict]:
    """Final λ_n and their history for run folders, grouped by model name.

    Runs of one model name are treated as seeds of one configuration.

    Returns:
        ``{model_name: {"runs": [paths], "values"/"mean"/"std"/"min"/"max": arrays
        (see `summarize_over_seeds`), "history": [coefficient_history per run]}}``.
    """
    grouped: dict[str, dict] = {}
    for run_dir in run_dirs:
        info = read_run(run_dir)
        name = info.config["model"]
        lam = model_coefficients(load_run(run_dir))["lambda"]
        group = grouped.setdefault(name, {"runs": [], "final": [], "history": []})
        group["runs"].append(str(run_dir))
        group["final"].append(lam)
        group["history"].append(coefficient_history(info.metrics))
    for name, group in grouped.items():
        if len(group["final"][0]) == 0:
            raise ValueError(
                f"model {name!r} has no interpolation coefficients; coefficient plots need "
                "an In-ResNet-family run (e.g. in_resnet20, lambda_in_resnet20)"
            )
        group.update(summarize_over_seeds(group.pop("final")))
    return grouped
