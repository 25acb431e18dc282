"""A tiny network trained in about a second on the 8x8 digits, shared by the robustness
tests (attacks, APGD, evaluation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from odenets.data import load_digits
from odenets.models.base import OdeNet


class TinyNet(OdeNet):
    """Two convolutions and a linear head on (N, C, 8, 8) images; deliberately not unit std,
    so the normalized threat model differs from the pixel one."""

    family = "tiny"

    def __init__(self, *, in_chans: int = 1, num_classes: int = 10):
        super().__init__(in_chans=in_chans, mean=(0.3,), std=(0.4,))
        self.conv1 = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16 * 4 * 4, num_classes)
        self.model_name = "tinynet"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        return F.relu(self.conv2(x)).flatten(1)  # (N, 16 * 4 * 4)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


def digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as float images (N, 1, 8, 8) in [0, 1] and int64 labels."""
    images, labels = load_digits(split=split)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(labels)


def train_tiny(steps: int = 60, seed: int = 0) -> TinyNet:
    """Full-batch Adam on the digits training split; about 95% test accuracy, eval mode."""
    torch.manual_seed(seed)
    model = TinyNet()
    x, y = digits("train")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad()  # leave no .grad behind (set to None)
    return model.eval()
