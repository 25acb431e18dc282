"""Data-parallel training under `torchrun` with PyTorch's DistributedDataParallel.

Every rank draws the same global batch (same seed, same epoch) and trains on its own
contiguous shard of it. The loss of a shard is its summed cross-entropy scaled by
world_size / global_batch, so DDP's gradient average equals the gradient of the mean loss
over the global batch, whatever the shard sizes. BatchNorm statistics are synchronised
over the global batch (torch's SyncBatchNorm on CUDA, the small CPU version below for
gloo), so N processes reproduce one process with the same global batch up to rounding.
Rounding is not always small in the end: where a pre-activation lies within rounding of
zero, ReLU passes its gradient in one run and not in the other, and SGD carries the
difference on, so weights can differ visibly after a few steps.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process group was joined by `init_distributed`

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of `n` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))


def init_distributed(device_type: str) -> DistContext:
    """Join the process group that `torchrun` describes in the environment, if any.

    Backend: nccl on CUDA, gloo on CPU. Without WORLD_SIZE > 1 this is a single process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        owns_group=owns,
    )


def close_distributed(ctx: DistContext) -> None:
    """Leave the process group `init_distributed` joined (one the caller set up stays). A
    process that exits still in its group can abort in the backend's teardown ("terminate
    called without an active exception"), failing a finished job."""
    if ctx.owns_group and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as err:  # the run is finished and recorded: say so, do not fail it
            warnings.warn(f"leaving the process group failed: {err}", stacklevel=2)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of `tensor` over ranks (in place; the tensor itself when single-process)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the incoming gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch over all ranks.

    For CPU (gloo) jobs, where torch's SyncBatchNorm is not available. The all-reduce is
    differentiable, so gradients flow through the shared statistics.
    Mean and variance are computed in two passes, as a single process does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        dtype = x.dtype
        x = x.float()  # statistics in float32, also under bf16 autocast
        c = x.shape[1]
        count = torch.tensor([x.numel() // c], dtype=x.dtype, device=x.device)
        # (2C + 1,): per-channel sums and the element count, summed over ranks in one call.
        total = all_reduce(torch.cat([x.sum(dim=(0, 2, 3)), count]))
        n = total[c]
        mean = total[:c] / n
        centred = x - mean.view(1, c, 1, 1)
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * (n / (n - 1).clamp(min=1))
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(dtype)


def convert_sync_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """Replace every BatchNorm2d by a synchronised one; parameters and buffers are kept."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        new = CpuSyncBatchNorm(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        ).to(next(module.buffers(), torch.zeros(0)).device)
        new.load_state_dict(module.state_dict())
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module


def cross_entropy_shard(
    logits: torch.Tensor, labels: torch.Tensor, *, global_batch: int, world_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to backpropagate, summed loss of the shard for logging).

    The backpropagated loss is sum / global_batch * world_size: DDP divides the summed
    gradients by world_size, which leaves the gradient of the global-batch mean.
    """
    summed = F.cross_entropy(logits.float(), labels, reduction="sum")
    return summed * (world_size / global_batch), summed.detach()
