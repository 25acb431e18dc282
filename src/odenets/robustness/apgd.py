"""Auto-PGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), L∞, untargeted, written from the paper.

Algorithm 1 of the paper, per sample:

    η⁽⁰⁾ = 2ε;  x⁽¹⁾ = P(x⁽⁰⁾ + η⁽⁰⁾ sign ∇f(x⁽⁰⁾))
    z⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + η⁽ᵏ⁾ sign ∇f(x⁽ᵏ⁾))
    x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α (z⁽ᵏ⁺¹⁾ - x⁽ᵏ⁾) + (1 - α)(x⁽ᵏ⁾ - x⁽ᵏ⁻¹⁾)),  α = 0.75 (momentum)

P projects on the ε-ball around the clean image and clamps to the valid range. At the
checkpoints w_j = ⌈p_j N_iter⌉, p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
0.06), the step is halved and the iterate restarts from the best point x_max when either

1. the loss went up in fewer than ρ = 0.75 of the steps since the last checkpoint, or
2. the step was not halved at the last checkpoint and the best loss has not improved since.

The returned point is, per sample, the first iterate that is misclassified if there is one
(as AutoAttack counts it), else x_max. With `deepest` (what a transfer attack crafts on its
surrogate) every sample runs every step and the point returned is its misclassified iterate
of highest loss, else x_max: the same samples are broken, more deeply, since a point just
across the attacked network's boundary transfers badly to another network. The losses are
the cross-entropy (`apgd_ce`) and the difference of logits ratio (`apgd_dlr`):

    DLR(x, y) = -(z_y - max_{i≠y} z_i) / (z_π1 - z_π3 + 1e-12)

with z_π1 ≥ z_π2 ≥ ... the sorted logits; it needs at least 3 classes. The random start
is x + ε t / ‖t‖∞ with t ~ U(-1, 1), as in AutoAttack; restarts draw new starts and keep
the worst result per sample.
"""

from __future__ import annotations

import copy
import math

import torch

from odenets.robustness.base import (
    Attack,
    Space,
    cross_entropy_loss,
    keep_worst,
    register_attack,
)

MOMENTUM = 0.75  # α of the paper: weight of the new step against the previous update
RHO = 0.75  # condition 1: fraction of steps that must increase the loss


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (N,) for logits (N, K), K >= 3; higher is more adversarial."""
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes; got {logits.shape[1]}")
    top, _ = logits.sort(dim=1, descending=True)  # (N, K)
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return -(true - other) / (top[:, 0] - top[:, 2] + 1e-12)


def checkpoints(n_iter: int) -> list[int]:
    """Iterations w_1 < w_2 < ... < N_iter at which the step size may be halved.

    The fractions p_j are kept in integer hundredths so that ⌈p_j N⌉ is exact.
    """
    p_prev, p, out = 0, 22, []
    while p <= 100:
        w = -(-p * n_iter // 100)  # ceil(p / 100 * n_iter)
        if 0 < w < n_iter and (not out or w > out[-1]):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 3, 6)
    return out


def compaction_interval(device: torch.device) -> int:
    """Steps between two drops of the broken samples from APGD's batch: each drop reads a
    count on the host, free on CPU, a synchronisation on CUDA."""
    return 1 if device.type == "cpu" else 10


class APGD(Attack):
    """Auto-PGD, L∞, with the paper's step-size schedule (see the module docstring)."""

    category = "multi-step"
    options = {"steps": "apgd_steps"}
    loss_name = "ce"

    def __init__(
        self,
        *,
        eps: float,
        steps: int = 100,
        restarts: int = 1,
        random_start: bool = True,
        threat_model: str = "pixel",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        deepest: bool = False,
    ):
        super().__init__(eps=eps, threat_model=threat_model, seed=seed, dtype=dtype)
        if steps < 1:
            raise ValueError(f"steps must be >= 1; got {steps}")
        if restarts < 1:
            raise ValueError(f"restarts must be >= 1; got {restarts}")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.random_start = bool(random_start)
        self.deepest = bool(deepest)

    def settings(self) -> dict:
        return {
            "eps": self.eps,
            "steps": self.steps,
            "alpha": 2 * self.eps,  # the initial step; halved by the schedule
            "restarts": self.restarts,
            "random_start": self.random_start,
            "loss": self.loss_name,
            **({"returns": "deepest misclassified iterate"} if self.deepest else {}),
        }

    @property
    def stops_early(self) -> bool:
        """A broken sample leaves the batch, unless every sample runs on (`deepest`)."""
        return not self.deepest

    def for_transfer(self) -> APGD:
        """This attack in its `deepest` form (a copy), for crafting on a surrogate."""
        deepest = copy.copy(self)
        deepest.deepest = True
        return deepest

    def loss_fn(self, logits, labels):
        return (
            cross_entropy_loss(logits, labels)
            if self.loss_name == "ce"
            else dlr_loss(logits, labels)
        )

    def perturb(self, space: Space, z, labels, indices):
        kept = self._single_run(space, z, labels, indices, restart=0)
        for restart in range(1, self.restarts):
            kept = keep_worst(kept, self._single_run(space, z, labels, indices, restart=restart))
        return kept[0]

    def _start(self, space: Space, z, indices, restart: int):
        if not self.random_start:
            return z
        t = self.random_uniform(z, indices, f"{self.name}/start/{restart}", -1.0, 1.0)
        t_max = t.flatten(1).abs().amax(dim=1).view(-1, 1, 1, 1)
        return space.clamp(z + self.eps * t / (t_max + 1e-12))

    def _single_run(self, space: Space, z, labels, indices, *, restart: int):
        """One run of Algorithm 1; returns (point, its loss, misclassified) per sample.

        A sample leaves the batch at its first misclassified iterate, which is its result:
        every quantity of the schedule is per sample (and the network is in eval mode), so
        the samples still running follow the same trajectories as in the full batch, and
        the broken ones cost nothing more. On a network that most samples fail against this
        saves most of the forward and backward passes.
        """
        view = (-1, 1, 1, 1)
        marks = set(checkpoints(self.steps))

        x = self._start(space, z, indices, restart)
        loss, grad, logits = self.loss_and_grad(space, x, labels, self.loss_fn)
        wrong = logits.argmax(1) != labels  # (N,) over the whole batch
        out = x.clone()  # per sample: its first (deepest) misclassified iterate, else x_max
        out_loss = torch.full_like(loss, math.inf)
        if self.deepest:  # the loss of the misclassified point kept, -inf while there is none
            out_loss = torch.where(wrong, loss, -math.inf)

        # The state of the samples still running: `live` indexes them in the whole batch.
        live = torch.arange(len(z), device=z.device)
        z_live, labels_live = z, labels
        x_max, loss_max, grad_max = x.clone(), loss.clone(), grad.clone()
        eta = torch.full((len(z),), 2 * self.eps, device=z.device, dtype=z.dtype)
        x_prev = x
        increases = torch.zeros(len(z), device=z.device)  # steps since w_{j-1} that raised f
        last_mark, loss_max_at_mark = 0, loss_max.clone()
        halved_at_mark = torch.zeros(len(z), dtype=torch.bool, device=z.device)
        every = compaction_interval(z.device)
        done = torch.zeros_like(wrong) if self.deepest else wrong.clone()  # left the batch

        for k in range(self.steps + 1):
            if k % every == 0 or k == self.steps:
                keep = ~done
                if not bool(keep.all()):
                    live, z_live, labels_live = live[keep], z_live[keep], labels_live[keep]
                    x, x_prev, grad, loss = x[keep], x_prev[keep], grad[keep], loss[keep]
                    x_max, grad_max, loss_max = x_max[keep], grad_max[keep], loss_max[keep]
                    eta, increases = eta[keep], increases[keep]
                    halved_at_mark, loss_max_at_mark = halved_at_mark[keep], loss_max_at_mark[keep]
                    done = done[keep]
            if k == self.steps or len(live) == 0:
                break
            step = space.project(x + eta.view(view) * grad.sign(), z_live, self.eps)
            if k > 0:  # x⁽¹⁾ is a plain step; momentum from the second step on
                step = space.project(
                    x + MOMENTUM * (step - x) + (1 - MOMENTUM) * (x - x_prev), z_live, self.eps
                )
            x_prev, x = x, step
            new_loss, grad, logits = self.loss_and_grad(space, x, labels_live, self.loss_fn)
            increased = (new_loss > loss).float()  # the comparison i = k of condition 1
            loss = new_loss

            now_wrong = logits.argmax(1) != labels_live
            if self.deepest:  # every sample runs on; keep its misclassified point of most loss
                deeper = now_wrong & (loss > out_loss[live])
                out[live] = torch.where(deeper.view(view), x, out[live])
                out_loss[live] = torch.where(deeper, loss, out_loss[live])
                wrong[live] = wrong[live] | now_wrong
            else:
                newly_wrong = now_wrong & ~done
                out[live] = torch.where(newly_wrong.view(view), x, out[live])
                wrong[live] = wrong[live] | newly_wrong
                done = done | newly_wrong

            better = loss > loss_max
            x_max = torch.where(better.view(view), x, x_max)
            grad_max = torch.where(better.view(view), grad, grad_max)
            loss_max = torch.where(better, loss, loss_max)

            if k in marks:
                cond1 = increases < RHO * (k - last_mark)
                cond2 = ~halved_at_mark & (loss_max <= loss_max_at_mark)
                halve = cond1 | cond2
                eta = torch.where(halve, eta / 2, eta)
                x = torch.where(halve.view(view), x_max, x)
                grad = torch.where(halve.view(view), grad_max, grad)
                loss = torch.where(halve, loss_max, loss)
                halved_at_mark = halve
                loss_max_at_mark = loss_max.clone()
                increases.zero_()
                last_mark = k
            increases += increased

        # The samples never misclassified: their most adversarial point and its loss.
        never = ~wrong[live]
        out[live] = torch.where(never.view(view), x_max, out[live])
        out_loss[live] = torch.where(never, loss_max, out_loss[live])
        return out, out_loss, wrong


@register_attack("apgd_ce")
class APGDCE(APGD):
    """APGD on the cross-entropy loss."""

    title = "APGD-CE"

    loss_name = "ce"


@register_attack("apgd_dlr")
class APGDDLR(APGD):
    """APGD on the difference-of-logits-ratio loss (scale invariant; needs K >= 3)."""

    title = "APGD-DLR"

    loss_name = "dlr"
