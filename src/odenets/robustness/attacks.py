"""Sign-gradient L∞ attacks: FGSM, IFGSM, PGD and the In-ResNet authors' PGD variant.

All are untargeted and maximise the cross-entropy. ε and the step are floats in the units
of the threat model (pixel units by default; 8/255 is the usual radius). The default step
scales with the radius, α = 2.5·ε/steps in the pixel threat model, so that the steps can
cross the ball at any ε (1/255 at ε = 8/255 with 20 steps: the authors' setting), and
α = 5·ε/steps in the normalized one (2/255 at 8/255 with 20 steps, their first release).

- FGSM (Goodfellow et al. 2015): x' = clamp(x + ε sign ∇ℓ(x)).
- IFGSM / BIM (Kurakin et al. 2017): 20 steps of size α from x, each projected on the
  ε-ball around the clean x and clamped.
- PGD (Madry et al. 2018): IFGSM from a uniform random start in the ball (clamped), with
  optional restarts keeping, per sample, the worst result.
- pgd_start_centred: the authors' code after its August 2020 fix (and, in the normalized
  threat model, their first release): the random start is not clamped and the ball of the
  projection is centred on that start instead of the clean image, so the perturbation can
  reach 2ε. Kept to reproduce and explain their figures; use `pgd` for honest numbers.
"""

from __future__ import annotations

import torch

from odenets.robustness.base import Attack, Space, check_eps, keep_worst, register_attack

# α = ALPHA_RATIO[threat model] · ε / steps: the authors' α / ε at ε = 8/255 and 20 steps
# (1/255 in pixels; 2/255 in normalised units, their first release), for every ε.
ALPHA_RATIO = {"pixel": 2.5, "normalized": 5.0}


def default_alpha(threat_model: str, eps: float, steps: int) -> float:
    """The default step: 2.5·ε/steps (pixel) or 5·ε/steps (normalized); ε for 0 steps.

    Example:
        >>> round(default_alpha("pixel", 8 / 255, 20) * 255, 6)
        1.0
    """
    return ALPHA_RATIO[threat_model] * eps / steps if steps > 0 else eps


@register_attack("fgsm")
class FGSM(Attack):
    """One signed-gradient step of size ε."""

    title = "FGSM"
    category = "single-step"

    def perturb(self, space: Space, z, labels, indices):
        _, grad, _ = self.loss_and_grad(space, z, labels)
        return space.project(z + self.eps * grad.sign(), z, self.eps)


@register_attack("pgd")
class PGD(Attack):
    """Projected gradient ascent on the cross-entropy in the L∞ ball around the clean image.

    Args:
        eps: radius (threat-model units, in [0, 1]).
        alpha: step size; default 2.5·ε/steps (pixel) or 5·ε/steps (normalized).
        steps: iterations (20).
        random_start: start from a uniform point of the ball (True for pgd).
        restarts: independent random starts; each sample keeps its worst result
            (misclassified first, then highest loss).
    """

    title = "PGD"
    category = "multi-step"
    options = {"steps": "steps", "alpha": "alpha", "restarts": "pgd_restarts"}
    default_random_start = True
    centre_on_start = False

    def __init__(
        self,
        *,
        eps: float,
        alpha: float | None = None,
        steps: int = 20,
        random_start: bool | None = None,
        restarts: int = 1,
        threat_model: str = "pixel",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(eps=eps, threat_model=threat_model, seed=seed, dtype=dtype)
        if steps < 0:
            raise ValueError(f"steps must be >= 0; got {steps}")
        if alpha is None:
            alpha = default_alpha(threat_model, self.eps, steps)
        self.alpha = check_eps(alpha, "alpha")
        if restarts < 1:
            raise ValueError(f"restarts must be >= 1; got {restarts}")
        self.steps = int(steps)
        self.random_start = self.default_random_start if random_start is None else random_start
        self.restarts = int(restarts)

    def settings(self) -> dict:
        return {
            "eps": self.eps,
            "steps": self.steps,
            "alpha": self.alpha,
            "restarts": self.restarts,
            "random_start": self.random_start,
        }

    def perturb(self, space: Space, z, labels, indices):
        best = self._single_run(space, z, labels, indices, restart=0)
        if self.restarts == 1:
            return best
        kept = self._scored(space, best, labels)
        for restart in range(1, self.restarts):
            cand = self._single_run(space, z, labels, indices, restart=restart)
            kept = keep_worst(kept, self._scored(space, cand, labels))
        return kept[0]

    def _scored(self, space: Space, z, labels):
        loss, _, logits = self.loss_and_grad(space, z, labels)
        return z, loss, logits.argmax(1) != labels

    def _start(self, space: Space, z, indices, restart: int):
        if not self.random_start:
            return z
        noise = self.random_uniform(z, indices, f"{self.name}/start/{restart}", -self.eps, self.eps)
        if self.centre_on_start:
            return z + noise  # the authors do not clamp the start
        return space.clamp(z + noise)

    def _single_run(self, space: Space, z, labels, indices, *, restart: int):
        adv = self._start(space, z, indices, restart)
        centre = adv.detach() if self.centre_on_start else z
        for _ in range(self.steps):
            _, grad, _ = self.loss_and_grad(space, adv, labels)
            adv = space.project(adv + self.alpha * grad.sign(), centre, self.eps)
        return space.clamp(adv)


@register_attack("ifgsm")
class IFGSM(PGD):
    """Iterative FGSM (BIM): PGD without a random start."""

    title = "IFGSM"
    options = {"steps": "steps", "alpha": "alpha"}

    default_random_start = False


@register_attack("pgd_start_centred")
class PGDStartCentred(PGD):
    """The authors' PGD: unclamped random start, ball centred on it (reaches up to 2ε)."""

    title = "PGD (start-centred)"
    options = {"steps": "steps", "alpha": "alpha"}

    centre_on_start = True
