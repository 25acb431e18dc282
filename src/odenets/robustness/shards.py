"""Shards of one evaluation: the contiguous slice each shard evaluates, and the exact merge
of their eval.json results (counts summed, accuracies and checks recomputed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from odenets.robustness.checks import sanity_checks
from odenets.robustness.counts import frac, sum_entries
from odenets.robustness.masking import diagnostics, norm_stats, verdict
from odenets.robustness.noise_accuracy import noise_section

_SAME_KEYS = (
    "runs",
    "models",
    "ensemble",
    "dataset",
    "split",
    "seed",
    "weights",
    "transfer_from",
    "transfer_weights",
)
# Keys eval.json gained later: compared only where both shards have them.
_ADDED_KEYS = frozenset({"transfer_weights"})
_ATTACK_KEYS = ("name", "threat_model", "eps", "steps", "alpha", "restarts")


def shard_slice(n: int, index: int, count: int) -> tuple[int, int]:
    """[start, stop) of shard `index` (0-based) of `count` contiguous, disjoint shards."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be i/n with 0 <= i < n; got {index}/{count}")
    return index * n // count, (index + 1) * n // count


def merge_shards(shards: Sequence[Mapping]) -> dict:
    """Sum the counts of the shards of one evaluation into the unsharded result.

    Every shard i/n of the same evaluation must be present exactly once; settings must agree.
    """
    count = _check_shards(shards)
    shards = sorted(shards, key=lambda s: s["shard"]["index"])  # per-sample records join in order
    first = shards[0]
    merged = {k: v for k, v in first.items() if k not in ("shard",)}
    n = sum(s["n"] for s in shards)
    merged["n"] = n
    clean = sum(s["counts"]["clean"] for s in shards)
    merged["clean"] = frac(clean, n)
    counts = _merged_counts(shards, clean)
    if first.get("noise"):
        noise = _noise_counts(shards)
        counts["noise"] = noise
        merged["noise"] = noise_section(noise, n, first["noise"]["source"])
    for key in ("attacks", "worst_case", "gaussian"):
        if key in first:
            merged[key] = [
                sum_entries(group) for group in zip(*(s[key] for s in shards), strict=True)
            ]
    merged["counts"] = counts
    merged.pop("samples", None)
    if all(s.get("samples") for s in shards):  # else a shard written by an older odenets
        merged["samples"] = _merged_samples([s["samples"] for s in shards])
    merged["shard"] = None
    merged["merged_shards"] = count
    merged["wall_time_s"] = sum(s.get("wall_time_s", 0.0) for s in shards)
    merged["checks"] = sanity_checks(merged) if first.get("checks") else []
    if first.get("masking"):
        merged["masking"] = _merged_masking([s["masking"] for s in shards])
        if "diagnostics" in first["masking"]:
            merged["masking"]["diagnostics"] = diagnostics(merged)
            merged["masking"]["verdict"] = verdict(merged["masking"]["diagnostics"])
    return merged


def _merged_samples(sections: Sequence[Mapping]) -> dict:
    """The per-sample records of the shards (in shard order), joined."""
    noise = [s.get("noise") for s in sections]
    return {
        "indices": [i for s in sections for i in s["indices"]],
        "clean": "".join(s["clean"] for s in sections),
        "noise": None if any(v is None for v in noise) else [c for v in noise for c in v],
    }


def _merged_masking(sections: Sequence[Mapping]) -> dict:
    """The "masking" evidence summed over the shards; the gradient-norm statistics from the
    per-sample values each shard keeps (an older shard without them gives none)."""
    first = sections[0]
    out = {
        key: [sum_entries(group) for group in zip(*(s[key] for s in sections), strict=True)]
        for key in ("beyond_white_box",)
    }
    out["pgd_steps"] = [
        {**rows[0], "runs": [sum_entries(g) for g in zip(*(r["runs"] for r in rows), strict=True)]}
        for rows in zip(*(s["pgd_steps"] for s in sections), strict=True)
    ]
    grads = [s.get("grad_norm") for s in sections]
    out["grad_norm"] = None
    if grads[0] is not None and all(g is not None and "values" in g for g in grads):
        values = [v for g in grads for v in g["values"]]
        out["grad_norm"] = {
            **{k: v for k, v in grads[0].items() if k != "values"},
            **norm_stats(values),
        }
    return {**{k: v for k, v in first.items() if k not in out}, **out}


def _check_shards(shards: Sequence[Mapping]) -> int:
    """Raise unless `shards` are shards 0..n-1 of one evaluation, once each; returns n."""
    if not shards:
        raise ValueError("no shard results to merge")
    infos = [s.get("shard") for s in shards]
    if any(i is None for i in infos):
        raise ValueError("every file to merge must come from `odenets evaluate --shard i/n`")
    count = infos[0]["count"]
    got = sorted(i["index"] for i in infos)
    if got != list(range(count)) or any(i["count"] != count for i in infos):
        raise ValueError(f"need shards 0..{count - 1} of {count} exactly once; got {got}")
    first = shards[0]
    for s in shards[1:]:
        for key in _SAME_KEYS:
            if key in _ADDED_KEYS and (key not in s or key not in first):
                continue  # a shard written by an older odenets
            if s.get(key) != first.get(key):
                raise ValueError(
                    f"shards disagree on {key!r}: {s.get(key)!r} vs {first.get(key)!r}"
                )
        if [_attack_key(a) for a in s["attacks"]] != [_attack_key(a) for a in first["attacks"]]:
            raise ValueError("shards were evaluated with different attacks or radii")
    _check_coverage(shards)
    return count


def _check_coverage(shards: Sequence[Mapping]) -> None:
    """Raise unless the shards' [start, stop) slices tile one set of `total` samples, each
    holding its own n samples (shards of another --limit or data set do not merge)."""
    infos = sorted((s["shard"] for s in shards), key=lambda i: i["index"])
    if any(key not in i for i in infos for key in ("start", "stop", "total")):
        return  # shards made through the API without the slice bounds
    totals = sorted({i["total"] for i in infos})
    if len(totals) > 1:
        raise ValueError(f"shards come from evaluation sets of different sizes: {totals}")
    position = 0
    for info, s in zip(infos, sorted(shards, key=lambda s: s["shard"]["index"]), strict=True):
        if info["start"] != position or s["n"] != info["stop"] - info["start"]:
            raise ValueError(
                f"shard {info['index']}/{info['count']} holds samples [{info['start']}, "
                f"{info['stop']}) with n = {s['n']}; expected to start at {position}"
            )
        position = info["stop"]
    if position != totals[0]:
        raise ValueError(f"the shards cover {position} of {totals[0]} samples")


def _attack_key(entry: Mapping) -> tuple:
    return tuple(entry.get(k) for k in _ATTACK_KEYS)


def _merged_counts(shards: Sequence[Mapping], clean: int) -> dict:
    """The "counts" section summed over the shards (ε = 1 only if every shard ran it)."""
    counts = {"clean": clean, "eps1": None, "nonfinite_grads": 0}
    counts["nonfinite_grads"] = sum(s["counts"].get("nonfinite_grads", 0) for s in shards)
    if all(s["counts"].get("eps1") for s in shards):
        counts["eps1"] = {
            key: sum(s["counts"]["eps1"][key] for s in shards) for key in ("correct", "n")
        }
    return counts


def _noise_counts(shards: Sequence[Mapping]) -> dict[str, dict[str, int]]:
    """Correct counts per corruption and severity summed over the shards."""
    return {
        c: {sev: sum(s["counts"]["noise"][c][sev] for s in shards) for sev in by_sev}
        for c, by_sev in shards[0]["counts"]["noise"].items()
    }
