"""Analysis functions on known answers: coefficients, landscapes, power iteration, 1-D
dynamics, depth statistics, and the numbers read from eval.json dictionaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import odenets
from odenets.analysis._common import block_inputs
from odenets.analysis.coefficients import (
    STABLE_RANGE,
    coefficient_history,
    model_coefficients,
    summarize_over_seeds,
)
from odenets.analysis.depth_stats import depth_summary
from odenets.analysis.dynamics import (
    has_converged,
    nais_state_differences,
    one_d_dynamics,
    project_scalar_a,
)
from odenets.analysis.input_landscape import (
    attack_direction,
    input_landscape,
    random_sign_direction,
)
from odenets.analysis.jacobian import (
    block_jacobian_norms,
    jacobian_spectral_norm,
    power_iteration,
)
from odenets.analysis.robustness_results import (
    attack_accuracy,
    ensemble_gain,
    paper_metrics,
    robustness_curves,
)
from odenets.analysis.weight_landscape import filter_normalized_direction, weight_landscape
from odenets.stability import spectral_radius


def _tiny(name: str, num_classes: int = 4) -> nn.Module:
    torch.manual_seed(1)
    return odenets.create_model(name, num_classes=num_classes, in_chans=1)


def _batch(n: int = 6, size: int = 8, num_classes: int = 4):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, size, size, generator=g), torch.randint(
        0, num_classes, (n,), generator=g
    )


# --- coefficients ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "to_lambda"),
    [
        ("in_resnet20", lambda k: F.relu(1 - k)),
        ("lambda_in_resnet20", lambda k: F.relu(k)),
    ],
)
def test_coefficients_are_the_raw_parameters_transformed(name, to_lambda):
    model = _tiny(name)
    with torch.no_grad():
        raw = model.coefficient_parameters()
        # Spread the raw values over both sides of the ReLU kink.
        for i, p in enumerate(raw):
            p.fill_(-0.5 + 0.4 * i)
    out = model_coefficients(model)
    k = torch.cat([p.detach().reshape(-1) for p in raw])  # float32, as the model computes
    np.testing.assert_array_equal(out["raw"], k.double().numpy())
    np.testing.assert_array_equal(out["lambda"], to_lambda(k).double().numpy())
    assert len(out["lambda"]) == 6  # 9 blocks, 3 plain residual ones (SPEC §2)


def test_lambda_in_resnet_lambda_equals_raw_for_positive_k():
    out = model_coefficients(_tiny("lambda_in_resnet20"))
    np.testing.assert_allclose(out["lambda"], out["raw"], rtol=0, atol=1e-7)


def test_resnet_has_no_coefficients():
    out = model_coefficients(_tiny("resnet20"))
    assert out["lambda"].shape == (0,) and out["raw"].shape == (0,)
    assert STABLE_RANGE == (0.0, 2.0)


def test_coefficient_history_and_seed_summary():
    metrics = [
        {"epoch": 1, "coefficients": [0.2, 0.3]},
        {"epoch": 2, "coefficients": [0.4, 0.1]},
        {"epoch": 3},
    ]
    hist = coefficient_history(metrics)
    np.testing.assert_array_equal(hist["epoch"], [1, 2])
    np.testing.assert_array_equal(hist["lambda"], [[0.2, 0.3], [0.4, 0.1]])
    s = summarize_over_seeds([np.array([1.0, 2.0]), np.array([3.0, 2.0])])
    np.testing.assert_array_equal(s["mean"], [2.0, 2.0])
    np.testing.assert_array_equal(s["std"], [1.0, 0.0])
    with pytest.raises(ValueError, match="different numbers"):
        summarize_over_seeds([np.zeros(2), np.zeros(3)])


# --- input landscape ------------------------------------------------------------------
def test_input_landscape_at_origin_is_the_loss():
    model = _tiny("in_resnet20")
    images, labels = _batch()
    model.train()
    out = input_landscape(model, images, labels, radius=8 / 255, points=5, points_2d=3, seed=0)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(model(images), labels).item()
    np.testing.assert_allclose(out["t"][2], 0.0, atol=0)
    np.testing.assert_allclose(out["attack"][2], expected, rtol=1e-5)
    np.testing.assert_allclose(out["random"][2], expected, rtol=1e-5)
    np.testing.assert_allclose(out["surface"][1, 1], expected, rtol=1e-5)
    np.testing.assert_allclose(out["loss_at_origin"], expected, rtol=1e-5)
    # The attack direction raises the loss to first order; its first step goes uphill.
    assert out["attack"][3] > out["attack"][2] > out["attack"][1]


def test_attack_direction_is_the_gradient_sign_and_random_direction_is_seeded():
    model = _tiny("resnet20").eval()
    images, labels = _batch()
    x = images.clone().requires_grad_(True)
    F.cross_entropy(model(x), labels, reduction="sum").backward()
    torch.testing.assert_close(attack_direction(model, images, labels, batch_size=4), x.grad.sign())
    d1 = random_sign_direction((3, 4), generator=torch.Generator().manual_seed(5))
    d2 = random_sign_direction((3, 4), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(d1, d2)
    assert set(d1.unique().tolist()) == {-1.0, 1.0}


# --- weight landscape -----------------------------------------------------------------
def test_filter_normalized_direction_matches_filter_norms():
    model = _tiny("in_resnet20")
    dirs = filter_normalized_direction(model, generator=torch.Generator().manual_seed(0))
    params = list(model.parameters())
    assert len(dirs) == len(params)
    n_checked = 0
    for p, d in zip(params, dirs, strict=True):
        assert d.shape == p.shape
        if p.dim() <= 1:
            assert torch.count_nonzero(d) == 0  # biases, BN, coefficients unperturbed
            continue
        torch.testing.assert_close(
            d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-5, atol=1e-7
        )
        n_checked += 1
    assert n_checked >= 20


def test_filter_normalized_direction_of_stacked_nais_weights():
    model = odenets.create_model("naisnet10", num_classes=4, in_chans=1)
    dirs = filter_normalized_direction(model, generator=torch.Generator().manual_seed(0))
    named = dict(model.named_parameters())
    for (name, p), d in zip(named.items(), dirs, strict=True):
        w = p.detach()
        if name.endswith(("bias", "delta")) or w.dim() == 1:
            assert torch.count_nonzero(d) == 0, name
        elif name.endswith("a_weight"):  # (S, out, in, k, k): one filter per (step, out)
            torch.testing.assert_close(
                d.flatten(2).norm(dim=2), w.flatten(2).norm(dim=2), rtol=1e-5, atol=1e-7
            )


def test_weight_landscape_restores_weights_bitwise_and_origin_is_the_loss():
    model = _tiny("in_resnet20")
    images, labels = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = weight_landscape(model, images, labels, alphas=[-0.5, 0.0, 0.5], alphas2=[0.0, 1.0])
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert model.training
    model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(model(images), labels).item()
    assert out["loss"].shape == (3, 2)
    np.testing.assert_allclose(out["loss"][1, 0], expected, rtol=1e-6)
    one_d = weight_landscape(model, images, labels, alphas=[0.0, 0.5], seed=0)
    # Same seed, same first direction: the 1-D curve is the 2-D surface's β = 0 column.
    np.testing.assert_allclose(one_d["loss"], out["loss"][1:, 0], rtol=1e-6)


# --- power iteration and block Jacobians ----------------------------------------------
def test_power_iteration_recovers_known_spectral_norms():
    g = torch.Generator().manual_seed(0)
    singular = torch.tensor([[3.0, 1.0, 0.5, 0.1], [0.7, 0.2, 0.1, 0.0]], dtype=torch.float64)
    mats = []
    for s in singular:
        u, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
        mats.append(u[:, :4] @ torch.diag(s) @ v.T)
    m = torch.stack(mats)  # (2, 5, 4): one linear map per sample

    def matvec(x):
        return torch.einsum("noi,ni->no", m, x)

    def rmatvec(y):
        return torch.einsum("noi,no->ni", m, y)

    v0 = torch.randn(2, 4, generator=g, dtype=torch.float64)
    sigma = power_iteration(matvec, rmatvec, v0, iters=50)
    torch.testing.assert_close(sigma, singular[:, 0], rtol=1e-8, atol=0)


def test_spectral_radius_of_a_non_normal_map_with_a_complex_dominant_pair():
    # Rotation by 1 rad scaled by 0.9 (eigenvalues 0.9·e^{±i}) beside 0.5, conjugated by a
    # non-orthogonal basis: ρ = 0.9 while the spectral norm is larger.
    c, s = np.cos(1.0), np.sin(1.0)
    core = torch.tensor([[0.9 * c, -0.9 * s, 0], [0.9 * s, 0.9 * c, 0], [0, 0, 0.5]]).double()
    basis = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [0.0, 0.0, 1.0]]).double()
    m = basis @ core @ torch.linalg.inv(basis)
    assert torch.linalg.matrix_norm(m, ord=2) > 1.5
    v0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rho = spectral_radius(lambda v: v @ m.T, v0, iters=2000)
    torch.testing.assert_close(rho, torch.full((2,), 0.9, dtype=torch.float64), rtol=2e-3, atol=0)


def test_jacobian_spectral_norm_of_a_linear_layer():
    torch.manual_seed(0)
    layer = nn.Linear(6, 6, bias=True).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    sigma = jacobian_spectral_norm(layer, x, iters=200, generator=torch.Generator().manual_seed(0))
    expected = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
    torch.testing.assert_close(sigma, expected.expand(3), rtol=1e-6, atol=0)


def test_block_jacobian_norms_shape_and_bound():
    model = _tiny("resnet20")
    images, _ = _batch(n=3)
    norms = block_jacobian_norms(model, images, iters=5)
    assert norms.shape == (3, len(model.blocks))
    assert np.all(np.isfinite(norms)) and np.all(norms > 0)


# --- 1-D dynamics ---------------------------------------------------------------------
def test_one_d_unstable_block_does_not_converge_and_projected_one_does():
    out = one_d_dynamics(u=[-1.0, -0.3, 0.3, 1.0], steps=200)
    assert not out["unstable"]["converged"].any()
    assert out["stable"]["converged"].all()
    np.testing.assert_allclose(
        out["stable"]["x"][:, -1], out["stable"]["equilibrium"], rtol=0, atol=1e-6
    )
    # The unstable one keeps moving by O(1) per step at the end.
    assert np.abs(np.diff(out["unstable"]["x"][:, -3:], axis=1)).min() > 0.1
    assert -1.0 < out["stable"]["a"] < 0.0


def test_projection_and_convergence_helpers():
    assert project_scalar_a(-10.0, eps=0.01) == pytest.approx(-0.99)
    assert project_scalar_a(-0.5, eps=0.01) == pytest.approx(-0.5)
    assert has_converged(np.array([[1.0] * 10, list(range(10))])).tolist() == [True, False]


# --- depth statistics -----------------------------------------------------------------
def test_depth_summary_counts_and_classes():
    steps = np.array([[1, 2], [3, 3], [1, 1], [2, 2], [5, 1]])  # totals 3, 6, 2, 4, 6
    labels = np.array([0, 1, 0, 1, 2])
    s = depth_summary(steps, labels, num_classes=4, extremes=2)
    assert s["counts"].sum() == len(labels)
    np.testing.assert_array_equal(s["values"], [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(s["counts"], [1, 1, 1, 0, 2])
    np.testing.assert_allclose(s["class_mean"][:3], [2.5, 5.0, 6.0])
    assert np.isnan(s["class_mean"][3]) and s["class_count"][3] == 0
    np.testing.assert_array_equal(s["lowest"], [2, 0])
    np.testing.assert_array_equal(s["highest"], [1, 4])


# --- eval.json numbers ----------------------------------------------------------------
def _eval(model, ensemble, clean, noise, attacks):
    return {
        "models": [model] * (3 if ensemble else 1),
        "ensemble": ensemble,
        "clean": clean,
        "noise": {
            "source": "generated",
            "per_corruption": {
                "gaussian": {"1": noise + 0.1, "2": noise, "3": noise - 0.1, "mean": noise}
            },
            "mean": noise,
        },
        "attacks": [
            {"name": n, "threat_model": "pixel", "eps": e / 255, "eps_255": e, "accuracy": a}
            for n, e, a in attacks
        ],
    }


def test_ensemble_gain_and_curves():
    evals = [
        _eval("resnet20", False, 0.9, 0.5, [("fgsm", 8, 0.3), ("pgd", 8, 0.1), ("pgd", 4, 0.2)]),
        _eval("resnet20", False, 0.8, 0.4, [("fgsm", 8, 0.2), ("pgd", 8, 0.0), ("pgd", 4, 0.1)]),
        _eval("resnet20", True, 0.95, 0.6, [("fgsm", 8, 0.4), ("pgd", 8, 0.05), ("pgd", 4, 0.3)]),
    ]
    gain = ensemble_gain(evals, metrics=("clean", "noise", "fgsm", "pgd"))
    np.testing.assert_allclose(gain["resnet20"]["gain"], [0.1, 0.15, 0.15, 0.0], atol=1e-12)
    assert gain["resnet20"]["n_single"] == 2
    assert attack_accuracy(evals[0], "pgd", eps_255=4) == 0.2
    with pytest.raises(ValueError, match="no ifgsm"):
        paper_metrics(evals[0])
    curves = robustness_curves(evals)
    assert set(curves) == {"resnet20", "resnet20 #2", "resnet20 ensemble (3)"}
    pgd = curves["resnet20"]["attacks"]["pgd (pixel)"]
    np.testing.assert_array_equal(pgd["eps_255"], [0, 4, 8])
    np.testing.assert_array_equal(pgd["accuracy"], [0.9, 0.2, 0.1])
    np.testing.assert_array_equal(curves["resnet20"]["noise"]["gaussian"]["severity"], [1, 2, 3])


def test_trained_style_nais_block_state_changes_decay_and_match_the_forward():
    model = odenets.create_model("naisnet10", num_classes=4, in_chans=1, act="tanh").eval()
    images, _ = _batch(n=3)
    diffs = nais_state_differences(model, images, block_index=1, steps=60)
    assert diffs.shape == (3, 60)
    # A projected tanh block converges: the state stops changing.
    assert np.all(diffs[:, -1] < 1e-3 * diffs[:, 0])
    # The first K = 10 steps are the block's own forward: their sum bounds ‖x(K) - x(0)‖.
    block = model.nais_blocks()[1]
    (u,) = block_inputs(model, images, [block])
    with torch.no_grad():
        moved = block(u).flatten(1).norm(dim=1).numpy()  # x(0) = 0 for naisnet10
    assert np.all(moved <= diffs[:, :10].sum(axis=1) * (1 + 1e-5))


def test_ensemble_gain_uses_the_metrics_every_evaluation_holds_and_curves_add_worst_case():
    from odenets.analysis.robustness_results import available_metrics

    single = _eval("m", False, 0.9, 0.5, [("fgsm", 8, 0.3), ("pgd", 8, 0.1)])
    ensemble = _eval("m", True, 0.95, 0.6, [("fgsm", 8, 0.4), ("pgd", 8, 0.2)])
    single["noise"] = None
    single["worst_case"] = [{"eps_255": 8.0, "threat_model": "pixel", "accuracy": 0.05}]
    assert available_metrics([single, ensemble]) == ["clean", "fgsm", "pgd"]
    gain = ensemble_gain([single, ensemble])["m"]
    assert gain["metrics"] == ["clean", "fgsm", "pgd"]
    np.testing.assert_allclose(gain["gain"], [0.05, 0.1, 0.1], atol=1e-12)
    worst = robustness_curves([single])["m"]["attacks"]["worst case (pixel)"]
    np.testing.assert_array_equal(worst["accuracy"], [0.9, 0.05])


def test_robustness_curve_panels_give_each_attacks_steps_and_alpha():
    from odenets.analysis import plots

    def entry(name, eps, **kw):
        return {"name": name, "threat_model": "pixel", "eps": eps, "eps_255": eps * 255,
                "accuracy": 0.5, **kw}  # fmt: skip

    ev = _eval("m", False, 0.9, 0.5, [])
    ev["attacks"] = [
        *(entry("fgsm", e, steps=1, alpha=e) for e in (4 / 255, 8 / 255)),
        *(entry("pgd", e, steps=20, alpha=e / 8, random_start=True) for e in (4 / 255, 8 / 255)),
        entry("apgd_ce", 8 / 255, steps=20, alpha=16 / 255, loss="ce"),
    ]
    ev["worst_case"] = [{"eps_255": 8.0, "threat_model": "pixel", "accuracy": 0.4}]
    attacks = robustness_curves([ev])["m"]["attacks"]
    assert {k: c["setting"] for k, c in attacks.items()} == {
        "fgsm (pixel)": "1 step, α = ε",
        "pgd (pixel)": "20 steps, α = 0.125·ε, random start",
        "apgd_ce (pixel)": "20 steps from α = 2ε, halved by its schedule",
        "worst case (pixel)": "per sample over the attacks",
    }
    titles = [
        ax.get_title()
        for ax in plots.draw_robustness_curves({"m": {**robustness_curves([ev])["m"]}}).axes
    ]
    assert "pgd (pixel): accuracy vs ε\n20 steps, α = 0.125·ε, random start" in titles
