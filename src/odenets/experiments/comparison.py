"""In words, from a table's numbers: is an In-ResNet-family network more robust than the
plain ResNet of the same depth on this data?

Each robustness column of a row of the In-ResNet family (in_resnet, lambda_in_resnet and
their sigmoid / gated variants) is compared with the same column of the ResNet row of the
same depth on the same data set. The rule: the difference d of the two accuracies counts as
"more robust" (d > 0) or "less robust" (d < 0) when |d| exceeds `MARGIN_SE` standard errors
of the difference, sqrt(se_a² + se_b²); otherwise there is "no clear difference". The
standard error of one row's accuracy p (a fraction) is the binomial sqrt(p (1 - p) / N), N
the distinct test images behind its runs (`distinct_images`: k seeds scored on one fixed
subset of n images are N = n, not k n), or, over several seeds, the seeds' standard error
s / sqrt(k) where that is larger. Both networks see the same test images, so the
independent-samples error is, if anything, too wide: a "more" is not claimed lightly.
Where the evaluations record every sample (eval.json's "samples", since they have) and the
two networks' runs scored the same images, the paired error of the per-sample differences
is used instead (`paired_standard_error`): the samples both get right or both get wrong
cancel, and only those where they disagree count. With one run a side and right-or-wrong
records, the exact McNemar test on those samples must also give p < `EXACT_LEVEL`
(`exact_mcnemar_p`): with few of them the normal approximation is too generous.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from odenets.experiments.aggregate import DONE, TableRow, attack_metrics, metric_title
from odenets.experiments.further import Column, measurement_key
from odenets.experiments.results import WORST_CASE, SampleRecord

MARGIN_SE = 2.0  # a difference counts when it exceeds this many standard errors
EXACT_LEVEL = 0.05  # and, where the exact McNemar test applies, when its p is below this
_ZOO_NAME = re.compile(r"(?P<family>[a-z_]+?)(?P<depth>\d+)")


def rule(paired: bool) -> str:
    """The verdict rule in words, for a table or verdict whose comparisons include a paired
    one (`paired`) or not: the paired error is explained only where it is used."""
    head = (
        f"Rule: a difference counts (more or less robust) when it exceeds {MARGIN_SE:g} "
        "standard errors of the difference; otherwise: no clear difference."
    )
    independent = (
        "that of two independent accuracies, each the binomial √(p(1 − p)/N), N the "
        "distinct test images behind the row's runs (seeds scored on the same images count "
        "them once), or over several seeds the seeds' s/√k when larger."
    )
    if not paired:
        return f"{head} The standard error is {independent}"
    return (
        f'{head} Marked "paired": both networks\' evaluations record each sample and scored '
        "the same test images, and the standard error is the paired one, of the mean "
        "per-sample difference (runs paired by seed); with one run each and a right-or-wrong "
        "record per sample, the exact McNemar test on the samples where they disagree must "
        f"also give p < {EXACT_LEVEL:g} (its p is shown). Elsewhere the standard error is "
        f"{independent}"
    )


@dataclass(frozen=True)
class Comparison:
    """One column of an In-ResNet-family row against the same-depth ResNet row."""

    metric: str
    ours: float  # percent, the In-ResNet-family row's mean
    base: float  # percent, the ResNet row's mean
    se: float  # percentage points, standard error of the difference
    paired: bool = False  # se from per-sample differences on the same images
    p_exact: float | None = None  # exact McNemar p, where it applies (`exact_mcnemar_p`)

    @property
    def diff(self) -> float:
        return self.ours - self.base

    @property
    def verdict(self) -> str:
        """ "more robust", "less robust" or "no clear difference" (see `rule`)."""
        if abs(self.diff) <= MARGIN_SE * self.se:
            return "no clear difference"
        if self.p_exact is not None and self.p_exact >= EXACT_LEVEL:
            return "no clear difference"
        return "more robust" if self.diff > 0 else "less robust"


def _family_depth(row: TableRow) -> tuple[str, int] | None:
    match = _ZOO_NAME.fullmatch(row.model)  # an ensemble row ("resnet20 x 5") has none
    return None if match is None else (match["family"], int(match["depth"]))


def row_standard_error(row: TableRow, metric: str) -> float | None:
    """Standard error (percentage points) of a row's mean accuracy in `metric` (see the
    module docstring), or None when the row has no value for it."""
    cell = row.cells.get(metric)
    if cell is None or cell.mean is None:
        return None
    images = distinct_images(
        r.evaluation
        for r in row.runs
        if r.status in DONE and r.evaluation and metric in r.metrics and r.evaluation.get("n")
    )
    return standard_error([v / 100.0 for v in cell.values], images)


_IMAGE_SET = ("dataset", "split", "seed", "shard")  # with n, which test images were scored


def distinct_images(evaluations: Iterable[Mapping[str, Any]]) -> int:
    """The test images behind several evaluations' accuracies, each counted once. Seeds of
    a network scored on one fixed subset are several looks at the same n images, and its
    test-set sampling error does not shrink with them.

    Where every evaluation records its test-split positions (eval.json's
    "samples"["indices"]), the images are their union per data set and split. Otherwise
    evaluations of the same data set, split, subset seed, shard and size n count once; a
    field an evaluation lacks matches any other's lack of it (counted as the same images:
    the wider error).
    """
    evaluations = list(evaluations)
    positions = [(ev.get("samples") or {}).get("indices") for ev in evaluations]
    if evaluations and all(positions):
        union: dict[tuple, set] = {}
        for ev, indices in zip(evaluations, positions, strict=True):
            union.setdefault((repr(ev.get("dataset")), repr(ev.get("split"))), set()).update(
                indices
            )
        return sum(len(u) for u in union.values())
    sizes: dict[tuple, int] = {}
    for ev in evaluations:
        n = int(ev.get("n") or 0)
        sizes[(*(repr(ev.get(k)) for k in _IMAGE_SET), n)] = n
    return sum(sizes.values())


def standard_error(values: Sequence[float], images: int) -> float:
    """Standard error (percentage points) of the mean of per-seed accuracies `values`
    (fractions) measured on `images` test images in all: the binomial error of the mean,
    or the seeds' s/√k where that is larger (see the module docstring)."""
    k = len(values)
    p = min(max(sum(values) / k, 0.0), 1.0)
    binomial = 100.0 * math.sqrt(p * (1 - p) / images) if images else 0.0
    seeds = 100.0 * statistics.stdev(values) / math.sqrt(k) if k > 1 else 0.0
    return max(binomial, seeds)


def column_pairs(cols: Sequence[Column]) -> list[tuple[Column, Column]]:
    """(In-ResNet-family column, ResNet column of the same depth and data set) pairs of a
    measurement table, in table order (a column's network named as the zoo names it, e.g.
    in_resnet56). Where several ResNet columns would fit (runs with no job record, each its
    own column), none is chosen."""
    family = {id(c): _ZOO_NAME.fullmatch(c.model) for c in cols}
    bases: dict[tuple[str, int], list[Column]] = {}
    for c in cols:
        if (m := family[id(c)]) and m["family"] == "resnet":
            bases.setdefault((c.dataset, int(m["depth"])), []).append(c)
    pairs = []
    for c in cols:
        m = family[id(c)]
        if m and "in_resnet" in m["family"]:
            found = bases.get((c.dataset, int(m["depth"]))) or []
            if len(found) == 1:
                pairs.append((c, found[0]))
    return pairs


def compare_columns(name: str, ours: Column, base: Column, key) -> Comparison | None:
    """One measurement (a key of `further.measurements`) of the evaluation `name` ("":
    eval.json) of an In-ResNet-family column against the ResNet column; None where either
    lacks it."""
    sides = []
    for col in (ours, base):
        found = col.found(name, key)
        if not found:
            return None
        values = [v for v, _ in found]
        images = distinct_images(ev for _, ev in found)
        sides.append((100.0 * statistics.fmean(values), standard_error(values, images)))
    (a, se_a), (b, se_b) = sides
    records = (ours.sample_records(name, key), base.sample_records(name, key))
    return _comparison(measurement_key(key), (a, b), (se_a, se_b), records)


def _comparison(metric: str, means, errors, records) -> Comparison:
    """The comparison of two means (percent): with the paired standard error where the runs'
    per-sample records allow it (`paired_standard_error`), else from the two independent
    errors."""
    paired = paired_standard_error(*records)
    if paired is None:
        return Comparison(metric, *means, math.sqrt(errors[0] ** 2 + errors[1] ** 2))
    # Noise records a share of noisy versions per sample, never right-or-wrong.
    exact = None if metric == "noise" else exact_mcnemar_p(*records)
    return Comparison(metric, *means, paired, True, exact)


def difference_cell(comparison: Comparison | None, *, clean: bool = False) -> str:
    """'+19.3 ± 2.1 (more robust)': the difference in points, its standard error ("paired"
    where it is the paired one) and the verdict of `rule` (for clean accuracy: higher,
    lower); '—' where there is none."""
    if comparison is None:
        return "—"
    verdict = comparison.verdict
    if clean and verdict != "no clear difference":
        verdict = "higher" if comparison.diff > 0 else "lower"
    paired = ", paired" if comparison.paired else ""
    if comparison.p_exact is not None:
        paired += f", p = {comparison.p_exact:.2g}"
    return f"{comparison.diff:+.1f} ± {comparison.se:.1f} ({verdict}{paired})"


def paired_standard_error(
    ours: Sequence[tuple[Any, SampleRecord | None]],
    base: Sequence[tuple[Any, SampleRecord | None]],
) -> float | None:
    """Standard error (percentage points) of the difference of two networks' mean
    accuracies, from their per-sample records on the same test images.

    Runs pair by training seed. Within a pair the per-sample differences d_i (1 - 0, 0 - 1
    or 0 for correct or not; McNemar's discordant samples are the non-zero ones) have a mean
    whose variance is var(d)/n. Over k pairs scored on the same images, the image is the
    unit: d_i averaged over the seeds, var of that over n (the seeds' differences on one
    image are not independent: the same images tend to go the same way); pairs on different
    images are independent, √(Σ var(d)/n)/k. The pairs' own spread s/√k counts where it is
    larger. None (use the independent error) unless every run on each side has a record and
    a partner of the same seed scored on the same test images.

    Args:
        ours, base: (seed, record) per run, as `further.Column.sample_records` gives them.
    """
    pairs = _record_pairs(ours, base)
    if pairs is None:
        return None
    diffs = [[x - y for x, y in zip(a[1], b[1], strict=True)] for a, b in pairs]
    images = [a[0] for a, _ in pairs]
    k = len(diffs)
    if all(i == images[0] for i in images):
        within = math.sqrt(_variance_of_mean([math.fsum(d) / k for d in zip(*diffs, strict=True)]))
    else:
        within = math.sqrt(math.fsum(_variance_of_mean(d) for d in diffs)) / k
    means = [math.fsum(d) / len(d) for d in diffs]
    spread = statistics.stdev(means) / math.sqrt(k) if k > 1 else 0.0
    return 100.0 * max(within, spread)


def _record_pairs(
    ours: Sequence[tuple[Any, SampleRecord | None]],
    base: Sequence[tuple[Any, SampleRecord | None]],
) -> list[tuple[SampleRecord, SampleRecord]] | None:
    """The two sides' records paired by seed, each pair on the same test images; None
    unless every run on each side has a record and such a partner."""
    by_seed = [dict(side) for side in (ours, base)]
    if not ours or any(len(d) != len(s) for d, s in zip(by_seed, (ours, base), strict=True)):
        return None  # two runs of one seed: nothing says which pairs with which
    a, b = by_seed
    if a.keys() != b.keys():
        return None
    pairs = [(record, b[seed]) for seed, record in a.items()]
    if any(x is None or y is None or x[0] != y[0] for x, y in pairs):
        return None
    return pairs


def exact_mcnemar_p(
    ours: Sequence[tuple[Any, SampleRecord | None]],
    base: Sequence[tuple[Any, SampleRecord | None]],
) -> float | None:
    """Two-sided exact McNemar p of two networks' accuracies from their per-sample records:
    of the b + c samples where they disagree (b right only for `ours`, c only for `base`),
    the binomial probability, under an even split, of a split at least as uneven as the one
    seen. Where few samples disagree the normal approximation behind the paired standard
    error calls differences this test does not (5 against 0: p = 0.0625).

    None where it does not apply: other than one run on each side of the same seed, records
    on other images, or a record that is not right-or-wrong per sample (noise's shares,
    which the caller also leaves out where every share happens to be 0 or 1).
    """
    pairs = _record_pairs(ours, base)
    if pairs is None or len(pairs) != 1:
        return None
    (a, b), only_ours, only_base = pairs[0], 0, 0
    for x, y in zip(a[1], b[1], strict=True):
        if x not in (0, 1) or y not in (0, 1):
            return None
        only_ours += x > y
        only_base += y > x
    n = only_ours + only_base
    tail = sum(math.comb(n, i) for i in range(min(only_ours, only_base) + 1))
    return min(1.0, 2 * tail / 2**n)


def _variance_of_mean(values: Sequence[float]) -> float:
    """var(values)/n (the population variance): the variance of their mean."""
    n = len(values)
    mean = math.fsum(values) / n
    return math.fsum((v - mean) ** 2 for v in values) / n / n


def compare_rows(ours: TableRow, base: TableRow, metrics: Sequence[str]) -> list[Comparison]:
    """The robustness columns (every metric but clean accuracy) that both rows have."""
    out = []
    for m in metrics:
        if m == "clean":
            continue
        se_a, se_b = row_standard_error(ours, m), row_standard_error(base, m)
        if se_a is None or se_b is None:
            continue
        means = (ours.cells[m].mean, base.cells[m].mean)
        records = (_row_records(ours, m), _row_records(base, m))
        out.append(_comparison(m, means, (se_a, se_b), records))
    return out


def _row_records(row: TableRow, metric: str) -> list[tuple[Any, SampleRecord | None]]:
    """(seed, per-sample record) of each run behind a row's cell of `metric`."""
    return [
        (r.job.get("seed"), r.samples.get(metric))
        for r in row.runs
        if r.status in DONE and metric in r.metrics
    ]


def robustness_pairs(rows: Sequence[TableRow]) -> list[tuple[TableRow, TableRow]]:
    """(In-ResNet-family row, ResNet row of the same depth and data set) pairs, in table
    order."""
    bases = {}
    for row in rows:
        fd = _family_depth(row)
        if fd is not None and fd[0] == "resnet":
            bases[(row.dataset, fd[1])] = row
    pairs = []
    for row in rows:
        fd = _family_depth(row)
        if fd is not None and "in_resnet" in fd[0] and (row.dataset, fd[1]) in bases:
            pairs.append((row, bases[(row.dataset, fd[1])]))
    return pairs


def headline(found: Mapping[str, Comparison]) -> Comparison | None:
    """The column a verdict is headed by, the strongest measure the table has that can tell
    the two apart: the worst case over the attacks where the table has it, else the attack
    under which the ResNet is least accurate (the first in table order on a tie), else
    noise. A column where both are at 0% tells nothing: the next of these heads instead
    (a column at 0% only when nothing else is left)."""
    attacks = sorted((c for m, c in found.items() if m in attack_metrics()), key=lambda c: c.base)
    candidates = ([found[WORST_CASE]] if WORST_CASE in found else []) + attacks
    for c in candidates:
        if c.ours > 0 or c.base > 0:
            return c
    if "noise" in found:
        return found["noise"]
    return candidates[0] if candidates else None


def verdict_lines(rows: Sequence[TableRow], metrics: Sequence[str], *, setting: str) -> list[str]:
    """One markdown line per In-ResNet-family row that has a same-depth ResNet beside it,
    saying whether it is more robust, then the rule; [] when the table has no such pair.

    Args:
        setting: the radius and threat model of the attack columns, e.g. "ε = 16/255".
    """
    lines, paired = [], False
    for ours, base in robustness_pairs(rows):
        found = {c.metric: c for c in compare_rows(ours, base, metrics)}
        paired = paired or any(c.paired for c in found.values())
        head = headline(found)
        if head is None:
            continue
        under = {
            WORST_CASE: f"under the worst case over the attacks at {setting}",
            "noise": "under noise (mean over the corruptions and severities)",
        }.get(head.metric, f"under {metric_title(head.metric)} at {setting}")
        if head.metric == "noise" and any(m != "noise" for m in found):
            under += f"; every attack at {setting} leaves both at 0%"
        per = "; ".join(f"{metric_title(c.metric)} {difference_cell(c)}" for c in found.values())
        verdict = (
            f"**{head.verdict}**"
            if head.verdict == "no clear difference"
            else f"**{head.verdict}** than {base.label}"
        )
        lines.append(
            f"- {ours.label} vs {base.label}: {verdict} {under} ({head.ours:.1f}% vs "
            f"{head.base:.1f}%, difference {head.diff:+.1f} points, "
            f"{'paired ' if head.paired else ''}standard error {head.se:.1f}"
            f"{'' if head.p_exact is None else f', exact McNemar p = {head.p_exact:.2g}'}). "
            "Per column, "
            f"difference ± standard error in points: {per}."
        )
    return [*lines, "", rule(paired)] if lines else []
