"""report.csv and report.json: one record per (row, metric) in percent, and every run.

Numbers are rounded to 4 decimals; the paper's values are written as the paper gives them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from odenets.checkpoint import atomic_open
from odenets.experiments import further
from odenets.experiments.aggregate import Report
from odenets.experiments.results import RunRecord

CSV_FIELDS = (
    "preset",
    "scale",
    "dataset",
    "paper_dataset",
    "row",
    "label",
    "model",
    "metric",
    "ours_mean",
    "ours_std",
    "n_runs",
    "paper_mean",
    "paper_std",
    "difference",
)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def long_records(report: Report) -> list[dict[str, Any]]:
    """One record per (row, metric): ours, the paper's, the difference; percent."""
    records = []
    m = report.manifest or {}
    for row in report.rows:
        for metric, cell in row.cells.items():
            records.append(
                {
                    "preset": m.get("preset"),
                    "scale": m.get("scale"),
                    "dataset": row.dataset,
                    "paper_dataset": row.paper_dataset,
                    "row": row.key,
                    "label": row.label,
                    "model": row.model,
                    "metric": metric,
                    "ours_mean": _round(cell.mean),
                    "ours_std": _round(cell.std),
                    "n_runs": len(cell.values),
                    "paper_mean": None if cell.paper is None else cell.paper.mean,
                    "paper_std": None if cell.paper is None else cell.paper.std,
                    "difference": _round(cell.diff),
                }
            )
    return records


def render_csv(report: Report) -> str:
    """The whole of report.csv: a header, then `long_records`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(long_records(report))
    return buffer.getvalue()


def _run_json(run: RunRecord, folder: Path) -> dict[str, Any]:
    return {
        "path": str(run.path.relative_to(folder))
        if run.path.is_relative_to(folder)
        else str(run.path),
        "preset": run.job.get("preset"),
        "scale": run.job.get("scale"),
        "row": run.job.get("row"),
        "seed": run.job.get("seed"),
        "status": run.status,
        "metrics": {k: round(100 * v, 4) for k, v in run.metrics.items()},
        "eval_file": run.eval_file or None,
        **(
            {
                "further_evaluations": {
                    name: {
                        further.measurement_key(k): round(100 * v, 4)
                        for k, v in further.measurements(ev).items()
                    }
                    for name, ev in run.further.items()
                }
            }
            if run.further
            else {}
        ),
    }


def report_json(report: Report) -> dict[str, Any]:
    """The content of report.json: the rows, every run, runs of other presets, figures."""
    m = report.manifest or {}
    folder = report.folder
    return {
        "preset": m.get("preset"),
        "scale": m.get("scale"),
        "table": m.get("table"),
        "units": "percent",
        "std": "sample standard deviation over seeds (n - 1)",
        "rows": long_records(report),
        "runs": [_run_json(r, folder) for r in report.mine],
        "other_presets": [_run_json(r, folder) for r in report.foreign],
        "other_runs": [_run_json(r, folder) for r in report.loose],
        "figures": [rel for _, rel in report.figures],
    }


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text atomically: temporary file in the same folder, fsync, rename."""
    with atomic_open(path, "w") as f:
        f.write(text)
