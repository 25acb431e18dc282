"""`odenets demo`: the offline demo on the embedded 8x8 digits (a few minutes on CPU)."""

from __future__ import annotations

import argparse
import time

from odenets.experiments.demo import DEMO_TIME, demo_grid
from odenets.experiments.grid_folder import check_not_a_run_folder
from odenets.experiments.grid_progress import GridProgress
from odenets.experiments.jobs import expand_jobs
from odenets.experiments.report import write_report
from odenets.experiments.report_markdown import caption, robustness_verdict, rows_markdown
from odenets.experiments.reproduce import run_grid


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="results folder (default: runs/demo)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs per model (default: 10)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 2 epochs on 300 training images, 60 test images",
    )


def run(args: argparse.Namespace) -> int:
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1; got {args.epochs}")
    check_not_a_run_folder(args.out, "demo")
    grid = demo_grid(quick=args.quick, epochs=args.epochs)
    start = time.perf_counter()
    what = "smoke run" if args.quick else f"{args.epochs} epochs each"
    print(
        f"odenets demo: {len(grid.preset.rows)} models on the 8x8 digits, {what}; results in "
        f"{args.out} (the default demo takes {DEMO_TIME} on two CPU cores)",
        flush=True,
    )
    jobs = expand_jobs(grid)
    progress = GridProgress(jobs, len(jobs))

    def on_event(job, state, seconds):
        print(progress.event_line(job, state, seconds), flush=True)

    run_grid(grid, args.out, on_event=on_event)
    report = write_report(args.out)
    print()
    print("Accuracy (%) on the digits test set:")
    print(rows_markdown(report.rows, report.metrics, paper=False))
    print()
    print(caption(report.manifest, report.mine, "digits"))
    print()
    for line in robustness_verdict(report.rows, report.metrics, report.manifest):
        print(line.replace("**", ""))
    for note in report.notes:
        print(f"note: {note}")
    print(
        f"report: {report.folder / 'report.md'} ({len(report.figures)} figures) "
        f"after {time.perf_counter() - start:.0f} s"
    )
    return 0
