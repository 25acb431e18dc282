"""The report of a results folder: our mean ± std over seeds beside the paper's numbers.

`collect(folder)` reads every run folder (job.json, summary.json, eval.json) into plain
records; `build_report(folder)` groups them into the rows of the preset's paper table;
`write_report(folder)` writes report.md, report.csv and report.json. Ours and the paper's
numbers are always separate columns, and runs produced by another preset (or scale) than
the folder's manifest are listed apart, never merged into the table.

The pieces live in `results` (reading run folders), `aggregate` (seeds into table rows),
`report_markdown` (report.md) and `report_files` (report.csv, report.json); this module
holds the `Report` that ties them together and re-exports their names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odenets.checkpoint import write_json_atomic
from odenets.experiments.aggregate import (
    Cell,
    TableRow,
    loose_metrics,
    metrics_of,
    split_runs,
    table_rows,
)
from odenets.experiments.grid_folder import JOB_FILE, MANIFEST
from odenets.experiments.report_files import (
    CSV_FIELDS,
    long_records,
    render_csv,
    report_json,
    write_text_atomic,
)
from odenets.experiments.report_markdown import (
    DATASET_NAMES,
    caption,
    fmt_diff,
    fmt_ours,
    fmt_paper,
    markdown_table,
    render_markdown,
    rows_markdown,
    runs_markdown,
)
from odenets.experiments.results import (
    RUN_FILES,
    RunRecord,
    collect,
    eval_metrics,
    failed_checks,
    find_run_folders,
    read_run,
)

__all__ = [
    "CSV_FIELDS",
    "DATASET_NAMES",
    "JOB_FILE",
    "MANIFEST",
    "RUN_FILES",
    "Cell",
    "Report",
    "RunRecord",
    "TableRow",
    "build_report",
    "caption",
    "collect",
    "eval_metrics",
    "failed_checks",
    "find_run_folders",
    "fmt_diff",
    "fmt_ours",
    "fmt_paper",
    "long_records",
    "markdown_table",
    "read_run",
    "render_markdown",
    "rows_markdown",
    "runs_markdown",
    "split_runs",
    "table_rows",
    "write_report",
    "write_text_atomic",
]


@dataclass
class Report:
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
    folder = Path(folder)
    manifest, runs = collect(folder)
    mine, foreign, loose = split_runs(manifest, runs)
    rows = table_rows(manifest, mine) if manifest else []
    metrics = metrics_of(manifest) if manifest else loose_metrics(runs)
    return Report(folder, manifest, rows, mine, foreign, loose, metrics)


def write_report(folder: str | Path, *, figures: bool = True) -> Report:
    """Write report.md, report.csv and report.json into `folder`; returns the report."""
    report = build_report(folder)
    if figures:
        from odenets.experiments.figures import draw_figures

        report.figures, report.notes = draw_figures(report)
    folder = report.folder
    write_text_atomic(folder / "report.md", render_markdown(report))
    write_text_atomic(folder / "report.csv", render_csv(report))
    write_json_atomic(folder / "report.json", report_json(report))
    return report
