"""`odenets reproduce PRESET`: the grid of trainings and evaluations behind a paper table."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from odenets.commands._cache import add_cache_arguments, cache_flags
from odenets.experiments.grid_progress import GridProgress
from odenets.experiments.job_commands import (
    DATA_ROOT_PLACEHOLDER,
    job_command,
    job_comment,
    python_executable,
)
from odenets.experiments.job_pool import devices
from odenets.experiments.jobs import DATASETS, expand_jobs, load_grid
from odenets.experiments.presets import SCALES, list_presets, load_preset
from odenets.experiments.report import write_report
from odenets.experiments.reproduce import parse_shard, run_grid, select_jobs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", nargs="?", help="preset name (see --list) or a preset .toml file")
    p.add_argument("--list", action="store_true", help="list the presets and exit")
    p.add_argument(
        "--data-root",
        default=None,
        help="data folder (default: none; needed except for digits; --list-jobs writes the "
        "placeholder DATA_ROOT without it)",
    )
    add_cache_arguments(p)
    p.add_argument("--out", default=None, help="results folder (default runs/<preset>-<scale>)")
    p.add_argument(
        "--scale",
        choices=SCALES,
        default="quick",
        help="quick: short schedule, smaller networks; cpu: the largest grid a 2-core CPU "
        "trains in hours (presets that have one); paper: the paper's recipe (default: quick)",
    )
    p.add_argument(
        "--seeds", type=int, default=None, help="seeds per model (default: the preset's)"
    )
    p.add_argument(
        "--dataset",
        action="append",
        choices=DATASETS,
        default=None,
        help="data set to run on (repeatable; default: the preset's)",
    )
    p.add_argument(
        "--noise-root",
        default=None,
        help="folder of the official CIFAR-10-C / CIFAR-100-C .npy files (default: generated)",
    )
    p.add_argument(
        "--train-limit",
        type=int,
        default=0,
        help="train on a seeded subset of N images, a quick look (default: 0, all images)",
    )
    p.add_argument(
        "--list-jobs",
        action="store_true",
        help="print one self-contained shell command per job and exit",
    )
    p.add_argument(
        "--shard", default=None, help="run slice i of n of the jobs, e.g. 2/4 (default: every job)"
    )
    p.add_argument(
        "--job", type=int, default=None, help="run only job K, see --list-jobs (default: every job)"
    )
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument(
        "--train-only",
        action="store_true",
        help="train (or resume) the runs and stop; a later call without it evaluates them",
    )
    p.add_argument(
        "--jobs-per-device",
        type=int,
        default=0,
        metavar="N",
        help="run N jobs at once on each device, one process each (default: one by one)",
    )


def run(args: argparse.Namespace) -> int:
    if args.list:
        return _list()
    if not args.preset:
        raise ValueError("name a preset (odenets reproduce --list shows them)")
    if args.jobs_per_device < 0:
        raise ValueError(
            f"--jobs-per-device must be >= 1 (0: one by one); got {args.jobs_per_device}"
        )
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1 (default: the preset's); got {args.seeds}")
    for flag, root in (("--data-root", args.data_root), ("--noise-root", args.noise_root)):
        if root is not None and not Path(root).is_dir():
            raise ValueError(f"{flag} {root} is not an existing folder")
    # Listing needs no data: without --data-root the lines carry a placeholder to fill in.
    placeholder = args.list_jobs and args.data_root is None and _needs_data_root(args)
    grid = load_grid(
        args.preset,
        scale=args.scale,
        seeds=args.seeds or 0,  # 0: the preset's number
        datasets=args.dataset or (),
        data_root=DATA_ROOT_PLACEHOLDER if placeholder else args.data_root,
        noise_root=args.noise_root,
        train_limit=args.train_limit,
    )
    out = args.out or f"runs/{grid.preset.name}-{grid.scale}"
    shard = parse_shard(args.shard) if args.shard else None
    if args.list_jobs:
        return _list_jobs(
            grid,
            out,
            shard=shard,
            only=args.job,
            extra=cache_flags(args),
            data_root=DATA_ROOT_PLACEHOLDER if placeholder else None,
        )
    return _run_jobs(args, grid, out, shard)


def _needs_data_root(args: argparse.Namespace) -> bool:
    """Whether the grid of these arguments trains on a data set other than the digits."""
    preset = load_preset(args.preset)
    datasets = args.dataset or preset.datasets_for(args.scale)
    return any(d != "digits" for d in datasets)


def _list_jobs(
    grid, out: str, *, shard, only, extra: str = "", data_root: str | None = None
) -> int:
    """Print one shell command per job of the grid (or its --shard / --job; ensembles after
    the trainings), each ending with a comment naming its model, data set and seed (and the
    row and its settings where the row trains its own way), then the report's. Writes
    nothing: the folder is claimed by a real run. `data_root`: a placeholder written after
    --data-root instead of a folder."""
    jobs = expand_jobs(grid)
    chosen = select_jobs(jobs, shard=shard, only=only)
    python = python_executable()
    part = f"shard {shard[0]}/{shard[1]}: " if shard else ""
    print(
        f"# {grid.preset.name} ({grid.scale}): {part}{len(chosen)} of {len(jobs)} jobs; "
        "ensembles need every training job before them; run the report last"
    )
    surrogates = sorted({e.transfer_from for e in grid.further_evals if e.transfer_from})
    if surrogates:
        print(
            f"# transfer evaluations need the job of row {', '.join(surrogates)} (same data set "
            "and seed) done first; a job run before it waits for it: run that job again"
        )
    if data_root is not None:
        print(f"# replace {data_root} with the data folder (or list again with --data-root)")
    for job in chosen:
        if job.is_ensemble and not jobs[job.index - 1].is_ensemble:
            print("# after every job above:")
        command = job_command(grid, out, job, python=python, data_root=data_root) + extra
        print(f"{command}  {job_comment(job)}")
    print(shlex.join([python, "-m", "odenets", "report", str(Path(out).resolve())]))
    return 0


def _run_jobs(args: argparse.Namespace, grid, out: str, shard) -> int:
    """Run the grid (or its --shard / --job), print a line per job event and the counts, and
    write the report after a whole grid. Exit 1 while a job of a whole grid is unfinished."""
    start = time.perf_counter()
    states = run_grid(
        grid,
        out,
        shard=shard,
        only=args.job,
        on_event=_event_printer(grid, shard, args.job, args.jobs_per_device),
        train_only=args.train_only,
        jobs_per_device=args.jobs_per_device,
    )
    counts = {s: list(states.values()).count(s) for s in sorted(set(states.values()))}
    print(
        f"{grid.preset.name} ({grid.scale}) in {out}: "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + f" ({time.perf_counter() - start:.0f} s)"
    )
    if args.job is None and shard is None and not args.no_report and not args.train_only:
        write_report(out)
        print(f"report: {out}/report.md")
    done = (
        ("finished", "diverged", "trained", "waiting")
        if args.train_only
        else ("finished", "diverged")
    )
    unfinished = [n for n, s in states.items() if s not in done]
    return 0 if not unfinished or args.job is not None or shard is not None else 1


def _event_printer(grid, shard, only, jobs_per_device: int):
    """A line per job as it ends: its label, state and time, the jobs done and the ETA."""
    jobs = expand_jobs(grid)
    parallel = len(devices()) * jobs_per_device if jobs_per_device else 1
    progress = GridProgress(select_jobs(jobs, shard=shard, only=only), len(jobs), parallel=parallel)

    def on_event(job, state, seconds) -> None:
        print(progress.event_line(job, state, seconds), flush=True)

    return on_event


def _list() -> int:
    for name in list_presets():
        preset = load_preset(name)
        n_models = sum(1 for r in preset.rows if not r.ensemble_of)
        scales = [s for s in SCALES if s in preset.evaluate]
        seeds = ", ".join(f"{s} {preset.scale_seeds.get(s, preset.seeds)}" for s in scales)
        hours = ", ".join(f"{s} ~{preset.gpu_hours[s]:g} h" for s in scales)
        print(f"{name:20s} {preset.description}")
        print(
            f"{'':20s} data: {', '.join(preset.datasets)}; {n_models} models; seeds: {seeds}; "
            f"rough GPU time: {hours} (estimates)"
        )
    return 0
