"""Seeded subsets: one routine behind --limit, test_limit / train_limit and the figures."""

from __future__ import annotations

import numpy as np
import pytest

from odenets.data.splits import subset_indices


def test_subset_is_the_historical_seeded_draw():
    # Run folders and eval.json files record results on these subsets: they must not move.
    for n, limit, seed in [(10_000, 256, 0), (10_000, 1000, 3), (50, 7, 11)]:
        want = np.sort(np.random.default_rng(seed).permutation(n)[:limit])
        np.testing.assert_array_equal(subset_indices(n, limit, seed), want)
    np.testing.assert_array_equal(subset_indices(100, 5, 1), [6, 8, 16, 48, 81])


def test_subset_invariants():
    idx = subset_indices(1000, 100, seed=4)
    assert idx.dtype == np.int64 and len(np.unique(idx)) == 100 and np.all(np.diff(idx) > 0)
    assert idx.min() >= 0 and idx.max() < 1000
    assert not np.array_equal(idx, subset_indices(1000, 100, seed=5))
    for limit in (None, 1000, 5000):
        np.testing.assert_array_equal(subset_indices(1000, limit, seed=4), np.arange(1000))


@pytest.mark.parametrize("limit", [0, -3])
def test_subset_refuses_a_limit_below_one(limit):
    with pytest.raises(ValueError, match=f"limit must be >= 1; got {limit}"):
        subset_indices(10, limit, 0)


def test_evaluate_takes_the_same_subset():
    from odenets.robustness.runs import eval_indices

    order, shard = eval_indices(10_000, limit=64, seed=2, shard=None)
    np.testing.assert_array_equal(order, subset_indices(10_000, 64, 2))
    assert shard is None
