"""The report of a results folder: our mean ± std over seeds beside the paper's numbers.

`write_report(folder)` writes report.md, report.csv and report.json (and the figures). Ours
and the paper's numbers are always separate columns, and runs produced by another preset
(or scale) than the folder's manifest are listed apart, never merged into the table.

The pieces: `results` (run folders read into records), `aggregate` (the records into the
`Report`: table rows, seeds aggregated), `report_markdown` (report.md), `report_files`
(report.csv, report.json) and `figures` (the figures of `odenets plot`).
"""

from __future__ import annotations

from pathlib import Path

from odenets.checkpoint import write_json_atomic
from odenets.experiments.aggregate import Report, build_report
from odenets.experiments.figures import draw_figures
from odenets.experiments.report_files import render_csv, report_json, write_text_atomic
from odenets.experiments.report_markdown import render_markdown


def write_report(folder: str | Path, *, figures: bool = True) -> Report:
    """Write report.md, report.csv and report.json into `folder`; returns the report."""
    report = build_report(folder)
    if figures:
        report.figures, report.notes = draw_figures(report)
    folder = report.folder
    write_text_atomic(folder / "report.md", render_markdown(report))
    write_text_atomic(folder / "report.csv", render_csv(report))
    write_json_atomic(folder / "report.json", report_json(report))
    return report
