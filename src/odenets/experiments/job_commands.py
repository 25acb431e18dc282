"""Each job of a grid as one self-contained shell command (`odenets reproduce --list-jobs`),
so a scheduler (a SLURM array, GNU parallel) can run the grid on many machines."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from odenets.experiments.jobs import Grid, Job

# Written after --data-root when a grid is listed without one: the user fills it in.
DATA_ROOT_PLACEHOLDER = "DATA_ROOT"


def job_command(
    grid: Grid, out: str | Path, job: Job, *, python: str = "", data_root: str | None = None
) -> str:
    """One self-contained shell command that runs `job` (for a SLURM array, GNU parallel).

    Paths are absolute, so the command works from whatever folder a scheduler starts it in.
    `data_root`, when given, is written after --data-root as it is (a placeholder such as
    `DATA_ROOT_PLACEHOLDER`) instead of the grid's data folder.
    """
    preset = grid.preset_ref or grid.preset.name
    if Path(preset).is_file():  # a preset given as a TOML file, not a registered name
        preset = str(Path(preset).resolve())
    argv = [python or "python", "-m", "odenets", "reproduce", preset]
    argv += ["--out", _absolute(out), "--scale", grid.scale, "--seeds", str(grid.n_seeds)]
    if data_root is not None:
        argv += ["--data-root", data_root]
    elif grid.data_root is not None:
        argv += ["--data-root", _absolute(grid.data_root)]
    if grid.noise_root is not None:
        argv += ["--noise-root", _absolute(grid.noise_root)]
    if grid.train_limit:
        argv += ["--train-limit", str(grid.train_limit)]
    for d in grid.resolved_datasets:
        argv += ["--dataset", d]
    argv += ["--job", str(job.index)]
    return shlex.join(argv)


def job_comment(job: Job) -> str:
    """What a job runs, as a shell comment to end its line: model, data set and seed, and,
    for a row that trains its own way, its key and settings (two rows may train one model)."""
    if job.is_ensemble:
        return f"# ensemble of {len(job.members)} {job.model} runs on {job.dataset}"
    comment = f"# {job.model} on {job.dataset}, seed {job.seed}"
    if job.train:
        settings = ", ".join(f"{k} = {_toml_value(v)}" for k, v in sorted(job.train.items()))
        comment += f" (row {job.row}: {settings})"
    return comment


def _toml_value(value) -> str:
    """A setting as the preset writes it: true / false, numbers and lists as Python's."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _absolute(path: str | Path) -> str:
    return str(Path(path).resolve())


def python_executable() -> str:
    return sys.executable or "python"
