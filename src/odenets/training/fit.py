"""`fit`: train one model with a recipe, writing a resumable run folder (docs/design.md).

The state after every epoch (and before the first) is checkpointed in last.*; a run killed
at any moment and restarted with `resume=True` repeats the unfinished epoch from exactly
the same state, so its final weights equal those of an uninterrupted run (bitwise on CPU
with deterministic kernels). The data order and augmentation of epoch e depend only on
(seed, e), which is what makes resuming at an epoch boundary exact.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import odenets
from odenets.checkpoint import (
    append_jsonl,
    finite_or_none,
    load_safetensors,
    read_jsonl,
    save_safetensors_atomic,
    write_json_atomic,
    write_jsonl_atomic,
)
from odenets.errors import CheckpointError, DivergenceError
from odenets.training.config import TrainConfig, lr_at, resolve_config
from odenets.training.distributed import (
    DistContext,
    barrier,
    convert_sync_batchnorm,
    init_distributed,
)
from odenets.training.loop import StepContext, evaluate, train_one_epoch
from odenets.training.runs import (
    BEST_WEIGHTS,
    CONFIG,
    FINAL_WEIGHTS,
    METRICS,
    SUMMARY,
    RunInfo,
    read_run,
    weights_metadata,
)
from odenets.training.state import (
    LAST_WEIGHTS,
    load_train_state,
    restore_train_state,
    save_train_state,
)

logger = logging.getLogger("odenets.training")

PROBE_IMAGES = 16  # test images at which NAIS stage Jacobians are measured each epoch
_SUBSET_SEED = 0  # train/test subsets and the validation split are the same for every seed


def pick_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available; use 'cpu'")
    return device


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
    device = pick_device(config.device)
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    cfg = resolve_config(config, device_type=device.type)
    run_dir = Path(cfg.out)
    restore = _set_determinism(cfg.deterministic, device)
    try:
        return _fit(cfg, run_dir, device, dist)
    finally:
        restore()


def _fit(cfg: TrainConfig, run_dir: Path, device: torch.device, dist: DistContext) -> RunInfo:
    data = _load_data(cfg)
    header = _header(cfg, data, device, dist)
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
    model = model.to(device, memory_format=_memory_format(cfg))
    optimizer = torch.optim.SGD(
        _param_groups(model, cfg),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )
    progress = _start(cfg, run_dir, header, model, optimizer, dist)
    if progress["epoch"] >= cfg.epochs and (run_dir / FINAL_WEIGHTS).is_file():
        return read_run(run_dir)
    net = _wrap(model, cfg, device, dist)
    ctx = StepContext(
        model=model,
        net=net,
        optimizer=optimizer,
        device=device,
        amp=cfg.amp,
        dist=dist,
        check_every=1 if device.type == "cpu" else 100,
    )
    _train(cfg, run_dir, ctx, data, progress, header)
    return read_run(run_dir)


def _train(cfg, run_dir, ctx, data, progress, header) -> None:
    dist = ctx.dist
    loaders = _loaders(cfg, data, ctx.device, dist)
    wall0 = time.perf_counter() - progress["wall_time_s"]
    epoch = progress["epoch"]
    try:
        for epoch in range(progress["epoch"] + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            lr = lr_at(cfg, epoch)
            bar = _bar(cfg, epoch, loaders["train"].num_samples, dist)
            try:
                stats = train_one_epoch(
                    ctx,
                    loaders["train"].epoch(epoch - 1),
                    epoch=epoch,
                    lr=lr,
                    num_batches=len(loaders["train"]),
                    bar=bar,
                )
            finally:
                if bar is not None:
                    bar.close()
            record = _epoch_record(cfg, ctx, loaders, data, epoch, lr, stats)
            record["time_s"] = round(time.perf_counter() - t0, 3)
            progress["global_step"] += stats["steps"]
            _after_epoch(cfg, run_dir, ctx, progress, record, header, wall0)
            logger.info(_epoch_line(record, cfg.epochs))
    except DivergenceError as err:
        checkpoint = run_dir / LAST_WEIGHTS
        msg = (
            f"{err}. The state after epoch {epoch - 1} is kept in {checkpoint}; lower the "
            "learning rate (or start the coefficients further from non-residual) and retry"
        )
        if dist.is_main:
            _write_summary(run_dir, cfg, progress, "diverged", time.perf_counter() - wall0, msg)
        raise DivergenceError(msg) from None
    _finish(cfg, run_dir, ctx, progress, header, time.perf_counter() - wall0)


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
            evals[split] = evaluate(
                ctx.model,
                loaders[split],
                device=ctx.device,
                amp=ctx.amp,
                dist=ctx.dist,
                total=data[f"n_{split}"],
            )
            record[f"{split}_loss"] = evals[split]["loss"]
            record[f"{split}_acc"] = evals[split]["acc"]
    probe = data["test"][0][:PROBE_IMAGES]  # uint8 (P, H, W, C)
    probe = torch.from_numpy(probe).to(ctx.device).permute(0, 3, 1, 2).float() / 255.0
    record.update(_model_metrics(ctx.model, evals.get("test", {}), probe))
    return record


def _model_metrics(model, test_eval: dict[str, Any], probe: torch.Tensor) -> dict[str, Any]:
    """Coefficients of interpolating models; depth and spectral radius of NAIS models."""
    out: dict[str, Any] = {}
    coeff = model.coefficients() if hasattr(model, "coefficients") else torch.zeros(0)
    if coeff.numel():
        out["coefficients"] = [round(float(c), 6) for c in coeff.detach().cpu()]
    for key in ("depth_mean", "depth_max"):
        if key in test_eval:
            out[key] = test_eval[key]
    radius = _spectral_radius(model, probe)
    if radius is not None:
        out["spectral_radius"] = radius
    return out


def _spectral_radius(model, probe: torch.Tensor) -> float | None:
    """Largest stage-Jacobian spectral radius over the NAIS blocks at a few test images.

    Each block's Jacobian is taken at its input u and its output state x(K) (close to the
    equilibrium when the block has converged); power iteration for large states.
    """
    blocks = model.nais_blocks() if hasattr(model, "nais_blocks") else []
    if not blocks:
        return None
    from odenets import stability

    radius_fn = getattr(stability, "state_jacobian_spectral_radius", None)
    if radius_fn is None:
        return None
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        b.register_forward_hook(lambda m, args, out: seen.__setitem__(id(m), (args[0], out)))
        for b in blocks
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    radii = [
        float(radius_fn(b, seen[id(b)][1].float(), seen[id(b)][0].float(), iters=100).max())
        for b in blocks
        if id(b) in seen
    ]
    return finite_or_none(max(radii)) if radii else None


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
    if ctx.dist.is_main:
        append_jsonl(run_dir / METRICS, record)
        save_train_state(
            run_dir,
            model=ctx.model,
            optimizer=ctx.optimizer,
            epoch=epoch,
            info=_state_info(header, progress, record),
        )
        _write_summary(run_dir, cfg, progress, "running", progress["wall_time_s"], None)
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
        _write_summary(run_dir, cfg, progress, "finished", wall_time_s, None)
    barrier(ctx.dist)


def _state_info(header, progress, record) -> dict[str, Any]:
    return {
        "model": header["model"],
        "model_kwargs": header["model_kwargs"],
        "dataset": header["dataset"],
        "train": header["train"],
        "seed": header["seed"],
        "odenets_version": header["odenets_version"],
        "torch_version": header["torch_version"],
        "global_step": progress["global_step"],
        "best_epoch": progress["best_epoch"],
        "best_score": finite_or_none(progress["best_score"]),
        "wall_time_s": progress["wall_time_s"],
        "metrics": record,
    }


def _write_summary(run_dir, cfg, progress, status, wall_time_s, error) -> None:
    metrics = read_jsonl(run_dir / METRICS)
    by_epoch = {m["epoch"]: m for m in metrics}
    chosen = by_epoch.get(progress.get("selected_epoch") or progress["epoch"], {})
    summary = {
        "status": status,
        "epochs_done": progress["epoch"],
        "epochs": cfg.epochs,
        "final_train_acc": chosen.get("train_acc"),
        "final_test_acc": chosen.get("test_acc"),
        "wall_time_s": round(wall_time_s, 3),
        "error": error,
        "select": cfg.select,
        "selected_epoch": progress.get("selected_epoch"),
    }
    if "val_acc" in chosen:
        summary["final_val_acc"] = chosen["val_acc"]
    write_json_atomic(run_dir / SUMMARY, summary)


# --- start or resume -------------------------------------------------------------------------


def _start(cfg, run_dir, header, model, optimizer, dist) -> dict[str, Any]:
    """Fresh run: write config.json and the epoch-0 checkpoint. Resume: restore last.*."""
    progress = {
        "epoch": 0,
        "global_step": 0,
        "best_epoch": 0,
        "best_score": -math.inf,
        "wall_time_s": 0.0,
    }
    has_run = (run_dir / CONFIG).exists() or (run_dir / LAST_WEIGHTS).exists()
    if has_run and not cfg.resume:
        raise CheckpointError(
            f"{run_dir} already holds a run; pass --resume (resume=True) to continue it, or "
            "choose another --out folder"
        )
    if cfg.resume and dist.is_main:
        _remove_stale_temporaries(run_dir)
    if cfg.resume and (run_dir / LAST_WEIGHTS).exists():
        tensors, state = load_train_state(run_dir)
        _check_same_run(state, header, run_dir)
        restore_train_state(tensors, state, model=model, optimizer=optimizer)
        for key in ("global_step", "best_epoch", "wall_time_s"):
            progress[key] = state[key]
        score = state["best_score"]
        progress["best_score"] = score if score is not None else -math.inf
        progress["epoch"] = state["epoch"]
        barrier(dist)
        if dist.is_main:
            write_json_atomic(run_dir / CONFIG, header)
            _trim_metrics(run_dir, state)
        barrier(dist)
        return progress
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / CONFIG, header)
        write_jsonl_atomic(run_dir / METRICS, [])
        save_train_state(
            run_dir,
            model=model,
            optimizer=optimizer,
            epoch=0,
            info=_state_info(header, progress, None),
        )
        _write_summary(run_dir, cfg, progress, "running", 0.0, None)
    barrier(dist)
    return progress


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files of writes that a killed run left unfinished (never renamed)."""
    if run_dir.is_dir():
        for path in run_dir.glob(".*.tmp"):
            path.unlink(missing_ok=True)


def _identity(run: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same network on the same data (the data root may move)."""
    dataset = {k: v for k, v in (run.get("dataset") or {}).items() if k != "root"}
    return {"model": run.get("model"), "model_kwargs": run.get("model_kwargs"), "dataset": dataset}


def _check_same_run(state: dict[str, Any], header: dict[str, Any], run_dir: Path) -> None:
    old, new = _identity(state), _identity(header)
    for key in old:
        if old[key] != new[key]:
            raise CheckpointError(
                f"cannot resume {run_dir}: it was trained with {key} {old[key]!r}, "
                f"but this run asks for {new[key]!r}. Use another --out folder."
            )
    old, new = state.get("train", {}), header["train"]
    skip = {"resume", "progress", "device", "epochs", "out"}
    changed = sorted(k for k in new if k not in skip and old.get(k) != new[k])
    if changed:
        warnings.warn(
            f"resuming {run_dir} with changed settings {changed}; the run will not match an "
            "uninterrupted one",
            stacklevel=3,
        )


def _trim_metrics(run_dir: Path, state: dict[str, Any]) -> None:
    """Keep metric lines up to the checkpoint's epoch (a killed epoch may have left one)."""
    epoch = state["epoch"]
    kept = {m["epoch"]: m for m in read_jsonl(run_dir / METRICS) if m["epoch"] <= epoch}
    if epoch > 0 and epoch not in kept and state.get("metrics"):
        kept[epoch] = state["metrics"]
    write_jsonl_atomic(run_dir / METRICS, [kept[e] for e in sorted(kept)])


# --- data, model wrapping, switches -----------------------------------------------------------


def _load_data(cfg: TrainConfig) -> dict[str, Any]:
    from odenets.data import load_dataset
    from odenets.data.splits import stratified_split

    kwargs = {"download": True} if cfg.download else {}
    train = load_dataset(cfg.dataset, root=cfg.data_root, split="train", **kwargs)
    test = load_dataset(cfg.dataset, root=cfg.data_root, split="test", **kwargs)
    out: dict[str, Any] = {
        "name": cfg.dataset,
        "num_classes": train.num_classes,
        "in_chans": train.in_chans,
        "n_full_train": len(train.labels),
    }
    x, y = _subset(train.images, train.labels, cfg.train_limit)
    if cfg.val_fraction > 0:
        tr, va = stratified_split(y, cfg.val_fraction, seed=_SUBSET_SEED)
        out["val"] = (x[va], y[va])
        x, y = x[tr], y[tr]
    out["train"] = (x, y)
    out["test"] = _subset(test.images, test.labels, cfg.test_limit)
    for split in ("train", "val", "test"):
        if split in out:
            out[f"n_{split}"] = len(out[split][1])
    return out


def _subset(images: np.ndarray, labels: np.ndarray, limit: int | None):
    if limit is None or limit >= len(labels):
        return images, labels
    idx = np.sort(np.random.default_rng(_SUBSET_SEED).permutation(len(labels))[:limit])
    return images[idx], labels[idx]


def _loaders(cfg, data, device, dist) -> dict[str, Any]:
    from odenets.data import DeviceLoader

    # Every rank draws the same global batches and trains on its shard of each.
    loaders = {
        "train": DeviceLoader(
            *data["train"],
            batch_size=cfg.batch_size,
            device=device,
            shuffle=True,
            augment=cfg.augment,
            pad=cfg.pad,
            seed=cfg.seed,
            channels_last=cfg.channels_last,
        )
    }
    for split in ("val", "test"):
        if split in data:
            x, y = data[split]
            part = dist.shard(len(y))  # evaluation: each rank a contiguous share
            loaders[split] = DeviceLoader(
                x[part],
                y[part],
                batch_size=cfg.eval_batch_size,
                device=device,
                channels_last=cfg.channels_last,
            )
    return loaders


def _header(cfg, data, device, dist) -> dict[str, Any]:
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
        "odenets_version": odenets.__version__,
        "torch_version": torch.__version__,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "world_size": dist.world_size,
    }


def _param_groups(model, cfg) -> list[dict]:
    if hasattr(model, "param_groups"):
        return model.param_groups(
            cfg.weight_decay, coefficient_weight_decay=cfg.coefficient_weight_decay
        )
    return [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]


def _memory_format(cfg) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.preserve_format


def _wrap(model, cfg, device, dist):
    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        net = torch.compile(net)
    return net


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
