"""Fused elementwise operations of the blocks, as custom autograd functions.

`scaled_sum(x, f, a, b)` = a·x + b·f with 0-d a and b is the update of every scalar junction
(`odenets.models.layers`): one `addcmul` forward and, backward, one dot product for each
scalar gradient instead of a product and a sum.
"""

from __future__ import annotations

import torch


def _flat_pair(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u and v as 1-D tensors in the same element order: views, without a copy, when both
    are contiguous or both channels_last."""
    if (
        u.dim() == 4
        and not u.is_contiguous()
        and u.is_contiguous(memory_format=torch.channels_last)
    ):
        u, v = u.permute(0, 2, 3, 1), v.permute(0, 2, 3, 1)
    return u.reshape(-1), v.reshape(-1)


def _inner(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Σ u·v as a 0-d tensor: one BLAS dot product in float32 / float64 (no elementwise
    temporary); for reduced precision (bf16, fp16) a product and a float32-accumulated sum.

    `torch.dot` on bf16 CPU tensors has no BLAS kernel: on some CPUs it runs a scalar loop
    that took most of a bf16 training step of In-ResNet-56. The product and sum are
    vectorised, multi-threaded kernels on every device, and the float32 accumulator keeps
    the sum of ~10^6 terms accurate.
    """
    dtype = torch.promote_types(u.dtype, v.dtype)
    fu, fv = _flat_pair(u.to(dtype), v.to(dtype))
    if dtype in (torch.float32, torch.float64):
        return torch.dot(fu, fv)
    return torch.mul(fu, fv).sum(dtype=torch.float32)


class _ScaledSum(torch.autograd.Function):
    """a·x + b·f for 0-d tensors a and b (b None: a·x + f).

    The plain expression costs two elementwise kernels forward and, backward, a product
    and a sum for each of dL/da and dL/db; here the forward is one `addcmul` and each
    scalar gradient one dot product. Forward-mode (`torch.func.jvp`), `vmap` and double
    backward work as for the plain expression; under `torch.compile`, `scaled_sum` uses
    the plain expression instead (see there).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, fx, a, b):
        return torch.addcmul(fx if b is None else fx * b, x, a)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, fx, a, b = inputs
        # fx is kept only when dL/db needs it: keeping every block's f(x) alive until the
        # backward pass costs more (memory traffic) than the fused kernels save.
        keep_fx = fx if b is not None and ctx.needs_input_grad[3] else None
        ctx.save_for_backward(x, keep_fx, a, b)
        ctx.save_for_forward(x, fx, a, b)

    @staticmethod
    def backward(ctx, g):
        x, fx, a, b = ctx.saved_tensors
        need_x, need_fx, need_a, need_b = ctx.needs_input_grad
        gx = g * a if need_x else None
        gfx = (g if b is None else g * b) if need_fx else None
        ga = _inner(g, x).to(a.dtype) if need_a else None
        gb = _inner(g, fx).to(b.dtype) if need_b else None
        return gx, gfx, ga, gb

    @staticmethod
    def jvp(ctx, tx, tfx, ta, tb):
        x, fx, a, b = ctx.saved_tensors
        terms = []
        if tx is not None:
            terms.append(tx * a)
        if tfx is not None:
            terms.append(tfx if b is None else tfx * b)
        if ta is not None:
            terms.append(x * ta)
        if tb is not None:
            terms.append(fx * tb)
        if not terms:
            return torch.zeros_like(torch.addcmul(fx, x, a))
        out = terms[0]
        for term in terms[1:]:
            out = out + term
        return out


def scaled_sum(
    x: torch.Tensor, fx: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None = None
) -> torch.Tensor:
    """a·x + b·fx (b None: a·x + fx) for 0-d a and b, fused (see `_ScaledSum`).

    The plain expression is used under `torch.compile` (dynamo cannot trace a custom `jvp`
    and would break the graph at every block; inductor fuses the plain form itself) and
    when x and fx differ in shape (broadcasting).
    """
    if (
        torch.compiler.is_compiling()
        or x.shape != fx.shape
        or a.dim() != 0
        or (b is not None and b.dim() != 0)
    ):
        return a * x + (fx if b is None else b * fx)
    # The scalars take the dtype of the tensors they scale: under CUDA bf16 autocast a float32
    # operand of `addcmul` (on autocast's promote list) would make every block output float32.
    a = a.to(x.dtype)
    b = None if b is None else b.to(fx.dtype)
    return _ScaledSum.apply(x, fx, a, b)
