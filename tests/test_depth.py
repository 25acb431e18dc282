"""Adaptive (pattern-dependent) depth: per-sample step counts are exact, respect
`max_steps`, differ across inputs, and `measure_depth` reports them per NAIS block."""

from __future__ import annotations

import pytest
import torch

import odenets
from odenets.analysis.depth import adaptive_depth, measure_depth
from odenets.models.nais_blocks import NaisBlock, NaisConvBlock


def _fixed_unroll(block, u: torch.Tensor, steps: int) -> torch.Tensor:
    """The block's state after exactly `steps` updates (no adaptivity)."""
    bu = block.input_term(u)
    x = block.initial_state(u, bu)
    for k in range(steps):
        x = block.step(x, bu[block.weight_index(k)], k)
    return x


def _inputs(n: int, shape, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 1, n).view(n, *[1] * len(shape))  # very different inputs
    return torch.randn(n, *shape, generator=gen) * scales


@pytest.mark.parametrize(
    "make_block,shape",
    [
        (lambda: NaisBlock(10, 4, h=1.0, act="tanh", eps=0.1), (4,)),
        (lambda: NaisConvBlock(3, h=0.5, act="tanh", x0="input"), (3, 5, 5)),
        (lambda: NaisConvBlock(3, h=1.0, act="relu", tied=False, steps=40), (3, 5, 5)),
    ],
    ids=["fc-tanh", "conv-tanh-x0-input", "conv-relu-untied"],
)
def test_adaptive_unroll_matches_fixed_unroll_per_sample(make_block, shape):
    block = make_block().double()
    u = _inputs(12, shape, seed=0).double()
    block.set_adaptive(1e-2, 40)
    with torch.no_grad():
        out = block(u)
    depth = block.last_steps
    assert depth.dtype == torch.long and depth.shape == (12,)
    assert ((depth >= 1) & (depth <= 40)).all()
    assert len(depth.unique()) >= 3, depth  # pattern-dependent
    with torch.no_grad():
        for i in range(12):
            want = _fixed_unroll(block, u[i : i + 1], int(depth[i]))
            torch.testing.assert_close(out[i : i + 1], want, rtol=1e-12, atol=1e-12)
            if depth[i] < 40:  # stopped early: the last update was below the tolerance
                before = _fixed_unroll(block, u[i : i + 1], int(depth[i]) - 1)
                change = (want - before).norm() / (before.norm() + 1e-12)
                assert change < 1e-2


def test_max_steps_caps_every_sample():
    block = NaisBlock(10, 4, act="tanh", steps=3, tol=1e-12, max_steps=7)
    block(_inputs(5, (4,), seed=1))
    assert block.last_steps.tolist() == [7] * 5
    block.set_adaptive(None)
    block(_inputs(5, (4,), seed=1))
    assert block.last_steps.tolist() == [3] * 5


def test_adaptive_unrolling_keeps_gradients():
    block = NaisBlock(6, 3, act="tanh", tol=1e-2, max_steps=30)
    block(_inputs(4, (3,), seed=2)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


def test_measure_depth_on_a_network():
    model = odenets.create_model("naisnet10", widths=(4, 8, 8), act="tanh", num_classes=3)
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    images[:3] *= 0.05  # darker images
    depth = measure_depth(model, images, tol=1e-2, max_steps=25)
    assert depth.dtype == torch.long and depth.shape == (6, 9)
    assert ((depth >= 1) & (depth <= 25)).all()
    assert len(depth.sum(dim=1).unique()) > 1
    # Settings and mode are restored; the batch size does not change the answer.
    assert model.training and all(b.tol is None for b in model.nais_blocks())
    assert torch.equal(measure_depth(model, images, tol=1e-2, max_steps=25, batch_size=4), depth)
    # depth_stats of the last forward: per-image total steps.
    with adaptive_depth(model, tol=1e-2, max_steps=25), torch.no_grad():
        model.eval()(images)
    totals = depth.sum(dim=1).double()
    assert model.depth_stats() == {"mean": float(totals.mean()), "max": float(totals.max())}


def test_measure_depth_needs_nais_blocks():
    with pytest.raises(ValueError, match="no NAIS blocks"):
        measure_depth(
            odenets.create_model("resnet_sh10"), torch.rand(1, 3, 32, 32), tol=1e-3, max_steps=2
        )
