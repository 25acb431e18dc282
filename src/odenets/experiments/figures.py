"""Figures of a report, drawn with the analysis plotting functions when they apply.

Each figure is optional: a figure whose inputs are missing (no interpolating model, no NAIS
model, a single ε) is skipped, and a figure that cannot be drawn becomes a note in the report
instead of stopping it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"


def draw_figures(report: Any) -> tuple[list[tuple[str, str]], list[str]]:
    """Draw every figure that applies to the report's runs.

    Returns:
        ([(title, path relative to the report folder)], [notes about skipped figures]).
    """
    folder = Path(report.folder)
    runs = [r for r in report.mine or report.loose if r.status in ("finished", "evaluated")]
    out_dir = folder / FIGURES_DIR
    figures, notes = [], []
    for title, stem, draw in _FIGURES:
        try:
            path = draw(runs, out_dir / f"{stem}.png")
        except Exception as err:  # a figure must never cost the tables
            warnings.warn(f"figure {stem!r} not drawn: {err}", stacklevel=2)
            notes.append(f"Figure '{title}' was not drawn: {err}")
            continue
        if path is not None:
            figures.append((title, str(Path(path).relative_to(folder))))
    return figures, notes


def _coefficients(runs, path: Path):
    from odenets.analysis import plots

    paths = [r.path for r in runs if r.job.get("model") and _has_coefficients(r)]
    if not paths:
        return None
    return plots.plot_coefficients(paths, path)


def _robustness_curves(runs, path: Path):
    from odenets.analysis import plots

    evals = [r.evaluation for r in runs if r.evaluation and r.evaluation.get("attacks")]
    if not evals:
        return None
    return plots.plot_robustness_curves(evals, path)


def _depth(runs, path: Path):
    from odenets.analysis import plots

    paths = [r.path for r in runs if str(r.job.get("model", "")).startswith("naisnet")]
    if not paths:
        return None
    return plots.plot_depth(paths, path)


def _has_coefficients(run) -> bool:
    from odenets.checkpoint import read_jsonl

    metrics = read_jsonl(run.path / "metrics.jsonl")
    return bool(metrics and metrics[-1].get("coefficients"))


_FIGURES: list[tuple[str, str, Callable]] = [
    ("Learned coefficients λ_n per block (mean over seeds)", "coefficients", _coefficients),
    (
        "Robustness curves: accuracy against ε and noise severity",
        "robustness_curves",
        _robustness_curves,
    ),
    ("NAIS-Net: processing depth per image", "depth", _depth),
]
