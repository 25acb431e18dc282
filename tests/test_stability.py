"""NAIS-Net stability: the projections keep the stage Jacobian's spectral radius below one
(checked by autograd), tanh blocks reach the analytic equilibrium, the poster's 1-D
example, power iteration against exact eigenvalues, and the input-output gain."""

from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

import odenets
from odenets import stability
from odenets.models.nais_blocks import NaisBlock, NaisConvBlock

HS = (0.1, 0.5, 1.0)
DRAWS = 12


def _randn(shape, gen, scale=1.0):
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def autograd_radius(block, x, u, k=0):
    """Per-sample ρ(∂x(k+1)/∂x(k)) from the autograd Jacobian of `block.step`."""
    bu = block.input_term(u)[block.weight_index(k)].detach()
    n, size = x.shape[0], x[0].numel()
    jac = torch.autograd.functional.jacobian(lambda t: block.step(t, bu, k), x)
    jac = jac.reshape(n, size, n, size)
    blocks = jac[torch.arange(n), :, torch.arange(n), :]  # (N, size, size) diagonal blocks
    off_diagonal = jac.sum() - blocks.sum()
    assert abs(off_diagonal) < 1e-12  # samples do not interact
    return torch.linalg.eigvals(blocks).abs().amax(dim=-1)


def conv_draw(seed: int, h: float):
    """A 2-4 channel conv block on 5x5 images with A scaled far outside the bound, δ
    outside its range, and a random (x, u) where tanh is not saturated."""
    gen = torch.Generator().manual_seed(seed)
    c = 2 + seed % 3
    block = NaisConvBlock(c, steps=1, h=h, act="tanh").double()
    with torch.no_grad():
        block.a_weight.copy_(_randn(block.a_weight.shape, gen, 3.0))
        block.delta.copy_(_randn(block.delta.shape, gen, 3.0))
        block.b_weight.copy_(_randn(block.b_weight.shape, gen, 0.1))
        block.bias.copy_(_randn(block.bias.shape, gen, 0.1))
    return block, _randn((3, c, 5, 5), gen, 0.01), _randn((3, c, 5, 5), gen)


def fc_draw(seed: int, h: float):
    """An 8-16 unit FC block with R scaled so that ‖RᵀR‖_F ≫ δ, and a random (x, u)."""
    gen = torch.Generator().manual_seed(seed)
    n, m = 8 + seed % 9, 5
    block = NaisBlock(n, m, steps=1, h=h, act="tanh").double()
    with torch.no_grad():
        block.r.copy_(_randn(block.r.shape, gen, 2.0))
        block.b_weight.copy_(_randn(block.b_weight.shape, gen, 0.1))
        block.bias.copy_(_randn(block.bias.shape, gen, 0.1))
    return block, _randn((4, n), gen, 0.001), _randn((4, m), gen)


@pytest.mark.parametrize("draw", [conv_draw, fc_draw], ids=["conv", "fc"])
@pytest.mark.parametrize("h", HS)
def test_projection_makes_stage_jacobian_contractive(draw, h):
    for seed in range(DRAWS):
        block, x, u = draw(seed, h)
        before = autograd_radius(block, x, u)
        assert (before > 1.0).all(), f"draw {seed} is not unstable before projection: {before}"
        block.project_()
        after = autograd_radius(block, x, u)
        assert (after < 1.0).all(), f"draw {seed}: radius {after} after projection"
        # The library's explicit Jacobian agrees with autograd.
        ours = stability.state_jacobian_spectral_radius(block, x, u, method="exact")
        torch.testing.assert_close(ours, after, rtol=1e-9, atol=1e-12)


def _stable_fc_block(seed: int, h: float) -> tuple[NaisBlock, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    block = NaisBlock(12, 5, steps=1, h=h, act="tanh", eps=0.1).double()
    with torch.no_grad():
        block.r.copy_(_randn(block.r.shape, gen))
        block.b_weight.copy_(_randn(block.b_weight.shape, gen, 0.5))
        block.bias.copy_(_randn(block.bias.shape, gen, 0.5))
    block.project_()
    return block, _randn((3, 5), gen)


@pytest.mark.parametrize("h", (0.5, 1.0))
def test_tanh_block_converges_to_analytic_equilibrium_from_any_start(h):
    block, u = _stable_fc_block(1, h)
    a = block.state_matrix().detach()
    bu = block.input_term(u)[0].detach()
    x_bar = -torch.linalg.solve(a, bu.T).T  # x̄ = -A⁻¹(Bu + b), (3, 12)
    gen = torch.Generator().manual_seed(2)
    finals = []
    for x0 in (torch.zeros_like(x_bar), _randn(x_bar.shape, gen), _randn(x_bar.shape, gen, 30)):
        x = x0
        with torch.no_grad():
            for _ in range(3000):
                x = block.step(x, bu)
        torch.testing.assert_close(x, x_bar, rtol=0, atol=1e-4)
        finals.append(x)
    torch.testing.assert_close(finals[1], finals[0], rtol=0, atol=1e-8)
    torch.testing.assert_close(finals[2], finals[0], rtol=0, atol=1e-8)
    # The block's own forward (x(0) = 0, K steps) lands on the same point.
    block.steps = 3000
    torch.testing.assert_close(block(u).detach(), x_bar, rtol=0, atol=1e-4)


def test_fc_projection_idempotent_and_leaves_stable_weights_unchanged():
    gen = torch.Generator().manual_seed(0)
    r = _randn((3, 6, 10), gen, 2.0)  # three steps' R, all far outside
    stability.project_fc_(r, 0.05)
    fro = torch.linalg.matrix_norm(r.mT @ r)
    torch.testing.assert_close(fro, torch.full((3,), 0.9, dtype=torch.float64))
    once = r.clone()
    stability.project_fc_(r, 0.05)
    torch.testing.assert_close(r, once, rtol=1e-12, atol=0)
    inside = _randn((2, 6, 10), gen, 0.05)
    assert (torch.linalg.matrix_norm(inside.mT @ inside) < 0.9).all()
    kept = inside.clone()
    stability.project_fc_(inside, 0.05)
    assert torch.equal(inside, kept)


def _reference_conv_projection(weight, delta, eps, eta):
    """SPEC §5 written out channel by channel (the test's independent reference)."""
    weight, delta = weight.clone(), delta.clone()
    k = weight.shape[-1]
    for s in range(weight.shape[0]):
        for c in range(weight.shape[1]):
            d = min(max(float(delta[s, c]), -1 + eta), 1 - eta)
            delta[s, c] = d
            taps = weight[s, c].clone()
            taps[c, k // 2, k // 2] = 0.0
            total, cap = float(taps.abs().sum()), 1 - eps - abs(d)
            if total > cap:
                taps = taps * (cap / total)
            taps[c, k // 2, k // 2] = -1 + d
            weight[s, c] = taps
    return weight, delta


def test_conv_projection_matches_the_per_channel_algorithm_on_many_channels():
    gen = torch.Generator().manual_seed(0)
    s, c, k = 3, 64, 3
    weight = _randn((s, c, c, k, k), gen, 0.01)
    weight[:, ::2] *= 100.0  # half of the channels violate the Gershgorin bound
    delta = _randn((s, c), gen, 1.0)  # some δ outside [-1 + η, 1 - η]
    want_w, want_d = _reference_conv_projection(weight, delta, 0.01, 0.05)
    stability.project_conv_(weight, delta, eps=0.01, eta=0.05)
    torch.testing.assert_close(weight, want_w, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(delta, want_d)
    # Idempotent, and a projected (stable) kernel is left exactly as it is.
    once_w, once_d = weight.clone(), delta.clone()
    stability.project_conv_(weight, delta, eps=0.01, eta=0.05)
    torch.testing.assert_close(weight, once_w, rtol=1e-12, atol=1e-15)
    assert torch.equal(delta, once_d)
    inside = _randn((1, 4, 4, 3, 3), gen, 0.01)
    d_inside = torch.tensor([[0.2, -0.3, 0.0, 0.5]], dtype=torch.float64)
    inside[0, torch.arange(4), torch.arange(4), 1, 1] = -1 + d_inside[0]
    kept = inside.clone()
    stability.project_conv_(inside, d_inside, eps=0.01, eta=0.05)
    assert torch.equal(inside, kept)


class _CountOps(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("block_cls", [NaisConvBlock, NaisBlock])
def test_projection_work_does_not_grow_with_channels(block_cls):
    # A loop over channels would issue more torch calls for more channels.
    counts = []
    for width in (4, 128):
        block = block_cls(width, steps=3, tied=False)
        with torch.no_grad():
            for p in block.parameters():
                p.mul_(10.0)
        with _CountOps() as mode:
            block.project_()
        counts.append(mode.calls)
    assert counts[0] == counts[1] > 0


def _scalar_block(stable: bool, a: float) -> NaisBlock:
    block = NaisBlock(1, 1, steps=60, h=1.0, act="tanh", stable=stable).double()
    with torch.no_grad():
        if stable:
            block.r.fill_(math.sqrt(-a - block.eps))  # A = -r² - ε = a
        else:
            block.a.fill_(a)
        block.b_weight.fill_(1.0)
        block.bias.zero_()
    return block


def _trajectory(block: NaisBlock, u: torch.Tensor, steps: int) -> torch.Tensor:
    bu, x, xs = block.input_term(u)[0], torch.zeros_like(u), []
    with torch.no_grad():
        for _ in range(steps):
            x = block.step(x, bu)
            xs.append(x)
    return torch.cat(xs, dim=1)  # (U, steps)


def test_poster_one_d_example_oscillates_and_projection_fixes_it():
    u = torch.tensor([[-2.0], [-0.5], [0.3], [1.0], [2.0]], dtype=torch.float64)
    for unstable in (_scalar_block(False, -10.0), _scalar_block(True, -10.0)):
        assert float(unstable.state_matrix().detach()) == pytest.approx(-10.0)
        moves = _trajectory(unstable, u, 60).diff(dim=1).abs()[:, -10:]
        assert (moves > 0.05).all()  # still jumping around after 60 steps (h|A| > 2)
    projected = _scalar_block(True, -10.0)
    projected.project_()
    a = float(projected.state_matrix().detach())
    assert a == pytest.approx(-1.0 + projected.eps)  # -(1 - 2ε) - ε
    traj = _trajectory(projected, u, 60)
    torch.testing.assert_close(traj[:, -1:], -u / a, rtol=0, atol=1e-8)  # x̄ = -A⁻¹ B u


@pytest.mark.parametrize("draw", [conv_draw, fc_draw], ids=["conv", "fc"])
@pytest.mark.parametrize("project", [False, True], ids=["raw", "projected"])
def test_power_iteration_agrees_with_exact_eigenvalues(draw, project):
    block, x, u = draw(3, 0.5)
    if project:
        block.project_()
    exact = stability.state_jacobian_spectral_radius(block, x, u, method="exact")
    power = stability.state_jacobian_spectral_radius(block, x, u, method="power", iters=1500)
    torch.testing.assert_close(power, exact, rtol=5e-3, atol=0)


def _dense_input_operator(block: NaisConvBlock, shape) -> torch.Tensor:
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).view(n, *shape)
    return block.input_map(basis).detach().reshape(n, -1).T  # column j = B e_j


def test_input_output_gain_bound():
    fc, _, u = fc_draw(0, 0.5)
    norm_b = float(torch.linalg.matrix_norm(fc.input_matrix().detach(), ord=2))
    gain = stability.input_output_gain_bound(fc, rho_bar=0.8)
    assert gain == pytest.approx(0.5 * norm_b / 0.2, rel=1e-12)
    conv, x, u = conv_draw(1, 1.0)
    dense = _dense_input_operator(conv, tuple(u.shape[1:]))
    want = float(torch.linalg.matrix_norm(dense, ord=2))
    got = stability.input_operator_norm(conv, input_shape=tuple(u.shape[1:]), iters=300)
    assert got == pytest.approx(want, rel=1e-5)
    assert got <= want * (1 + 1e-12)  # power iteration on BᵀB approaches from below
    conv.project_()
    rho = float(stability.state_jacobian_spectral_radius(conv, x, u).max())
    estimated = stability.input_output_gain_bound(conv, x=x, u=u)
    assert estimated == pytest.approx(1.0 * got / (1.0 - rho), rel=1e-9)
    with pytest.raises(ValueError, match="rho_bar"):
        stability.input_output_gain_bound(fc, rho_bar=1.0)


def test_project_walks_a_whole_model_and_stable_false_is_left_free():
    model = odenets.create_model("nais_mlp", in_features=3, hidden=8, blocks=3)
    free = odenets.create_model("nais_mlp", in_features=3, hidden=8, blocks=3, stable=False)
    with torch.no_grad():
        for p in [*model.parameters(), *free.parameters()]:
            p.mul_(20.0)
    before = [p.clone() for p in free.parameters()]
    assert stability.project_(model) is model
    stability.project_(free)
    for block in model.nais_blocks():
        fro = torch.linalg.matrix_norm(block.r.mT @ block.r)
        assert (fro <= (1 - 2 * block.eps) * (1 + 1e-6)).all()
    assert all(torch.equal(a, b) for a, b in zip(before, free.parameters(), strict=True))


def test_one_spectral_radius_routine():
    # The stage Jacobian's power method and the analysis figures share stability's routine.
    import odenets.analysis

    assert odenets.analysis.spectral_radius is stability.spectral_radius
    # Known answer: a diagonal map's radius is its largest |entry|, per sample.
    scale = torch.tensor([[0.3, -0.8, 0.5], [2.0, 0.1, -1.5]], dtype=torch.float64)
    v0 = _randn((2, 3), torch.Generator().manual_seed(0))
    rho = stability.spectral_radius(lambda v: scale * v, v0, iters=400)
    torch.testing.assert_close(
        rho, torch.tensor([0.8, 2.0], dtype=torch.float64), rtol=1e-3, atol=0
    )
    with pytest.raises(ValueError, match="iters must be >= 2; got 1"):
        stability.spectral_radius(lambda v: v, v0, iters=1)
    # The "power" method is that routine on the block's Jacobian-vector product.
    block, x, u = conv_draw(0, 0.5)
    bu = block.input_term(u)[0].detach()
    gen = torch.Generator().manual_seed(7)
    start = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    direct = stability.spectral_radius(lambda v: block.state_jvp(x, bu, v, 0), start, iters=50)
    power = stability.state_jacobian_spectral_radius(block, x, u, method="power", iters=50, seed=7)
    torch.testing.assert_close(power, direct, rtol=0, atol=0)
