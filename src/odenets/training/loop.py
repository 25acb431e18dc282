"""One epoch of training and one pass of evaluation.

Losses and counts are accumulated on the device and read once per epoch, so a CUDA step
never waits for the host. A non-finite loss is caught at the first step on CPU and at the
end of the epoch (or every `check_every` steps) on CUDA, naming the first bad step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from odenets.errors import DivergenceError
from odenets.models.base import takes_check_input
from odenets.training.distributed import DistContext, all_reduce_sum, cross_entropy_shard

_NO_BAD_STEP = 2**62  # "no non-finite loss yet" in the device-side watch


@dataclass
class StepContext:
    """What a training step needs besides the batch."""

    model: nn.Module  # the plain model: state_dict, project_(), metrics
    net: nn.Module  # what runs the forward: the model, DDP-wrapped and/or compiled
    eval_net: nn.Module  # the evaluation forward: the model, compiled when `compile` is on
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp: bool  # bf16 autocast
    dist: DistContext
    check_every: int  # steps between non-finite checks (1: every step, no cost on CPU)
    fast_path: Any = None  # a training.fast_path.FastPath: falls back when a feature fails

    def __post_init__(self) -> None:
        # The loaders yield images in [0, 1] (uint8 / 255, then crops and flips): the model's
        # per-call range check is skipped on the hot path.
        self.forward_kwargs = unchecked(self.model)

    def guarded(self, fn: Callable[[], Any]) -> Any:
        """`fn()`; after a fast-path failure, again on the safer configuration (nets and
        amp of this context follow it)."""
        if self.fast_path is None:
            return fn()
        fp = self.fast_path

        def call():
            self.net, self.eval_net, self.amp = fp.net, fp.eval_net, fp.amp
            return fn()

        try:
            return fp.run(call)
        finally:
            self.net, self.eval_net, self.amp = fp.net, fp.eval_net, fp.amp


def unchecked(model: nn.Module) -> dict[str, bool]:
    """Forward keywords that skip the model's input range check, where it has one."""
    return {"check_input": False} if takes_check_input(model) else {}


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass
class EpochProgress:
    """How far an epoch got: steps done and the running sums over all ranks (mid-epoch
    checkpoints store it; a resumed epoch starts from it)."""

    step: int = 0  # global batches done in this epoch
    loss_sum: float = 0.0  # summed cross-entropy of those batches
    correct: int = 0  # correctly classified training images so far
    seen: int = 0  # training images so far


def train_one_epoch(
    ctx: StepContext,
    batches,
    *,
    epoch: int,
    lr: float,
    num_batches: int,
    bar: Any = None,
    start: EpochProgress | None = None,
    checkpoint_steps: int = 0,
    on_checkpoint: Callable[[EpochProgress], None] | None = None,
) -> dict[str, float]:
    """Train for one epoch over `batches` (global batches; this rank takes its shard).

    Args:
        start: resume inside the epoch: its first `start.step` batches are skipped (the
            loader regenerates them identically) and its sums carried on.
        checkpoint_steps, on_checkpoint: call `on_checkpoint(progress)` on every rank after
            each `checkpoint_steps` steps (not after the last), once the loss is known finite.

    Returns:
        {"train_loss": mean cross-entropy, "train_acc": fraction correct, "steps": int}
        over the global training set seen this epoch (all ranks).

    Raises:
        DivergenceError: the loss became NaN or infinite; names the epoch and step.
    """
    ctx.model.train()
    for group in ctx.optimizer.param_groups:
        group["lr"] = lr
    start = start or EpochProgress()
    loss_sum, correct, first_bad = _device_sums(ctx, start)
    seen = start.seen
    project = getattr(ctx.model, "project_", None)
    for step, (images, labels) in enumerate(batches, start=1):
        if step <= start.step:
            continue
        global_batch = labels.shape[0]
        logits, labels, summed = ctx.guarded(
            lambda images=images, labels=labels: _train_step(ctx, images, labels, project)
        )
        first_bad = torch.where(
            torch.isfinite(summed) | (first_bad != _NO_BAD_STEP), first_bad, step
        )
        loss_sum += summed
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += global_batch
        save = on_checkpoint is not None and checkpoint_steps > 0
        save = save and step % checkpoint_steps == 0 and step < num_batches
        if save or step % ctx.check_every == 0 or step == num_batches:
            _check_finite(first_bad, ctx.dist, epoch=epoch, num_batches=num_batches)
        if save:
            on_checkpoint(_progress_so_far(step, loss_sum, correct, seen, ctx.dist))
        if bar is not None:
            _update_bar(bar, step, global_batch, loss_sum, correct, seen, ctx.dist, num_batches)
    totals = all_reduce_sum(torch.stack([loss_sum, correct.double()]), ctx.dist).tolist()
    return {"train_loss": totals[0] / seen, "train_acc": totals[1] / seen, "steps": step}


def _device_sums(ctx: StepContext, start: EpochProgress):
    """The epoch's running loss sum, correct count and first-bad-step watch, on the device.

    Rank 0 carries the sums of a resumed epoch; every rank adds its own shard's.
    """
    dev, carry = ctx.device, ctx.dist.is_main
    loss_sum = torch.tensor(start.loss_sum if carry else 0.0, dtype=torch.float64, device=dev)
    correct = torch.tensor(start.correct if carry else 0, dtype=torch.int64, device=dev)
    first_bad = torch.full((), _NO_BAD_STEP, dtype=torch.int64, device=dev)
    return loss_sum, correct, first_bad


def _train_step(ctx: StepContext, images, labels, project):
    """Forward, backward, optimizer step and projection on this rank's shard of a batch.

    Returns:
        (logits, labels) of the shard and the shard's summed cross-entropy.
    """
    global_batch = labels.shape[0]
    if ctx.dist.enabled:
        part = ctx.dist.shard(global_batch)
        images, labels = images[part], labels[part]
    if ctx.fast_path is not None and ctx.fast_path.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are dead
    with autocast(ctx.device, ctx.amp):
        logits = ctx.net(images, **ctx.forward_kwargs)
    loss, summed = cross_entropy_shard(
        logits, labels, global_batch=global_batch, world_size=ctx.dist.world_size
    )
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ctx.optimizer.step()
    if project is not None:
        with torch.no_grad():
            project()
    return logits, labels, summed


def _progress_so_far(step, loss_sum, correct, seen, dist: DistContext) -> EpochProgress:
    """The epoch's progress after `step`, its sums reduced over all ranks."""
    totals = all_reduce_sum(torch.stack([loss_sum, correct.double()]), dist)
    loss_total, correct_total = totals.tolist()
    return EpochProgress(step, loss_total, int(correct_total), seen)


def _update_bar(bar, step, global_batch, loss_sum, correct, seen, dist, num_batches) -> None:
    """Advance the progress bar; its running loss and accuracy every 20 steps and at the end."""
    bar.update(global_batch)
    if step % 20 == 0 or step == num_batches:
        n = seen / dist.world_size if dist.enabled else seen
        bar.set_postfix(
            loss=f"{loss_sum.item() / n:.3f}",
            acc=f"{correct.item() / n:.3f}",
            refresh=False,
        )


def _check_finite(first_bad: torch.Tensor, dist: DistContext, *, epoch: int, num_batches: int):
    if dist.enabled:
        first_bad = first_bad.clone()
        torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MIN)
    bad = int(first_bad.item())
    if bad != _NO_BAD_STEP:
        raise DivergenceError(
            f"non-finite training loss at epoch {epoch}, step {bad} of {num_batches}"
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches,
    *,
    device: torch.device,
    amp: bool,
    dist: DistContext,
    total: int,
    forward: nn.Module | None = None,
) -> dict[str, Any]:
    """Mean loss and accuracy of `model` (eval mode) over `batches` (this rank's share).

    Returns:
        {"loss", "acc"} over all ranks' `total` images, plus "depth_mean" and "depth_max"
        for networks that report unrolled depth (NAIS-Net).
    """
    model.eval()
    forward = forward if forward is not None else model
    kwargs = unchecked(model)  # loader images are in [0, 1]
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    depth_sum, depth_max, depth_n = 0.0, 0.0, 0
    for images, labels in batches:
        with autocast(device, amp):
            logits = forward(images, **kwargs)
        loss_sum += torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
        stats = model.depth_stats() if hasattr(model, "depth_stats") else {}
        if stats:
            depth_sum += float(stats["mean"]) * len(labels)
            depth_max = max(depth_max, float(stats["max"]))
            depth_n += len(labels)
    sums = torch.stack([loss_sum, correct.double()]).to(torch.float64)
    depth = torch.tensor([depth_sum, float(depth_n)], dtype=torch.float64, device=device)
    all_reduce_sum(sums, dist)
    all_reduce_sum(depth, dist)
    peak = torch.tensor([depth_max], dtype=torch.float64, device=device)
    if dist.enabled:
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    loss, acc = (sums / total).tolist()
    out: dict[str, Any] = {"loss": loss if math.isfinite(loss) else None, "acc": acc}
    if depth[1] > 0:
        out["depth_mean"] = float(depth[0] / depth[1])
        out["depth_max"] = float(peak)
    return out
