"""Seeded, stratified index splits shared by the digits set and the validation split."""

from __future__ import annotations

import numpy as np


def stratified_split(
    labels: np.ndarray, fraction: float, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices so that about `fraction` of every class goes to the second part.

    Args:
        labels: int array (N,).
        fraction: share of each class in the second part, in (0, 1).
        seed: the split depends only on the labels, the fraction and this seed.

    Returns:
        (first, second): sorted int64 index arrays that partition range(N).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1); got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    second = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = int(round(fraction * len(members)))
        second.append(rng.permutation(members)[:k])
    second = np.sort(np.concatenate(second)).astype(np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[second] = False
    return np.flatnonzero(mask).astype(np.int64), second
