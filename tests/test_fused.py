"""The fused sums behind the junctions (a·x + b·f for the scalar ones, (1 - act(d)) ⊙ x + f
for the gating ones), against the plain expressions."""

from __future__ import annotations

import pytest
import torch

import odenets
from odenets.models.fused import (
    _GatedConvSum,
    _GatedSum,
    _inner,
    _ScaledSum,
    gated_conv_sum,
    gated_sum,
    scaled_sum,
)


def _pair(channels_last: bool, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=dtype)
    fx = torch.randn(2, 3, 4, 5, generator=g, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        fx = fx.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(), fx.requires_grad_()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_b", [False, True])
def test_gradients_forward_mode_and_double_backward(channels_last, with_b):
    x, fx = _pair(channels_last)
    a = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(1.3, dtype=torch.float64, requires_grad=True) if with_b else None
    args = (x, fx, a, b)
    assert torch.autograd.gradcheck(_ScaledSum.apply, args, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(_ScaledSum.apply, args)


@pytest.mark.parametrize("channels_last", [False, True])
def test_values_and_gradients_equal_the_plain_expression(channels_last):
    x, fx = _pair(channels_last, torch.float32)
    a = torch.tensor(0.6, requires_grad=True)
    b = torch.tensor(1.4, requires_grad=True)
    g = torch.randn(x.shape)
    out = scaled_sum(x, fx, a, b)
    grads = torch.autograd.grad(out, (x, fx, a, b), g)
    plain = a * x + b * fx
    expected = torch.autograd.grad(plain, (x, fx, a, b), g)
    torch.testing.assert_close(out, plain)
    for ours, theirs in zip(grads, expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_vmap_and_per_sample_gradients():
    g = torch.Generator().manual_seed(1)
    xs, fs = torch.randn(4, 2, 3, 4, 5, generator=g), torch.randn(4, 2, 3, 4, 5, generator=g)
    coef = torch.randn(4, generator=g)
    out = torch.func.vmap(scaled_sum)(xs, fs, coef)
    torch.testing.assert_close(out, coef.view(4, 1, 1, 1, 1) * xs + fs)
    grad_a = torch.func.grad(lambda x, f, a: scaled_sum(x, f, a).square().sum(), argnums=2)
    per_sample = torch.func.vmap(grad_a)(xs, fs, coef)
    expected = 2 * ((coef.view(4, 1, 1, 1, 1) * xs + fs) * xs).sum(dim=(1, 2, 3, 4))
    torch.testing.assert_close(per_sample, expected, rtol=1e-5, atol=1e-4)


def test_broadcast_shapes_fall_back_to_the_plain_expression():
    x = torch.randn(2, 3, 4, 4)
    fx = torch.randn(1, 3, 1, 1)
    a = torch.tensor(0.5)
    torch.testing.assert_close(scaled_sum(x, fx, a), a * x + fx)


def test_bf16_autocast_keeps_the_block_output_in_bf16():
    x = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scaled_sum(x, x.clone(), torch.tensor(0.25))
    assert out.dtype == torch.bfloat16


def _plain_block(block, x):
    """A block written out: a·skip + b·f(x) by autograd (no fused sum, no folding)."""
    skip = x if block.shortcut is None else block.shortcut(x)
    scalars = block.junction.scalars()
    if scalars is None:
        return block.junction(skip, block.f(x))
    a, b = scalars
    return a * skip + (1 if b is None else b) * block.f(x)


@pytest.mark.parametrize("name", ["in_resnet20", "lambda_in_resnet20", "etd_resnet20"])
def test_blocks_match_a_plain_reimplementation(name, monkeypatch):
    # The same network twice: as built (fused sums; λ-In-ResNet and ETD fold b into f's last
    # convolution) and with every block written out plainly, a·x + b·f(x) by autograd.
    torch.manual_seed(0)
    model = odenets.create_model(name).double().train()
    with torch.no_grad():  # coefficients away from their initial values, b far from 1
        for p in model.coefficient_parameters():
            p.add_(0.3)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    params = list(model.parameters())
    out = model(x)
    fused = torch.autograd.grad(out.square().sum(), params)

    from odenets.models.resnet import ResBlock

    monkeypatch.setattr(ResBlock, "forward", _plain_block)
    reference = model(x)
    expected = torch.autograd.grad(reference.square().sum(), params)
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(fused, expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert any(g.abs().sum() > 0 for g in fused)


@pytest.mark.parametrize("variant", ["lambda_in_resnet", "etd_resnet"])
@pytest.mark.parametrize("residual", ["basic", "bottleneck"])
def test_folding_b_into_the_last_convolution_is_exact(variant, residual):
    # One block: b folded into f's last convolution (basic: conv2; bottleneck: conv3) against
    # a·x + b·f(x) written out, values and every gradient, in float64.
    torch.manual_seed(1)
    block = odenets.InResNetBlock(8, variant=variant, residual=residual).double().train()
    with torch.no_grad():
        block.junction.k.add_(0.4)
    x = torch.randn(3, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    out = block(x)
    assert block.junction.scalars()[1] is not None  # the folded path ran
    inputs = [x, *block.parameters()]
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, inputs, g)
    reference = _plain_block(block, x)
    theirs = torch.autograd.grad(reference, inputs, g)
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "name", ["in_resnet20", "lambda_in_resnet20", "etd_resnet20", "in_resnet_gating_sig20"]
)
def test_torch_compile_traces_the_training_forward_in_one_graph(name):
    # dynamo cannot trace a custom jvp: under compile the junction must be the plain form,
    # or every interpolating block breaks the graph (and hits the recompile limit).
    model = odenets.create_model(name).train()
    explained = torch._dynamo.explain(model)(torch.rand(2, 3, 32, 32))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    # The input range check is traced into that graph as a device-side assert; the training
    # loop's check_input=False leaves it out.
    assert "_assert_async" in explained.graphs[0].code
    unchecked = torch._dynamo.explain(model)(torch.rand(2, 3, 32, 32), check_input=False)
    assert (unchecked.graph_count, unchecked.graph_break_count) == (1, 0)
    assert "_assert_async" not in unchecked.graphs[0].code


def test_bf16_coefficient_gradient_accumulates_in_float32():
    # 2^20 products of 1: a bf16 accumulator stops at 256 (8 mantissa bits); the junction's
    # dL/da must be the exact count, as in float32.
    x = torch.ones(16, 16, 64, 64, dtype=torch.bfloat16)
    fx = torch.zeros_like(x)
    a = torch.tensor(0.5, requires_grad=True)
    out = scaled_sum(x, fx, a)
    out.backward(torch.ones_like(out))
    assert a.grad.item() == x.numel()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("formats", [("cf", "cf"), ("cl", "cl"), ("cf", "cl"), ("cl", "cf")])
def test_reduced_precision_coefficient_gradients_match_float64(dtype, formats):
    # The per-channel reduction of BatchNorm's backward kernel (CPU, 4-D operands), for
    # both memory formats and a mix of the two: the float64 sum of the same rounded
    # products, to float32's accuracy.
    gen = torch.Generator().manual_seed(3)
    shape = (4, 8, 6, 6)
    x64, f64, g64 = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
    fmt = {"cf": torch.contiguous_format, "cl": torch.channels_last}
    g = g64.to(dtype).contiguous(memory_format=fmt[formats[0]])
    x, f = (t.to(dtype).contiguous(memory_format=fmt[formats[1]]) for t in (x64, f64))
    a = torch.tensor(0.7, requires_grad=True)
    b = torch.tensor(1.3, requires_grad=True)
    scaled_sum(x, f, a, b).backward(g)
    want_a = (g.double() * x.double()).sum().item()
    want_b = (g.double() * f.double()).sum().item()
    assert a.grad.item() == pytest.approx(want_a, rel=1e-5, abs=1e-4)
    assert b.grad.item() == pytest.approx(want_b, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4), (2, 3, 4, 5)])
def test_inner_product_of_bf16_tensors_any_shape(shape):
    gen = torch.Generator().manual_seed(4)
    u, v = (torch.randn(shape, generator=gen).to(torch.bfloat16) for _ in range(2))
    want = (u.double() * v.double()).sum()
    with torch.no_grad():  # as in a backward
        got = _inner(u, v)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-5)
    # The widened BLAS path (taken for a double backward) gives the same sum.
    with torch.enable_grad():
        torch.testing.assert_close(_inner(u, v), got)


@pytest.mark.parametrize("sigmoid", [False, True])
@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gated_sum_gradients_forward_mode_and_double_backward(sigmoid, pooled, channels_last):
    x, fx = _pair(channels_last)
    gen = torch.Generator().manual_seed(5)
    shape = (2, 3, 1, 1) if pooled else x.shape
    # Away from ReLU's kink at 0, where finite differences are not defined.
    d = torch.randn(shape, generator=gen, dtype=torch.float64)
    d = (d + 0.2 * d.sign()).requires_grad_()
    fn = lambda x, fx, d: _GatedSum.apply(x, fx, d, sigmoid)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, fx, d), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, (x, fx, d))


@pytest.mark.parametrize("sigmoid", [False, True])
@pytest.mark.parametrize("pooled", [False, True])
def test_gated_sum_equals_the_plain_expression(sigmoid, pooled):
    x, fx = _pair(True, torch.float32)
    gen = torch.Generator().manual_seed(6)
    d = torch.randn((2, 3, 1, 1) if pooled else x.shape, generator=gen).requires_grad_()
    g = torch.randn(x.shape, generator=gen)
    out = gated_sum(x, fx, d, sigmoid=sigmoid)
    lam = torch.sigmoid(d) if sigmoid else torch.relu(d)
    plain = (1 - lam) * x + fx
    torch.testing.assert_close(out, plain)
    ours = torch.autograd.grad(out, (x, fx, d), g)
    theirs = torch.autograd.grad(plain, (x, fx, d), g)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_gated_sum_under_vmap():
    gen = torch.Generator().manual_seed(7)
    xs, fs, ds = (torch.randn(4, 2, 3, 4, 5, generator=gen) for _ in range(3))
    out = torch.func.vmap(lambda x, f, d: gated_sum(x, f, d, sigmoid=True))(xs, fs, ds)
    torch.testing.assert_close(out, (1 - torch.sigmoid(ds)) * xs + fs)


def _gate(channels: int = 3, dtype=torch.float64):
    """A 1x1 gate convolution's weight and bias, a gate that depends on x."""
    g = torch.Generator().manual_seed(8)
    weight = 0.4 * torch.randn(channels, channels, 1, 1, generator=g, dtype=dtype)
    bias = 0.2 + 0.3 * torch.rand(channels, generator=g, dtype=dtype)
    return weight.requires_grad_(), bias.requires_grad_()


def _plain_gated_conv(x, fx, weight, bias, sigmoid):
    d = torch.nn.functional.conv2d(x, weight, bias)
    return (1 - (torch.sigmoid(d) if sigmoid else torch.relu(d))) * x + fx


@pytest.mark.parametrize("sigmoid", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gated_conv_sum_gradients_forward_mode_and_double_backward(sigmoid, channels_last):
    x, fx = _pair(channels_last)
    weight, bias = _gate()
    d = torch.nn.functional.conv2d(x, weight, bias)
    assert d.abs().min() > 1e-3  # away from ReLU's kink, where differences are undefined
    assert (d > 0).any() and (d < 0).any()  # both sides of it

    def fn(x, fx, weight, bias):
        return _GatedConvSum.apply(x, fx, weight, bias, sigmoid)[0]

    args = (x, fx, weight, bias)
    assert torch.autograd.gradcheck(fn, args, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("sigmoid", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gated_conv_sum_equals_the_plain_expression(sigmoid, channels_last, monkeypatch):
    x, fx = _pair(channels_last, torch.float32)
    weight, bias = (t.detach().float().requires_grad_() for t in _gate())
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    out, lam = gated_conv_sum(x, fx, weight, bias, sigmoid=sigmoid)
    plain = _plain_gated_conv(x, fx, weight, bias, sigmoid)
    torch.testing.assert_close(out, plain)
    d = torch.nn.functional.conv2d(x, weight, bias)
    torch.testing.assert_close(lam, torch.sigmoid(d) if sigmoid else torch.relu(d))
    assert not lam.requires_grad
    inputs = (x, fx, weight, bias)
    ours = torch.autograd.grad(out, inputs, g)
    theirs = torch.autograd.grad(plain, inputs, g)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    # Under torch.compile the plain expression runs instead, with the same results.
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    traced, traced_lam = gated_conv_sum(x, fx, weight, bias, sigmoid=sigmoid)
    assert traced.grad_fn.name() != "_GatedConvSumBackward"
    torch.testing.assert_close(traced, plain)
    torch.testing.assert_close(traced_lam, lam)


def test_gated_conv_sum_under_vmap_and_per_sample_gradients():
    gen = torch.Generator().manual_seed(10)
    xs, fs = (torch.randn(4, 2, 3, 4, 5, generator=gen) for _ in range(2))
    weight, bias = (t.detach().float() for t in _gate())
    out, _ = torch.func.vmap(lambda x, f: gated_conv_sum(x, f, weight, bias, sigmoid=True))(xs, fs)
    expected = torch.stack(
        [_plain_gated_conv(x, f, weight, bias, True) for x, f in zip(xs, fs, strict=True)]
    )
    torch.testing.assert_close(out, expected)

    def loss(weight, x, f, fused):
        if fused:
            out = gated_conv_sum(x[None], f[None], weight, bias, sigmoid=False)[0]
        else:
            out = _plain_gated_conv(x[None], f[None], weight, bias, False)
        return out.square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0, None))
    torch.testing.assert_close(
        per_sample(weight, xs[0], fs[0], True),
        per_sample(weight, xs[0], fs[0], False),
        rtol=1e-5,
        atol=1e-5,
    )


def test_gated_conv_sum_under_bf16_autocast():
    # As in a bf16 training step: bf16 activations, float32 parameters. The block output and
    # λ stay bf16; the parameter gradients come back in float32, within 1% of the largest
    # of float64's (bf16 keeps 8 bits: autocast's plain expression is 0.2% off).
    x, fx = _pair(True, torch.float32)
    weight, bias = (t.detach().float().requires_grad_() for t in _gate())
    xb, fb = x.detach().bfloat16().requires_grad_(), fx.detach().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, lam = gated_conv_sum(xb, fb, weight, bias, sigmoid=False)
    assert (out.dtype, lam.dtype) == (torch.bfloat16, torch.bfloat16)
    out.float().square().sum().backward()
    assert (weight.grad.dtype, bias.grad.dtype, xb.grad.dtype) == (
        torch.float32,
        torch.float32,
        torch.bfloat16,
    )
    w64, b64 = weight.detach().double().requires_grad_(), bias.detach().double().requires_grad_()
    plain = _plain_gated_conv(xb.detach().double(), fb.double(), w64, b64, False)
    plain.square().sum().backward()
    for ours, exact in ((weight.grad, w64.grad), (bias.grad, b64.grad)):
        torch.testing.assert_close(ours.double(), exact, rtol=0, atol=0.01 * exact.abs().max())


@pytest.mark.parametrize("name", ["in_resnet_gating20", "in_resnet_gating_sig20"])
@pytest.mark.parametrize("gate", ["elementwise", "pooled"])
def test_gating_gradients_match_a_plain_reimplementation(name, gate, monkeypatch):
    torch.manual_seed(0)
    model = odenets.create_model(name, gate=gate).double().train()
    with torch.no_grad():  # a gate that depends on x (at initialisation W = 0)
        for p in model.coefficient_parameters()[::2]:
            p.normal_(0, 0.1)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    params = list(model.parameters())
    fused_out = model(x)
    fused = torch.autograd.grad(fused_out.square().sum(), params)

    import odenets.models.layers as layers

    def plain_gate(x, fx, d, *, sigmoid):
        return (1 - (torch.sigmoid(d) if sigmoid else torch.relu(d))) * x + fx

    def plain_gate_conv(x, fx, weight, bias, *, sigmoid):
        d = torch.nn.functional.conv2d(x, weight, bias)
        lam = torch.sigmoid(d) if sigmoid else torch.relu(d)
        return (1 - lam) * x + fx, lam.detach()

    monkeypatch.setattr(layers, "gated_sum", plain_gate)
    monkeypatch.setattr(layers, "gated_conv_sum", plain_gate_conv)
    plain_out = model(x)
    plain = torch.autograd.grad(plain_out.square().sum(), params)
    torch.testing.assert_close(fused_out, plain_out, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(fused, plain, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    gate_params = {id(p) for p in model.coefficient_parameters()}
    gate_grads = [g for p, g in zip(params, fused, strict=True) if id(p) in gate_params]
    assert gate_grads and all(g.abs().sum() > 0 for g in gate_grads)  # every gate learns


@pytest.mark.parametrize("sigmoid", [False, True])
def test_gated_conv_sum_keeps_small_gates_alive_in_bf16(sigmoid):
    # Gates just above 0: in bf16, 1 - λ rounds to 1 below λ = 2⁻⁹, so a gradient or a mean
    # gate taken from 1 - λ would see none. Against autocast's plain expression: the same
    # gradient for b (the ReLU gate's is not 0), and the mean gate λ itself.
    x, fx = _pair(True, torch.float32)
    xb, fb = x.detach().bfloat16(), fx.detach().bfloat16()
    small = 0.001 if not sigmoid else -8.0  # λ = 0.001, or sigmoid(-8) = 0.00034
    grads, means = [], []
    for fused in (True, False):
        weight = torch.zeros(3, 3, 1, 1, requires_grad=True)
        bias = torch.full((3,), small, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                out, lam = gated_conv_sum(xb, fb, weight, bias, sigmoid=sigmoid)
            else:
                out = _plain_gated_conv(xb, fb, weight, bias, sigmoid)
                lam = torch.sigmoid(torch.full((1,), small)) if sigmoid else bias.detach()
        out.float().square().sum().backward()
        grads.append(bias.grad)
        means.append(lam.float().mean())
    assert grads[0].abs().min() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=0.02, atol=0)
    torch.testing.assert_close(means[0], means[1], rtol=0.01, atol=0)


def test_forward_mode_tangent_of_the_gated_conv_sum_is_never_fs_own():
    # Only f carries a tangent: the output's tangent equals it but is a tensor of its own, so
    # an in-place change of the output leaves f's tangent alone.
    import torch.autograd.forward_ad as fwAD

    x, fx = (t.detach() for t in _pair(True))
    weight, bias = (t.detach() for t in _gate())
    tangent = torch.ones_like(fx)
    with fwAD.dual_level():
        out = gated_conv_sum(x, fwAD.make_dual(fx, tangent), weight, bias, sigmoid=False)[0]
        out_tangent = fwAD.unpack_dual(out).tangent
        torch.testing.assert_close(out_tangent, tangent)
        out_tangent.mul_(3)
    assert tangent.eq(1).all()


@pytest.mark.parametrize("sigmoid", [False, True])
def test_gated_conv_sum_forward_mode_over_its_backward(sigmoid):
    # A dual x through a training step's backward without create_graph: the tangents of
    # dL/dx and dL/dW against central differences along x's tangent (the backward must not
    # use the stored λ, which carries no tangent).
    import torch.autograd.forward_ad as fwAD

    x, fx = (t.detach() for t in _pair(True))
    weight, bias = _gate()
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(11), dtype=x.dtype)

    def grads(x):
        x = x.requires_grad_()
        out = gated_conv_sum(x, fx, weight, bias, sigmoid=sigmoid)[0]
        return torch.autograd.grad(out.square().sum(), (x, weight))

    with fwAD.dual_level():
        dual = grads(fwAD.make_dual(x, direction))
        tangents = [fwAD.unpack_dual(g).tangent for g in dual]
    h = 1e-6
    for tangent, up, down in zip(
        tangents, grads(x + h * direction), grads(x - h * direction), strict=True
    ):
        torch.testing.assert_close(tangent, (up - down) / (2 * h), rtol=1e-6, atol=1e-6)


def test_bf16_inner_product_of_activations_makes_no_float32_copies():
    # The two float32 copies of the widened path cost ~8% of a bf16 training step. A
    # backward runs without grad mode (a double backward with it takes the widened path).
    u, v = (torch.randn(2, 4, 8, 8).to(torch.bfloat16) for _ in range(2))
    with (
        torch.no_grad(),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof,
    ):
        _inner(u, v)
    ops = {event.key for event in prof.key_averages()}
    assert "aten::native_batch_norm_backward" in ops
    assert not ops & {"aten::copy_", "aten::_to_copy", "aten::dot"}


def test_bf16_coefficient_gradient_of_an_empty_batch_is_zero():
    # BatchNorm's kernel divides by N·H·W (a floating-point exception that kills the
    # process); an empty batch takes the widened path.
    x = torch.zeros(0, 4, 3, 3, dtype=torch.bfloat16)
    a = torch.tensor(0.5, requires_grad=True)
    scaled_sum(x, x.clone(), a).sum().backward()
    assert a.grad.item() == 0.0


def _bf16_block_tensors():
    gen = torch.Generator().manual_seed(6)
    x, f, g, t = (
        torch.randn(2, 3, 4, 4, generator=gen)
        .to(torch.bfloat16)
        .contiguous(memory_format=torch.channels_last)
        for _ in range(4)
    )
    return x, f, g, t


def test_bf16_double_backward_differentiates_the_coefficient_gradient():
    # d(dL/da)/dx = g: BatchNorm's own double backward would treat its mean and deviation
    # as functions of x (up to 0.58 off here); a double backward takes the widened path.
    x, f, g, _ = _bf16_block_tensors()
    x = x.float().requires_grad_()
    a = torch.tensor(0.7, requires_grad=True)
    (ga,) = torch.autograd.grad(scaled_sum(x.bfloat16(), f, a), a, g, create_graph=True)
    (gx,) = torch.autograd.grad(ga, x)
    torch.testing.assert_close(gx, g.float())


def test_bf16_forward_mode_over_the_coefficient_gradient():
    # A tangent t on x carries dL/da = Σ g·x to Σ g·t; BatchNorm's forward-mode rule would
    # differentiate its mean and deviation too (-6.82 against -5.64 in one probe).
    import torch.autograd.forward_ad as fwAD

    x, f, g, t = _bf16_block_tensors()
    a = torch.tensor(0.7, requires_grad=True)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, t)
        (ga,) = torch.autograd.grad(scaled_sum(dual, f, a), a, g)
        tangent = fwAD.unpack_dual(ga).tangent
    want = (g.double() * t.double()).sum().item()
    assert tangent is not None
    assert tangent.item() == pytest.approx(want, rel=1e-5, abs=1e-4)


def test_training_backward_takes_the_copy_free_coefficient_gradient():
    x, f, g, _ = _bf16_block_tensors()
    a = torch.tensor(0.7, requires_grad=True)
    out = scaled_sum(x, f, a)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out.backward(g)
    ops = {event.key for event in prof.key_averages()}
    assert "aten::native_batch_norm_backward" in ops and "aten::dot" not in ops
    assert a.grad.item() == pytest.approx((g.double() * x.double()).sum().item(), rel=1e-5)
