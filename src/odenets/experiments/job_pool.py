"""Several jobs of a grid at once on each device (`odenets reproduce --jobs-per-device N`).

Small CIFAR networks leave a large GPU mostly idle, so N jobs share it, each in its own
process (the command of `odenets reproduce --list-jobs`, run by this parent). The parent
hands each job to one process only, so no job runs twice; each job computes what it
computes alone (its own seed, data order and process), so the results equal the serial run.
Ensembles start once every training job has ended. Each process writes its output to
`<out>/logs/<job name>.log`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from odenets.experiments.grid_folder import END_STATES, another_turn, job_state, prepare_folder
from odenets.experiments.job_commands import job_command, python_executable
from odenets.experiments.jobs import Grid, Job

LOGS = "logs"


def devices() -> list[str | None]:
    """The CUDA devices to spread jobs over, as each process's CUDA_VISIBLE_DEVICES value,
    or [None] (one CPU "device")."""
    if torch.cuda.is_available():
        return visible_device_ids(torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    return [None]


def visible_device_ids(count: int, visible: str | None) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value that gives a child process this process's device i,
    for i < `count`. Under CUDA_VISIBLE_DEVICES="2,3" device 0 is physical device 2 (or
    whatever the entry names: an index or a GPU UUID), so a child gets "2", not "0"."""
    if visible is None or not visible.strip():
        return [str(i) for i in range(count)]
    entries = [v.strip() for v in visible.split(",") if v.strip()]
    return entries[:count]


def run_pool(
    grid: Grid,
    out: str | Path,
    jobs: list[Job],
    *,
    jobs_per_device: int,
    on_event: Callable[[Job, str, float], None] | None = None,
    train_only: bool = False,
) -> dict[str, str]:
    """Run `jobs` (of `grid`, folder `out`) `jobs_per_device` at a time on each device;
    returns job name -> state reached ("failed" where a process ended without its job).
    With `train_only` each process only trains (`--train-only`) and ensembles wait."""
    if jobs_per_device < 1:
        raise ValueError(f"--jobs-per-device must be >= 1; got {jobs_per_device}")
    out = Path(out)
    prepare_folder(grid, out)
    slots = [d for d in devices() for _ in range(jobs_per_device)]
    threads = _threads_per_job(len(slots))
    states: dict[str, str] = {}
    todo = []
    for job in jobs:
        before = job_state(out, job)
        if before in END_STATES or (train_only and before == "trained"):
            states[job.name] = before
            if on_event:
                on_event(job, f"skipped ({before})", 0.0)
        else:
            todo.append(job)
    waves = [[j for j in todo if not j.is_ensemble], [j for j in todo if j.is_ensemble]]
    for wave in waves[:1] if train_only else waves:
        while wave:
            reached = _run_wave(grid, out, wave, slots, threads, on_event, train_only)
            states.update(reached)
            # A job whose transfer evaluation waited for a surrogate another process was
            # training gets another turn once that one is done (as in the serial run).
            wave = another_turn(wave, reached, train_only=train_only)
    return states


def _run_wave(grid, out, jobs, slots, threads, on_event, train_only) -> dict[str, str]:
    states: dict[str, str] = {}
    queue = list(jobs)
    running: dict[int, tuple[subprocess.Popen, Job, float, object]] = {}  # slot -> process
    (out / LOGS).mkdir(parents=True, exist_ok=True)
    while queue or running:
        for slot, device in enumerate(slots):
            if slot not in running and queue:
                job = queue.pop(0)
                running[slot] = _start(grid, out, job, device, threads, train_only)
        time.sleep(0.2)
        for slot, (proc, job, start, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[slot]
            state = job_state(out, job)
            if proc.returncode != 0 and state not in (*END_STATES, "trained"):
                state = "failed"
            elif state == "trained" and not train_only and proc.returncode == 0:
                # Trained, not all evaluated, and no crash: the job waited (for a surrogate
                # another process trains; it may have finished since the job looked).
                state = "waiting"
            states[job.name] = state
            if on_event:
                on_event(job, state, time.perf_counter() - start)
    return states


def _start(grid, out, job, device, threads, train_only):
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env["PYTHONUNBUFFERED"] = "1"
    cmd = job_command(grid, out, job, python=python_executable())
    log = open(out / LOGS / f"{job.name}.log", "ab")  # noqa: SIM115 - closed when it ends
    proc = subprocess.Popen(
        shlex.split(cmd) + (["--train-only"] if train_only else []),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=os.getcwd(),
    )
    return proc, job, time.perf_counter(), log


def _threads_per_job(n_slots: int) -> int:
    """CPU threads of each process: the cores shared out (OMP_NUM_THREADS, if set, wins)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // n_slots)
