"""The In-ResNet family against known answers: parameter counts, which blocks interpolate,
the λ = 0 (ResNet) and λ = 1 (non-residual) ends, the ETD formula, the raw coefficient
form under weight decay, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef

import odenets
from odenets.models.layers import etd_phi


def _images(n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _same_weights(target, source):
    # Interpolating models hold the ResNet weights plus their raw coefficients.
    missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
    assert unexpected == [] and all(".junction." in k for k in missing)
    return target


@pytest.mark.parametrize(("name", "expected"), [("resnet110", 1.73e6), ("resnet164", 1.70e6)])
def test_parameter_counts_match_the_paper(name, expected):
    assert abs(_n_params(odenets.create_model(name)) - expected) / expected < 0.005


def test_interpolating_models_add_only_their_coefficients():
    base = _n_params(odenets.create_model("resnet110"))
    assert _n_params(odenets.create_model("in_resnet110")) == base + 51
    assert _n_params(odenets.create_model("lambda_in_resnet110")) == base + 51
    assert _n_params(odenets.create_model("in_resnet_sig110")) == base + 51
    assert _n_params(odenets.create_model("etd_resnet110")) == base + 51


@pytest.mark.parametrize(
    ("name", "n_blocks", "lam_range"),
    [
        ("in_resnet110", 54, (0.20, 0.25)),
        ("lambda_in_resnet164", 54, (0.10, 0.20)),
        ("in_resnet_sig56", 27, (0.20, 0.25)),
        ("etd_resnet20", 9, (0.20, 0.25)),
    ],
)
def test_interpolating_blocks_and_default_init(name, n_blocks, lam_range):
    model = odenets.create_model(name)
    assert len(model.blocks) == n_blocks
    lam = model.coefficients()
    # Not the first block, nor the first blocks of stages 2 and 3.
    assert lam.shape == (n_blocks - 3,)
    n = n_blocks // 3
    flags = [b.interpolating for b in model.blocks]
    assert [i for i, f in enumerate(flags) if not f] == [0, n, 2 * n]
    assert lam.min() >= lam_range[0] - 1e-6 and lam.max() <= lam_range[1] + 1e-6
    assert lam.unique().numel() == lam.numel()  # drawn, not constant


def test_resnet_has_no_coefficients():
    model = odenets.create_model("resnet110")
    assert model.coefficients().shape == (0,)
    assert model.coefficient_parameters() == []
    assert model.family == "resnet" and model.depth == 110


def test_lambda_init_override_in_lambda_units():
    for name in ("in_resnet20", "lambda_in_resnet20", "in_resnet_sig20", "etd_resnet20"):
        lam = odenets.create_model(name, lambda_init=(0.3, 0.4)).coefficients()
        assert lam.min() >= 0.3 - 1e-6 and lam.max() <= 0.4 + 1e-6, name
    k = odenets.create_model("in_resnet20", lambda_init=(0.3, 0.3)).coefficient_parameters()
    assert torch.allclose(torch.cat(k), torch.full((6,), 0.7))  # raw k = 1 - λ (authors)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("in_resnet20", {"lambda_init": (0.3, 0.2)}, "lo <= hi"),
        ("in_resnet20", {"lambda_init": (-0.1, 0.2)}, ">= 0"),
        ("in_resnet_sig20", {"lambda_init": (0.0, 0.2)}, "open interval"),
        ("in_resnet20", {"gate": "pooled"}, "gate"),
        ("in_resnet_gating20", {"gate": "global"}, "elementwise"),
    ],
)
def test_bad_options_raise(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        odenets.create_model(name, **kwargs)


@pytest.mark.parametrize("family", ["in_resnet", "lambda_in_resnet", "etd_resnet"])
@pytest.mark.parametrize("train", [False, True])
def test_lambda_zero_is_exactly_resnet(family, train):
    resnet = odenets.create_model("resnet20").train(train)
    model = _same_weights(odenets.create_model(f"{family}20", lambda_init=(0, 0)), resnet)
    model.train(train)
    assert torch.equal(model.coefficients(), torch.zeros(6))
    x = _images()
    assert torch.equal(model(x), resnet(x))


def test_gating_with_zero_gate_is_exactly_resnet():
    resnet = odenets.create_model("resnet20").eval()
    model = _same_weights(odenets.create_model("in_resnet_gating20", lambda_init=(0, 0)), resnet)
    x = _images()
    assert torch.equal(model.eval()(x), resnet(x))


def _non_residual_logits(model, x, rho: float) -> torch.Tensor:
    # x_{n+1} = ρ f_n(x_n) in interpolating blocks; the others are plain residual blocks.
    h = model.stem(model.normalize(x))
    for block in model.blocks:
        h = rho * block.f(h) if block.interpolating else block(h)
    return model.head(torch.nn.functional.adaptive_avg_pool2d(model.norm(h).relu(), 1).flatten(1))


@pytest.mark.parametrize(("family", "rho"), [("in_resnet", 1.0), ("lambda_in_resnet", 2.0)])
def test_lambda_one_is_non_residual(family, rho):
    model = odenets.create_model(f"{family}20", lambda_init=(1, 1)).eval()
    assert torch.equal(model.coefficients(), torch.ones(6))
    x = _images()
    assert torch.equal(model(x), _non_residual_logits(model, x, rho))


def test_lambda_in_resnet_block_formula_and_one_evaluation_of_f():
    model = odenets.create_model("lambda_in_resnet20", lambda_init=(0.3, 0.6)).eval()
    calls = []
    hooks = [b.f.register_forward_hook(lambda *_: calls.append(1)) for b in model.blocks]
    model(_images())
    assert len(calls) == len(model.blocks)
    for h in hooks:
        h.remove()
    block = model.blocks[4]
    lam = block.junction.coefficient()
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        expected = (1 - lam) * x + (1 + lam) * block.f(x)
        assert torch.allclose(block(x), expected, atol=1e-6)


def test_etd_block_matches_formula():
    model = odenets.create_model("etd_resnet20", lambda_init=(0.5, 3.0)).eval()
    for block in model.interpolating_blocks():
        lam = block.junction.coefficient().double()
        x = torch.randn(2, block.f.conv2.out_channels, 8, 8)
        with torch.no_grad():
            fx = block.f(x).double()
            rho = 1 + lam
            expected = torch.exp(-lam) * x.double() + (1 - torch.exp(-lam)) / lam * rho * fx
            assert torch.allclose(block(x).double(), expected, rtol=1e-5, atol=1e-5)


def _etd_block_output(lam: float):
    """(x, f(x), block output) of the first interpolating ETD block with λ set to `lam`."""
    torch.manual_seed(0)
    block = odenets.create_model("etd_resnet20").eval().interpolating_blocks()[0]
    with torch.no_grad():
        block.junction.k.fill_(lam)
        x = torch.randn(2, block.f.conv2.out_channels, 8, 8)
        return x, block.f(x), block(x)


def test_etd_block_is_residual_at_lambda_zero():
    x, fx, out = _etd_block_output(0.0)
    assert torch.equal(out, x + fx)


def test_etd_block_tends_to_the_non_residual_f_as_lambda_grows():
    """ρ(λ) = 1 + λ: the factor of f, (1 - e^{-λ})(1 + λ)/λ, tends to 1 and e^{-λ} to 0, so
    the block tends to f (with ρ = 1 it would tend to 0: f/λ)."""
    gaps = []
    for lam in (10.0, 100.0, 1000.0):
        _, fx, out = _etd_block_output(lam)
        gaps.append(((out - fx).norm() / fx.norm()).item())
        assert gaps[-1] <= 1.01 / lam  # |e^{-λ} x| + f/λ, relative to |f|
    assert gaps[0] > gaps[1] > gaps[2]


@pytest.mark.parametrize("lam", [0.0, 1e-8, 1e-6, 5e-5, 2e-4, 1e-3, 0.1, 1.0, 10.0, -1e-5])
def test_etd_phi_and_its_zero_limit(lam):
    exact = 1.0 if lam == 0 else float(-torch.expm1(torch.tensor(-lam, dtype=torch.float64)) / lam)
    value = torch.tensor(lam, requires_grad=True)
    phi = etd_phi(value)
    assert abs(phi.item() - exact) <= 1e-6 * exact
    phi.backward()
    # dφ/dλ = -1/2 + λ/3 - ... near 0: finite, never NaN.
    assert torch.isfinite(value.grad)
    if abs(lam) < 1e-3:
        assert abs(value.grad.item() + 0.5) < 1e-3


@pytest.mark.parametrize("name", ["in_resnet_gating20", "in_resnet_gating_sig20"])
@pytest.mark.parametrize("gate", ["elementwise", "pooled"])
@pytest.mark.parametrize("training", [False, True])
def test_gating_coefficients_are_the_mean_gate_of_the_last_batch(name, gate, training):
    # The gate recomputed from each junction's input, act(W x + b) by the 1x1 convolution
    # itself (on the spatial mean for the pooled gate), against what coefficients() reports
    # after a training step (the gate held, averaged on demand) or an evaluation (averaged
    # at once).
    torch.manual_seed(0)
    model = odenets.create_model(name, gate=gate).train(training)
    with torch.no_grad():
        for block in model.interpolating_blocks():
            block.junction.proj.weight.normal_(0, 0.1)
    gates = []

    def record(junction, args):
        x = args[0].detach()
        source = x.mean(dim=(2, 3), keepdim=True) if gate == "pooled" else x
        gates.append(junction.act(junction.proj(source)).mean())

    hooks = [b.junction.register_forward_pre_hook(record) for b in model.interpolating_blocks()]
    model(_images()).sum().backward()
    for h in hooks:
        h.remove()
    assert len(gates) == len(model.interpolating_blocks())
    torch.testing.assert_close(model.coefficients(), torch.stack(gates), rtol=1e-5, atol=1e-6)
    assert model.coefficients().std() > 0  # the gates differ from block to block


@pytest.mark.parametrize("gate", ["elementwise", "pooled"])
def test_gating_keeps_no_gate_of_an_evaluation_batch(gate, monkeypatch):
    # coefficient() reports the mean gate of the last batch; outside training it must not
    # hold the gate itself (N, C, H, W) of every block once the forward is done. Only the
    # fused training step of the element-wise gate holds its λ (autograd keeps it anyway).
    import odenets.models.layers as layers

    model = odenets.create_model("in_resnet_gating_sig20", gate=gate).eval()
    with torch.no_grad():
        for block in model.interpolating_blocks():
            block.junction.proj.weight.normal_(0, 0.1)
    gates = []
    fused = layers.gated_conv_sum

    def recorded(*args, **kwargs):
        out, lam = fused(*args, **kwargs)
        gates.append(StorageWeakRef(lam.untyped_storage()))
        return out, lam

    monkeypatch.setattr(layers, "gated_conv_sum", recorded)
    hooks = [
        b.junction.proj.register_forward_hook(
            lambda m, i, o: gates.append(StorageWeakRef(o.untyped_storage()))
        )
        for b in model.interpolating_blocks()
    ]
    with torch.no_grad():
        model(_images(4))
    assert len(gates) == len(model.interpolating_blocks())
    assert all(ref.expired() for ref in gates)
    # A training step holds it until the next forward (its backward needs it anyway).
    model.train()
    gates.clear()
    model(_images(4)).sum().backward()
    for h in hooks:
        h.remove()
    assert len(gates) == len(model.interpolating_blocks())
    if gate == "elementwise":  # λ from the fused step, held until the next forward
        assert not any(ref.expired() for ref in gates)
    else:  # the pooled gate's mean is taken at once; its d goes with the graph
        assert all(ref.expired() for ref in gates)


def test_pooled_gate_is_per_sample_and_channel():
    model = odenets.create_model("in_resnet_gating_sig20", gate="pooled").eval()
    shapes = []
    model.blocks[1].junction.proj.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    model(_images(3))
    assert shapes == [(3, 16, 1, 1)]
    assert model.coefficients().min() > 0.19 and model.coefficients().max() < 0.26


def test_param_groups_exempt_exactly_the_coefficients():
    for name in ("in_resnet20", "in_resnet_gating20"):
        model = odenets.create_model(name)
        decayed, exempt = model.param_groups(1e-4, coefficient_weight_decay=0.0)
        assert exempt["weight_decay"] == 0.0 and decayed["weight_decay"] == 1e-4
        coeff_ids = {id(p) for p in model.coefficient_parameters()}
        assert {id(p) for p in exempt["params"]} == coeff_ids
        all_ids = {id(p) for p in model.parameters()}
        assert {id(p) for p in decayed["params"]} == all_ids - coeff_ids
    (group,) = odenets.create_model("in_resnet20").param_groups(1e-4)
    assert len(group["params"]) == len(list(odenets.create_model("in_resnet20").parameters()))


@pytest.mark.parametrize(
    ("family", "direction"), [("in_resnet", +1), ("lambda_in_resnet", -1), ("etd_resnet", -1)]
)
def test_weight_decay_moves_raw_coefficients_as_the_authors(family, direction):
    # In-ResNet decays k = 1 - λ toward 0 (λ toward 1); λ-In-ResNet decays λ toward 0.
    for exempt, moves in ((None, True), (0.0, False)):
        model = odenets.create_model(f"{family}20")
        before = model.coefficients()
        groups = model.param_groups(0.1, coefficient_weight_decay=exempt)
        opt = torch.optim.SGD(groups, lr=0.5)
        (0.0 * model(_images())).sum().backward()  # zero loss gradient: only decay acts
        opt.step()
        change = model.coefficients() - before
        if moves:
            assert (direction * change > 0).all()
        else:
            assert torch.equal(change, torch.zeros_like(change))


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (torch.rand(2, 1, 32, 32), ValueError, "3 channels"),
        (torch.rand(3, 32, 32), ValueError, "dimensions"),
        (torch.rand(2, 3, 32, 32, 1), ValueError, "dimensions"),
        (torch.randint(0, 255, (2, 3, 32, 32)), TypeError, "floating-point"),
        (torch.full((2, 3, 32, 32), float("nan")), ValueError, "NaN"),
        ("not a tensor", TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_raises_clear_error(images, error, match):
    model = odenets.create_model("in_resnet20")
    with pytest.raises(error, match=match):
        model(images)


def test_normalisation_and_channels_are_configurable():
    model = odenets.create_model("in_resnet20", in_chans=1, mean=(0.5,), std=(0.25,)).eval()
    x = torch.rand(2, 1, 16, 16)
    assert model(x).shape == (2, 10)
    assert torch.equal(model(x), model.forward_normalized((x - 0.5) / 0.25))
    cifar = odenets.create_model("resnet20").eval()
    assert torch.allclose(cifar.normalize.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    assert torch.allclose(cifar.normalize.std.flatten(), torch.tensor([0.2023, 0.1994, 0.2010]))


def test_reference_initialisation():
    model = odenets.create_model("resnet110")
    conv = model.blocks[30].f.conv2  # 3x3, 32 -> 32: std sqrt(2 / (9 * 32))
    assert abs(conv.weight.std().item() - (2 / (9 * 32)) ** 0.5) < 0.01
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bns)
    assert model.stem.bias is None and model.stem.kernel_size == (3, 3)


def test_bottleneck_projections():
    model = odenets.create_model("resnet164")
    shortcuts = [(i, b.shortcut) for i, b in enumerate(model.blocks) if b.shortcut is not None]
    assert [i for i, _ in shortcuts] == [0, 18, 36]
    assert [tuple(s.conv.weight.shape) for _, s in shortcuts] == [
        (64, 16, 1, 1),
        (128, 64, 1, 1),
        (256, 128, 1, 1),
    ]
    assert [s.conv.stride for _, s in shortcuts] == [(1, 1), (2, 2), (2, 2)]
    assert model.fc.in_features == 256


# --- the input range: models normalise inside, so they take pixels in [0, 1] ---------------

# One network of every family: the ResNet / In-ResNet junctions and the NAIS-Net family.
FAMILIES = [
    "resnet20",
    "in_resnet20",
    "lambda_in_resnet20",
    "in_resnet_sig20",
    "in_resnet_gating20",
    "etd_resnet20",
    "naisnet1",
    "naisnet10",
    "resnet_sh10",
]


def _normalised(x: torch.Tensor) -> torch.Tensor:
    """What torchvision's Normalize with the CIFAR constants makes of pixels in [0, 1]."""
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", FAMILIES)
def test_normalised_input_is_refused_naming_its_range(name, train):
    model = odenets.create_model(name).train(train)
    x = _normalised(_images())
    low, high = float(x.min()), float(x.max())
    with pytest.raises(ValueError, match=r"images must be pixels in \[0, 1\]") as err:
        model(x)
    message = str(err.value)
    assert f"got values in [{low:.4g}, {high:.4g}]" in message
    assert "Already normalised" in message and "normalise inside" in message
    # check_input=False: the caller vouches for its input, and the network runs on it as is.
    with torch.no_grad():
        out = model(x, check_input=False)
        torch.testing.assert_close(out, model.forward_normalized(model.normalize(x)))


@pytest.mark.parametrize("name", FAMILIES)
def test_input_in_the_unit_range_runs_and_the_check_changes_nothing(name):
    model = odenets.create_model(name).eval()
    x = _images(3)
    x[0], x[1] = 0.0, 1.0  # both ends of the range are valid pixels
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 10) and torch.isfinite(out).all()
        torch.testing.assert_close(out, model(x, check_input=False), rtol=0, atol=0)


def test_check_input_is_a_model_setting_and_a_per_call_override():
    x = _normalised(_images())
    model = odenets.create_model("in_resnet20", check_input=False).eval()
    assert model.check_input is False
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):
            model(x, check_input=True)
        model.check_input = True
        with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):
            model(x)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.full((2, 3, 8, 8), float("inf")), "NaN or infinite"),
        (torch.full((2, 3, 8, 8), 255.0), "Divide uint8 pixels by 255"),
        (torch.full((2, 3, 8, 8), -0.001), r"got values in \[-0.001, -0.001\]"),
    ],
)
def test_out_of_range_input_errors_say_what_is_wrong(images, match):
    model = odenets.create_model("resnet20")
    with pytest.raises(ValueError, match=match):
        model(images)


def test_the_asynchronous_range_assert_refuses_the_same_inputs():
    # The form CUDA steps and compiled graphs use; on CPU the assert fires at once.
    from odenets.models.base import check_pixel_range

    check_pixel_range(_images(), sync=False)
    check_pixel_range(torch.zeros(0, 3, 4, 4), sync=False)
    for bad in (_normalised(_images()), torch.full((1, 3, 2, 2), float("nan"))):
        with pytest.raises(RuntimeError, match=r"images must be pixels in \[0, 1\]"):
            check_pixel_range(bad, sync=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_step_checks_without_a_host_sync():
    model = odenets.create_model("in_resnet20").cuda().train()
    x = _images(4).cuda()
    with pytest.raises(ValueError, match=r"got values in \["):
        model(_normalised(x.cpu()).cuda())  # the first call reads the range on the host
    model(x).sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync from here on raises
    try:
        model(x).sum().backward()  # checked by the asynchronous device assert
        model(x, check_input=False).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("name", ["in_resnet_gating20", "in_resnet_gating_sig20"])
def test_gating_fuses_its_convolution_only_in_a_training_step(name, monkeypatch):
    # The fused step computes dL/dW and dL/db whenever they require gradients; an attack on
    # an evaluated model wants dL/dx only, which autograd gives without them through the
    # convolution as a module. Both give the same dL/dx.
    import odenets.models.layers as layers

    torch.manual_seed(0)
    model = odenets.create_model(name).double()
    with torch.no_grad():
        for block in model.interpolating_blocks():
            block.junction.proj.weight.normal_(0, 0.1)
    calls = []
    fused = layers.gated_conv_sum
    monkeypatch.setattr(layers, "gated_conv_sum", lambda *a, **k: calls.append(1) or fused(*a, **k))
    x = _images().double().requires_grad_()
    model.eval()
    (attack,) = torch.autograd.grad(model(x).square().sum(), x)
    assert calls == []
    # The junctions in training mode (BatchNorm left in evaluation mode, so that the same
    # function of x is computed): a forward without gradients does not fuse, a training
    # step does.
    for block in model.interpolating_blocks():
        block.junction.train()
    with torch.no_grad():
        model(x)
    assert calls == []
    (trained,) = torch.autograd.grad(model(x).square().sum(), x)
    assert len(calls) == len(model.interpolating_blocks())
    torch.testing.assert_close(trained, attack, rtol=1e-10, atol=1e-12)
