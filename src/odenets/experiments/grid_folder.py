"""A grid's results folder on disk: the manifest, each job's record, and each job's state.

`prepare_folder` checks a folder belongs to the grid (or is new) and writes manifest.json;
`job_state` reads how far one job got from the files in its run folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from odenets._version import __version__
from odenets.checkpoint import read_json, write_json_atomic
from odenets.errors import CheckpointError, OdenetsError
from odenets.experiments.jobs import Grid, Job, expand_jobs
from odenets.training.run_folder import CONFIG, EVAL, LAST_JSON, RunFolder, further_eval_file
from odenets.training.runs import weights_record

MANIFEST = "manifest.json"
JOB_FILE = "job.json"
RUNS = "runs"
END_STATES = ("finished", "diverged", "failed")  # a job in one of these is never run again


def manifest_dict(grid: Grid, jobs: Sequence[Job]) -> dict[str, Any]:
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
        **(
            {"further_evaluations": [asdict(e) for e in grid.further_evals]}
            if grid.further_evals
            else {}
        ),
        "odenets_version": __version__,
        "jobs": [asdict(j) for j in jobs],
    }


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = Path(out) / MANIFEST
    return read_json(path) if path.exists() else None


def check_not_a_run_folder(out: str | Path, what: str) -> None:
    """Refuse a training run folder (it holds config.json) as the folder of a grid."""
    if RunFolder(out).is_run:
        raise OdenetsError(
            f"--out {out} is a training run folder (it holds {CONFIG}); give the {what} "
            "a folder of its own"
        )


def prepare_folder(grid: Grid, out: str | Path) -> list[Job]:
    """Check `out` holds this preset at this scale (or nothing), write the manifest, and
    return the jobs. A folder of another preset or scale, or a training run folder, is
    refused: results of different grids are never mixed in one folder."""
    out = Path(out)
    check_not_a_run_folder(out, "grid")
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


def eval_freshness(ev: dict[str, Any], run_dirs: Sequence[Path]) -> tuple[str, str]:
    """Whether an eval.json scored the weights its run folders hold now, and crafted its
    transfer attacks on the weights its surrogate holds now.

    Returns:
        ("current", ""); ("stale", why) when a run's or the surrogate's weights changed
        since (training went on, or it was trained again); or ("unknown", why) for an
        eval.json that records no weights (older odenets), or whose runs hold no weights to
        check it against (results shared without their weights): neither can be checked.
    """
    scored = ev.get("weights") or []
    if not scored or len(scored) != len(run_dirs) or not all(scored):
        return "unknown", "it records no weights (written by an older odenets)"
    # The surrogate's weights (recorded since transfer attacks could go stale); its folder as
    # recorded, else the run folder of that name beside the scored runs (a moved grid folder).
    surrogates = []
    crafted_on = ev.get("transfer_weights") or []
    for then, recorded in zip(crafted_on, ev.get("transfer_from") or [], strict=False):
        surrogate = Path(recorded)
        if not surrogate.is_dir():
            surrogate = Path(run_dirs[0]).parent / surrogate.name
        if then:
            surrogates.append((then, surrogate))
    unchecked = []
    checks = [("it scored", then, Path(r)) for then, r in zip(scored, run_dirs, strict=True)]
    checks += [("its transfer attacks were crafted on", t, s) for t, s in surrogates]
    for words, then, folder in checks:
        try:
            now = weights_record(folder)
        except CheckpointError:
            unchecked.append(folder.name)
            continue
        if now["sha256"] != then.get("sha256"):
            return "stale", (
                f"{words} {_weights_words(then)} of {folder.name}, which now holds "
                f"{_weights_words(now)}"
            )
    if unchecked:
        return "unknown", (
            f"{', '.join(unchecked)} holds no weights to check it against (results copied "
            "without their weights?)"
        )
    return "current", ""


def _weights_words(record: dict[str, Any]) -> str:
    epochs = f" of {record['epochs']}" if record.get("epochs") is not None else ""
    return f"{record.get('file')} (epoch {record.get('epoch')}{epochs})"


def _evaluated(out: Path, job: Job, file: str = EVAL) -> bool:
    """The job's evaluation file (eval.json, or a further evaluation's) exists and scored its
    runs' current weights (or does not say)."""
    ev = RunFolder(out / RUNS / job.name).read_eval(file)
    if ev is None:
        return False
    members = job.members if job.is_ensemble else (job.name,)
    state, _ = eval_freshness(ev, [out / RUNS / m for m in members])
    return state != "stale"


def missing_evaluations(out: str | Path, job: Job) -> list[str]:
    """The evaluation files the job still needs: eval.json, then its further evaluations',
    each missing or stale."""
    files = [EVAL, *(further_eval_file(name) for name in job.evaluations)]
    return [f for f in files if not _evaluated(Path(out), job, f)]


def job_state(out: str | Path, job: Job) -> str:
    """ "finished", "diverged", "failed", "trained" (not yet evaluated), "running" or "pending".

    Finished means trained and evaluated: eval.json and the job's further evaluations
    (eval.<name>.json) all present. An evaluation that scored other weights than the run's
    current ones does not count.
    """
    out = Path(out)
    run = RunFolder(out / RUNS / job.name)
    if job.is_ensemble:
        return "pending" if missing_evaluations(out, job) else "finished"
    summary = run.read_summary()
    if not summary:
        return "running" if run.has(LAST_JSON) else "pending"
    status = summary.get("status")
    if status == "finished":
        return "trained" if missing_evaluations(out, job) else "finished"
    if status == "diverged":
        return "diverged"
    if status == "failed":
        return "failed"
    return "running"


def another_turn(jobs: list[Job], states: dict[str, str], *, train_only: bool) -> list[Job]:
    """The jobs of a round that get another: those that waited for another job of the round
    (an ensemble for its members, a transfer evaluation for its surrogate), when some job
    of the round reached its end and not every job waited; [] otherwise."""
    waiting = [j for j in jobs if states.get(j.name) == "waiting"]
    progressed = any(states.get(j.name) in END_STATES for j in jobs)
    if waiting and progressed and not train_only and len(waiting) < len(jobs):
        return waiting
    return []
