"""`fit`: train one model with a recipe, writing a resumable run folder (docs/design.md).

The state after every epoch (and before the first) is checkpointed in last.*; a run killed
at any moment and restarted with `resume=True` repeats the unfinished epoch from exactly
the same state, so its final weights equal those of an uninterrupted run (bitwise on CPU
with deterministic kernels). The data order and augmentation of epoch e depend only on
(seed, e), which is what makes resuming at an epoch boundary exact.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from odenets.checkpoint import FileWriteError, finite_or_none, write_in_place
from odenets.device import resolve_device
from odenets.errors import CheckpointError, DivergenceError, OdenetsError
from odenets.models import layers
from odenets.models.base import to_channels_last
from odenets.models.registry import create_model
from odenets.training.config import TrainConfig, lr_at, resolve_config
from odenets.training.data import load_data, make_loaders
from odenets.training.distributed import (
    DistContext,
    barrier,
    close_distributed,
    convert_sync_batchnorm,
    init_distributed,
)
from odenets.training.fast_path import FastPath
from odenets.training.loop import StepContext, evaluate, train_one_epoch
from odenets.training.metrics import (
    PROBE_IMAGES,
    inactive_coefficients,
    inactive_message,
    model_metrics,
)
from odenets.training.run_folder import (
    BEST_WEIGHTS,
    FINAL_WEIGHTS,
    LAST_WEIGHTS,
    SUMMARY,
    RunFolder,
)
from odenets.training.rundir import (
    Progress,
    check_out_folder,
    run_header,
    start_run,
    state_info,
    write_summary,
)
from odenets.training.runs import RunInfo, read_run, weights_metadata
from odenets.training.state import nonfinite_state, save_train_state

logger = logging.getLogger("odenets.training")


def fit(config: TrainConfig) -> RunInfo:
    """Train `config.model` on `config.dataset` and write the run folder `config.out`.

    Under `torchrun --nproc_per_node N` the same call trains with DistributedDataParallel,
    each rank taking a shard of every global batch; only rank 0 writes files.

    Returns:
        The run's RunInfo (config, summary and metrics as written).

    Raises:
        DivergenceError: the training loss became non-finite; summary.json records it and
            last.* keeps the state after the last good epoch.
        CheckpointError: the folder holds another run, or `resume` finds an unreadable
            checkpoint or one of another model or data set, or a file of the run could not
            be written (summary.json then says "failed"; the last checkpoint is intact).
        LockedError: another process is writing the run folder.
    """
    device = resolve_device(config.device)
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    cfg = resolve_config(config, device_type=device.type)
    if cfg.freeze_coefficients:  # before the data are loaded: a wrong model fails at once
        frozen_coefficients(create_model(cfg.model, **cfg.model_kwargs), cfg.model)
    run_dir = Path(cfg.out)
    check_out_folder(run_dir)
    restore = _set_determinism(cfg.deterministic, device)
    try:
        info = _fit(cfg, run_dir, device, dist)
    finally:
        restore()
    close_distributed(dist)  # after a finished run only: an error propagates as it is
    return info


def _fit(cfg: TrainConfig, run_dir: Path, device: torch.device, dist: DistContext) -> RunInfo:
    data = load_data(cfg)
    run = RunFolder(run_dir)
    if not dist.is_main:
        return _fit_locked(cfg, run, device, dist, data)
    with run.lock():
        return _fit_locked(cfg, run, device, dist, data)


def _fit_locked(cfg, run: RunFolder, device, dist, data) -> RunInfo:
    header = run_header(cfg, data, device, dist)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = create_model(
        cfg.model,
        num_classes=data["num_classes"],
        in_chans=data["in_chans"],
        **cfg.model_kwargs,
    )
    if cfg.freeze_coefficients:
        for p in frozen_coefficients(model, cfg.model):
            p.requires_grad_(False)  # SGD skips a parameter without a gradient: no decay
    if dist.enabled:
        model = convert_sync_batchnorm(model, device.type)
    model = model.to(device)
    if cfg.channels_last:
        to_channels_last(model)
    optimizer = torch.optim.SGD(
        _param_groups(model, cfg),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )
    try:
        progress = start_run(cfg, run, header, model, optimizer, dist)
    except FileWriteError as err:  # resuming rewrites config.json and metrics.jsonl first
        msg = _record_write_failure(cfg, run, dist, None, time.perf_counter(), err)
        raise CheckpointError(msg) from err
    done = progress.epoch >= cfg.epochs and run.has(FINAL_WEIGHTS)
    if done and run.read_summary().get("status") == "finished":
        return read_run(run.path)  # else a kill hit the last writes: redo them (no epochs)
    fast = _fast_path(cfg, model, device, dist, run, header)
    ctx = StepContext(
        model=model,
        net=fast.net,
        eval_net=fast.eval_net,
        optimizer=optimizer,
        device=device,
        amp=fast.amp,
        dist=dist,
        check_every=1 if device.type == "cpu" else 100,
        fast_path=fast,
    )
    _train(cfg, run, ctx, data, progress, header)
    return read_run(run.path)


def _train(cfg, run: RunFolder, ctx, data, progress: Progress, header) -> None:
    dist = ctx.dist
    loaders = make_loaders(cfg, data, ctx.device, dist)
    wall0 = time.perf_counter() - progress.wall_time_s
    num_batches = len(loaders["train"])
    try:
        for epoch in range(progress.epoch + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            lr = lr_at(cfg, epoch)

            def save_partial(part, epoch=epoch):
                progress.global_step = (epoch - 1) * num_batches + part.step
                _mid_epoch_checkpoint(run, ctx, progress, part, header, wall0)

            stats = _run_epoch(cfg, ctx, loaders["train"], epoch, lr, progress, save_partial)
            record = _epoch_record(cfg, ctx, loaders, data, epoch, lr, stats)
            record["time_s"] = round(time.perf_counter() - t0, 3)
            progress.global_step = epoch * num_batches
            dead_before = set(inactive_coefficients(progress.last_record))
            _after_epoch(cfg, run, ctx, progress, record, header, wall0)
            logger.info(_epoch_line(record, cfg.epochs, cfg.model))
            died = set(inactive_coefficients(record)) - dead_before  # said when one more dies
            if died and not cfg.freeze_coefficients:  # frozen ones are where they were put
                logger.warning(inactive_message(record))
        _finish(cfg, run, ctx, progress, header, time.perf_counter() - wall0)
    except DivergenceError as err:
        msg = _record_divergence(cfg, run, dist, progress, wall0, err)
        raise DivergenceError(msg) from None
    except KeyboardInterrupt:
        if dist.is_main:  # last.* holds the state to resume from
            wall_time_s = time.perf_counter() - wall0
            write_summary(run, cfg, progress, "interrupted", wall_time_s, None)
        raise
    except FileWriteError as err:
        msg = _record_write_failure(cfg, run, dist, progress, wall0, err)
        raise CheckpointError(msg) from err


def _run_epoch(cfg, ctx, loader, epoch, lr, progress, on_checkpoint) -> dict[str, float]:
    """Train epoch `epoch` behind a progress bar, from a resumed partial epoch if any."""
    bar = _bar(cfg, epoch, loader.num_samples, ctx.dist)
    try:
        return train_one_epoch(
            ctx,
            loader.epoch(epoch - 1),
            epoch=epoch,
            lr=lr,
            num_batches=len(loader),
            bar=bar,
            start=progress.take_partial(),
            checkpoint_steps=cfg.checkpoint_steps,
            on_checkpoint=on_checkpoint,
        )
    finally:
        if bar is not None:
            bar.close()


def _record_divergence(cfg, run: RunFolder, dist, progress, wall0, err: DivergenceError) -> str:
    """The message for a diverged run, also written to summary.json (rank 0)."""
    checkpoint = run.file(LAST_WEIGHTS)
    msg = (
        f"{err}. The last good state ({progress.checkpoint_at}) is kept in {checkpoint}; "
        "lower the learning rate (or start the coefficients further from non-residual) "
        "and retry"
    )
    if dist.is_main:
        write_summary(run, cfg, progress, "diverged", time.perf_counter() - wall0, msg)
    return msg


def _record_write_failure(cfg, run: RunFolder, dist, progress, wall0, err: OSError) -> str:
    """The message for a file that could not be written (full disk, I/O error); summary.json
    says "failed" with it, rewritten in place if there is no room for a new file.
    `progress` is None when the failure came before the checkpoint was read."""
    file = err.filename or "a file of the run"
    at = f" ({progress.checkpoint_at})" if progress is not None else ""
    msg = (
        f"could not write {file}: {err.strerror or err}. The last checkpoint{at} in "
        f"{run.file(LAST_WEIGHTS)} is intact; free space (or fix the cause) and continue "
        "with --resume"
    )
    if dist.is_main and run.has(SUMMARY):
        wall_time_s = time.perf_counter() - wall0
        try:
            if progress is None:
                raise OSError("no progress to summarise")
            write_summary(run, cfg, progress, "failed", wall_time_s, msg)
        except (OSError, OdenetsError):
            summary = {**_old_summary(run), "status": "failed", "error": msg}
            try:
                write_in_place(run.file(SUMMARY), summary)
            except OSError as again:
                logger.error("could not record the failure in %s: %s", SUMMARY, again)
    return msg


def _old_summary(run: RunFolder) -> dict[str, Any]:
    try:
        return run.read_summary()
    except OdenetsError:
        return {}


def _epoch_record(cfg, ctx, loaders, data, epoch, lr, stats) -> dict[str, Any]:
    record: dict[str, Any] = {
        "epoch": epoch,
        "lr": lr,
        "train_loss": finite_or_none(stats["train_loss"]),
        "train_acc": stats["train_acc"],
    }
    evals = {}
    for split in ("val", "test"):
        if split in loaders:
            evals[split] = ctx.guarded(
                lambda split=split: evaluate(
                    ctx.model,
                    loaders[split],
                    device=ctx.device,
                    amp=ctx.amp,
                    dist=ctx.dist,
                    total=data[f"n_{split}"],
                    forward=ctx.eval_net,
                )
            )
            record[f"{split}_loss"] = evals[split]["loss"]
            record[f"{split}_acc"] = evals[split]["acc"]
    probe = data["test"][0][:PROBE_IMAGES]  # uint8 (P, H, W, C)
    probe = torch.from_numpy(probe).to(ctx.device).permute(0, 3, 1, 2).float() / 255.0
    record.update(model_metrics(ctx.model, evals.get("test", {}), probe))
    return record


def _check_finite(ctx, where: str) -> None:
    """Refuse to checkpoint non-finite weights or optimizer state (the loss is checked
    before a step's update; this catches an update that overflowed)."""
    bad = nonfinite_state(ctx.model, ctx.optimizer)
    if bad is not None:
        raise DivergenceError(f"{where}, {bad} is not finite")


def _mid_epoch_checkpoint(run: RunFolder, ctx, progress: Progress, part, header, wall0) -> None:
    """last.* inside an epoch: the finished epochs plus `part` (rank 0 writes)."""
    _check_finite(ctx, f"at epoch {progress.epoch + 1}, step {part.step}")
    progress.wall_time_s = time.perf_counter() - wall0
    if ctx.dist.is_main:
        save_train_state(
            run,
            model=ctx.model,
            optimizer=ctx.optimizer,
            epoch=progress.epoch,
            info=state_info(header, progress, progress.last_record, part),
        )
    progress.checkpoint_at = f"epoch {progress.epoch + 1}, step {part.step}"
    barrier(ctx.dist)


def _after_epoch(cfg, run: RunFolder, ctx, progress: Progress, record, header, wall0) -> None:
    """Best-weights bookkeeping, metrics line and checkpoint (rank 0 writes)."""
    epoch = record["epoch"]
    _check_finite(ctx, f"after epoch {epoch}")  # before any file of this epoch is written
    progress.epoch = epoch
    score_key = {"best-val": "val_acc", "best-test": "test_acc"}.get(cfg.select)
    if score_key is not None and record[score_key] > progress.best_score:
        progress.best_score, progress.best_epoch = record[score_key], epoch
        if ctx.dist.is_main:
            run.save_weights(
                BEST_WEIGHTS,
                ctx.model.state_dict(),
                metadata=weights_metadata(header, epoch=epoch),
            )
    progress.wall_time_s = time.perf_counter() - wall0
    progress.last_record = record
    if ctx.dist.is_main:
        run.append_metrics(record)
        save_train_state(
            run,
            model=ctx.model,
            optimizer=ctx.optimizer,
            epoch=epoch,
            info=state_info(header, progress, record),
        )
    progress.checkpoint_at = f"after epoch {epoch}"
    if ctx.dist.is_main:
        write_summary(run, cfg, progress, "running", progress.wall_time_s, None)
    barrier(ctx.dist)


def _finish(cfg, run: RunFolder, ctx, progress: Progress, header, wall_time_s) -> None:
    if ctx.dist.is_main:
        weights = ctx.model.state_dict()
        selected = progress.epoch
        if cfg.select != "final" and progress.best_epoch > 0:
            weights, _ = run.load_weights(BEST_WEIGHTS)
            selected = progress.best_epoch
        run.save_weights(FINAL_WEIGHTS, weights, metadata=weights_metadata(header, epoch=selected))
        progress.selected_epoch = selected
        write_summary(run, cfg, progress, "finished", wall_time_s, None)
    barrier(ctx.dist)


# --- model wrapping and switches -------------------------------------------------------------


def frozen_coefficients(model, name: str) -> list[torch.nn.Parameter]:
    """The parameters `freeze_coefficients` holds at their initial values: the raw
    coefficients of `model` (a gate's W_d and b_d included; frozen at their initial W_d = 0,
    a gate is a constant per channel, act(b_d), whatever the input).

    Raises:
        ValueError: `model` has none (it is not of the In-ResNet family).
    """
    own = getattr(model, "coefficient_parameters", None)  # a network may name its own
    params = own() if callable(own) else layers.coefficient_parameters(model)
    if not params:
        families = ", ".join(n for n, cls in layers.JUNCTIONS.items() if cls.interpolating)
        raise ValueError(
            f"freeze_coefficients: {name} has no interpolation coefficients to freeze; it "
            f"applies to the networks of the In-ResNet family (<family><depth>, e.g. "
            f"in_resnet110; families: {families}); train {name} without --freeze-coefficients"
        )
    return params


def _param_groups(model, cfg) -> list[dict]:
    if hasattr(model, "param_groups"):
        return model.param_groups(
            cfg.weight_decay, coefficient_weight_decay=cfg.coefficient_weight_decay
        )
    return [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]


def _fast_path(cfg, model, device, dist, run, header) -> FastPath:
    """The fast-path features of the run; config.json's "fast_path" records what runs (on a
    fallback, rank 0 rewrites it with the configuration that continues)."""

    def wrap(net):
        if not dist.enabled:
            return net

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids)

    def record(settings) -> None:
        header["fast_path"] = settings
        if dist.is_main:
            run.write_config(header)

    fast = FastPath(
        model=model,
        wrap=wrap,
        device=device,
        amp=cfg.amp,
        compile=cfg.compile,
        cuda_graphs=cfg.cuda_graphs,
        on_change=record,
    )
    record(fast.settings())
    return fast


def _set_determinism(deterministic: bool, device: torch.device):
    """Apply the switch; returns a function that restores the previous global settings."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic and device.type == "cuda"

    def restore() -> None:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]

    return restore


def _bar(cfg, epoch, n, dist):
    show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    if not (show and dist.is_main):
        return None

    return tqdm(
        total=n, desc=f"epoch {epoch}/{cfg.epochs}", unit="img", unit_scale=True, leave=False
    )


def _epoch_line(record: dict[str, Any], epochs: int, model: str) -> str:
    # The model leads the line, so a log of several runs (a grid, the demo) tells them apart.
    parts = [model, f"epoch {record['epoch']}/{epochs}", f"lr {record['lr']:.4g}"]
    for key in ("train_loss", "train_acc", "val_acc", "test_loss", "test_acc"):
        if record.get(key) is not None:
            parts.append(f"{key} {record[key]:.4f}")
    parts.append(f"{record['time_s']:.1f}s")
    return "  ".join(parts)
