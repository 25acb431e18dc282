"""Plain eager re-implementations of the CIFAR pre-activation ResNets, the baseline the
training-throughput benchmark compares the odenets models with, and the name lookup that
builds either kind. Imported by the training-throughput scripts, which put this folder on
`sys.path`.

    ref_resnet{D}             pre-activation ResNet
    ref_in_resnet{D}          In-ResNet, junction written out in eager PyTorch
    ref_lambda_in_resnet{D}   λ-In-ResNet as in the authors' code: f evaluated twice
    ref_in_resnet_gating{D}   In-ResNet-gating: a 1x1 convolution d = W x + b, then
                              (1 - ReLU(d)) x + f written out
    ref_in_resnet_gating_sig{D}  the same with a sigmoid gate
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import odenets

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class _RefBlock(nn.Module):
    """Pre-activation basic block: BN, ReLU, conv3x3 (stride), BN, ReLU, conv3x3."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, stride, bias=False)
            )

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))


class RefNet(nn.Module):
    """The CIFAR pre-activation ResNet of the In-ResNet experiments in plain eager PyTorch.

    `junction` is "resnet" (x + f), "in_resnet" ((1 - ReLU(λ)) x + f, λ = ReLU(1 - k)),
    "lambda_twice" ((1 - ReLU(k)) x + f + ReLU(k) f with f evaluated twice, as the authors'
    λ-In-ResNet does), "gating" or "gating_sig" ((1 - act(d)) x + f with d a 1x1 convolution
    of x with bias, act ReLU or sigmoid, starting at W = 0 and λ = act(b) in [0.2, 0.25]).
    The first block and the two downsampling blocks stay residual.
    """

    def __init__(self, depth: int, junction: str, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.junction = junction
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        blocks, cin = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(_RefBlock(cin, width, stride if i == 0 else 1))
                cin = width
        self.blocks = nn.ModuleList(blocks)
        self.ks = nn.Parameter(torch.empty(len(blocks)).uniform_(0.75, 0.80))
        self.gates = nn.ModuleList()
        if junction.startswith("gating"):
            for i, block in enumerate(blocks):
                if i == 0 or block.shortcut is not None:  # residual blocks have no gate
                    self.gates.append(nn.Identity())
                    continue
                width = block.conv2.out_channels
                gate = nn.Conv2d(width, width, 1, bias=True)
                lam = torch.empty(width).uniform_(0.20, 0.25)
                with torch.no_grad():
                    gate.weight.zero_()
                    gate.bias.copy_(torch.logit(lam) if junction == "gating_sig" else lam)
                self.gates.append(gate)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1((images - self.mean) / self.std)
        for i, block in enumerate(self.blocks):
            if i == 0 or block.shortcut is not None or self.junction == "resnet":
                identity = x if block.shortcut is None else block.shortcut(x)
                x = identity + block.f(x)
            elif self.junction == "in_resnet":
                lam = F.relu(1 - self.ks[i])
                x = (1 - F.relu(lam)) * x + block.f(x)
            elif self.junction.startswith("gating"):
                d = self.gates[i](x)
                lam = torch.sigmoid(d) if self.junction == "gating_sig" else F.relu(d)
                x = (1 - lam) * x + block.f(x)
            else:
                lam = F.relu(self.ks[i])
                x = (1 - lam) * x + block.f(x) + lam * block.f(x)
        x = F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1)
        return self.fc(x)


REF_JUNCTIONS = {
    "ref_resnet": "resnet",
    "ref_in_resnet": "in_resnet",
    "ref_lambda_in_resnet": "lambda_twice",
    "ref_in_resnet_gating": "gating",
    "ref_in_resnet_gating_sig": "gating_sig",
}


def build_model(name: str, num_classes: int) -> nn.Module:
    """A `ref_*{D}` reference net by name, else the registered odenets model of that name."""
    for prefix, junction in REF_JUNCTIONS.items():
        depth = name.removeprefix(prefix)
        if name.startswith(prefix) and depth.isdigit():
            if (int(depth) - 2) % 6:
                raise SystemExit(f"{name}: reference nets need depth 6N+2; got {depth}")
            return RefNet(int(depth), junction, num_classes)
    return odenets.create_model(name, num_classes=num_classes)
