"""Pattern-dependent depth of NAIS-Nets: histogram, depth per class, extreme images.

The per-block step counts come from `odenets.analysis.depth.measure_depth`; an image's
processing depth is the total number of unrolled steps over all NAIS blocks.
"""

from __future__ import annotations

import numpy as np
import torch


def depth_summary(
    steps: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    num_classes: int | None = None,
    extremes: int = 8,
) -> dict[str, np.ndarray]:
    """Statistics of per-image depth.

    Args:
        steps: (N, blocks) integer steps used per NAIS block (or (N,) totals).
        labels: (N,) class indices.
        num_classes: number of classes (default: max label + 1).
        extremes: how many lowest- and highest-depth images to index.

    Returns:
        ``{"depth": (N,) total steps, "values": (V,) distinct integer depths from min to
        max, "counts": (V,) images per depth (sums to N), "per_block_mean": (blocks,),
        "class_mean": (K,), "class_std": (K,), "class_count": (K,),
        "lowest": (e,) and "highest": (e,) image indices (lowest first, highest first;
        ties broken by index)}``. Classes without images get NaN mean and std.
    """
    steps = np.asarray(steps.cpu() if isinstance(steps, torch.Tensor) else steps)
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if steps.ndim == 1:
        steps = steps[:, None]
    if steps.ndim != 2 or len(steps) != len(labels) or len(labels) == 0:
        raise ValueError(
            f"steps must be (N, blocks) and labels (N,) with N > 0; got {steps.shape} and "
            f"{labels.shape}"
        )
    depth = steps.sum(axis=1).astype(np.int64)  # (N,)
    values = np.arange(depth.min(), depth.max() + 1)
    counts = np.bincount(depth - depth.min(), minlength=len(values))
    k = int(num_classes if num_classes is not None else labels.max() + 1)
    class_count = np.bincount(labels, minlength=k)
    class_sum = np.bincount(labels, weights=depth, minlength=k)
    class_sq = np.bincount(labels, weights=depth.astype(np.float64) ** 2, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        class_mean = class_sum / class_count
        class_std = np.sqrt(np.maximum(class_sq / class_count - class_mean**2, 0.0))
    order = np.argsort(depth, kind="stable")
    e = min(extremes, len(depth))
    return {
        "depth": depth,
        "values": values,
        "counts": counts,
        "per_block_mean": steps.mean(axis=0),
        "class_mean": class_mean,
        "class_std": class_std,
        "class_count": class_count,
        "lowest": order[:e],
        "highest": np.argsort(-depth, kind="stable")[:e],
    }
