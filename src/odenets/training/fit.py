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

import odenets
from odenets.checkpoint import (
    append_jsonl,
    finite_or_none,
    load_safetensors,
    save_safetensors_atomic,
    write_json_atomic,
)
from odenets.device import resolve_device
from odenets.errors import DivergenceError
from odenets.models.base import to_channels_last
from odenets.training.config import TrainConfig, lr_at, resolve_config
from odenets.training.data import load_data, make_loaders
from odenets.training.distributed import (
    DistContext,
    barrier,
    convert_sync_batchnorm,
    init_distributed,
)
from odenets.training.fast_path import FastPath
from odenets.training.loop import StepContext, evaluate, train_one_epoch
from odenets.training.metrics import PROBE_IMAGES, model_metrics
from odenets.training.rundir import (
    check_out_folder,
    run_header,
    start_run,
    state_info,
    write_summary,
)
from odenets.training.runs import (
    BEST_WEIGHTS,
    CONFIG,
    FINAL_WEIGHTS,
    METRICS,
    RunInfo,
    read_run,
    weights_metadata,
)
from odenets.training.state import (
    LAST_WEIGHTS,
    save_train_state,
)

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
            checkpoint or one of another model or data set.
    """
    device = resolve_device(config.device)
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    cfg = resolve_config(config, device_type=device.type)
    run_dir = Path(cfg.out)
    check_out_folder(run_dir)
    restore = _set_determinism(cfg.deterministic, device)
    try:
        return _fit(cfg, run_dir, device, dist)
    finally:
        restore()


def _fit(cfg: TrainConfig, run_dir: Path, device: torch.device, dist: DistContext) -> RunInfo:
    data = load_data(cfg)
    header = run_header(cfg, data, device, dist)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = odenets.create_model(
        cfg.model,
        num_classes=data["num_classes"],
        in_chans=data["in_chans"],
        **cfg.model_kwargs,
    )
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
    progress = start_run(cfg, run_dir, header, model, optimizer, dist)
    done = progress["epoch"] >= cfg.epochs and (run_dir / FINAL_WEIGHTS).is_file()
    if done and read_run(run_dir).summary.get("status") == "finished":
        return read_run(run_dir)  # else a kill hit the last writes: redo them (no epochs)
    fast = _fast_path(cfg, model, device, dist, run_dir, header)
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
    _train(cfg, run_dir, ctx, data, progress, header)
    return read_run(run_dir)


def _train(cfg, run_dir, ctx, data, progress, header) -> None:
    dist = ctx.dist
    loaders = make_loaders(cfg, data, ctx.device, dist)
    wall0 = time.perf_counter() - progress["wall_time_s"]
    num_batches = len(loaders["train"])
    try:
        for epoch in range(progress["epoch"] + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            lr = lr_at(cfg, epoch)

            def save_partial(part, epoch=epoch):
                progress["global_step"] = (epoch - 1) * num_batches + part.step
                _mid_epoch_checkpoint(run_dir, ctx, progress, part, header, wall0)

            stats = _run_epoch(cfg, ctx, loaders["train"], epoch, lr, progress, save_partial)
            record = _epoch_record(cfg, ctx, loaders, data, epoch, lr, stats)
            record["time_s"] = round(time.perf_counter() - t0, 3)
            progress["global_step"] = epoch * num_batches
            _after_epoch(cfg, run_dir, ctx, progress, record, header, wall0)
            logger.info(_epoch_line(record, cfg.epochs))
        _finish(cfg, run_dir, ctx, progress, header, time.perf_counter() - wall0)
    except DivergenceError as err:
        msg = _record_divergence(cfg, run_dir, dist, progress, wall0, err)
        raise DivergenceError(msg) from None
    except KeyboardInterrupt:
        if dist.is_main:  # last.* holds the state to resume from
            wall_time_s = time.perf_counter() - wall0
            write_summary(run_dir, cfg, progress, "interrupted", wall_time_s, None)
        raise


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
            start=progress.pop("partial", None),
            checkpoint_steps=cfg.checkpoint_steps,
            on_checkpoint=on_checkpoint,
        )
    finally:
        if bar is not None:
            bar.close()


def _record_divergence(cfg, run_dir, dist, progress, wall0, err: DivergenceError) -> str:
    """The message for a diverged run, also written to summary.json (rank 0)."""
    checkpoint = run_dir / LAST_WEIGHTS
    at = progress.get("checkpoint_at", "after epoch 0")
    msg = (
        f"{err}. The last good state ({at}) is kept in {checkpoint}; lower the learning "
        "rate (or start the coefficients further from non-residual) and retry"
    )
    if dist.is_main:
        write_summary(run_dir, cfg, progress, "diverged", time.perf_counter() - wall0, msg)
    return msg


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


def _mid_epoch_checkpoint(run_dir, ctx, progress, part, header, wall0) -> None:
    """last.* inside an epoch: the finished epochs plus `part` (rank 0 writes)."""
    progress["wall_time_s"] = time.perf_counter() - wall0
    progress["checkpoint_at"] = f"epoch {progress['epoch'] + 1}, step {part.step}"
    if ctx.dist.is_main:
        save_train_state(
            run_dir,
            model=ctx.model,
            optimizer=ctx.optimizer,
            epoch=progress["epoch"],
            info=state_info(header, progress, progress.get("last_record"), part),
        )
    barrier(ctx.dist)


def _after_epoch(cfg, run_dir, ctx, progress, record, header, wall0) -> None:
    """Best-weights bookkeeping, metrics line and checkpoint (rank 0 writes)."""
    epoch = record["epoch"]
    progress["epoch"] = epoch
    score_key = {"best-val": "val_acc", "best-test": "test_acc"}.get(cfg.select)
    if score_key is not None and record[score_key] > progress["best_score"]:
        progress["best_score"], progress["best_epoch"] = record[score_key], epoch
        if ctx.dist.is_main:
            save_safetensors_atomic(
                run_dir / BEST_WEIGHTS,
                ctx.model.state_dict(),
                metadata=weights_metadata(header, epoch=epoch),
            )
    progress["wall_time_s"] = time.perf_counter() - wall0
    progress["last_record"] = record
    progress["checkpoint_at"] = f"after epoch {epoch}"
    if ctx.dist.is_main:
        append_jsonl(run_dir / METRICS, record)
        save_train_state(
            run_dir,
            model=ctx.model,
            optimizer=ctx.optimizer,
            epoch=epoch,
            info=state_info(header, progress, record),
        )
        write_summary(run_dir, cfg, progress, "running", progress["wall_time_s"], None)
    barrier(ctx.dist)


def _finish(cfg, run_dir, ctx, progress, header, wall_time_s) -> None:
    if ctx.dist.is_main:
        weights = ctx.model.state_dict()
        selected = progress["epoch"]
        if cfg.select != "final" and progress["best_epoch"] > 0:
            weights, _ = load_safetensors(run_dir / BEST_WEIGHTS)
            selected = progress["best_epoch"]
        save_safetensors_atomic(
            run_dir / FINAL_WEIGHTS, weights, metadata=weights_metadata(header, epoch=selected)
        )
        progress["selected_epoch"] = selected
        write_summary(run_dir, cfg, progress, "finished", wall_time_s, None)
    barrier(ctx.dist)


# --- model wrapping and switches -------------------------------------------------------------


def _param_groups(model, cfg) -> list[dict]:
    if hasattr(model, "param_groups"):
        return model.param_groups(
            cfg.weight_decay, coefficient_weight_decay=cfg.coefficient_weight_decay
        )
    return [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]


def _fast_path(cfg, model, device, dist, run_dir, header) -> FastPath:
    """The fast-path features of the run; config.json's "fast_path" records what runs (on a
    fallback, rank 0 rewrites it with the configuration that continues)."""

    def wrap(net):
        if not dist.enabled:
            return net
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids)

    def record(settings) -> None:
        header["fast_path"] = settings
        if dist.is_main:
            write_json_atomic(run_dir / CONFIG, header)

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
    from tqdm.auto import tqdm

    return tqdm(
        total=n, desc=f"epoch {epoch}/{cfg.epochs}", unit="img", unit_scale=True, leave=False
    )


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"lr {record['lr']:.4g}"]
    for key in ("train_loss", "train_acc", "val_acc", "test_loss", "test_acc"):
        if record.get(key) is not None:
            parts.append(f"{key} {record[key]:.4f}")
    parts.append(f"{record['time_s']:.1f}s")
    return "  ".join(parts)
