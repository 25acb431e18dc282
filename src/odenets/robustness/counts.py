"""Accuracies kept with their integer counts: every eval.json entry carries `correct` and `n`
beside its `accuracy`, so the shards of one evaluation sum exactly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def frac(correct: int, n: int) -> float:
    """correct / n, NaN when there is nothing to count."""
    return correct / n if n else float("nan")


def entry_counts(entry: dict, mask: torch.Tensor, *, samples: bool = False) -> dict:
    """`entry` with the accuracy, `correct` and `n` of a bool (N,) correct mask appended,
    and with `samples` the mask itself (`sample_bits`)."""
    correct, n = int(mask.sum()), len(mask)
    out = {**entry, "accuracy": frac(correct, n), "correct": correct, "n": n}
    if samples:
        out["samples"] = sample_bits(mask)
    return out


def sample_bits(mask: torch.Tensor) -> str:
    """A bool (N,) mask as eval.json records it per sample: N characters, "1" where the
    sample counts correct, in the order of the evaluation's "samples"["indices"]."""
    return "".join("1" if v else "0" for v in mask.tolist())


def sum_entries(group: Sequence[Mapping]) -> dict:
    """One entry from the same entry of several shards: counts and times summed, lists of
    sample indices joined (AutoAttack's sub-attacks), flags gathered once each."""
    out = {**group[0], "n": sum(e["n"] for e in group)}
    if "correct" in out:
        out["correct"] = sum(e["correct"] for e in group)
        out["accuracy"] = frac(out["correct"], out["n"])
    if "time_s" in out:
        out["time_s"] = round(sum(e["time_s"] for e in group), 3)
    if "samples" in out:  # joined in shard order; gone if one shard (an older one) lacks it
        if all("samples" in e for e in group):
            out["samples"] = "".join(e["samples"] for e in group)
        else:
            del out["samples"]
    for key, value in group[0].items():
        if key.endswith("_indices") or key == "broken":
            out[key] = sorted(i for e in group for i in e[key])
        elif (
            isinstance(value, int)
            and not isinstance(value, bool)
            and key.endswith(("_only", "clean_correct", "broke"))
        ):
            out[key] = sum(e[key] for e in group)
    if "sub_attacks" in out:
        out["sub_attacks"] = [
            sum_entries(subs) for subs in zip(*(e["sub_attacks"] for e in group), strict=True)
        ]
    if "flags" in out:
        out["flags"] = list(dict.fromkeys(f for e in group for f in e["flags"]))
    return out
