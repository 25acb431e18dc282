"""Reading run folders back: `read_run` (the JSON files) and `load_run` (the model)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from odenets.checkpoint import PICKLE_SUFFIXES
from odenets.errors import CheckpointError
from odenets.models.registry import create_model
from odenets.training.run_folder import FINAL_WEIGHTS, LAST_WEIGHTS, RunFolder

__all__ = [
    "RunInfo",
    "load_run",
    "read_run",
    "weights_file",
    "weights_metadata",
    "weights_record",
]

WEIGHTS_FORMAT = "odenets.weights"


@dataclass
class RunInfo:
    """A run folder's contents: resolved config, summary and per-epoch metrics."""

    path: Path  # the run folder
    config: dict[str, Any]  # config.json
    summary: dict[str, Any]  # summary.json ({} while the run has not written one)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, one per epoch


def read_run(path: str | os.PathLike) -> RunInfo:
    """Read config.json, summary.json and metrics.jsonl of a run folder.

    Raises:
        CheckpointError: the folder has no config.json, or a file is corrupt.
    """
    run = RunFolder(path)
    return RunInfo(
        path=run.path,
        config=run.read_config(),
        summary=run.read_summary(),
        metrics=run.read_metrics(),
    )


def weights_metadata(config: dict[str, Any], **extra: Any) -> dict[str, str]:
    """Header metadata of a weights file: enough to rebuild the model without config.json."""
    dataset = config["dataset"]
    meta = {
        "format": WEIGHTS_FORMAT,
        "model": config["model"],
        "model_kwargs": json.dumps(config["model_kwargs"]),
        "num_classes": str(dataset["num_classes"]),
        "in_chans": str(dataset["in_chans"]),
    }
    meta.update({k: str(v) for k, v in extra.items()})
    return meta


def weights_file(path: str | os.PathLike, *, which: str = "auto") -> Path:
    """The weights file of a run folder that `load_run` loads (see there for `which`).

    Raises:
        CheckpointError: the folder holds no such weights.
    """
    if which not in ("auto", "final", "last"):
        raise ValueError(f"which must be 'auto', 'final' or 'last'; got {which!r}")
    path = Path(path)
    final, last = path / FINAL_WEIGHTS, path / LAST_WEIGHTS
    if which == "final" or (which == "auto" and final.is_file()):
        file = final
    elif last.is_file():
        file = last
    else:
        raise CheckpointError(f"{path} holds no weights ({FINAL_WEIGHTS} or {LAST_WEIGHTS})")
    if not file.is_file():
        raise CheckpointError(f"{path} holds no {file.name}")
    return file


def weights_record(path: str | os.PathLike, *, which: str = "auto") -> dict[str, Any]:
    """Which weights of a run `load_run` loads, as eval.json records them.

    Returns:
        {"run": the folder, "file": "final.safetensors" | "last.safetensors", "epoch":
        the epoch the weights are from (None if the file does not say), "epochs": the
        planned epochs, "sha256": the file's SHA-256}.
    """
    file = weights_file(path, which=which)
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"checkpoint {file} is corrupt or truncated ({err})") from err
    run = RunFolder(path)
    return _record(run, file, meta, run.read_config())


def _record(run: RunFolder, file: Path, meta: dict[str, str], config: dict) -> dict[str, Any]:
    """`weights_record` from the weights file's header metadata and the run's config; the
    file's SHA-256 is verified against the one recorded when it was written."""
    epoch = meta.get("epoch")
    return {
        "run": str(run.path),
        "file": file.name,
        "epoch": int(epoch) if epoch is not None and epoch.isdigit() else None,
        "epochs": config.get("train", {}).get("epochs"),
        "sha256": run.verify_weights(file.name),
    }


def load_run(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", which: str = "auto"
) -> nn.Module:
    """The trained model of a run folder, in eval mode.

    The model's `run_weights` attribute is the `weights_record` of the weights loaded
    (eval.json records it).

    Args:
        path: the run folder (as given to `odenets train --out`).
        device: where to put the model.
        which: "auto" (final weights if the run finished, else the last checkpoint),
            "final" or "last".

    Raises:
        CheckpointError: missing, corrupt or pickle-only checkpoints, or weights that do
            not fit the model named in config.json.
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"refusing to load {path}: pickle checkpoints run code when loaded; odenets "
            "loads run folders with safetensors weights"
        )
    run = RunFolder(path)
    cfg = run.read_config()
    file = weights_file(path, which=which)
    tensors, meta = run.load_weights(file.name)
    weights = tensors
    if file.name == LAST_WEIGHTS:
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    model = create_model(
        cfg["model"],
        num_classes=cfg["dataset"]["num_classes"],
        in_chans=cfg["dataset"]["in_chans"],
        **cfg.get("model_kwargs", {}),
    )
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"the weights in {path} do not fit model {cfg['model']!r}: {err}"
        ) from err
    model.run_weights = _record(run, file, meta, cfg)
    return model.to(device).eval()
