"""Running one job of a grid: train (or resume) its run, then evaluate it into eval.json
and into the file of each further evaluation of the preset (eval.<name>.json).

An ensemble job only evaluates, once every member run has its eval.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from odenets.checkpoint import read_json, write_json_atomic
from odenets.errors import CheckpointError, DivergenceError, OdenetsError
from odenets.experiments.grid_folder import (
    END_STATES,
    RUNS,
    eval_freshness,
    job_state,
    missing_evaluations,
    write_job_record,
)
from odenets.experiments.jobs import Grid, Job, run_name
from odenets.experiments.presets import eval_attack_options
from odenets.models.registry import create_model
from odenets.robustness.base import create_attack
from odenets.robustness.runs import count_test_images, evaluate_runs
from odenets.robustness.shards import merge_shards
from odenets.training import fit
from odenets.training.config import TrainConfig
from odenets.training.fit import frozen_coefficients
from odenets.training.run_folder import (
    EVAL,
    FINAL_WEIGHTS,
    LockedError,
    RunFolder,
    further_eval_file,
    hold_lock,
)

log = logging.getLogger(__name__)


def train_config(grid: Grid, job: Job, folder: Path):
    """The `TrainConfig` of a job: its row's training settings over the preset's scale
    overrides, on the data set's recipe.

    `resume` is always on: a fresh folder starts from scratch, an interrupted one continues
    from its last checkpoint (exactly, see `odenets.training.fit`).
    """
    overrides = _train_settings(grid, job.row, job.train)
    root = None if job.dataset == "digits" else grid.data_root
    return TrainConfig(
        **{
            **overrides,
            "model": job.model,
            "model_kwargs": dict(job.model_kwargs),
            "dataset": job.dataset,
            "data_root": root,
            "seed": int(job.seed),
            "out": str(folder),
            "resume": True,
        }
    )


def train_job(grid: Grid, job: Job, folder: Path) -> None:
    """Train (or resume) one job; a diverged run is recorded by `fit`, not raised here."""
    try:
        fit(train_config(grid, job, folder))
    except DivergenceError as err:
        log.warning("run %s diverged: %s", job.name, err)


def evaluate_run(
    run_dirs: Sequence[str | Path],
    settings,
    *,
    data_root: str | None = None,
    noise_root: str | None = None,
    seed: int = 0,
    transfer_from: str | Path | None = None,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Evaluate one run, or several as an ensemble, as `odenets evaluate` does, with the
    preset's settings (attack steps included); returns the eval.json dictionary.

    The test subset (`settings.limit`) is the same seeded subset `odenets evaluate --limit`
    takes, so results agree with the command. `transfer_from` is the surrogate run folder
    of the settings' `transfer_attacks`; `shard` (index, count), 0-based: only that share of
    the subset, as `odenets evaluate --shard`.
    """
    noise = ("official" if noise_root else "generated") if settings.noise else None
    transfer = list(settings.transfer_attacks) if transfer_from is not None else []
    return evaluate_runs(
        run_dirs,
        limit=settings.limit or None,  # 0: the whole split
        shard=shard,
        seed=seed,
        data_root=data_root or None,  # None: the root each run was trained with
        progress=sys.stderr.isatty(),
        attacks=list(settings.attacks),
        eps_list=[e / 255 for e in settings.eps],
        threat_model=settings.threat_models,
        noise=noise,
        noise_root=noise_root,
        attack_options=eval_attack_options(
            {**asdict(settings), "attacks": settings.attacks + tuple(transfer)}
        ),
        masking=settings.masking_checks,
        transfer_from=transfer_from,
        **({"transfer_attacks": transfer} if transfer else {}),
    )


PARTS = ".eval-parts"  # in a run folder: the parts of its evaluations in progress
PART_IMAGES = 100  # test images of a part (at least; at most MAX_PARTS parts)
MAX_PARTS = 20


def evaluate_in_parts(
    run_dirs: Sequence[Path],
    settings,
    *,
    folder: Path,
    file: str,
    data_root: str | None = None,
    noise_root: str | None = None,
    transfer_from: Path | None = None,
) -> dict[str, Any]:
    """`evaluate_run` of a grid job, restart-safe: an evaluation of more than PART_IMAGES
    test images is made in parts (shards of the subset, as `odenets evaluate --shard`),
    each written to `folder`/.eval-parts/ as it ends, and merged exactly as shards are
    (`merge_shards`: counts summed, checks and masking verdict recomputed). An evaluation
    stopped after hours (a 56-layer model under AutoAttack on a CPU) goes on from its last
    part. A part is used again only if it scored the same weights (and surrogate) with the
    same settings, on the same run folders."""
    kwargs = dict(data_root=data_root, noise_root=noise_root, transfer_from=transfer_from)
    n = settings.limit or count_test_images(run_dirs[0], data_root)
    count = min(MAX_PARTS, -(-n // PART_IMAGES))
    if count <= 1:
        return evaluate_run(run_dirs, settings, **kwargs)
    roots = [data_root, noise_root]
    key = json.dumps([asdict(settings), file, count, roots], sort_keys=True, default=str)
    parts_dir = folder / PARTS / f"{file}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    runs = [str(p) for p in run_dirs]
    source = [str(transfer_from)] if transfer_from is not None else None
    parts_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for index in range(count):
        path = parts_dir / f"part-{index + 1}-of-{count}.json"
        try:
            part = read_json(path) if path.exists() else None
        except CheckpointError:
            part = None  # unreadable: made again
        usable = (
            part is not None
            and (part.get("runs"), part.get("transfer_from")) == (runs, source)
            and eval_freshness(part, run_dirs)[0] == "current"
        )
        if usable:
            log.info("%s: part %d of %d done before, taken as it is", file, index + 1, count)
        else:
            log.info("%s: part %d of %d (%s)", file, index + 1, count, parts_dir.name)
            part = evaluate_run(run_dirs, settings, shard=(index, count), **kwargs)
            write_json_atomic(path, part)
        parts.append(part)
    try:
        return merge_shards(parts)
    except ValueError as err:  # parts that do not fit together: made again on the next call
        shutil.rmtree(parts_dir, ignore_errors=True)
        raise OdenetsError(f"{file}: its parts could not be merged ({err}); removed") from err


def remove_parts(folder: Path, file: str) -> None:
    """Remove the parts of evaluation `file` of a run folder (once the whole is written)."""
    for parts_dir in (folder / PARTS).glob(f"{file}-*"):
        shutil.rmtree(parts_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        (folder / PARTS).rmdir()  # only if empty


def _train_settings(grid: Grid, row: str, own: dict[str, Any]) -> dict[str, Any]:
    """A row's training settings over the scale's, refused where TrainConfig has no such
    field."""
    overrides = {**grid.train_overrides, **own}
    unknown = sorted(set(overrides) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(
            f"preset {grid.preset.name!r}, row {row!r}: unknown training settings {unknown}; "
            "accepted: the fields of odenets.training.TrainConfig"
        )
    return overrides


def check_training(grid: Grid) -> None:
    """Fail before any training on a training setting of the scale or a row that no
    TrainConfig takes, or that a row's network refuses: `freeze_coefficients` on a network
    without interpolation coefficients (the job would stop at its turn, after the jobs
    before it had trained)."""
    plain = []
    for row in grid.preset.rows_for(grid.scale):
        if row.ensemble_of:
            continue
        model = row.model_for(grid.scale)
        if not _train_settings(grid, row.key, row.train).get("freeze_coefficients"):
            continue
        try:
            frozen_coefficients(create_model(model, **row.kwargs), model)
        except ValueError:  # nothing to freeze
            plain.append(f"{row.key} ({model})")
    if plain:
        raise ValueError(
            f"preset {grid.preset.name!r}, scale {grid.scale!r}: freeze_coefficients is set "
            f"for rows whose networks have no interpolation coefficients: {', '.join(plain)}; "
            "set it only for In-ResNet-family rows (a row's own `train` setting)"
        )


def check_evaluations(grid: Grid) -> None:
    """Fail before any training on an evaluation of the grid (eval.json or a further one)
    that could not run: an attack name, radius or option that `create_attack` refuses, or
    a missing optional package (the job would train, then stop at its evaluation on every
    rerun, and the jobs after it would never train)."""
    for settings in (grid.eval_settings, *grid.further_evals):
        transfer = settings.transfer_attacks if settings.transfer_from else ()
        names = (*settings.attacks, *transfer)
        options = eval_attack_options({**asdict(settings), "attacks": names})
        for tm in settings.threat_models:
            for eps in settings.eps:
                for name in names:
                    create_attack(name, eps=eps / 255, threat_model=tm, **options.get(name, {}))


def evaluate_job(grid: Grid, job: Job, out: Path) -> str:
    """Evaluate one run (or an ensemble) of the grid: eval.json, then each of its further
    evaluations (eval.<name>.json), skipping those already done. Returns "finished", or
    "waiting" while a further evaluation's surrogate run is not trained yet. A surrogate
    run that diverged or failed never will be: that evaluation goes without its transfer
    attacks, and its file says why ("transfer_skipped")."""
    folder = out / RUNS / job.name
    members = job.members if job.is_ensemble else (job.name,)
    missing = missing_evaluations(out, job)
    if EVAL in missing:
        result = evaluate_in_parts(
            [out / RUNS / m for m in members],
            grid.eval_settings,
            folder=folder,
            file=EVAL,
            data_root=grid.data_root,
            noise_root=grid.noise_root if grid.eval_settings.noise else None,
        )
        RunFolder(folder).write_eval(result)
        remove_parts(folder, EVAL)
    state = "finished"
    for name in job.evaluations:
        file = further_eval_file(name)
        if file not in missing:
            continue
        settings = grid.further_eval(name)
        surrogate, surrogate_state = transfer_surrogate(grid, out, job, name)
        skipped = ""
        if surrogate_state in ("diverged", "failed"):
            # An end of the grid, as for any run: the surrogate will have no weights.
            skipped = f"the surrogate run {surrogate.name} {surrogate_state}"
            log.warning("evaluation %s of %s has no transfer attacks: %s", name, job.name, skipped)
            surrogate = None
        elif surrogate_state == "waiting":
            log.warning(
                "evaluation %s of %s waits for its surrogate run %s", name, job.name, surrogate.name
            )
            state = "waiting"
            continue
        result = evaluate_in_parts(
            [out / RUNS / m for m in members],
            settings,
            folder=folder,
            file=file,
            data_root=grid.data_root,
            noise_root=grid.noise_root if settings.noise else None,
            transfer_from=surrogate,
        )
        if skipped:
            result["transfer_skipped"] = skipped
        RunFolder(folder).write_eval(result, file)
        remove_parts(folder, file)
    return state


def transfer_surrogate(grid: Grid, out: Path, job: Job, name: str) -> tuple[Path | None, str]:
    """The surrogate run folder of the job's further evaluation `name` and its state: "ready"
    (trained, with final weights), "waiting" (not yet), "diverged" or "failed" (it never
    will be); (None, "") for an evaluation without transfer attacks or on the surrogate
    itself."""
    settings = grid.further_eval(name)
    if not settings.transfer_from or settings.transfer_from == job.row:
        return None, ""
    surrogate = out / RUNS / run_name(job.dataset, settings.transfer_from, job.seed)
    status = (RunFolder(surrogate).read_summary() or {}).get("status")
    if status in ("diverged", "failed"):
        return surrogate, status
    if status != "finished" or not RunFolder(surrogate).has(FINAL_WEIGHTS):
        return surrogate, "waiting"
    return surrogate, "ready"


JOB_LOCK = ".job.lock"


def run_job(grid: Grid, out: str | Path, job: Job, *, train_only: bool = False) -> str:
    """Bring one job to its end state (with `train_only`: to "trained", an ensemble to
    "waiting"); returns the state reached (see `job_state`), or "locked" when another
    process (on this machine or another sharing the folder) holds the job: N processes on
    one grid folder split its jobs, none run twice."""
    out = Path(out)
    folder = out / RUNS / job.name
    if job_state(out, job) in END_STATES:
        return job_state(out, job)
    try:
        with hold_lock(folder / JOB_LOCK, what=f"job {job.index} ({job.name})"):
            return _run_locked_job(grid, out, job, train_only=train_only)
    except LockedError as err:
        log.info("skipping job %s: %s", job.name, err)
        return "locked"


def _run_locked_job(grid: Grid, out: Path, job: Job, *, train_only: bool) -> str:
    folder = out / RUNS / job.name
    state = job_state(out, job)  # again: another process may have finished it meanwhile
    if state in END_STATES:
        return state
    if train_only and job.is_ensemble:
        return "waiting"
    if job.is_ensemble:
        missing = [m for m in job.members if not RunFolder(out / RUNS / m).has(EVAL)]
        if missing:
            log.warning("ensemble %s waits for runs %s", job.name, ", ".join(missing))
            return "waiting"
    folder.mkdir(parents=True, exist_ok=True)
    write_job_record(grid, job, folder)
    if not job.is_ensemble and state in ("pending", "running"):
        train_job(grid, job, folder)
        state = job_state(out, job)
        if state in ("diverged", "failed"):
            return state
        if state != "trained":
            raise OdenetsError(f"training of job {job.index} ({job.name}) did not finish")
    if train_only:
        return state
    return evaluate_job(grid, job, out)
