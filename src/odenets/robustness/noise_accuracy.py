"""Noise accuracy per CIFAR-C corruption and severity, from seeded generated noise or the
official CIFAR-C files, and the eval.json "noise" section built from its counts."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from odenets.data.corruptions import load_cifar_c
from odenets.errors import DataError
from odenets.robustness.base import create_attack
from odenets.robustness.counts import frac
from odenets.robustness.metrics import correct_mask
from odenets.robustness.noise import CORRUPTION_OF

SEVERITIES = (1, 2, 3, 4, 5)
# CIFAR-C noise corruption -> registered perturbation name
NOISE_ATTACK = {corruption: name for name, corruption in CORRUPTION_OF.items()}


def noise_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    source: str,
    root: str | None,
    seed: int,
    run: Mapping,
) -> tuple[dict, dict, list[int]]:
    """Noise accuracy per corruption and severity; returns (eval.json section, counts, and
    per sample the number of noisy versions it is classified correctly in).

    `run` holds the keyword arguments of `correct_mask` (batch_size, indices, progress).
    """
    if source not in ("generated", "official"):
        raise ValueError(f"noise must be None, 'generated' or 'official'; got {source!r}")
    if source == "official" and root is None:
        raise ValueError("official CIFAR-C noise needs noise_root (the folder of the .npy files)")
    counts: dict[str, dict[str, int]] = {}
    per_sample = torch.zeros(len(images), dtype=torch.int64)
    for corruption, name in NOISE_ATTACK.items():
        counts[corruption] = {}
        for severity in SEVERITIES:
            desc = f"{corruption} noise {severity}"
            if source == "generated":
                attack = create_attack(name, severity=severity, seed=seed)
                mask = correct_mask(model, images, labels, attack=attack, desc=desc, **run)
            else:
                noisy = _official_noise(root, corruption, severity, run["indices"], labels)
                mask = correct_mask(model, noisy, labels, desc=desc, **run)
            counts[corruption][str(severity)] = int(mask.sum())
            per_sample += mask.to(torch.int64)
    return noise_section(counts, len(images), source), counts, per_sample.tolist()


def _official_noise(root, corruption, severity, indices, labels) -> torch.Tensor:
    images, file_labels = load_cifar_c(root, corruption, severity)
    if int(indices.max()) >= len(images):
        raise DataError(
            f"CIFAR-C {corruption} has {len(images)} images per severity; evaluation index "
            f"{int(indices.max())} is out of range"
        )
    idx = indices.cpu().numpy()
    if not (torch.as_tensor(file_labels[idx]) == labels.cpu()).all():
        raise DataError(
            f"labels of CIFAR-C {corruption} (severity {severity}) under {root} differ from "
            "the test labels: the official files follow the official CIFAR test order, so "
            "evaluate them with the official archive (dataset cifar10/cifar100), not a folder"
        )
    x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return x.float() / 255


def noise_section(counts: Mapping[str, Mapping[str, int]], n: int, source: str) -> dict:
    """The eval.json "noise" dictionary from correct counts per corruption and severity."""
    per = {}
    for corruption, by_severity in counts.items():
        accs = {s: frac(c, n) for s, c in by_severity.items()}
        per[corruption] = {**accs, "mean": sum(accs.values()) / len(accs)}
    mean = sum(p["mean"] for p in per.values()) / len(per)
    return {"source": source, "per_corruption": per, "mean": mean}
