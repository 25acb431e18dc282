"""Figures of a report, drawn by the analysis figure functions (`odenets plot KIND`).

Each figure is optional: one whose inputs are absent (no interpolating model, no NAIS
model, no ensemble) is skipped, and one that cannot be drawn becomes a note in the report
instead of stopping it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from odenets.analysis import figures as analysis_figures
from odenets.experiments.aggregate import Report
from odenets.training.run_folder import EVAL, RunFolder

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"

# (kind of `odenets plot`, title in the report)
TITLES = {
    "coefficients": "Learned coefficients λ_n per block, mean and spread over seeds",
    "robustness-curves": "Robustness curves: accuracy against ε per attack, against severity "
    "per noise",
    "ensemble-gain": "Ensemble minus single-model accuracy per metric",
    "depth": "NAIS-Net: processing depth per image",
}
# Titles of the further files a kind draws, by file stem.
EXTRA_TITLES = {"depth_images": "NAIS-Net: the test images with the lowest and highest depth"}


def _inputs(kind: str, runs: list, report: Report) -> list[str]:
    """The run folders or eval.json files one figure kind needs ([] = not applicable)."""
    if kind == "coefficients":
        return [str(r.path) for r in runs if r.job.get("seed") is not None and _has_coeffs(r)]
    if kind == "robustness-curves":
        evals = [r for r in runs if r.evaluation and r.evaluation.get("attacks")]
        return [str(r.path / (r.eval_file or EVAL)) for r in evals]
    if kind == "ensemble-gain":
        evals = [r for r in runs if r.evaluation and r.evaluation.get("attacks")]
        if not any(r.evaluation.get("ensemble") for r in evals):
            return []
        return [str(r.path / (r.eval_file or EVAL)) for r in evals]
    if kind == "depth":
        nais = [r for r in runs if str(r.job.get("model", "")).startswith("naisnet")]
        return [str(r.path) for r in nais if r.job.get("seed") is not None]
    raise KeyError(kind)


def _has_coeffs(run) -> bool:
    metrics = RunFolder(run.path).read_metrics()
    return bool(metrics and metrics[-1].get("coefficients"))


def draw_figures(report: Report) -> tuple[list[tuple[str, str]], list[str]]:
    """Draw every figure that applies to the report's runs.

    Returns:
        ([(title, PNG path relative to the report folder)], [notes on figures not drawn]).
    """
    folder = Path(report.folder)
    runs = [r for r in (report.mine or report.loose) if r.status in ("finished", "evaluated")]
    ev = (report.manifest or {}).get("evaluate", {})
    eps = (ev.get("eps") or [8])[0]
    # The grid's attack setting, for the figures that take it (ensemble-gain).
    setting = {"eps_255": float(eps), "threat_model": ev.get("threat_model", "pixel")}
    figures, notes = [], []
    for kind, title in TITLES.items():
        inputs = _inputs(kind, runs, report)
        if not inputs:
            continue
        out_dir = folder / FIGURES_DIR
        figure = analysis_figures.FIGURE_KINDS[kind]
        options = {k: v for k, v in setting.items() if k in figure.options}
        try:
            paths = figure.draw(inputs, out_dir, **options)
        except Exception as err:  # a figure must never cost the tables
            warnings.warn(f"figure {kind!r} not drawn: {err}", stacklevel=2)
            notes.append(f"Figure '{kind}' was not drawn: {err}")
            continue
        for path in paths:
            if Path(path).suffix == ".png":
                shown = EXTRA_TITLES.get(Path(path).stem, title)
                figures.append((shown, str(Path(path).resolve().relative_to(folder.resolve()))))
    return figures, notes
