"""A grid's results folder on disk: the manifest, each job's record, and each job's state.

`prepare_folder` checks a folder belongs to the grid (or is new) and writes manifest.json;
`job_state` reads how far one job got from the files in its run folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from odenets.checkpoint import read_json, write_json_atomic
from odenets.errors import OdenetsError
from odenets.experiments.jobs import Grid, Job, expand_jobs

MANIFEST = "manifest.json"
JOB_FILE = "job.json"
RUNS = "runs"
END_STATES = ("finished", "diverged", "failed")  # a job in one of these is never run again


def manifest_dict(grid: Grid, jobs: Sequence[Job]) -> dict[str, Any]:
    from odenets import __version__

    return {
        "preset": grid.preset.name,
        "scale": grid.scale,
        "table": grid.preset.table,
        "seeds": grid.n_seeds,
        "datasets": list(grid.resolved_datasets),
        "data_root": grid.data_root,
        "noise_root": grid.noise_root,
        "train": grid.train_overrides,
        "evaluate": asdict(grid.eval_settings),
        "odenets_version": __version__,
        "jobs": [asdict(j) for j in jobs],
    }


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = Path(out) / MANIFEST
    return read_json(path) if path.exists() else None


def prepare_folder(grid: Grid, out: str | Path) -> list[Job]:
    """Check `out` holds this preset at this scale (or nothing), write the manifest, and
    return the jobs. A folder of another preset or scale is refused: results of different
    grids are never mixed in one folder."""
    out = Path(out)
    jobs = expand_jobs(grid)
    old = read_manifest(out)
    if old is not None and (old.get("preset"), old.get("scale")) != (
        grid.preset.name,
        grid.scale,
    ):
        raise OdenetsError(
            f"{out} holds results of preset {old.get('preset')!r} at scale "
            f"{old.get('scale')!r}; this grid is {grid.preset.name!r} at scale "
            f"{grid.scale!r}. Use another --out folder."
        )
    new = manifest_dict(grid, jobs)
    if old != new:
        write_json_atomic(out / MANIFEST, new)
    return jobs


def write_job_record(grid: Grid, job: Job, folder: Path) -> None:
    """job.json: which preset, scale and table produced the run folder, and the job itself."""
    record = {"preset": grid.preset.name, "scale": grid.scale, "table": grid.preset.table}
    write_json_atomic(folder / JOB_FILE, {**record, **asdict(job)})


def job_state(out: str | Path, job: Job) -> str:
    """ "finished", "diverged", "failed", "trained" (not yet evaluated), "running" or "pending"."""
    folder = Path(out) / RUNS / job.name
    evaluated = (folder / "eval.json").exists()
    if job.is_ensemble:
        return "finished" if evaluated else "pending"
    summary_path = folder / "summary.json"
    if not summary_path.exists():
        return "running" if (folder / "last.json").exists() else "pending"
    status = read_json(summary_path).get("status")
    if status == "finished":
        return "finished" if evaluated else "trained"
    if status == "diverged":
        return "diverged"
    if status == "failed":
        return "failed"
    return "running"
