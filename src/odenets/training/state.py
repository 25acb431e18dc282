"""The resumable training state: `last.safetensors` (tensors) + `last.json` (scalars).

`last.safetensors` holds the model's state_dict under ``model.*``, the optimizer's tensors
(momentum buffers) under ``optim.<param index>.<name>`` and the random generators' states
under ``rng.*``. Its header metadata also carries the JSON state, so the file alone is a
complete checkpoint: `last.json`, written right after it, is the readable copy plus the
file's SHA-256. Both carry a random checkpoint id: a run killed between the two writes
leaves last.json one checkpoint behind, which the loader sees from the ids; it then trusts
the (atomically written) safetensors file. Equal ids and a wrong SHA-256 mean corruption.
Nothing here unpickles.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from odenets.checkpoint import load_safetensors, sha256_file
from odenets.errors import CheckpointError, DivergenceError
from odenets.training import schemas
from odenets.training.run_folder import LAST_JSON, LAST_WEIGHTS, RunFolder

FORMAT = "odenets.train-state"
FORMAT_VERSION = 1


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    scalars = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": cached},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    return tensors, scalars


def _set_rng_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))
    if cuda and torch.cuda.is_available():
        for i, key in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(tensors[key], i)
    n = scalars["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    p = scalars["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def _folder(run_dir: RunFolder | str | os.PathLike) -> RunFolder:
    return run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)


def nonfinite_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """The first parameter, buffer or optimizer tensor holding NaN or inf, or None."""
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            return f"model {name}"
    for idx, entries in optimizer.state_dict()["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                if not torch.isfinite(value).all():
                    return f"optimizer state {idx}.{name}"
    return None


def save_train_state(
    run_dir: RunFolder | str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    info: dict[str, Any],
) -> None:
    """Write last.safetensors then last.json for the state after `epoch` epochs.

    Raises:
        DivergenceError: a parameter, buffer or optimizer tensor is not finite; the
            checkpoint on disk (the last good state) is left as it is.
    """
    bad = nonfinite_state(model, optimizer)
    if bad is not None:
        raise DivergenceError(f"{bad} is not finite; the checkpoint was not written")
    run = _folder(run_dir)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for idx, entries in opt["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                opt_scalars.setdefault(str(idx), {})[name] = value
    rng_tensors, rng_scalars = _rng_state()
    tensors.update(rng_tensors)
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        # Pairs this last.json with its last.safetensors (os.urandom: no RNG state is used).
        "checkpoint_id": secrets.token_hex(8),
        "epoch": epoch,
        **info,
        "optimizer": {"param_groups": opt["param_groups"], "state": opt_scalars},
        "rng": rng_scalars,
    }
    text = json.dumps(state, allow_nan=False)
    meta = {"format": FORMAT, "epoch": str(epoch), "state": text}
    sha = run.save_weights(LAST_WEIGHTS, tensors, metadata=meta)
    run.write_last_json({**state, "weights_sha256": sha})


def load_train_state(
    run_dir: RunFolder | str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and check last.*; returns (tensors, state). Raises CheckpointError."""
    run = _folder(run_dir)
    path = run.file(LAST_WEIGHTS)
    tensors, meta = load_safetensors(path)
    if meta.get("format") != FORMAT or "state" not in meta:
        raise CheckpointError(
            f"{path} is not an odenets training checkpoint (format {meta.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    try:
        state = json.loads(meta["state"])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} has a corrupt state header: {err}") from err
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {state.get('format_version')}; this odenets reads "
            f"version {FORMAT_VERSION}"
        )
    if "checkpoint_id" not in state:
        raise CheckpointError(f"{path} has no checkpoint id: it is incomplete or corrupt")
    schemas.validate("state", state, f"{path} (its state header)")
    _check_rng_tensors(tensors, path)
    json_path = run.file(LAST_JSON)
    if json_path.exists():
        mirror = run.read_last_json()
        if mirror.get("checkpoint_id") == state["checkpoint_id"]:
            got = sha256_file(path)
            if mirror.get("weights_sha256") != got:
                raise CheckpointError(
                    f"{path}: SHA-256 {got} does not match {mirror.get('weights_sha256')} "
                    f"recorded in {json_path}: the checkpoint is corrupt. Restore it from a "
                    "copy, or pass --restart to start the run over"
                )
        else:
            warnings.warn(
                f"{json_path} belongs to an older checkpoint than {path} (the run stopped "
                f"between the two writes); using {path}",
                stacklevel=2,
            )
    run.verify_weights(LAST_WEIGHTS)
    return tensors, state


def _check_rng_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The generator states must have the sizes this torch and numpy use."""
    expected = {
        "rng.torch": (torch.get_rng_state().shape, torch.uint8),
        "rng.numpy": ((624,), torch.int64),
    }
    for key, (shape, dtype) in expected.items():
        value = tensors.get(key)
        if value is None:
            raise CheckpointError(f'{path}: tensor "{key}" missing (not an odenets checkpoint?)')
        if value.shape != shape or value.dtype != dtype:
            raise CheckpointError(
                f'{path}: tensor "{key}" must be {dtype} of shape {tuple(shape)}; got '
                f"{value.dtype} of shape {tuple(value.shape)}"
            )


def restore_train_state(
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    where: str = "the checkpoint",
) -> None:
    """Load model weights, optimizer state and random generators from a loaded checkpoint
    (`where` names it in errors)."""
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise CheckpointError(f"{where}: the weights do not fit the model: {detail}") from err
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    for idx, entries in state["optimizer"]["state"].items():
        opt_state.setdefault(int(idx), {}).update(entries)
    _check_optimizer_shapes(optimizer, opt_state, where)
    try:
        optimizer.load_state_dict(
            {"state": opt_state, "param_groups": state["optimizer"]["param_groups"]}
        )
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{where}: the optimizer state does not fit: {err}") from err
    _match_state_layouts(optimizer)
    _set_rng_state(tensors, state["rng"])


def _check_optimizer_shapes(optimizer: torch.optim.Optimizer, opt_state: dict, where: str) -> None:
    """Each per-parameter buffer (momentum) must have its parameter's shape: torch would
    otherwise fail in the first step, far from the file."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for idx, entries in opt_state.items():
        if not 0 <= idx < len(params):
            raise CheckpointError(
                f"{where}: the optimizer state names parameter {idx}; the model has "
                f"{len(params)} (0..{len(params) - 1})"
            )
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != params[idx].shape:
                raise CheckpointError(
                    f'{where}: optimizer tensor "optim.{idx}.{name}" has shape '
                    f"{tuple(value.shape)}; its parameter has {tuple(params[idx].shape)}"
                )


def _match_state_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (momentum) its parameter's memory layout: loaded
    from a checkpoint they are contiguous, which makes every later step of a channels_last
    model mix layouts (same values, slower)."""
    for param, entries in optimizer.state.items():
        for name, value in entries.items():
            if (
                isinstance(value, torch.Tensor)
                and value.shape == param.shape
                and value.dim() == 4
                and param.is_contiguous(memory_format=torch.channels_last)
            ):
                entries[name] = value.contiguous(memory_format=torch.channels_last)
