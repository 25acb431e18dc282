"""NAIS-Net blocks and networks: the update equation, B u + b computed once, the ResNet
special case, argument checks, registry overrides and the CIFAR layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import odenets
from odenets.models.nais_blocks import NaisBlock, NaisConvBlock, SharedResidualBlock

ACT = {"tanh": torch.tanh, "relu": torch.relu}


def _effective_kernel(block: NaisConvBlock, k: int) -> torch.Tensor:
    i = 0 if block.tied else k
    kernel = block.a_weight[i].detach().clone()
    if block.stable:
        c = torch.arange(block.channels)
        kernel[c, c, 1, 1] = -1.0 + block.delta[i].detach().clamp(-1 + block.eta, 1 - block.eta)
    return kernel


def _reference_conv(block: NaisConvBlock, u: torch.Tensor) -> torch.Tensor:
    """x(k+1) = x(k) + h σ(A x(k) + B u + b), written out step by step."""
    x = u.clone() if block.x0 == "input" else torch.zeros(u.shape[0], block.channels, *u.shape[2:])
    for k in range(block.steps):
        i = 0 if block.tied else k
        bu = F.conv2d(u, block.b_weight[i].detach(), block.bias[i].detach(), padding=1)
        x = x + block.h * ACT[block.act](F.conv2d(x, _effective_kernel(block, k), padding=1) + bu)
    return x


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize(
    "act,x0,stable", [("tanh", "zeros", True), ("relu", "input", True), ("tanh", "input", False)]
)
def test_conv_block_follows_the_update_equation(tied, act, x0, stable):
    block = NaisConvBlock(3, steps=4, h=0.7, act=act, x0=x0, tied=tied, stable=stable)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))  # leave the projected point: any weights work
    u = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(block(u), _reference_conv(block, u), rtol=1e-5, atol=1e-6)
    assert block.last_steps.tolist() == [4, 4]
    n_sets = 1 if tied else 4
    assert block.a_weight.shape == (n_sets, 3, 3, 3, 3) and block.b_weight.shape[0] == n_sets


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_fc_block_follows_the_update_equation(tied):
    block = NaisBlock(6, 4, steps=5, h=0.5, act="tanh", tied=tied)
    u = torch.randn(3, 4)
    x = torch.zeros(3, 6)
    for k in range(5):
        i = 0 if tied else k
        r = block.r[i].detach()
        a = -(r.T @ r) - block.eps * torch.eye(6)
        bu = u @ block.b_weight[i].detach().T + block.bias[i].detach()
        x = x + 0.5 * torch.tanh(x @ a.T + bu)
    torch.testing.assert_close(block(u), x, rtol=1e-5, atol=1e-6)


class _CountConv(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.conv2d:
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_input_term_is_computed_once_per_block(tied):
    block = NaisConvBlock(4, steps=6, tied=tied)
    with _CountConv() as mode:
        block(torch.rand(2, 4, 5, 5))
    assert mode.calls == 6 + 1  # one A x(k) per step, one B u + b for the whole block


def test_zero_input_matrix_from_the_input_is_the_shared_resnet_block():
    nais = NaisConvBlock(3, steps=5, h=0.5, act="relu", x0="input", stable=False)
    resnet = SharedResidualBlock(3, steps=5, h=0.5, act="relu")
    with torch.no_grad():
        nais.b_weight.zero_()
        resnet.a_weight.copy_(nais.a_weight)
        nais.bias.normal_()
        resnet.bias.copy_(nais.bias)
    u = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(nais(u), resnet(u), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"h": 0.0}, "h must be in"),
        ({"h": 1.5}, "h must be in"),
        ({"act": "sigmoid"}, "act must be one of"),
        ({"x0": "random"}, "x0 must be one of"),
        ({"steps": 0}, "steps"),
        ({"eps": 0.1, "eta": 0.05}, "eps < eta"),
        ({"tol": -1.0}, "tol must be > 0"),
        ({"tied": False, "steps": 3, "max_steps": 5}, "untied block"),
        ({"in_channels": 5, "x0": "input"}, "in_channels == channels"),
        ({"kernel_size": 2}, "odd"),
    ],
)
def test_conv_block_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NaisConvBlock(4, **kwargs)


def test_fc_block_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="eps must be in"):
        NaisBlock(4, eps=0.5)
    with pytest.raises(ValueError, match="rank"):
        NaisBlock(4, rank=5)
    with pytest.raises(ValueError, match=r"expected input \(N, 3\)"):
        NaisBlock(4, 3)(torch.rand(2, 4))


def test_stable_false_is_a_free_baseline():
    conv = NaisConvBlock(4, stable=False)
    fc = NaisBlock(4, stable=False)
    assert conv.delta is None and not hasattr(fc, "r")
    with torch.no_grad():
        conv.a_weight.mul_(50.0)
        fc.a.mul_(50.0)
    before = [p.clone() for p in [*conv.parameters(), *fc.parameters()]]
    conv.project_()
    fc.project_()
    after = [*conv.parameters(), *fc.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_create_model_overrides_reach_the_blocks():
    model = odenets.create_model(
        "naisnet10", act="tanh", h=0.5, steps=3, stable=False, x0="input", tied=False
    )
    block = model.blocks[4]
    assert (block.act, block.h, block.steps, block.stable, block.x0, block.tied) == (
        "tanh",
        0.5,
        3,
        False,
        "input",
        False,
    )
    assert block.a_weight.shape[0] == 3
    adaptive = odenets.create_model("naisnet10", tol=1e-3, max_steps=20)
    assert all(b.tol == 1e-3 and b.max_steps == 20 for b in adaptive.nais_blocks())
    mlp = odenets.create_model("nais_mlp", num_classes=3, in_features=5, hidden=7, blocks=4)
    assert len(mlp.blocks) == 4 and mlp.blocks[0].in_features == 5
    assert mlp(torch.rand(2, 5)).shape == (2, 3)
    with pytest.raises(ValueError, match="in_features == hidden"):
        odenets.create_model("nais_mlp", in_features=5, hidden=7, x0="input")
    with pytest.raises(ValueError, match=r"expected input \(N, 5\)"):
        mlp(torch.rand(2, 1, 5, 5))
    sh = odenets.create_model("resnet_sh10", act="tanh", h=0.3)
    assert sh.family == "resnet_sh" and sh.nais_blocks() == []
    assert sh.step_sizes().tolist() == pytest.approx([0.3] * 9)


@pytest.mark.parametrize("name,steps", [("naisnet1", 1), ("naisnet10", 10), ("resnet_sh10", 10)])
def test_cifar_layout(name, steps):
    model = odenets.create_model(name, num_classes=10).eval()
    assert [b.channels for b in model.blocks] == [16] * 3 + [32] * 3 + [64] * 3
    assert all(b.steps == steps for b in model.blocks)
    batchnorms_in_blocks = [
        m for b in model.blocks for m in b.modules() if isinstance(m, nn.BatchNorm2d)
    ]
    assert batchnorms_in_blocks == []
    assert [t[0].stride for t in model.transitions] == [(2, 2), (2, 2)]
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(images)
        assert model.forward_features(model.normalize(images)).shape == (2, 64)
        torch.testing.assert_close(logits, model.forward_normalized(model.normalize(images)))
    assert model.depth_stats() == {"mean": 9.0 * steps, "max": 9.0 * steps}
    assert model.depth == 9 * steps + 4


def test_training_step_then_projection_keeps_the_gershgorin_bound():
    model = odenets.create_model("naisnet10", steps=2, widths=(4, 8, 8), num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    loss = F.cross_entropy(model(torch.rand(4, 3, 8, 8)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    assert not all(_within_gershgorin(b) for b in model.nais_blocks())  # the step broke it
    model.project_()
    assert all(_within_gershgorin(b) for b in model.nais_blocks())


def _within_gershgorin(block: NaisConvBlock) -> bool:
    kernel = block.state_kernel().detach()  # (C, C, 3, 3)
    c = torch.arange(block.channels)
    delta = block.delta[0].detach()
    in_range = bool(((delta >= -1 + block.eta) & (delta <= 1 - block.eta)).all())
    centre_ok = torch.allclose(block.a_weight[0, c, c, 1, 1].detach(), -1 + delta)
    off = kernel.abs().sum(dim=(1, 2, 3)) - kernel[c, c, 1, 1].abs()
    return (
        in_range and centre_ok and bool((off <= (1 - block.eps - delta.abs()) * (1 + 1e-5)).all())
    )
