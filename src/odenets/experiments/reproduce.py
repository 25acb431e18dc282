"""The grid behind a paper table: jobs, the manifest, and a restart-safe runner.

Layout of a results folder (``--out``)::

    manifest.json          preset name, scale, seeds, data sets, data root, the job list
    runs/<job name>/       one folder per job: the run folder of `odenets train`, plus
        job.json           which preset, scale, row, data set and seed produced it
        eval.json          written by `odenets evaluate`
        eval.<name>.json   each further evaluation of the preset that covers the run
    report.md / .csv / .json, figures/    written by `odenets report`

A job is finished when its `summary.json` says "finished" and its `eval.json` and the files
of its further evaluations exist and scored the run's current weights (an ensemble job: when
its `eval.json` exists); finished and diverged jobs are never run again, an interrupted
one resumes from its last checkpoint. Each job is also one self-contained shell command
(`job_command`), so a scheduler can run the grid on many machines.

This module holds the grid runner (shards, skipping what is done); the pieces are
`jobs` (Grid, Job, expand_jobs, load_grid), `grid_folder` (manifest, job state),
`job_runner` (train and evaluate one job), `job_pool` (N jobs at once per device) and
`job_commands` (one shell command per job).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from odenets.experiments.grid_folder import END_STATES, another_turn, job_state, prepare_folder
from odenets.experiments.grid_progress import job_label
from odenets.experiments.job_pool import run_pool
from odenets.experiments.job_runner import check_evaluations, check_training, run_job
from odenets.experiments.jobs import Grid, Job
from odenets.progress import log_label


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4): the second of four slices (1-based, as SLURM array ids usually are)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError as err:
        raise ValueError(f"--shard must look like i/n, e.g. 1/4; got {text!r}") from err
    if not 1 <= i <= n:
        raise ValueError(f"--shard i/n needs 1 <= i <= n; got {text!r}")
    return i, n


def select_jobs(
    jobs: Sequence[Job], *, shard: tuple[int, int] | None = None, only: int | None = None
) -> list[Job]:
    """The jobs of one shard (round-robin over training jobs; ensembles go to every shard,
    which runs them once their members are done), or the single job `only`."""
    if only is not None:
        if not 0 <= only < len(jobs):
            raise ValueError(f"--job must be in 0..{len(jobs) - 1}; got {only}")
        return [jobs[only]]
    if shard is None:
        return list(jobs)
    i, n = shard
    return [j for j in jobs if j.is_ensemble or j.index % n == i - 1]


def run_grid(
    grid: Grid,
    out: str | Path,
    *,
    shard: tuple[int, int] | None = None,
    only: int | None = None,
    on_event: Callable[[Job, str, float], None] | None = None,
    train_only: bool = False,
    jobs_per_device: int = 0,
) -> dict[str, str]:
    """Run every selected job not yet finished; returns job name -> state reached.

    With `train_only`, trainings are brought to their end and nothing is evaluated (ensemble
    jobs wait): a later call without it evaluates the trained runs. `jobs_per_device` N >= 1
    runs N jobs at once on each device, each in its own process (`job_pool`); 0 runs them
    one by one in this process. A train setting a row's network refuses (`check_training`)
    and, unless `train_only`, an evaluation of the grid that could not run
    (`check_evaluations`) stop it before any training.
    """
    check_training(grid)
    if not train_only:
        check_evaluations(grid)
    jobs = prepare_folder(grid, out)
    if jobs_per_device:
        chosen = select_jobs(jobs, shard=shard, only=only)
        return run_pool(
            grid,
            out,
            chosen,
            jobs_per_device=jobs_per_device,
            on_event=on_event,
            train_only=train_only,
        )
    states: dict[str, str] = {}
    todo = select_jobs(jobs, shard=shard, only=only)
    while todo:
        for job in todo:
            before = job_state(out, job)
            start = time.perf_counter()
            if before in END_STATES or (train_only and before == "trained"):
                states[job.name] = before
                if on_event:
                    on_event(job, f"skipped ({before})", 0.0)
                continue
            with log_label(job_label(job, len(jobs))):  # starts each log line of the job
                states[job.name] = run_job(grid, out, job, train_only=train_only)
            if on_event:
                on_event(job, states[job.name], time.perf_counter() - start)
        # A job that waited for another of this call gets another turn once that one is done.
        todo = another_turn(todo, states, train_only=train_only)
    return states
