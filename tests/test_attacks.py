"""Attacks and noise behind one interface: ε-balls, identity at ε = 0, seeding, model state,
the normalized threat model on a hand-computed case, and a cross-check with torchattacks."""

from __future__ import annotations

import functools
import re

import pytest
import torch
from _robustness_models import digits, train_tiny
from torch import nn

from odenets.models.base import OdeNet
from odenets.robustness import accuracy, create_attack, list_attacks

GRADIENT_ATTACKS = ["fgsm", "ifgsm", "pgd", "pgd_start_centred", "apgd_ce", "apgd_dlr"]
BALL_ATTACKS = [a for a in GRADIENT_ATTACKS if a != "pgd_start_centred"]
NOISES = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian"]
FAST = {"apgd_ce": {"steps": 20}, "apgd_dlr": {"steps": 20}}  # fewer APGD steps in tests


@functools.lru_cache(maxsize=1)
def _trained():
    return train_tiny()


@pytest.fixture(scope="module")
def model():
    return _trained()


@pytest.fixture(scope="module")
def data():
    x, y = digits("test")
    return x[:96], y[:96]


PACKAGE_ATTACKS = ["autoattack", "square"]  # run by pyautoattack (tests/test_autoattack.py)


def test_registry_has_every_attack_and_noise():
    assert set(list_attacks()) == set(GRADIENT_ATTACKS) | set(NOISES) | set(PACKAGE_ATTACKS)


@pytest.mark.parametrize("eps", [8, 1.5, -0.1])
def test_eps_outside_unit_interval_is_refused(eps):
    with pytest.raises(
        ValueError, match=re.escape(f"eps must be in [0, 1] (pixel units); got {eps:g}.")
    ):
        create_attack("pgd", eps=eps)


def test_eps_hint_suggests_dividing_by_255():
    expected = "eps must be in [0, 1] (pixel units); got 8. Did you mean 8/255?"
    with pytest.raises(ValueError) as err:
        create_attack("fgsm", eps=8)
    assert str(err.value) == expected


@pytest.mark.parametrize("name", ["fgsm", "gaussian_noise"])
def test_images_outside_the_pixel_range_are_refused(model, data, name):
    x, y = data
    attack = create_attack(name, **({"eps": 0.1} if name == "fgsm" else {}))
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\].*\[0, 255\].*Divide uint8"):
        attack(model, x * 255, y)


def test_images_with_nan_are_refused(model, data):
    x, y = data
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\].*nan"):
        create_attack("fgsm", eps=0.1)(model, x, y)


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_attacks_check_their_images_once_not_the_model_per_iterate(model, data, name, monkeypatch):
    # The attack refuses images outside [0, 1] itself and keeps every iterate in range, so
    # it calls the model with check_input=False: no range reduction per step.
    import odenets.models.base as base
    from odenets.robustness.ensemble import Ensemble

    calls = []
    real = base.check_pixel_range
    monkeypatch.setattr(base, "check_pixel_range", lambda x, **kw: calls.append(1) or real(x, **kw))
    x, y = data
    for target in (model, Ensemble([model, model])):
        adv = create_attack(name, eps=0.1, **FAST.get(name, {}))(target, x, y)
        assert calls == [] and not torch.equal(adv, x)
    model(x)  # a plain call is checked
    assert calls == [1]


def test_unknown_attack_suggests_close_name():
    with pytest.raises(KeyError, match="Did you mean 'pgd'"):
        create_attack("pgdd", eps=0.1)


@pytest.mark.parametrize("name", BALL_ATTACKS)
def test_attack_stays_in_eps_ball_and_pixel_range(model, data, name):
    x, y = data
    eps = 0.1
    adv = create_attack(name, eps=eps, **FAST.get(name, {}))(model, x, y)
    assert adv.shape == x.shape and adv.dtype == torch.float32
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert (adv - x).abs().max() > eps / 2  # it did move


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_eps_zero_is_identity(model, data, name):
    x, y = data
    adv = create_attack(name, eps=0.0, **FAST.get(name, {}))(model, x, y)
    assert torch.equal(adv, x)


def test_robust_accuracy_decreases_with_eps(model):
    x, y = digits("test")
    radii = (0.03, 0.06, 0.1, 0.15, 0.25)
    accs = [accuracy(model, x, y)]
    accs += [accuracy(model, x, y, attack=create_attack("pgd", eps=e, alpha=e / 8)) for e in radii]
    assert accs[0] > 0.9
    assert all(a1 < a0 for a0, a1 in zip(accs, accs[1:], strict=False))
    assert accs[-1] < 0.02


def test_pgd_start_centred_can_leave_the_eps_ball_but_not_twice(model, data):
    x, y = data
    eps = 0.1
    adv = create_attack("pgd_start_centred", eps=eps, alpha=eps / 4)(model, x, y)
    dist = (adv - x).abs().max()
    assert eps + 1e-3 < dist <= 2 * eps + 1e-6
    assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_attack_restores_mode_and_leaves_parameters_alone(model, data):
    x, y = data
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    create_attack("pgd", eps=0.1, steps=2)(model, x, y)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    create_attack("fgsm", eps=0.1)(model, x, y)
    assert not model.training


def test_random_draws_are_seeded_and_keyed_on_sample_index(model, data):
    x, y = data
    pgd = create_attack("pgd", eps=0.1, steps=3, seed=1)
    whole = pgd(model, x, y)
    assert torch.equal(whole, create_attack("pgd", eps=0.1, steps=3, seed=1)(model, x, y))
    assert not torch.equal(whole, create_attack("pgd", eps=0.1, steps=3, seed=2)(model, x, y))
    # Splitting the batch changes nothing: draws depend on (seed, index), not on the batch.
    k = 40
    parts = torch.cat(
        [
            pgd(model, x[:k], y[:k], indices=torch.arange(k)),
            pgd(model, x[k:], y[k:], indices=torch.arange(k, len(x))),
        ]
    )
    assert torch.allclose(parts, whole, atol=1e-6)


def test_pgd_restarts_never_weaken_the_attack(model):
    x, y = digits("test")
    one = accuracy(model, x, y, attack=create_attack("pgd", eps=0.08, alpha=0.01, steps=5))
    three = accuracy(
        model, x, y, attack=create_attack("pgd", eps=0.08, alpha=0.01, steps=5, restarts=3)
    )
    assert three <= one


@pytest.mark.parametrize("name", NOISES)
def test_noise_is_in_range_seeded_and_batch_independent(data, name):
    x, y = data
    kw = {"sigma": 0.1} if name == "gaussian" else {"severity": 5}
    noise = create_attack(name, seed=3, **kw)
    out = noise(None, x, y)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (out - x).abs().max() > 0.01
    assert torch.equal(out, create_attack(name, seed=3, **kw)(None, x, y))
    assert not torch.equal(out, create_attack(name, seed=4, **kw)(None, x, y))
    tail = noise(None, x[50:], y[50:], indices=torch.arange(50, len(x)))
    assert torch.equal(tail, out[50:])


def test_gaussian_sigma_zero_is_identity(data):
    x, y = data
    assert torch.equal(create_attack("gaussian", sigma=0.0)(None, x, y), x)


# --- the normalized threat model on a hand-computed case ----------------------------------
class _Linear(OdeNet):
    """logits = (w · z, 0) on 1x1x2 images with mean 0.5, std 0.25; w = (1, -1)."""

    def __init__(self):
        super().__init__(in_chans=1, mean=(0.5,), std=(0.25,))
        self.register_buffer("w", torch.tensor([1.0, -1.0]))

    def forward_features(self, x):
        return x.flatten(1)

    def head(self, f):
        return torch.stack([f @ self.w, torch.zeros(len(f))], dim=1)


def test_normalized_fgsm_matches_hand_computation():
    # Label 1: the loss grows with logit 0 = z0 - z1, so sign ∇z = (+1, -1).
    x = torch.tensor([[[[0.55, 0.60]]], [[[0.20, 0.90]]]])  # (2, 1, 1, 2)
    y = torch.tensor([1, 1])
    eps = 8 / 255
    adv = create_attack("fgsm", eps=eps, threat_model="normalized")(_Linear(), x, y)
    # Sample 0: z = (0.2, 0.4) -> z' = (0.2 + ε, 0.4 - ε) -> x' = x ± ε · std: 4x weaker.
    expected0 = torch.tensor([0.55 + eps * 0.25, 0.60 - eps * 0.25])
    # Sample 1: z = (-1.2, 1.6) -> clamp to [0, 1] in normalised space -> z' = (0, 1)
    # -> x' = (0.5, 0.75): the clamp moves clean pixels by 0.3 and 0.15, far beyond ε.
    expected1 = torch.tensor([0.5, 0.75])
    assert torch.allclose(adv[0].flatten(), expected0, atol=1e-6)
    assert torch.allclose(adv[1].flatten(), expected1, atol=1e-6)
    pixel = create_attack("fgsm", eps=eps)(_Linear(), x, y)
    assert torch.allclose(pixel[0].flatten(), torch.tensor([0.55 + eps, 0.60 - eps]), atol=1e-6)


def test_normalized_ifgsm_default_step_is_2_over_255_at_the_authors_setting():
    x, y = torch.tensor([[[[0.55, 0.60]]]]), torch.tensor([1])
    eps = 8 / 255
    twenty = create_attack("ifgsm", eps=eps, threat_model="normalized")
    assert twenty.alpha == pytest.approx(2 / 255, rel=1e-12)
    adv = twenty(_Linear(), x, y)
    assert torch.allclose(
        adv.flatten(), x.flatten() + torch.tensor([1, -1]) * eps * 0.25, atol=1e-6
    )
    one_step = create_attack("ifgsm", eps=eps, steps=1, alpha=2 / 255, threat_model="normalized")
    expected = torch.tensor([0.55 + 2 / 255 * 0.25, 0.60 - 2 / 255 * 0.25])
    assert torch.allclose(one_step(_Linear(), x, y).flatten(), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "threat_model", "eps_255", "steps", "alpha_255"),
    [
        ("pgd", "pixel", 8, 20, 1.0),  # the authors' setting: unchanged
        ("pgd", "pixel", 16, 20, 2.0),
        ("ifgsm", "pixel", 2, 20, 0.25),
        ("ifgsm", "pixel", 8, 10, 2.0),
        ("pgd_start_centred", "pixel", 8, 20, 1.0),
        ("pgd", "normalized", 8, 20, 2.0),  # the authors' first release: unchanged
        ("ifgsm", "normalized", 4, 20, 1.0),
    ],
)
def test_default_step_scales_with_eps(name, threat_model, eps_255, steps, alpha_255):
    attack = create_attack(name, eps=eps_255 / 255, steps=steps, threat_model=threat_model)
    assert attack.alpha * 255 == pytest.approx(alpha_255, rel=1e-12)
    assert create_attack(name, eps=eps_255 / 255, alpha=0.5 / 255).alpha == 0.5 / 255


def test_default_step_crosses_a_large_ball():
    """At ε = 32/255, 20 steps of 1/255 could move a pixel by 20/255 at most; α = 2.5·ε/20
    reaches the border of the ball (a linear model: the gradient sign never changes)."""
    x, y = torch.full((1, 1, 1, 2), 0.5), torch.tensor([1])
    eps = 32 / 255
    adv = create_attack("ifgsm", eps=eps)(_Linear(), x, y)
    assert torch.allclose((adv - x).abs(), torch.full_like(x, eps), atol=1e-6)
    fixed = create_attack("ifgsm", eps=eps, alpha=1 / 255)(_Linear(), x, y)
    assert torch.allclose((fixed - x).abs(), torch.full_like(x, 20 / 255), atol=1e-6)


def test_normalized_needs_a_model_with_normalize():
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2))
    x, y = torch.rand(1, 1, 1, 2), torch.tensor([0])
    with pytest.raises(ValueError, match="forward_normalized"):
        create_attack("fgsm", eps=0.1, threat_model="normalized")(net, x, y)


# --- independent implementation -----------------------------------------------------------
@pytest.mark.parametrize("name", ["fgsm", "ifgsm", "pgd"])
def test_matches_torchattacks(model, name):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = digits("test")
    eps, alpha, steps = 0.1, 0.01, 20
    ours = {
        "fgsm": create_attack("fgsm", eps=eps),
        "ifgsm": create_attack("ifgsm", eps=eps, alpha=alpha, steps=steps),
        "pgd": create_attack("pgd", eps=eps, alpha=alpha, steps=steps, random_start=False),
    }[name]
    theirs = {
        "fgsm": lambda: torchattacks.FGSM(model, eps=eps),
        "ifgsm": lambda: torchattacks.BIM(model, eps=eps, alpha=alpha, steps=steps),
        "pgd": lambda: torchattacks.PGD(
            model, eps=eps, alpha=alpha, steps=steps, random_start=False
        ),
    }[name]()
    adv_ours, adv_theirs = ours(model, x, y), theirs(x, y)
    assert (adv_ours - adv_theirs).abs().max() <= 1e-6
    assert accuracy(model, adv_ours, y) == accuracy(model, adv_theirs, y)
    assert accuracy(model, adv_ours, y) < accuracy(model, x, y) - 0.3
