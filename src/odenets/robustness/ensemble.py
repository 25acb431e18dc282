"""Ensembles: the averaged softmax of several networks as one `nn.Module`.

`forward` returns log(mean_m softmax(model_m(x))), a valid log-probability, so the
cross-entropy of the ensemble is the cross-entropy of its averaged prediction and an attack
differentiates through every member at once. An ensemble of N copies of one network gives
the same predictions and the same attacks as the network itself (`evaluate` runs a single
network as an ensemble of one, whose output is its log-softmax, so the two paths compare).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from odenets.models.base import takes_check_input


class Ensemble(nn.Module):
    """Averaged-softmax ensemble with the surface attacks use (`normalize`,
    `forward_normalized`) when all members share one normalisation.

    Args:
        models: the members; each takes images (N, C, H, W) in [0, 1] and returns logits.
    """

    family = "ensemble"

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if len(models) == 0:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)
        self._takes_check_input = [takes_check_input(m) for m in models]
        names = sorted({getattr(m, "model_name", type(m).__name__) for m in models})
        self.model_name = "ensemble(" + "+".join(names) + ")"
        self.in_chans = getattr(models[0], "in_chans", None)
        self.normalize = _shared_normalize(models)

    def forward(self, images: torch.Tensor, *, check_input: bool | None = None) -> torch.Tensor:
        """Log of the mean softmax (N, num_classes) for images (N, C, H, W) in [0, 1].

        `check_input` is passed to every member that takes it (odenets networks refuse
        images outside [0, 1]; None: each member's own setting).
        """
        if check_input is None:
            return self._average([m(images) for m in self.members])
        return self._average(
            [
                m(images, check_input=check_input) if takes else m(images)
                for m, takes in zip(self.members, self._takes_check_input, strict=True)
            ]
        )

    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the mean softmax for standardised input (needs a shared normalisation)."""
        if self.normalize is None:
            raise ValueError(
                "the members of this ensemble normalise their input differently, so there is "
                "no single normalised space; use the pixel threat model"
            )
        return self._average([m.forward_normalized(x) for m in self.members])

    def _average(self, logits: list[torch.Tensor]) -> torch.Tensor:
        log_probs = torch.stack([torch.log_softmax(z, dim=1) for z in logits])  # (M, N, K)
        # log mean exp, shifted by the (constant) member maximum. With identical members the
        # shifted terms are exactly 1, so the output equals each member's log-softmax bit for
        # bit, and for M a power of two so do the input gradients (weights 1/M are exact).
        shift = log_probs.amax(dim=0).detach()  # (N, K)
        return shift + torch.log(torch.exp(log_probs - shift).mean(dim=0))


def _shared_normalize(models: Sequence[nn.Module]) -> nn.Module | None:
    """The first member's `normalize` if every member has equal mean and std, else None."""
    norms = [getattr(m, "normalize", None) for m in models]
    if any(n is None or not hasattr(n, "mean") for n in norms) or not all(
        hasattr(m, "forward_normalized") for m in models
    ):
        return None
    first = norms[0]
    for n in norms[1:]:
        if not (
            torch.equal(n.mean.cpu(), first.mean.cpu())
            and torch.equal(n.std.cpu(), first.std.cpu())
        ):
            return None
    return first
