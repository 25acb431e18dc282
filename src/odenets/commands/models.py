"""`odenets models`: the registered networks with family, depth, parameter count and the
number of interpolating blocks (those with a coefficient λ_n)."""

from __future__ import annotations

import argparse
import re

import torch

from odenets.models.registry import create_model, list_models

COLUMNS = ("name", "family", "depth", "parameters", "interpolating")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pattern",
        default=None,
        metavar="GLOB",
        help="only names matching GLOB, e.g. 'in_resnet*' or '*110' (default: every network)",
    )
    p.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default: 10)")


def model_rows(pattern: str | None = None, *, num_classes: int = 10) -> list[dict]:
    """One row per registered model matching `pattern`, built on CPU with default options."""
    rows = []
    with torch.no_grad():
        for name in sorted(list_models(pattern), key=_natural):
            model = create_model(name, num_classes=num_classes)
            rows.append(
                {
                    "name": name,
                    "family": model.family,
                    "depth": model.depth,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "interpolating": model.coefficients().numel(),
                }
            )
    return rows


def _natural(name: str) -> list:
    # resnet20 before resnet110: digit runs compare as numbers.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def format_table(rows: list[dict]) -> str:
    """Rows as an aligned text table: text left-aligned, numbers right-aligned."""
    cells = [list(COLUMNS)] + [
        [r["name"], r["family"], str(r["depth"]), f"{r['parameters']:,}", str(r["interpolating"])]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = []
    for row in cells:
        parts = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = model_rows(args.pattern, num_classes=args.num_classes)
    if not rows:
        raise ValueError(f"no registered model matches {args.pattern!r}; try --pattern '*resnet*'")
    print(format_table(rows))
    print(f"{len(rows)} models")
    return 0
