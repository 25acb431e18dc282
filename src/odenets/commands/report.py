"""`odenets report DIR`: report.md (+ CSV, JSON) with our numbers beside the papers'."""

from __future__ import annotations

import argparse

from odenets.experiments.report import write_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="results folder of `odenets reproduce` (or any run folders)")
    p.add_argument("--no-figures", action="store_true", help="tables only, no figures")


def run(args: argparse.Namespace) -> int:
    report = write_report(args.folder, figures=not args.no_figures)
    print(
        f"report: {report.folder}/report.md ({len(report.rows)} table rows, "
        f"{len(report.mine) + len(report.foreign) + len(report.loose)} runs, "
        f"{len(report.figures)} figures)"
    )
    for note in report.notes:
        print(f"note: {note}")
    return 0
