"""Transfer attacks: adversarial examples crafted on a surrogate network and scored on the
target (Papernot et al. 2016; Carlini et al. 2019, "On Evaluating Adversarial Robustness").

A transfer attack never sees the target's gradient, so when it breaks samples that the
white-box attacks on the target do not, the target's gradient is masked, not its decision
robust (the classic case: examples made on ResNet-110, scored on In-ResNet-110). Crafted in
the same threat model as the white-box attacks, so both are measured in the same ball.
"""

from __future__ import annotations

import torch
from torch import nn

from odenets.robustness.base import Attack

TRANSFER_PREFIX = "transfer_"


class Transfer(Attack):
    """`base` run on `surrogate`; the target model given to the call is not used.

    Args:
        base: a gradient attack (e.g. ``create_attack("pgd", eps=8 / 255)``); it runs on the
            surrogate in its `for_transfer` form.
        surrogate: the network the examples are crafted on (images in [0, 1] -> logits).
        source: where the surrogate comes from (e.g. its run folder), kept in eval.json.
    """

    title = "transfer"
    kind = "transfer"

    def __init__(self, base: Attack, surrogate: nn.Module, *, source: str | None = None):
        super().__init__(
            eps=base.eps, threat_model=base.threat_model, seed=base.seed, dtype=base.dtype
        )
        self.base = base.for_transfer()
        self.surrogate = surrogate
        self.source = source
        self.name = TRANSFER_PREFIX + base.name
        self.title = f"{base.title or base.name} (transfer)"
        self.category = base.category

    @property
    def stops_early(self) -> bool:
        return self.base.stops_early

    @property
    def nonfinite_grads(self) -> int:
        return self.base.nonfinite_grads

    @nonfinite_grads.setter
    def nonfinite_grads(self, value: int) -> None:
        self._nonfinite = value

    def settings(self) -> dict:
        return {**self.base.settings(), "base": self.base.name, "source": self.source}

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The base attack's images (N, C, H, W) in [0, 1], crafted on the surrogate."""
        return self.base(self.surrogate, images, labels, indices=indices)
