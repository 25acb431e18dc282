"""Seeded index subsets and splits: the test subsets of `--limit` / `test_limit` and the
stratified splits of the digits set and the validation split."""

from __future__ import annotations

import numpy as np


def subset_indices(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a fixed, seeded subset of `limit` of `n` items.

    Args:
        n: number of items.
        limit: subset size; None, or `limit >= n`, gives every index.
        seed: the subset depends only on (n, limit, seed).

    Returns:
        int64 array (min(limit, n),), increasing.

    Raises:
        ValueError: limit < 1.
    """
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise ValueError(f"limit must be >= 1; got {limit}")
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


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
