"""The runs of a results folder aggregated into a `Report`: seeds into the rows of a paper
table, beside the paper's numbers.

`build_report(folder)` reads the folder (`results.collect`) and builds the `Report` that
report.md, report.csv and report.json are written from (`report.write_report`).
`table_rows` groups the runs of a manifest by (data set, row); each metric of a row is a
`Cell`: our values over seeds (mean, sample std), the paper's value and the difference.
`split_runs` keeps runs of another preset or scale apart, never merged into a row.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odenets.experiments.paper import INRESNET_METRICS, NAIS_METRICS, get_table
from odenets.experiments.results import WORST_CASE, RunRecord, collect
from odenets.robustness.base import attack_title, list_attacks

DONE = ("finished", "evaluated")  # statuses of runs whose numbers enter the table

# Column titles of the metrics that are not attacks (an attack's is its class's title).
METRIC_TITLES = {
    "clean": "Acc.",
    "noise": "Noise",
    WORST_CASE: "Worst case",
    "train": "Train acc.",
    "test": "Test acc.",
}


@dataclass
class Cell:
    """One metric of one table row: ours over seeds, the paper's, and the difference."""

    values: list[float]  # ours, in percent, one per finished run
    paper: Any = None  # PaperValue or None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        # Sample standard deviation over seeds (n - 1); 0 for a single run.
        return (
            statistics.stdev(self.values)
            if len(self.values) > 1
            else (0.0 if self.values else None)
        )

    @property
    def diff(self) -> float | None:
        if self.mean is None or self.paper is None:
            return None
        return self.mean - self.paper.mean


@dataclass
class TableRow:
    dataset: str
    paper_dataset: str
    key: str
    label: str
    model: str
    runs: list[RunRecord]
    cells: dict[str, Cell]

    @property
    def n_finished(self) -> int:
        return sum(r.status in DONE for r in self.runs)

    @property
    def n_diverged(self) -> int:
        return sum(r.status == "diverged" for r in self.runs)

    def odd_sizes(self) -> tuple[list[tuple[str, int]], int | None]:
        """The done runs whose evaluation counts another number of test images than the
        row's usual one (the most common; the largest on a tie), as (run name, n), and the
        usual n (None when the row has no evaluation)."""
        sizes = {
            r.name: int(r.evaluation["n"])
            for r in self.runs
            if r.status in DONE and r.evaluation and r.evaluation.get("n") is not None
        }
        if not sizes:
            return [], None
        counts = Counter(sizes.values())
        usual = max(counts, key=lambda n: (counts[n], n))
        return [(name, n) for name, n in sizes.items() if n != usual], usual


def _new_row(job: dict[str, Any], table) -> TableRow:
    """An empty row for the first job of a (data set, row) pair."""
    label = job.get("label") or job["row"]
    if table and job["row"] in table.labels:
        label = table.row_label(job["row"])
    return TableRow(
        dataset=job["dataset"],
        paper_dataset=job["paper_dataset"],
        key=job["row"],
        label=label,
        model=f"{job['model']} x {len(job['members'])}" if job.get("members") else job["model"],
        runs=[],
        cells={},
    )


def _fill_cells(row: TableRow, metrics: Sequence[str], table) -> None:
    """One cell per metric: our values (percent) over the row's done runs, the paper's."""
    done = [r for r in row.runs if r.status in DONE]
    for m in metrics:
        paper = table.value(row.paper_dataset, row.key, m) if table else None
        values = [100.0 * r.metrics[m] for r in done if m in r.metrics]
        row.cells[m] = Cell(values=values, paper=paper)


def table_rows(manifest: dict[str, Any], runs: Sequence[RunRecord]) -> list[TableRow]:
    """Rows of the preset's table from the runs that belong to this manifest, in job order."""
    table = get_table(manifest["table"]) if manifest.get("table") else None
    metrics = metrics_of(manifest)
    by_key: dict[tuple[str, str], TableRow] = {}
    by_name = {r.name: r for r in runs}
    for job in manifest["jobs"]:
        key = (job["dataset"], job["row"])
        if key not in by_key:
            by_key[key] = _new_row(job, table)
        run = by_name.get(job["name"])
        if run is not None and run.origin == (manifest["preset"], manifest["scale"]):
            by_key[key].runs.append(run)
    for row in by_key.values():
        _fill_cells(row, metrics, table)
    return list(by_key.values())


def metrics_of(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The table's metrics: the paper table's, or those the manifest's evaluation gives
    (clean, noise, then every registered attack it runs)."""
    if manifest.get("table"):
        return get_table(manifest["table"]).metrics
    ev = manifest.get("evaluate", {})
    metrics = ["clean"] + (["noise"] if ev.get("noise") else [])
    metrics += [a for a in ev.get("attacks", []) if a in attack_metrics()]
    if len(ev.get("attacks", [])) > 1:
        metrics.append(WORST_CASE)  # per sample over the attacks: the strongest column
    return tuple(metrics)


def loose_metrics(runs: Sequence[RunRecord]) -> tuple[str, ...]:
    """The metrics present in any run, in table order (for a folder with no manifest): the
    In-ResNet columns, the other registered attacks by name, the worst case over the attacks,
    then NAIS-Net's."""
    present = {m for r in runs for m in r.metrics}
    attacks = [a for a in attack_metrics() if a not in INRESNET_METRICS]
    order = (*INRESNET_METRICS, *attacks, WORST_CASE, *NAIS_METRICS)
    return tuple(m for m in order if m in present)


def attack_metrics() -> list[str]:
    """The registered attacks (not the noises): each is a column where it was evaluated."""
    noises = list_attacks(category="noise")
    return [a for a in list_attacks() if a not in noises]


def metric_title(metric: str) -> str:
    """The column title of a metric: "Acc." for "clean", "PGD" for "pgd", ..."""
    return METRIC_TITLES.get(metric) or attack_title(metric)


def split_runs(
    manifest: dict[str, Any] | None, runs: Sequence[RunRecord]
) -> tuple[list[RunRecord], list[RunRecord], list[RunRecord]]:
    """(runs of this manifest, runs of another preset or scale, runs with no job record)."""
    mine, foreign, loose = [], [], []
    names = {j["name"] for j in (manifest or {}).get("jobs", [])}
    for run in runs:
        if not run.job:
            loose.append(run)
        elif (
            manifest
            and run.origin == (manifest["preset"], manifest["scale"])
            and (run.name in names)
        ):
            mine.append(run)
        else:
            foreign.append(run)
    return mine, foreign, loose


@dataclass
class Report:
    """What report.md, report.csv and report.json are written from."""

    folder: Path
    manifest: dict[str, Any] | None
    rows: list[TableRow]
    mine: list[RunRecord]
    foreign: list[RunRecord]
    loose: list[RunRecord]
    metrics: tuple[str, ...]
    figures: list[tuple[str, str]] = field(default_factory=list)  # (title, relative path)
    notes: list[str] = field(default_factory=list)


def build_report(folder: str | Path) -> Report:
    """The report of a results folder: its runs read, split and aggregated into rows."""
    folder = Path(folder)
    manifest, runs = collect(folder)
    mine, foreign, loose = split_runs(manifest, runs)
    rows = table_rows(manifest, mine) if manifest else []
    metrics = metrics_of(manifest) if manifest else loose_metrics(runs)
    return Report(folder, manifest, rows, mine, foreign, loose, metrics)
