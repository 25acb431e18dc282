"""Each job of a grid as one self-contained shell command (`odenets reproduce --list-jobs`),
so a scheduler (a SLURM array, GNU parallel) can run the grid on many machines."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from odenets.experiments.jobs import Grid, Job


def job_command(grid: Grid, out: str | Path, job: Job, *, python: str = "") -> str:
    """One self-contained shell command that runs `job` (for a SLURM array, GNU parallel)."""
    argv = [python or "python", "-m", "odenets", "reproduce", grid.preset_ref or grid.preset.name]
    argv += ["--out", str(out), "--scale", grid.scale, "--seeds", str(grid.n_seeds)]
    if grid.data_root is not None:
        argv += ["--data-root", str(grid.data_root)]
    if grid.noise_root is not None:
        argv += ["--noise-root", str(grid.noise_root)]
    if grid.train_limit:
        argv += ["--train-limit", str(grid.train_limit)]
    for d in grid.resolved_datasets:
        argv += ["--dataset", d]
    argv += ["--job", str(job.index)]
    return shlex.join(argv)


def python_executable() -> str:
    return sys.executable or "python"
