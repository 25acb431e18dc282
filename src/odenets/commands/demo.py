"""`odenets demo`: the offline demo on the embedded 8x8 digits (a few minutes on CPU)."""

from __future__ import annotations

import argparse
import time

from odenets.experiments.demo import TABLE_EPS, demo_grid
from odenets.experiments.grid_folder import check_not_a_run_folder
from odenets.experiments.report import write_report
from odenets.experiments.reproduce import run_grid


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="results folder (default runs/demo)")
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
    print(
        f"odenets demo: {len(grid.preset.rows)} models on the 8x8 digits, "
        f"{'smoke run' if args.quick else f'{args.epochs} epochs each'}; results in {args.out}",
        flush=True,
    )

    def on_event(job, state, seconds):
        took = f" in {seconds:.0f} s" if seconds else ""
        print(f"  {job.model}: {state}{took}", flush=True)

    run_grid(grid, args.out, on_event=on_event)
    report = write_report(args.out)
    print()
    print(
        f"Accuracy (%) on the digits test set; attacks at ε = {TABLE_EPS}/255, pixel threat model:"
    )
    from odenets.experiments.report import rows_markdown

    print(rows_markdown(report.rows, report.metrics, paper=False))
    for note in report.notes:
        print(f"note: {note}")
    print(
        f"\nreport: {report.folder / 'report.md'} ({len(report.figures)} figures) "
        f"after {time.perf_counter() - start:.0f} s"
    )
    return 0
