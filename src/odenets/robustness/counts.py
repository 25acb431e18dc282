"""Accuracies kept with their integer counts: every eval.json entry carries `correct` and `n`
beside its `accuracy`, so the shards of one evaluation sum exactly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def frac(correct: int, n: int) -> float:
    """correct / n, NaN when there is nothing to count."""
    return correct / n if n else float("nan")


def entry_counts(entry: dict, mask: torch.Tensor) -> dict:
    """`entry` with the accuracy, `correct` and `n` of a bool (N,) correct mask appended."""
    correct, n = int(mask.sum()), len(mask)
    return {**entry, "accuracy": frac(correct, n), "correct": correct, "n": n}


def sum_entries(group: Sequence[Mapping]) -> dict:
    """One entry from the same entry of several shards: counts and times summed."""
    correct, n = sum(e["correct"] for e in group), sum(e["n"] for e in group)
    out = {**group[0], "correct": correct, "n": n, "accuracy": frac(correct, n)}
    if "time_s" in out:
        out["time_s"] = round(sum(e["time_s"] for e in group), 3)
    return out
