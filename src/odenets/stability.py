"""Stability of NAIS-Net blocks: projections, the stage-Jacobian spectral radius, and the
input-output gain bound (Ciccone et al., NeurIPS 2018).

A NAIS block iterates x(k+1) = x(k) + h σ(A x(k) + B u + b). Its stage Jacobian is

    J(x, u) = ∂x(k+1)/∂x(k) = I + h diag(σ'(A x + B u + b)) A,

and the block is asymptotically stable when ρ̄ = sup ρ(J) < 1 over the states where
σ' ≥ σ_min > 0. Two reprojections keep A inside that region after every optimiser step:

- Fully connected, A = -RᵀR - εI (0 < ε < 1/2, δ = 1 - 2ε): if ‖RᵀR‖_F > δ, then
  R ← sqrt(δ) R / sqrt(‖RᵀR‖_F). The eigenvalues of A are then in [-1 + ε, -ε], and
  J = I + h D A is similar to the symmetric I + h D^½ A D^½, whose eigenvalues lie in
  [1 - h(1 - ε), 1 - h σ_min ε] ⊂ (-1, 1) for 0 < h ≤ 1.
- Convolutional (Gershgorin): see `project_conv_`.

`project_(model)` applies every block's own `project_()`; the trainer calls it after each
optimiser step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "project_",
    "project_fc_",
    "project_conv_",
    "state_jacobian_spectral_radius",
    "spectral_radius",
    "input_output_gain_bound",
    "input_operator_norm",
]

# Above this many state entries per sample the exact eigenvalue route (a dense Jacobian of
# that size per sample) gives way to power iteration.
EXACT_MAX_STATE = 512


def project_(model: nn.Module) -> nn.Module:
    """Apply the stability projection of every block that has one, in place.

    Walks `model.modules()` (the model itself included, so a single block works too) and
    calls `project_()` on each module that defines it, skipping networks (modules with
    `nais_blocks`), whose own `project_()` only delegates to their blocks. Returns `model`.
    """
    for module in model.modules():
        if hasattr(module, "nais_blocks"):
            continue
        project = getattr(module, "project_", None)
        if callable(project):
            project()
    return model


@torch.no_grad()
def project_fc_(r: torch.Tensor, eps: float) -> torch.Tensor:
    """Frobenius reprojection of R for A = -RᵀR - εI, in place.

    Args:
        r: (..., ñ, n) factor(s) of the state matrix; leading dimensions (e.g. the steps of
            an untied block) are projected independently, without a Python loop.
        eps: ε in (0, 1/2); the bound is δ = 1 - 2ε.

    Returns:
        `r`, rescaled where ‖RᵀR‖_F > δ so that ‖RᵀR‖_F = δ afterwards.
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5) for A = -RᵀR - εI; got {eps}")
    bound = 1.0 - 2.0 * eps
    fro = torch.linalg.matrix_norm(r.mT @ r)  # (...,)
    scale = torch.where(fro > bound, torch.sqrt(bound / fro), torch.ones_like(fro))
    return r.mul_(scale[..., None, None])


def centre_mask(channels: int, kernel_size: int, *, device=None) -> torch.Tensor:
    """(C, C, k, k) float mask with 1 at the centre tap of every c→c kernel (the diagonal
    of the convolution's matrix), 0 elsewhere."""
    mask = torch.zeros(channels, channels, kernel_size, kernel_size, device=device)
    idx = torch.arange(channels, device=device)
    mask[idx, idx, kernel_size // 2, kernel_size // 2] = 1.0
    return mask


@torch.no_grad()
def project_conv_(
    weight: torch.Tensor, delta: torch.Tensor, *, eps: float, eta: float
) -> torch.Tensor:
    """Gershgorin reprojection of a state convolution kernel and its δ, in place.

    For every output channel c: δ_c ← clip(δ_c, -1 + η, 1 - η); the c→c centre tap is set
    to -1 + δ_c; if the absolute sum of all other taps of output channel c exceeds
    1 - ε - |δ_c| they are rescaled to sum to exactly that. All channels (and steps) at
    once; no Python loop.

    Why it is enough (zero padding, stride 1, odd kernel; h ∈ (0, 1]; σ' = d ∈ (0, 1]):
    row (c, p) of J = I + h D A has diagonal 1 - hd(1 - δ_c) and off-diagonal absolute sum
    hd·r with r ≤ 1 - ε - |δ_c| (padding only drops taps; no tap lands on the diagonal).
    Its Gershgorin disc lies strictly inside the unit circle: if the centre is ≥ 0,
    centre + radius ≤ 1 - hd(ε + |δ_c| - δ_c) ≤ 1 - hdε < 1; if it is < 0,
    |centre| + radius ≤ hd(2 - ε - δ_c - |δ_c|) - 1 ≤ 1 - ε < 1 because hd ≤ 1. So the
    paper's form needs no extra factor of h, as long as h ≤ 1 and σ' ≤ 1 (tanh, ReLU).
    The margin 1 - hdε shrinks as σ' → 0 (saturation): ρ̄ < 1 holds where σ' ≥ σ_min.

    Args:
        weight: (S, C, C, k, k) kernels (S = steps of an untied block, else 1).
        delta: (S, C) learnable δ.
        eps, eta: 0 < ε < η < 1, so that the cap 1 - ε - |δ_c| ≥ η - ε stays positive.
    """
    if not 0.0 < eps < eta < 1.0:
        raise ValueError(f"need 0 < eps < eta < 1; got eps={eps}, eta={eta}")
    if weight.dim() != 5 or weight.shape[1] != weight.shape[2]:
        raise ValueError(f"weight must be (S, C, C, k, k); got {tuple(weight.shape)}")
    channels, k = weight.shape[1], weight.shape[-1]
    delta.clamp_(-1.0 + eta, 1.0 - eta)
    mask = centre_mask(channels, k, device=weight.device).to(weight.dtype)
    off_sum = (weight * (1.0 - mask)).abs().sum(dim=(2, 3, 4))  # (S, C)
    cap = 1.0 - eps - delta.abs()
    scale = torch.where(off_sum > cap, cap / off_sum, torch.ones_like(off_sum))
    weight.mul_(scale[:, :, None, None, None])
    centre = (-1.0 + delta)[:, :, None, None, None]  # (S, C, 1, 1, 1), per output channel
    weight.mul_(1.0 - mask).add_(mask * centre)
    return weight


# --- the stage Jacobian -------------------------------------------------------------


def state_jacobian_spectral_radius(
    block: nn.Module,
    x: torch.Tensor,
    u: torch.Tensor,
    *,
    step: int = 0,
    method: str = "auto",
    iters: int = 300,
    seed: int = 0,
) -> torch.Tensor:
    """Spectral radius of J = ∂x(k+1)/∂x(k) = I + h diag(σ'(A x + B u + b)) A at (x, u),
    one value per sample.

    Samples do not interact, so J is block-diagonal over the batch and each sample has its
    own radius. J is formed from the block's own pieces (`state_operator`, `state_jvp`),
    which the tests check against autograd.

    Methods:
        "exact": the dense per-sample J and `torch.linalg.eigvals`.
        "power": Gelfand's formula ρ(J) = lim ‖J^k v‖^{1/k} (`spectral_radius`), by power
            iteration on J itself
            with Jacobian-vector products: v ← Jv / ‖Jv‖, and the estimate is the geometric
            mean of the growth factors ‖Jv‖ over the second half of the iterations. This
            targets the dominant eigenvalue magnitude even for a non-symmetric J with a
            complex dominant pair (single ratios oscillate; their geometric mean does not),
            unlike power iteration on JᵀJ, which gives the spectral norm ‖J‖₂ ≥ ρ(J). The
            error decays like O(1/iters), faster with a gap between the largest eigenvalue
            magnitudes; it converges from below when eigenvalues cluster near ρ.
        "auto": "exact" up to `EXACT_MAX_STATE` state entries per sample, else "power".

    Args:
        block: a NAIS block (`input_term`, `state_operator`, `state_jvp`, ...).
        x: state (N, *state_shape); u: block input (N, *input_shape).
        step: which step's weights (untied blocks only; 0 for tied blocks).
        iters: power iterations; seed: for the power-iteration start vector.

    Returns:
        (N,) tensor of spectral radii, in x's dtype.
    """
    if method not in ("auto", "exact", "power"):
        raise ValueError(f"method must be 'auto', 'exact' or 'power'; got {method!r}")
    with torch.no_grad():
        x = x.detach()
        bu = block.input_term(u.detach())[block.weight_index(step)]
        n_state = x[0].numel()
        if method == "exact" or (method == "auto" and n_state <= EXACT_MAX_STATE):
            return _radius_exact(block, x, bu, step)
        return _radius_power(block, x, bu, step, iters=iters, seed=seed)


def _radius_exact(block, x, bu, step) -> torch.Tensor:
    n, size = x.shape[0], x[0].numel()
    a_dense = block.state_operator(tuple(x.shape[1:]), step)  # (size, size)
    a = block.state_weights()[block.weight_index(step)]
    d = block.activation_derivative(block.apply_state(x, a) + bu).reshape(n, size)
    eye = torch.eye(size, dtype=x.dtype, device=x.device)
    jac = eye + block.h * d[:, :, None] * a_dense  # (N, size, size): row i scaled by σ'_i
    return torch.linalg.eigvals(jac).abs().amax(dim=-1).to(x.dtype)


def _radius_power(block, x, bu, step, *, iters, seed) -> torch.Tensor:
    gen = torch.Generator(device=x.device).manual_seed(seed)
    v0 = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return spectral_radius(lambda v: block.state_jvp(x, bu, v, step), v0, iters=iters)


def spectral_radius(
    matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, *, iters: int = 200
) -> torch.Tensor:
    """Spectral radius of a batch of square linear maps J by Gelfand's formula.

    ρ(J) = lim ‖Jᵏ v‖^(1/k): iterate v <- J v / ‖J v‖ and take the geometric mean of the
    growth factors over the second half of the iterations, which also converges when the
    dominant eigenvalues are a complex pair (single ratios then oscillate). The stage
    Jacobian's "power" method and `odenets.analysis.jacobian.nais_active_radii` use it.

    Args:
        matvec: v (N, *shape) -> J v (N, *shape), per sample.
        v0: (N, *shape) random start vectors.
        iters: iterations, at least 2.

    Returns:
        (N,) estimates of ρ(J), in v0's dtype.
    """
    if iters < 2:
        raise ValueError(f"iters must be >= 2; got {iters}")
    shape = (-1, *[1] * (v0.dim() - 1))
    tiny = torch.finfo(v0.dtype).tiny
    v = v0 / _norms(v0).clamp_min(tiny).view(shape)
    log_growth = torch.zeros(v0.shape[0], dtype=v0.dtype, device=v0.device)
    burn_in = iters // 2
    for i in range(iters):
        w = matvec(v)
        norm = _norms(w).clamp_min(tiny)
        if i >= burn_in:
            log_growth += norm.log()
        v = w / norm.view(shape)
    return (log_growth / (iters - burn_in)).exp()


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


# --- input-output gain ----------------------------------------------------------------


def input_operator_norm(
    block: nn.Module,
    *,
    input_shape: tuple[int, ...] | None = None,
    step: int = 0,
    iters: int = 300,
    seed: int = 0,
) -> float:
    """Spectral norm ‖B‖₂ of a block's input map u ↦ B u (bias excluded).

    Exact (matrix 2-norm) for fully connected blocks. For convolutions it depends on the
    image size (zero padding): power iteration on BᵀB (a symmetric PSD operator, so it
    converges monotonically from below) with B applied by `block.input_map` and Bᵀ by
    autograd, on one input of `input_shape` = (C_in, H, W).
    """
    matrix = getattr(block, "input_matrix", None)
    if matrix is not None:
        return float(torch.linalg.matrix_norm(block.input_matrix(step).detach(), ord=2))
    if input_shape is None:
        raise ValueError("input_shape=(C_in, H, W) is needed for a convolutional block")
    param = next(block.parameters())
    gen = torch.Generator(device=param.device).manual_seed(seed)
    v = torch.randn((1, *input_shape), generator=gen, device=param.device, dtype=param.dtype)
    sigma_sq = torch.zeros((), dtype=param.dtype)
    for _ in range(iters):
        v = v / v.norm()
        with torch.no_grad():
            bv, vjp = torch.func.vjp(lambda t: block.input_map(t, step), v)
            (btbv,) = vjp(bv)  # Bᵀ B v
        sigma_sq = (v * btbv).sum()
        v = btbv
    return float(sigma_sq.clamp_min(0).sqrt())


def input_output_gain_bound(
    block: nn.Module,
    *,
    rho_bar: float | None = None,
    x: torch.Tensor | None = None,
    u: torch.Tensor | None = None,
    step: int = 0,
    input_shape: tuple[int, ...] | None = None,
    iters: int = 300,
) -> float:
    """Input-output gain γ = h ‖B‖ / (1 - ρ̄) of a stable block (SPEC §5).

    ‖x(k) - x̄‖ is bounded by a decaying term plus γ ‖w‖ for input perturbations w.

    Args:
        rho_bar: ρ̄ = sup ρ(J) < 1. If None, it is estimated as the largest spectral radius
            at the given points (x, u), which is a lower estimate of the supremum, so the
            result is then an empirical gain, not a certificate.
        input_shape: (C_in, H, W) for convolutional blocks; taken from u when given.
        iters: power iterations for ‖B‖ of a convolution (see `input_operator_norm`).
    """
    if rho_bar is None:
        if x is None or u is None:
            raise ValueError("give rho_bar, or points x and u to estimate it from")
        rho_bar = float(state_jacobian_spectral_radius(block, x, u, step=step).max())
    if not 0.0 <= rho_bar < 1.0:
        raise ValueError(
            f"the gain bound needs a stable block, 0 <= rho_bar < 1; got rho_bar={rho_bar}"
        )
    if input_shape is None and u is not None:
        input_shape = tuple(u.shape[1:])
    norm_b = input_operator_norm(block, input_shape=input_shape, step=step, iters=iters)
    return float(block.h) * norm_b / (1.0 - rho_bar)
