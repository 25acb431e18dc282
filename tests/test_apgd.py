"""Auto-PGD: the paper's checkpoints, the DLR loss, a known optimum, and strength."""

from __future__ import annotations

import functools

import pytest
import torch
from _robustness_models import digits, train_tiny

from odenets.models.base import OdeNet
from odenets.robustness import accuracy, apgd, create_attack, dlr_loss
from odenets.robustness.apgd import APGDCE, checkpoints
from odenets.robustness.base import Space


@functools.lru_cache(maxsize=1)
def _trained():
    return train_tiny()


def test_checkpoints_follow_the_paper():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99; w_j = ceil(p_j N).
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9]
    assert checkpoints(1) == []


def test_dlr_loss_known_values_and_invariance():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    labels = torch.tensor([0, 2])
    # label 0: -(3 - 2) / (3 - 1); label 2: -(2 - 3) / (3 - 1).
    assert torch.allclose(dlr_loss(logits, labels), torch.tensor([-0.5, 0.5]))
    assert torch.allclose(dlr_loss(7 * logits - 4, labels), dlr_loss(logits, labels))


def test_dlr_needs_three_classes():
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr_loss(torch.zeros(2, 2), torch.tensor([0, 1]))


class _TwoClassLinear(OdeNet):
    """logits = (w · x, 0) on (N, 1, 2, 2) images: the CE of label 1 is maximised in the
    L∞ ball at the vertex x + ε sign(w) (clamped)."""

    def __init__(self):
        super().__init__(in_chans=1, mean=(0.0,), std=(1.0,))
        self.register_buffer("w", torch.tensor([2.0, -1.0, 0.5, -3.0]))

    def forward_features(self, x):
        return x.flatten(1)

    def head(self, f):
        return torch.stack([f @ self.w, torch.zeros(len(f))], dim=1)


def test_apgd_ce_reaches_the_known_optimum_of_a_linear_model():
    gen = torch.Generator().manual_seed(0)
    # w · x <= -2 everywhere in the ball: no point is misclassified, so APGD returns x_max.
    x = torch.tensor([0.2, 0.8, 0.2, 0.8]).view(1, 1, 2, 2) + 0.1 * torch.rand(
        16, 1, 2, 2, generator=gen
    )
    y = torch.ones(16, dtype=torch.long)
    eps = 0.05
    adv = create_attack("apgd_ce", eps=eps, steps=10)(_TwoClassLinear(), x, y)
    optimum = x + eps * torch.tensor([1.0, -1.0, 1.0, -1.0]).view(1, 1, 2, 2)
    assert torch.allclose(adv, optimum, atol=1e-6)


@pytest.mark.parametrize("name", ["apgd_ce", "apgd_dlr"])
def test_apgd_stays_in_ball_and_is_deterministic(name):
    model = _trained()
    x, y = digits("test")
    x, y = x[:64], y[:64]
    attack = create_attack(name, eps=0.08, steps=20, seed=5)
    adv = attack(model, x, y)
    assert (adv - x).abs().max() <= 0.08 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv, create_attack(name, eps=0.08, steps=20, seed=5)(model, x, y))
    assert attack.nonfinite_grads == 0


def test_apgd_at_least_as_strong_as_pgd20():
    model = _trained()
    x, y = digits("test")
    for eps in (0.05, 0.1):
        pgd = accuracy(model, x, y, attack=create_attack("pgd", eps=eps, alpha=eps / 8))
        apgd = accuracy(model, x, y, attack=create_attack("apgd_ce", eps=eps))
        assert apgd <= pgd
        assert apgd < accuracy(model, x, y) - 0.1


def test_apgd_restarts_never_weaken_the_attack():
    model = _trained()
    x, y = digits("test")
    one = accuracy(model, x, y, attack=create_attack("apgd_ce", eps=0.06, steps=10))
    two = accuracy(model, x, y, attack=create_attack("apgd_ce", eps=0.06, steps=10, restarts=2))
    assert two <= one


def test_apgd_defaults():
    attack = create_attack("apgd_ce", eps=8 / 255)
    assert attack.steps == 100 and attack.restarts == 1
    assert attack.settings()["alpha"] == 2 * 8 / 255


class _PackageStart(APGDCE):
    """Our APGD-CE with the package's random start: t = 2 U(0, 1) - 1 drawn by torch's global
    generator seeded with the attack's seed, over the samples it attacks."""

    def _start(self, space, z, indices, restart):
        torch.manual_seed(self.seed)
        t = 2 * torch.rand(z.shape) - 1
        return space.clamp(
            z + self.eps * t / (t.flatten(1).abs().amax(1).view(-1, 1, 1, 1) + 1e-12)
        )


@pytest.mark.parametrize("eps", [0.03, 0.06])
def test_apgd_ce_matches_the_autoattack_package_sample_by_sample(eps):
    # An independent implementation: pyautoattack's APGDAttack (the AutoAttack code), run
    # from the same starting points, must leave exactly the same samples robust and reach the
    # same highest loss on each of them (dropping broken samples from our batch must not
    # change the ones still running).
    package = pytest.importorskip("pyautoattack.autopgd_base", reason="needs pyautoattack")
    model = _trained()
    x, y = digits("test")
    x, y = x[:240], y[:240]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    x, y = x[clean], y[clean]  # the package attacks the clean-correct samples only
    theirs = package.APGDAttack(model, n_iter=100, eps=eps, seed=0, loss="ce", device="cpu")
    theirs.init_hyperparam(x)
    torch.manual_seed(0)
    _, robust_theirs, loss_theirs, _ = theirs.attack_single_run(x, y)
    robust_theirs = robust_theirs.bool()
    ours = _PackageStart(eps=eps, steps=100, seed=0)
    with torch.no_grad():
        logits = model(ours(model, x, y))
    robust_ours = logits.argmax(1) == y
    assert 0 < int(robust_ours.sum()) < len(y)  # some samples break, some hold
    assert torch.equal(robust_ours, robust_theirs)
    loss_ours = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(
        loss_ours[robust_ours], loss_theirs[robust_ours], rtol=1e-3, atol=1e-3
    )


def test_apgd_drops_broken_samples_from_the_batch():
    # Images through the network, counted: a sample leaves the batch at its first
    # misclassified iterate, and the result equals attacking each sample on its own.
    model = _trained()
    x, y = digits("test")
    x, y = x[:48], y[:48]
    seen = []
    hook = model.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
    attack = create_attack("apgd_ce", eps=0.06, steps=30, seed=2)
    try:
        adv = attack(model, x, y, indices=torch.arange(48))
    finally:
        hook.remove()
    with torch.no_grad():
        robust = model(adv).argmax(1) == y
    assert 0 < int(robust.sum()) < 40
    assert sum(seen) < 31 * len(x) * 0.75  # broken samples stopped costing passes
    for i in range(0, 48, 7):
        one = attack(model, x[i : i + 1], y[i : i + 1], indices=torch.tensor([i]))
        torch.testing.assert_close(one, adv[i : i + 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("restarts", [1, 2])
@pytest.mark.parametrize("interval", [3, 10])
def test_apgd_dropping_broken_samples_every_few_steps_gives_the_same_points(
    monkeypatch, interval, restarts
):
    # On CUDA the batch drops its broken samples every 10 steps only: in between, a sample
    # that broke stays in the batch and its later iterates must not replace its result.
    model = _trained()
    x, y = digits("test")
    x, y = x[:64], y[:64]
    attack = create_attack("apgd_ce", eps=0.06, steps=30, restarts=restarts, seed=3)
    every_step = attack(model, x, y)
    monkeypatch.setattr(apgd, "compaction_interval", lambda device: interval)
    every_few = create_attack("apgd_ce", eps=0.06, steps=30, restarts=restarts, seed=3)
    torch.testing.assert_close(every_few(model, x, y), every_step, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [0, 12])
def test_apgd_on_samples_all_misclassified_at_the_start_takes_no_step(n):
    # Every sample leaves the batch at its (misclassified) random start: one pass, and the
    # start is the result; an empty batch comes back empty.
    model = _trained()
    x, _ = digits("test")
    x = x[:n]
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10 if n else torch.zeros(0, dtype=torch.long)
    seen = []
    hook = model.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
    attack = create_attack("apgd_ce", eps=0.06, steps=10, seed=4)
    try:
        adv = attack(model, x, wrong)
    finally:
        hook.remove()  # the trained model is shared with the other tests
    assert adv.shape == x.shape
    assert seen == [n]
    if n:
        start = attack._start(Space(model, "pixel"), x, torch.arange(n), 0)
        torch.testing.assert_close(adv, start, rtol=0, atol=0)
        with torch.no_grad():
            assert bool((model(adv).argmax(1) != wrong).all())


@pytest.mark.parametrize("restarts", [1, 2])
def test_apgd_for_transfer_breaks_the_same_samples_more_deeply(restarts):
    # The form a transfer attack crafts with: every sample runs every step and keeps its
    # misclassified iterate of most loss. The samples broken are the same as the first
    # misclassified iterate's (the trajectories agree up to it), none less deeply, and on
    # average deeper; the samples never broken get the same point.
    from odenets.robustness.base import cross_entropy_loss

    model = _trained()
    x, y = digits("test")
    x, y = x[:96], y[:96]
    first = create_attack("apgd_ce", eps=0.06, steps=30, restarts=restarts, seed=5)
    deepest = first.for_transfer()
    assert (first.deepest, deepest.deepest) == (False, True)
    assert deepest.settings()["returns"] == "deepest misclassified iterate"
    assert "returns" not in first.settings()
    a, b = first(model, x, y), deepest(model, x, y)
    assert (b - x).abs().amax() <= 0.06 + 1e-6 and 0 <= float(b.min()) <= float(b.max()) <= 1
    with torch.no_grad():
        logits_a, logits_b = model(a), model(b)
    broken = logits_a.argmax(1) != y
    assert 10 < int(broken.sum()) < 90
    assert torch.equal(logits_b.argmax(1) != y, broken)
    loss_a, loss_b = cross_entropy_loss(logits_a, y), cross_entropy_loss(logits_b, y)
    assert bool((loss_b[broken] >= loss_a[broken] - 1e-5).all())
    assert float(loss_b[broken].mean()) > float(loss_a[broken].mean()) + 0.1
    torch.testing.assert_close(b[~broken], a[~broken], rtol=0, atol=1e-6)
