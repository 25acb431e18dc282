"""Fused elementwise operations of the blocks, as custom autograd functions.

`scaled_sum(x, f, a, b)` = a·x + b·f with 0-d a and b is the update of every scalar junction
(`odenets.models.layers`): one `addcmul` forward and, backward, one float32-accumulated
reduction for each scalar gradient (`_inner`) instead of a product and a sum.
`gated_sum(x, f, d)` = (1 - act(d)) ⊙ x + f is the update of the pooled gating junctions,
and `gated_conv_sum(x, f, W, b)`, the same with d = W x + b a 1x1 convolution taken into the
fused step, that of the element-wise ones in a training step.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F


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


def _has_tangent(*tensors: torch.Tensor) -> bool:
    """Whether any of `tensors` carries a forward-mode tangent."""
    return any(fwAD.unpack_dual(t).tangent is not None for t in tensors)


def _inner(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Σ u·v as a 0-d float tensor (float32, or float64 for float64 operands), accumulated
    in float32 at least, without an elementwise temporary in the operands' dtype.

    Reduced-precision operands (bf16, fp16) are not multiplied in their own dtype: a bf16
    product rounds every term to 8 bits before the sum, and `torch.dot` on bf16 CPU tensors
    has no BLAS kernel (a scalar loop that took most of a bf16 training step of
    In-ResNet-56 on some CPUs). On a CPU, activations (N, C, H, W) go through BatchNorm's
    backward kernel, whose weight gradient is the per-channel Σ g·(x - mean)·invstd: with
    mean 0 and invstd 1 it is Σ u·v per channel, read in one pass in the operands' dtype
    and accumulated in float32. Widening both to float32 for a BLAS dot product instead
    writes two float32 copies, which in a training step (cold caches, fresh buffers) cost
    about 8% of a bf16 step of In-ResNet-56. Other shapes and devices are widened, and so
    is a double backward or forward mode over the backward: the kernel's own derivatives
    treat the mean and deviation as functions of v, which would make them wrong here.
    """
    if (
        u.device.type == "cpu"
        and u.dim() == 4
        and u.shape == v.shape
        and u.dtype == v.dtype
        and u.dtype in (torch.bfloat16, torch.float16)
        and u.numel() > 0  # the kernel divides by N·H·W: an empty batch would kill the process
        and not torch.is_grad_enabled()
        and not _has_tangent(u, v)
    ):
        ones = torch.ones(u.shape[1], dtype=torch.float32)
        zeros = torch.zeros(u.shape[1], dtype=torch.float32)
        _, per_channel, _ = torch.ops.aten.native_batch_norm_backward(
            u, v, ones, None, None, zeros, ones, True, 0.0, [False, True, False]
        )
        return per_channel.sum()
    dtype = torch.promote_types(torch.promote_types(u.dtype, v.dtype), torch.float32)
    fu, fv = _flat_pair(u.to(dtype), v.to(dtype))
    return torch.dot(fu, fv)


class _ScaledSum(torch.autograd.Function):
    """a·x + b·f for 0-d tensors a and b (b None: a·x + f).

    The plain expression costs two elementwise kernels forward and, backward, a product
    and a sum for each of dL/da and dL/db; here the forward is one `addcmul` and each
    scalar gradient one reduction (`_inner`). Forward-mode (`torch.func.jvp`), `vmap` and double
    backward work as for the plain expression; under `torch.compile`, `scaled_sum` uses
    the plain expression instead (see there).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, fx, a, b):
        # The scalars take the dtype of the tensors they scale, here rather than in the
        # caller, so the casts add no autograd nodes: under CUDA bf16 autocast a float32
        # operand of `addcmul` (on autocast's promote list) would make every block output
        # float32.
        if b is not None:
            fx = fx * b.to(fx.dtype)
        return torch.addcmul(fx, x, a.to(x.dtype))

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
        gx = g * a.to(g.dtype) if need_x else None
        gfx = (g if b is None else g * b.to(g.dtype)) if need_fx else None
        ga = _inner(g, x).to(a.dtype) if need_a else None
        gb = _inner(g, fx).to(b.dtype) if need_b else None
        return gx, gfx, ga, gb

    @staticmethod
    def jvp(ctx, tx, tfx, ta, tb):
        x, fx, a, b = ctx.saved_tensors
        terms = []
        if tx is not None:
            terms.append(tx * a.to(tx.dtype))
        if tfx is not None:
            terms.append(tfx if b is None else tfx * b.to(tfx.dtype))
        if ta is not None:
            terms.append(x * ta)
        if tb is not None:
            terms.append(fx * tb)
        if not terms:
            return torch.zeros_like(x)
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
    return _ScaledSum.apply(x, fx, a, b)


def _act_backward(grad: torch.Tensor, at: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """grad ⊙ dλ/dd by the activation's own backward kernel, one pass: λ (1 - λ) from λ for
    the sigmoid (`at` = λ); the mask d > 0 for ReLU, from d or from λ = ReLU(d) alike."""
    if sigmoid:
        return torch.ops.aten.sigmoid_backward(grad, at)
    return torch.ops.aten.threshold_backward(grad, at, 0)


class _GatedSum(torch.autograd.Function):
    """(1 - act(d)) ⊙ x + f with act = ReLU (`sigmoid=False`) or sigmoid, d of x's shape or
    broadcast over its spatial dimensions ((N, C, 1, 1), the pooled gate).

    The forward is act, 1 - λ and one `addcmul` (the plain expression: act, 1 - λ, a product
    and a sum). The backward keeps x and d, recomputes λ from d, and gives dL/dx = g (1 - λ)
    (one `addcmul`), dL/df = g and dL/dd = -g ⊙ x ⊙ dλ/dd (summed over H and W for the pooled
    gate) with dλ/dd applied by the activation's own backward kernel: five passes over the
    activations where the written-out chain rule takes seven (sigmoid) or eight (ReLU).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, fx, d, sigmoid):
        keep = 1 - (torch.sigmoid(d) if sigmoid else torch.relu(d))
        return torch.addcmul(fx, x, keep.to(x.dtype))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, fx, d, sigmoid = inputs
        ctx.sigmoid = sigmoid
        ctx.save_for_backward(x, d)
        ctx.save_for_forward(x, d)

    @staticmethod
    def _keep_and_slope(ctx, d):
        """1 - λ and dλ/dd at d."""
        if ctx.sigmoid:
            lam = torch.sigmoid(d)
            return 1 - lam, lam * (1 - lam)
        return 1 - torch.relu(d), (d > 0).to(d.dtype)

    @staticmethod
    def backward(ctx, g):
        x, d = ctx.saved_tensors
        need_x, need_fx, need_d, _ = ctx.needs_input_grad
        lam = None
        if need_x or (need_d and ctx.sigmoid):
            lam = torch.sigmoid(d) if ctx.sigmoid else torch.relu(d)
        gx = gd = None
        if need_x:  # g (1 - λ), one pass: g - g λ
            gx = torch.addcmul(g, g, lam.to(g.dtype), value=-1)
        if need_d:
            gd = torch.mul(g, x)
            if gd.shape != d.shape:  # pooled gate: summed over H and W first (dλ/dd is
                gd = gd.sum_to_size(d.shape)  # constant there), the rest per channel
            gd = gd.neg_().to(d.dtype)
            # dλ/dd applied by the activation's own backward kernel, one pass.
            gd = _act_backward(gd, lam if ctx.sigmoid else d, ctx.sigmoid)
        return gx, (g if need_fx else None), gd, None

    @staticmethod
    def jvp(ctx, tx, tfx, td, _):
        x, d = ctx.saved_tensors
        keep, slope = _GatedSum._keep_and_slope(ctx, d)
        out = torch.zeros_like(x) if tfx is None else tfx
        if tx is not None:
            out = out + tx * keep.to(tx.dtype)
        if td is not None:
            out = out - (td * slope).to(x.dtype) * x
        return out


def gated_sum(x: torch.Tensor, fx: torch.Tensor, d: torch.Tensor, *, sigmoid: bool) -> torch.Tensor:
    """(1 - act(d)) ⊙ x + fx, act = sigmoid if `sigmoid` else ReLU, fused (see `_GatedSum`).

    Args:
        x: skip path, (N, C, H, W).
        fx: residual f(x), same shape as x.
        d: gate pre-activation, (N, C, H, W) or (N, C, 1, 1).
        sigmoid: the gate's activation (False: ReLU).

    The plain expression is used under `torch.compile` (as for `scaled_sum`) and when x and
    fx differ in shape.
    """
    if torch.compiler.is_compiling() or x.shape != fx.shape:
        lam = torch.sigmoid(d) if sigmoid else torch.relu(d)
        return (1 - lam) * x + fx
    return _GatedSum.apply(x, fx, d, sigmoid)


def _gate(x, weight, bias, sigmoid: bool, *, in_place: bool = True) -> torch.Tensor:
    """λ = act(W x + b) from the gate's 1x1 convolution, the activation applied in place on
    its output (unless `in_place` is False). The weights take x's dtype (under autocast the
    convolution casts both to its own)."""
    d = F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype))
    if in_place:
        return d.sigmoid_() if sigmoid else d.relu_()
    return torch.sigmoid(d) if sigmoid else torch.relu(d)


class _GatedConvSum(torch.autograd.Function):
    """(1 - act(W x + b)) ⊙ x + f for a 1x1 convolution W with bias b, act = ReLU or sigmoid;
    also returns λ = act(W x + b) (not differentiable) for the junction's mean gate.

    On a CPU the gate is bound by memory traffic, so every pass over the activations counts:
    - The forward applies the activation in place on the convolution's output and stores λ
      only (not d): x - x ⊙ λ, then + f in place.
    - The backward forms dL/dd = -g ⊙ x ⊙ dλ/dd with the activation's own backward kernel
      on λ (threshold_backward, λ > 0 exactly where d > 0; sigmoid_backward, λ (1 - λ)),
      the sign folded into the weights' gradients.
    - dL/dx is the 1x1 convolution of that by -W^T (a forward convolution, which oneDNN runs
      faster than its backward-data one) plus g - g ⊙ λ, added in place; one
      `convolution_backward` gives dL/dW and dL/db.
    Against the convolution as a module followed by `gated_sum` this saves, per training
    step, two passes of the backward (λ recomputed from d, and the sign) and autograd's sum
    of the two gradients of x, and autograd makes no zero gradient for the λ output.

    λ rather than 1 - λ is kept: in bf16, 1 - λ rounds to 1 for λ below 2⁻⁹, which would
    lose the ReLU gate's gradient and the mean gate's resolution near λ = 0, where the
    gates of a trained network tend to go. A double backward, or forward mode over the
    backward, recomputes λ from x, W and b, so that it is differentiated too.

    It serves training steps: its backward computes dL/dW and dL/db whenever W and b
    require gradients, as they do under an attack, where only dL/dx is wanted; the junction
    uses the convolution as a module and `gated_sum` there.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, fx, weight, bias, sigmoid):
        lam = _gate(x, weight, bias, sigmoid)
        # x - x ⊙ λ first: with f added first, x + f would be rounded before x ⊙ λ ≈ x is
        # taken off it again (gates near 1, in bf16).
        return torch.addcmul(x, x, lam.to(x.dtype), value=-1).add_(fx), lam

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, fx, weight, bias, sigmoid = inputs
        lam = output[1]
        ctx.mark_non_differentiable(lam)
        # No zero tensor for λ's gradient, which is never used.
        ctx.set_materialize_grads(False)
        ctx.sigmoid = sigmoid
        ctx.save_for_backward(x, lam, weight, bias)
        ctx.save_for_forward(x, lam, weight)

    @staticmethod
    def backward(ctx, g, _g_lam):
        if g is None:  # the sum itself was not used
            return None, None, None, None, None
        x, lam, weight, bias = ctx.saved_tensors
        need_x, need_fx, need_w, need_b, _ = ctx.needs_input_grad
        if torch.is_grad_enabled() or _has_tangent(x, weight, bias):
            # A double backward, or forward mode over this backward: λ as a function of x,
            # W and b (the stored λ has neither a graph nor a tangent).
            lam = _gate(x, weight, bias, ctx.sigmoid, in_place=False)
        w = weight.to(lam.dtype)  # the dtype the forward's convolution ran in
        gx = gw = gb = None
        if need_x or need_w or need_b:
            # -dL/dd: the sign is folded into the weights below.
            ge = _act_backward(g * x, lam.to(g.dtype), ctx.sigmoid).to(w.dtype)
            if need_x:  # a 1x1 convolution's input gradient is the convolution by W^T
                gin = F.conv2d(ge, w.transpose(0, 1).neg())
                gx = torch.addcmul(g, g, lam.to(g.dtype), value=-1).add_(gin.to(g.dtype))
            if need_w or need_b:
                channels = w.shape[0]
                _, gw, gb = torch.ops.aten.convolution_backward(
                    ge, x.to(w.dtype), w, [channels], [1, 1], [0, 0], [1, 1], False, [0, 0],
                    1, [False, need_w, need_b],
                )  # fmt: skip
            gw = gw.neg().to(weight.dtype) if need_w else None
            gb = gb.neg().to(bias.dtype) if need_b else None
        return gx, (g if need_fx else None), gw, gb, None

    @staticmethod
    def jvp(ctx, tx, tfx, tw, tb, _):
        x, lam, weight = ctx.saved_tensors
        dtype = lam.dtype
        # The tangent of d is W tx + tW x + tb; that of λ its slope times it.
        td = []
        if tx is not None:
            td.append(F.conv2d(tx.to(dtype), weight.to(dtype)))
        if tw is not None:
            td.append(F.conv2d(x.to(dtype), tw.to(dtype)))
        if tb is not None:
            td.append(tb.to(dtype).view(1, -1, 1, 1).expand_as(lam))
        out = torch.zeros_like(x) if tfx is None else tfx
        if tx is not None:
            out = out + tx - tx * lam.to(tx.dtype)
        if td:
            t_lam = _act_backward(sum(td[1:], td[0]), lam, ctx.sigmoid)
            out = out - t_lam.to(x.dtype) * x
        return (out.clone() if out is tfx else out), None  # never f's tangent itself


def gated_conv_sum(
    x: torch.Tensor,
    fx: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    sigmoid: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - act(d)) ⊙ x + fx with d = W x + b a 1x1 convolution, act = sigmoid if `sigmoid`
    else ReLU, fused for a training step (see `_GatedConvSum`); and λ = act(d), detached.

    Args:
        x: skip path, (N, C, H, W).
        fx: residual f(x), same shape as x.
        weight: the 1x1 convolution's weight, (C, C, 1, 1).
        bias: its bias, (C,).
        sigmoid: the gate's activation (False: ReLU).

    The plain expression is used under `torch.compile` (as for `scaled_sum`) and when x and
    fx differ in shape.
    """
    if torch.compiler.is_compiling() or x.shape != fx.shape:
        lam = _gate(x, weight, bias, sigmoid, in_place=False)
        return (1 - lam) * x + fx, lam.detach()
    return _GatedConvSum.apply(x, fx, weight, bias, sigmoid)
