"""Starting or resuming a run in its folder: the config.json header, summary.json, the
epoch-0 checkpoint, the same-run checks, metrics lines of an unfinished epoch, and the
training's `Progress`."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from odenets._version import __version__
from odenets.checkpoint import finite_or_none
from odenets.errors import CheckpointError
from odenets.training import schemas
from odenets.training.config import ADDED_FIELDS
from odenets.training.distributed import barrier
from odenets.training.loop import EpochProgress
from odenets.training.run_folder import (
    BEST_WEIGHTS,
    DIGESTS,
    EVAL,
    FINAL_WEIGHTS,
    LAST_JSON,
    LAST_WEIGHTS,
    SUMMARY,
    RunFolder,
)
from odenets.training.state import load_train_state, restore_train_state, save_train_state


@dataclass
class Progress:
    """How far a run got; the counters a checkpoint stores and a resume restores."""

    epoch: int = 0  # finished epochs
    global_step: int = 0  # optimizer steps so far
    best_epoch: int = 0  # epoch of the best selection score (0: none yet)
    best_score: float = -math.inf  # best val/test accuracy for select best-*
    wall_time_s: float = 0.0  # training time over all sessions
    last_record: dict[str, Any] | None = None  # metrics of the last finished epoch
    partial: EpochProgress | None = None  # a resumed epoch's progress, until it is taken
    checkpoint_at: str = "after epoch 0"  # where last.* is, in words
    selected_epoch: int | None = None  # the epoch final.safetensors holds, once written

    def take_partial(self) -> EpochProgress | None:
        """The resumed epoch's progress, once (the next epochs start from step 0)."""
        partial, self.partial = self.partial, None
        return partial


def state_info(
    header, progress: Progress, record, partial: EpochProgress | None = None
) -> dict[str, Any]:
    """The JSON part of a checkpoint; `partial` for a checkpoint inside an epoch."""
    return {
        "model": header["model"],
        "model_kwargs": header["model_kwargs"],
        "dataset": header["dataset"],
        "train": header["train"],
        "seed": header["seed"],
        "odenets_version": header["odenets_version"],
        "torch_version": header["torch_version"],
        "global_step": progress.global_step,
        "best_epoch": progress.best_epoch,
        "best_score": finite_or_none(progress.best_score),
        "wall_time_s": progress.wall_time_s,
        "metrics": record,  # of the last finished epoch
        "partial_epoch": dataclasses.asdict(partial) if partial is not None else None,
    }


def write_summary(run: RunFolder, cfg, progress: Progress, status, wall_time_s, error) -> None:
    by_epoch = {m["epoch"]: m for m in run.read_metrics()}
    chosen = by_epoch.get(progress.selected_epoch or progress.epoch, {})
    summary = {
        "status": status,
        "epochs_done": progress.epoch,
        "epochs": cfg.epochs,
        "final_train_acc": chosen.get("train_acc"),
        "final_test_acc": chosen.get("test_acc"),
        "wall_time_s": round(wall_time_s, 3),
        "error": error,
        "select": cfg.select,
        "selected_epoch": progress.selected_epoch,
    }
    if "val_acc" in chosen:
        summary["final_val_acc"] = chosen["val_acc"]
    run.write_summary(summary)


def check_out_folder(run_dir: Path) -> None:
    """Refuse an output path that names a file, before any data is loaded."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(
            f"--out {run_dir} is a file; it must name a folder (new, or a run folder to resume)"
        )


def start_run(cfg, run: RunFolder, header, model, optimizer, dist) -> Progress:
    """Fresh run: write config.json and the epoch-0 checkpoint. Resume: restore last.*.
    The caller holds the folder's lock."""
    progress = Progress()
    has_last = run.has(LAST_WEIGHTS)
    has_run = has_last or run.is_run
    restart = getattr(cfg, "restart", False)
    barrier(dist)  # every rank decides before rank 0 writes anything
    if has_run and not (cfg.resume or restart):
        raise CheckpointError(
            f"{run.path} already holds a run; pass --resume (resume=True) to continue it, "
            "--restart to start it over, or choose another --out folder"
        )
    if has_run and not has_last and not restart and _finished_without_last(run):
        raise CheckpointError(
            f"cannot resume {run.path}: it holds a finished run but its {LAST_WEIGHTS} is "
            f"missing, so resuming would start over and overwrite {FINAL_WEIGHTS}; pass "
            "--restart to start over on purpose"
        )
    if (cfg.resume or restart) and dist.is_main:
        run.remove_stale_temporaries()
    if restart and dist.is_main:
        for name in (FINAL_WEIGHTS, BEST_WEIGHTS, LAST_WEIGHTS, LAST_JSON, EVAL, DIGESTS):
            run.file(name).unlink(missing_ok=True)
    if cfg.resume and has_last and not restart:
        _resume_run(cfg, run, header, model, optimizer, dist, progress)
    else:
        _start_fresh_run(cfg, run, header, model, optimizer, dist, progress)
    return progress


def _finished_without_last(run: RunFolder) -> bool:
    if run.has(FINAL_WEIGHTS):
        return True
    return run.has(SUMMARY) and run.read_summary().get("status") == "finished"


def _resume_run(cfg, run: RunFolder, header, model, optimizer, dist, progress: Progress) -> None:
    """Restore model and optimizer from last.* and fill `progress` from its JSON part; rank 0
    then drops metric lines past the checkpoint and, if epochs are left to train, rewrites
    config.json with the settings they will use."""
    if run.is_run:
        run.read_config()  # a corrupt config.json is reported, not overwritten
    tensors, state = load_train_state(run)
    schemas.validate("state_info", state, f"{run.file(LAST_WEIGHTS)} (its state header)")
    done = state["epoch"] + (1 if state.get("partial_epoch") else 0)  # epochs begun
    if cfg.epochs < done:
        raise CheckpointError(
            f"cannot resume {run.path} with epochs {cfg.epochs}: its checkpoint is "
            f"{'inside' if state.get('partial_epoch') else 'after'} epoch {done}; give "
            f"--epochs {done} or more"
        )
    left = state["epoch"] < cfg.epochs
    _check_same_run(state, header, run.path, left=left)
    restore_train_state(
        tensors, state, model=model, optimizer=optimizer, where=str(run.file(LAST_WEIGHTS))
    )
    _progress_from_state(progress, state, run.file(LAST_WEIGHTS))
    barrier(dist)  # every rank has read last.* before rank 0 rewrites metrics
    if dist.is_main:
        if left:
            run.write_config(header)
        _trim_metrics(run, state)
    barrier(dist)


def _progress_from_state(progress: Progress, state: dict[str, Any], where: Path) -> None:
    """Copy a checkpoint's counters, best score, last record and partial epoch to `progress`."""
    progress.global_step = state["global_step"]
    progress.best_epoch = state["best_epoch"]
    progress.wall_time_s = state["wall_time_s"]
    score = state["best_score"]
    progress.best_score = score if score is not None else -math.inf
    progress.epoch = state["epoch"]
    progress.last_record = state.get("metrics")
    partial = state.get("partial_epoch")
    try:
        progress.partial = EpochProgress(**partial) if partial else None
    except TypeError as err:
        raise CheckpointError(
            f'{where}: field "partial_epoch" is not an epoch\'s progress ({err})'
        ) from err
    e = state["epoch"]
    progress.checkpoint_at = (
        f"epoch {e + 1}, step {partial['step']}" if partial else f"after epoch {e}"
    )


def _start_fresh_run(cfg, run: RunFolder, header, model, optimizer, dist, progress) -> None:
    """Rank 0 writes config.json, an empty metrics.jsonl, the epoch-0 checkpoint and a
    "running" summary."""
    if dist.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(header)
        run.write_metrics([])
        save_train_state(
            run,
            model=model,
            optimizer=optimizer,
            epoch=0,
            info=state_info(header, progress, None),
        )
        write_summary(run, cfg, progress, "running", 0.0, None)
    barrier(dist)


def _identity(run: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same network on the same data (the data root may move)."""
    dataset = {k: v for k, v in (run.get("dataset") or {}).items() if k != "root"}
    return {"model": run.get("model"), "model_kwargs": run.get("model_kwargs"), "dataset": dataset}


# Training settings a resume with epochs left may not change: the run's record says one value.
_FIXED_ON_RESUME = ("freeze_coefficients",)


def _stored(train: dict[str, Any], key: str) -> Any:
    """A setting of a stored run's training configuration; for a field added since the run
    was written, the value that reproduces what it ran with (`ADDED_FIELDS`)."""
    return train.get(key, ADDED_FIELDS.get(key))


def _check_same_run(
    state: dict[str, Any], header: dict[str, Any], run_dir: Path, *, left: bool
) -> None:
    old, new = _identity(state), _identity(header)
    for key in old:
        if old[key] != new[key]:
            raise CheckpointError(
                f"cannot resume {run_dir}: it was trained with {key} {old[key]!r}, "
                f"but this run asks for {new[key]!r}. Use another --out folder."
            )
    old, new = state.get("train", {}), header["train"]
    for key in _FIXED_ON_RESUME:
        if left and _stored(old, key) != new[key]:
            raise CheckpointError(
                f"cannot resume {run_dir} with {key} {new[key]}: its {state['epoch']} epochs "
                f"trained with {key} {_stored(old, key)}, and its record (config.json, the "
                "report) can say only one; pass --restart to train it over, or choose "
                "another --out folder"
            )
    if state.get("partial_epoch") and old.get("batch_size") != new["batch_size"]:
        raise CheckpointError(
            f"cannot resume {run_dir} inside epoch {state['epoch'] + 1} with batch_size "
            f"{new['batch_size']}: the checkpoint counts steps of batch {old.get('batch_size')}"
        )
    # cuda_graphs changes how steps are launched, not what they compute.
    skip = {
        *("resume", "restart", "verify", "progress", "device", "epochs", "out"),
        *("checkpoint_steps", "cuda_graphs"),
    }
    changed = sorted(k for k in new if k not in skip and _stored(old, k) != new[k])
    if changed:
        effect = (
            "the run will not match an uninterrupted one"
            if left
            else f"they are not used: no epochs are left to train ({state['epoch']} done)"
        )
        warnings.warn(
            f"resuming {run_dir} with changed settings {changed}; {effect}",
            stacklevel=4,  # the caller of start_run
        )
    if left and new["epochs"] != old.get("epochs") and new["milestones"] == old.get("milestones"):
        warnings.warn(
            f"resuming with {new['epochs']} epochs instead of {old.get('epochs')}; the learning "
            f"rate still drops after epochs {new['milestones']} (give --milestones to change "
            "that)",
            stacklevel=4,
        )


def _trim_metrics(run: RunFolder, state: dict[str, Any]) -> None:
    """Keep metric lines up to the checkpoint's epoch (a killed epoch may have left one)."""
    epoch = state["epoch"]
    kept = {m["epoch"]: m for m in run.read_metrics() if m["epoch"] <= epoch}
    if epoch > 0 and epoch not in kept and state.get("metrics"):
        kept[epoch] = state["metrics"]
    run.write_metrics([kept[e] for e in sorted(kept)])


def run_header(cfg, data, device, dist) -> dict[str, Any]:
    train = dataclasses.asdict(cfg)
    return {
        "model": cfg.model,
        "model_kwargs": cfg.model_kwargs,
        "dataset": {
            "name": cfg.dataset,
            "root": str(cfg.data_root) if cfg.data_root is not None else None,
            "num_classes": data["num_classes"],
            "in_chans": data["in_chans"],
            "n_train": data["n_train"],
            "n_val": data.get("n_val", 0),
            "n_test": data["n_test"],
        },
        "train": train,
        "seed": cfg.seed,
        "odenets_version": __version__,
        "torch_version": torch.__version__,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "world_size": dist.world_size,
    }
