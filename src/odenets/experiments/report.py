"""The report of a results folder: our mean ± std over seeds beside the paper's numbers.

`collect(folder)` reads every run folder (job.json, summary.json, eval.json) into plain
records; `build_report(folder)` groups them into the rows of the preset's paper table;
`write_report(folder)` writes report.md, report.csv and report.json. Ours and the paper's
numbers are always separate columns, and runs produced by another preset (or scale) than
the folder's manifest are listed apart, never merged into the table.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odenets.checkpoint import atomic_open, read_json, write_json_atomic
from odenets.errors import OdenetsError
from odenets.experiments.paper import METRIC_TITLES, ROBUSTNESS_METRICS, get_table
from odenets.experiments.reproduce import JOB_FILE, MANIFEST

RUN_FILES = ("summary.json", "eval.json")
DATASET_NAMES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "folder": "an image folder",
    "digits": "the 8x8 digits",
}


@dataclass
class RunRecord:
    """What one run folder holds, flattened; accuracies as fractions."""

    path: Path
    job: dict[str, Any]  # job.json ({} for a folder not made by `reproduce`)
    status: str  # "finished", "diverged", "failed", "running", "trained", "evaluated"
    metrics: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def origin(self) -> tuple[str, str]:
        return (self.job.get("preset", ""), self.job.get("scale", ""))


def find_run_folders(folder: Path) -> list[Path]:
    """Folders under `folder` (itself included) holding a summary.json or an eval.json."""
    found = set()
    for name in (*RUN_FILES, JOB_FILE):
        for path in folder.rglob(name):
            found.add(path.parent)
    return sorted(found)


def read_run(path: Path, *, eps_255: float, threat_model: str) -> RunRecord:
    job = read_json(path / JOB_FILE) if (path / JOB_FILE).exists() else {}
    summary = read_json(path / "summary.json") if (path / "summary.json").exists() else {}
    ev = read_json(path / "eval.json") if (path / "eval.json").exists() else None
    status = summary.get("status", "evaluated" if ev else "running")
    if status == "finished" and ev is None:
        status = "trained"
    metrics: dict[str, float] = {}
    for key, metric in (("final_train_acc", "train"), ("final_test_acc", "test")):
        if summary.get(key) is not None:
            metrics[metric] = float(summary[key])
    if ev is not None:
        metrics.update(eval_metrics(ev, eps_255=eps_255, threat_model=threat_model))
        if "test" not in metrics:
            metrics["test"] = float(ev["clean"])
    return RunRecord(path=path, job=job, status=status, metrics=metrics, evaluation=ev)


def eval_metrics(ev: dict[str, Any], *, eps_255: float, threat_model: str) -> dict[str, float]:
    """The table's columns from one eval.json: clean, noise mean, attacks at one radius."""
    out = {"clean": float(ev["clean"])}
    if ev.get("noise"):
        out["noise"] = float(ev["noise"]["mean"])
    for attack in ev.get("attacks", []):
        if attack.get("threat_model", "pixel") != threat_model:
            continue
        if math.isclose(float(attack["eps_255"]), eps_255, abs_tol=1e-6):
            out[attack["name"]] = float(attack["accuracy"])
    return out


def collect(folder: str | Path) -> tuple[dict[str, Any] | None, list[RunRecord]]:
    """The manifest (or None) and every run record of a results folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"results folder {folder} does not exist")
    manifest = read_json(folder / MANIFEST) if (folder / MANIFEST).exists() else None
    ev_settings = (manifest or {}).get("evaluate", {})
    eps = ev_settings.get("eps") or [8.0]
    threat_model = ev_settings.get("threat_model", "pixel")
    runs = [
        read_run(p, eps_255=float(eps[0]), threat_model=threat_model)
        for p in find_run_folders(folder)
    ]
    runs = [r for r in runs if r.job or r.metrics or r.status != "running"]
    if not any(r.metrics for r in runs):
        raise OdenetsError(
            f"no results in {folder}: expected run folders with summary.json or eval.json "
            "(written by `odenets reproduce`, `odenets train` and `odenets evaluate`)"
        )
    return manifest, runs


# --- aggregation ------------------------------------------------------------------------
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
        return sum(r.status in ("finished", "evaluated") for r in self.runs)

    @property
    def n_diverged(self) -> int:
        return sum(r.status == "diverged" for r in self.runs)


def table_rows(manifest: dict[str, Any], runs: Sequence[RunRecord]) -> list[TableRow]:
    """Rows of the preset's table from the runs that belong to this manifest, in job order."""
    table = get_table(manifest["table"]) if manifest.get("table") else None
    metrics = _metrics_of(manifest)
    by_key: dict[tuple[str, str], TableRow] = {}
    by_name = {r.name: r for r in runs}
    for job in manifest["jobs"]:
        key = (job["dataset"], job["row"])
        if key not in by_key:
            label = job.get("label") or job["row"]
            if table and job["row"] in table.labels:
                label = table.row_label(job["row"])
            by_key[key] = TableRow(
                dataset=job["dataset"],
                paper_dataset=job["paper_dataset"],
                key=job["row"],
                label=label,
                model=f"{job['model']} x {len(job['members'])}"
                if job.get("members")
                else job["model"],
                runs=[],
                cells={},
            )
        run = by_name.get(job["name"])
        if run is not None and run.origin == (manifest["preset"], manifest["scale"]):
            by_key[key].runs.append(run)
    for row in by_key.values():
        done = [r for r in row.runs if r.status in ("finished", "evaluated")]
        for m in metrics:
            paper = table.value(row.paper_dataset, row.key, m) if table else None
            values = [100.0 * r.metrics[m] for r in done if m in r.metrics]
            row.cells[m] = Cell(values=values, paper=paper)
    return list(by_key.values())


def _metrics_of(manifest: dict[str, Any]) -> tuple[str, ...]:
    if manifest.get("table"):
        return get_table(manifest["table"]).metrics
    ev = manifest.get("evaluate", {})
    metrics = ["clean"] + (["noise"] if ev.get("noise") else [])
    return (*metrics, *[a for a in ev.get("attacks", []) if a in ROBUSTNESS_METRICS])


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


# --- formatting ---------------------------------------------------------------------------
def fmt_ours(cell: Cell) -> str:
    if cell.mean is None:
        return "—"
    return f"{cell.mean:.2f} ± {cell.std:.2f}" if len(cell.values) > 1 else f"{cell.mean:.2f}"


def fmt_paper(cell: Cell) -> str:
    return "—" if cell.paper is None else str(cell.paper)


def fmt_diff(cell: Cell) -> str:
    return "—" if cell.diff is None else f"{cell.diff:+.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rows_markdown(rows: Sequence[TableRow], metrics: Sequence[str], *, paper: bool) -> str:
    header = ["Model", "network", "runs"]
    for m in metrics:
        title = METRIC_TITLES[m]
        header += [f"{title} ours", f"{title} paper", f"{title} Δ"] if paper else [title]
    body = []
    for row in rows:
        runs = f"{row.n_finished}/{len(row.runs) or 0}"
        if row.n_diverged:
            runs += f" ({row.n_diverged} diverged)"
        line = [row.label, row.model, runs]
        for m in metrics:
            cell = row.cells[m]
            line += [fmt_ours(cell), fmt_paper(cell), fmt_diff(cell)] if paper else [fmt_ours(cell)]
        body.append(line)
    return markdown_table(header, body)


def runs_markdown(runs: Sequence[RunRecord], metrics: Sequence[str]) -> str:
    header = ["Run", "preset", "scale", "seed", "status", *[METRIC_TITLES[m] for m in metrics]]
    body = []
    for r in runs:
        line = [r.name, r.job.get("preset", "—"), r.job.get("scale", "—")]
        seed = r.job.get("seed")
        line += ["—" if seed is None else str(seed), r.status]
        line += [f"{100 * r.metrics[m]:.2f}" if m in r.metrics else "—" for m in metrics]
        body.append(line)
    return markdown_table(header, body)


def caption(manifest: dict[str, Any], runs: Sequence[RunRecord], dataset: str) -> str:
    """Data, threat model and paper source of one table, in words."""
    ev = manifest.get("evaluate", {})
    sample = next(
        (r.evaluation for r in runs if r.evaluation and r.job.get("dataset") == dataset), None
    )
    n = f"{sample['n']} test images" if sample and sample.get("n") else "the test split"
    data = DATASET_NAMES.get(dataset, dataset)
    if dataset in ("folder", "cifar10", "cifar100") and manifest.get("data_root"):
        data += f" read from `{Path(manifest['data_root']).name}`"
    parts = [f"Data: {data}, {n}."]
    if ev.get("attacks"):
        eps = ev.get("eps") or [8]
        steps = ev.get("steps") or 20
        tm = ev.get("threat_model", "pixel")
        tm_words = (
            "pixel threat model (ε and steps in [0, 1] pixel units, ball centred on the clean "
            "image, images clamped to [0, 1])"
            if tm == "pixel"
            else "normalized threat model of the authors' first code (ε on the standardised "
            "tensor, about five times weaker)"
        )
        parts.append(
            f"Attacks: untargeted L∞ {', '.join(a.upper() for a in ev['attacks'])} at "
            f"ε = {eps[0]:g}/255, {steps} steps for IFGSM and PGD (PGD with a random start), "
            f"{tm_words}; the model in eval mode."
        )
    if ev.get("noise"):
        source = (sample or {}).get("noise") or {}
        parts.append(
            "Noise: mean accuracy over the gaussian, shot, impulse and speckle corruptions "
            f"at severities 1-5 ({source.get('source', 'generated')} CIFAR-C noise)."
        )
    scale_words = {
        "quick": " (shorter schedule and shallower networks than the paper: differences are "
        "expected)",
        "paper": " (the paper's recipe)",
    }.get(manifest["scale"], "")
    train = ", ".join(f"{k} = {v}" for k, v in (manifest.get("train") or {}).items())
    parts.append(
        f"Ours: mean ± sample std over seeds, in %; scale `{manifest['scale']}`{scale_words}"
        + (f"; training overrides: {train}." if train else ".")
    )
    if manifest.get("table"):
        table = get_table(manifest["table"])
        parts.append(f"Paper: {table.source}. {table.protocol}")
    return " ".join(parts)


# --- the report ---------------------------------------------------------------------------
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
    metrics = _metrics_of(manifest) if manifest else _loose_metrics(runs)
    return Report(folder, manifest, rows, mine, foreign, loose, metrics)


def _loose_metrics(runs: Sequence[RunRecord]) -> tuple[str, ...]:
    present = {m for r in runs for m in r.metrics}
    order = (*ROBUSTNESS_METRICS, "train", "test")
    return tuple(m for m in order if m in present)


def render_markdown(report: Report) -> str:
    m = report.manifest
    out = []
    if m:
        table = get_table(m["table"]) if m.get("table") else None
        out.append(f"# odenets report: {m['preset']} ({m['scale']} scale)\n")
        if table:
            out.append(f"Reproduces: {table.title}. Paper: {table.source}.\n")
        datasets = list(dict.fromkeys(r.dataset for r in report.rows))
        for d in datasets:
            rows = [r for r in report.rows if r.dataset == d]
            has_paper = any(c.paper is not None for r in rows for c in r.cells.values())
            out.append(f"## {DATASET_NAMES.get(d, d)}\n")
            out.append(rows_markdown(rows, report.metrics, paper=has_paper) + "\n")
            out.append("*" + caption(m, report.mine, d) + "*\n")
            if not has_paper:
                out.append("The paper has no numbers for this data set; only ours are shown.\n")
    else:
        out.append("# odenets report\n")
        out.append(
            "This folder has no manifest (not written by `odenets reproduce`): every run "
            "found is listed below, with no paper column.\n"
        )
    if report.figures:
        out.append("## Figures\n")
        for title, rel in report.figures:
            out.append(f"**{title}**\n\n![{title}]({rel})\n")
    failed = failed_checks(report.mine or report.loose)
    if failed:
        out.append("## Sanity checks that failed\n")
        out.append(
            "Each evaluation runs sanity checks (attacks never above clean accuracy, multi-step "
            "attacks not weaker than FGSM, accuracy falling with ε, ~0% at ε = 1, finite "
            "gradients); these did not pass, so read the numbers concerned with care:\n"
        )
        out += [f"- `{run}`: {name}: {detail}" for run, name, detail in failed]
        out.append("")
    if report.mine:
        out.append("## Every run\n")
        out.append(runs_markdown(report.mine, report.metrics) + "\n")
    if report.foreign:
        out.append("## Results from other presets (not merged)\n")
        out.append(
            "These run folders were produced by another preset or scale than this folder's "
            "manifest; they are listed for reference and left out of the tables above.\n"
        )
        out.append(runs_markdown(report.foreign, report.metrics) + "\n")
    if report.loose:
        out.append("## Other runs (no job record)\n")
        out.append(runs_markdown(report.loose, report.metrics) + "\n")
    for note in report.notes:
        out.append(f"> {note}\n")
    return "\n".join(out)


def failed_checks(runs: Sequence[RunRecord]) -> list[tuple[str, str, str]]:
    """(run name, check name, detail) of every sanity check of eval.json that failed."""
    return [
        (r.name, c["name"], c.get("detail", ""))
        for r in runs
        if r.evaluation
        for c in r.evaluation.get("checks", [])
        if not c.get("ok", True)
    ]


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


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


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
    }


def write_report(folder: str | Path, *, figures: bool = True) -> Report:
    """Write report.md, report.csv and report.json into `folder`; returns the report."""
    report = build_report(folder)
    if figures:
        from odenets.experiments.figures import draw_figures

        report.figures, report.notes = draw_figures(report)
    folder = report.folder
    write_text_atomic(folder / "report.md", render_markdown(report))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(long_records(report))
    write_text_atomic(folder / "report.csv", buffer.getvalue())
    m = report.manifest or {}
    write_json_atomic(
        folder / "report.json",
        {
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
        },
    )
    return report


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text atomically: temporary file in the same folder, fsync, rename."""
    with atomic_open(path, "w") as f:
        f.write(text)
