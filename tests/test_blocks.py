"""The public building blocks in custom networks: `odenets.InResNetBlock` with every junction
by name, `odenets.NaisBlock` / `NaisConvBlock`, and the coefficients, stability projection
and depth statistics of any `nn.Module` that contains them; the README's example runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import odenets
from odenets.analysis import depth_summary, measure_depth, model_coefficients
from odenets.models.layers import JUNCTIONS, coefficient_parameters, coefficients
from odenets.models.nais_blocks import nais_blocks
from odenets.models.unrolled import depth_stats
from odenets.stability import project_

REPO = Path(__file__).resolve().parents[1]
SCALAR = ("in_resnet", "lambda_in_resnet", "in_resnet_sig", "etd_resnet")


def _x(c: int = 8, size: int = 6, n: int = 2) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(0))


def test_the_blocks_are_public_names_of_the_package():
    from odenets.models.nais_blocks import NaisBlock, NaisConvBlock
    from odenets.models.resnet import InResNetBlock

    assert odenets.InResNetBlock is InResNetBlock
    assert (odenets.NaisBlock, odenets.NaisConvBlock) == (NaisBlock, NaisConvBlock)
    assert {"InResNetBlock", "NaisBlock", "NaisConvBlock"} <= set(odenets.__all__)


@pytest.mark.parametrize("variant", sorted(JUNCTIONS))
def test_every_junction_by_name_with_the_paper_initial_range(variant):
    block = odenets.InResNetBlock(8, variant=variant).eval()
    assert block.variant == variant and block.junction.name == variant
    with torch.no_grad():
        assert block(_x()).shape == (2, 8, 6, 6)
    lam = coefficients(block)
    if variant == "resnet":
        assert lam.numel() == 0 and coefficient_parameters(block) == []
    else:
        # U(0.20, 0.25) in λ units, the authors' range (the gate's mean at W = 0 for gating).
        assert lam.shape == (1,) and 0.2 <= float(lam[0]) <= 0.25


@pytest.mark.parametrize("variant", SCALAR)
def test_block_equals_the_networks_block_of_the_same_junction(variant):
    # Same layout and keys as an identity-shortcut block of the registered network: loading
    # the network's weights gives the network's block output exactly.
    network = odenets.create_model(f"{variant}20").eval()
    inside = network.blocks[4]  # stage 2, 32 channels, identity shortcut, interpolating
    block = odenets.InResNetBlock(32, variant=variant).eval()
    block.load_state_dict(inside.state_dict())
    x = _x(32, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), inside(x), rtol=0, atol=0)


def test_in_resnet_block_formula_and_lambda_init():
    block = odenets.InResNetBlock(8, lambda_init=(0.6, 0.6)).eval()
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(block(x), 0.4 * x + block.f(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(coefficients(block), torch.tensor([0.6]))


def test_authors_initialisation_of_the_residual_function():
    torch.manual_seed(0)
    block = odenets.InResNetBlock(32)
    # conv weights N(0, sqrt(2 / (k·k·out_channels))), BN weight 1 and bias 0.
    assert abs(float(block.f.conv2.weight.detach().std()) - (2 / (9 * 32)) ** 0.5) < 0.005
    assert torch.equal(block.f.bn1.weight, torch.ones(32))
    assert torch.equal(block.f.bn1.bias, torch.zeros(32))


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"stride": 2}, (2, 8, 3, 3)),
        ({"stride": 2, "out_channels": 16}, (2, 16, 3, 3)),
        ({"out_channels": 32, "residual": "bottleneck"}, (2, 32, 6, 6)),
    ],
)
def test_stride_and_channel_changes_use_a_projection_shortcut(kwargs, shape):
    block = odenets.InResNetBlock(8, **kwargs).eval()
    assert block.shortcut is not None
    x = _x()
    with torch.no_grad():
        lam = block.junction.coefficient()
        expected = (1 - lam) * block.shortcut(x) + block.f(x)
        torch.testing.assert_close(block(x), expected, rtol=1e-6, atol=1e-6)
    assert block(x).shape == shape


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variant": "inresnet"}, "did you mean 'in_resnet'"),
        ({"variant": "resnet", "lambda_init": (0.1, 0.2)}, "lambda_init does not apply"),
        ({"variant": "in_resnet", "gate": "pooled"}, "gate does not apply"),
        ({"stride": 3}, "stride must be 1 or 2"),
        ({"residual": "wide"}, "residual must be one of"),
        ({"residual": "bottleneck"}, "divisible by 4"),
        ({"variant": "in_resnet_sig", "lambda_init": (0.0, 0.5)}, "open interval"),
    ],
)
def test_bad_block_options_name_what_is_accepted(kwargs, match):
    with pytest.raises(ValueError, match=match):
        odenets.InResNetBlock(6, **kwargs)


def test_unknown_variant_lists_every_accepted_name():
    with pytest.raises(ValueError, match="unknown variant 'highway'") as err:
        odenets.InResNetBlock(8, variant="highway")
    assert all(name in str(err.value) for name in JUNCTIONS)


def test_nais_blocks_keep_the_paper_defaults():
    conv, fc = odenets.NaisConvBlock(4), odenets.NaisBlock(5)
    for block in (conv, fc):
        assert (block.steps, block.h, block.x0, block.tied, block.stable) == (
            10,
            1.0,
            "zeros",
            True,
            True,
        )
    assert (conv.act, conv.kernel_size, conv.eps, conv.eta) == ("relu", 3, 0.01, 0.05)
    assert (fc.act, fc.eps, fc.in_features) == ("tanh", 0.01, 5)


class _Custom(nn.Module):
    """A network odenets does not know: stem, In-ResNet blocks, a NAIS block, a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(
            odenets.InResNetBlock(8, lambda_init=(0.3, 0.3)),
            odenets.InResNetBlock(8, variant="resnet"),
            nn.Sequential(odenets.InResNetBlock(8, variant="etd_resnet")),  # nested
            odenets.NaisConvBlock(8, steps=4, act="tanh"),
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean(dim=(2, 3)))


def test_coefficients_of_any_module_in_module_order():
    torch.manual_seed(0)
    net = _Custom()
    lam = coefficients(net)
    etd = net.body[2][0].junction
    expected = torch.stack([net.body[0].junction.coefficient(), etd.k.detach()[0]])
    torch.testing.assert_close(lam, expected)  # the plain block has none; ETD: λ = ReLU(k) = k
    assert coefficient_parameters(net) == [net.body[0].junction.k, etd.k]
    out = model_coefficients(net)
    np.testing.assert_allclose(out["lambda"], lam.double().numpy())
    np.testing.assert_allclose(out["raw"], [0.7, float(etd.k.detach())])


def test_projection_of_any_module_restores_the_stability_condition():
    torch.manual_seed(0)
    net = _Custom()
    block = net.body[3]
    with torch.no_grad():
        block.a_weight.mul_(20.0)  # far outside the Gershgorin region
        block.delta.fill_(5.0)
    project_(net)
    c = torch.arange(block.channels)
    kernel = block.a_weight[0]
    centre = kernel[c, c, 1, 1]
    off = kernel.abs().sum(dim=(1, 2, 3)) - centre.abs()
    delta = block.delta[0]
    assert torch.allclose(delta, torch.full_like(delta, 1 - block.eta))
    torch.testing.assert_close(centre, -1 + delta)
    assert (off <= 1 - block.eps - delta.abs() + 1e-6).all()


def test_depth_statistics_of_any_module():
    torch.manual_seed(0)
    net = _Custom().eval()
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert nais_blocks(net) == [net.body[3]]
    with torch.no_grad():
        net(images)
    assert depth_stats(net) == {"mean": 4.0, "max": 4.0}  # fixed unroll: K = 4 steps each
    steps = measure_depth(net, images, tol=1e-1, max_steps=30)
    assert steps.shape == (6, 1) and ((steps >= 1) & (steps <= 30)).all()
    assert net.body[3].tol is None  # the fixed unroll is back after measuring
    summary = depth_summary(steps, torch.zeros(6, dtype=torch.long))
    assert summary["counts"].sum() == 6 and summary["depth"].tolist() == steps[:, 0].tolist()


def test_registered_networks_report_through_the_same_walk():
    model = odenets.create_model("lambda_in_resnet20")
    assert torch.equal(model.coefficients(), coefficients(model))
    assert model.coefficient_parameters() == coefficient_parameters(model)
    nais = odenets.create_model("naisnet1").eval()
    assert nais.nais_blocks() == nais_blocks(nais) and len(nais.nais_blocks()) == 9
    with torch.no_grad():
        nais(torch.rand(2, 3, 16, 16))
    assert nais.depth_stats() == {"mean": 9.0, "max": 9.0}  # 9 blocks of one step


def _readme_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- example: custom-blocks .*?-->\n```python\n(.*?)```", readme, re.S)
    assert match, "README.md lost its custom-blocks example"
    return match.group(1)


def test_readme_custom_network_example_runs(capsys):
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(_readme_example(), "README.md:custom-blocks", "exec"), namespace)
    net, steps, lambdas = namespace["net"], namespace["steps"], namespace["lambdas"]
    # Two interpolating blocks (the projection block is plain), λ moved by one SGD step but
    # still near the authors' initial range; one NAIS block, a depth per image.
    assert lambdas.shape == (2,) and np.all((lambdas > 0.1) & (lambdas < 0.35))
    assert steps.shape == (8, 1) and ((steps >= 1) & (steps <= 20)).all()
    block = nais_blocks(net)[0]
    c = torch.arange(block.channels)
    off = block.a_weight[0].abs().sum(dim=(1, 2, 3)) - block.a_weight[0][c, c, 1, 1].abs()
    assert (off <= 1 - block.eps - block.delta[0].abs() + 1e-6).all()  # projected
    assert "λ = [" in capsys.readouterr().out
