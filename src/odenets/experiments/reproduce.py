"""The grid behind a paper table: jobs, the manifest, and a restart-safe runner.

Layout of a results folder (``--out``)::

    manifest.json          preset name, scale, seeds, data sets, data root, the job list
    runs/<job name>/       one folder per job: the run folder of `odenets train`, plus
        job.json           which preset, scale, row, data set and seed produced it
        eval.json          written by `odenets evaluate`
    report.md / .csv / .json, figures/    written by `odenets report`

A job is finished when its `summary.json` says "finished" and its `eval.json` exists (an
ensemble job: when its `eval.json` exists); finished and diverged jobs are never run again,
an interrupted one resumes from its last checkpoint. Each job is also one self-contained
shell command (`job_command`), so a scheduler can run the grid on many machines.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from odenets.checkpoint import read_json, write_json_atomic
from odenets.device import resolve_device
from odenets.errors import OdenetsError
from odenets.experiments.presets import Preset, load_preset

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
JOB_FILE = "job.json"
RUNS = "runs"
DATASETS = ("cifar10", "cifar100", "folder", "digits")


@dataclass(frozen=True)
class Job:
    """One training run (then its evaluation), or the evaluation of an ensemble of runs."""

    index: int  # position in the grid; `--job K` runs it
    name: str  # folder under <out>/runs
    row: str  # row key of the paper table
    dataset: str  # data set trained and evaluated on
    paper_dataset: str  # data set of the paper's number beside it ("" = none)
    seed: int | None  # None for an ensemble
    model: str  # registry name ("" for an ensemble)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    members: tuple[str, ...] = ()  # ensemble: names of the member runs
    label: str = ""  # the row's display name, where the preset gives one

    @property
    def is_ensemble(self) -> bool:
        return bool(self.members)


@dataclass(frozen=True)
class Grid:
    """Everything that defines a grid: a preset at a scale, with seeds and data sets."""

    preset: Preset
    scale: str = "quick"
    seeds: int = 0  # 0 = the preset's number
    datasets: tuple[str, ...] = ()  # () = the preset's data sets
    data_root: str | None = None
    noise_root: str | None = None  # official CIFAR-C files; None = generated noise
    train_limit: int = 0  # train on a seeded subset of this many images; 0 = all
    preset_ref: str = ""  # what the user typed (a name or a .toml path), for job commands

    def __post_init__(self):
        if self.scale not in self.preset.evaluate:
            scales = ", ".join(self.preset.evaluate)
            raise ValueError(
                f"preset {self.preset.name!r} has no scale {self.scale!r}; it has {scales}"
            )
        for d in self.datasets:
            if d not in DATASETS:
                raise ValueError(f"unknown data set {d!r}; choose one of {', '.join(DATASETS)}")
        if self.seeds < 0:
            raise ValueError(f"seeds must be >= 1 (or 0 for the preset's number); got {self.seeds}")
        if self.data_root is None and any(d != "digits" for d in self.resolved_datasets):
            raise ValueError("this grid needs --data-root (only the digits data set has none)")

    @property
    def n_seeds(self) -> int:
        return self.seeds or self.preset.scale_seeds.get(self.scale) or self.preset.seeds

    @property
    def resolved_datasets(self) -> tuple[str, ...]:
        return self.datasets or self.preset.datasets

    @property
    def train_overrides(self) -> dict[str, Any]:
        overrides = dict(self.preset.train.get(self.scale, {}))
        if self.train_limit:
            overrides["train_limit"] = self.train_limit
        return overrides

    @property
    def eval_settings(self):
        return self.preset.evaluate[self.scale]


def paper_dataset_for(dataset: str, preset: Preset) -> str:
    """Which paper column a data set is compared with: CIFAR itself; an image folder is
    taken to be CIFAR-10 as image files (the usual case); digits have no paper numbers."""
    if dataset in ("cifar10", "cifar100"):
        return dataset
    if dataset == "folder" and "cifar10" in preset.datasets:
        return "cifar10"
    return ""


def _slug(text: str) -> str:
    return text.replace("@", "-init").replace("+", "-").replace("/", "-")


def expand_jobs(grid: Grid) -> list[Job]:
    """The jobs of a grid, training jobs first (data set, row, seed), then ensembles."""
    preset, jobs, ensembles = grid.preset, [], []
    for dataset in grid.resolved_datasets:
        paper = paper_dataset_for(dataset, preset)
        for row in preset.rows:
            if row.ensemble_of:
                members = tuple(
                    f"{dataset}-{_slug(row.ensemble_of)}-seed{s}" for s in range(grid.n_seeds)
                )
                ensembles.append((row, dataset, paper, members))
                continue
            for seed in range(grid.n_seeds):
                jobs.append(
                    dict(
                        name=f"{dataset}-{_slug(row.key)}-seed{seed}",
                        row=row.key,
                        dataset=dataset,
                        paper_dataset=paper,
                        seed=seed,
                        model=row.model_for(grid.scale),
                        model_kwargs=dict(row.kwargs),
                        label=row.label,
                    )
                )
    for row, dataset, paper, members in ensembles:
        jobs.append(
            dict(
                name=f"{dataset}-{_slug(row.key)}",
                row=row.key,
                dataset=dataset,
                paper_dataset=paper,
                seed=None,
                model=preset.row(row.ensemble_of).model_for(grid.scale),
                members=members,
                label=row.label,
            )
        )
    return [Job(index=i, **spec) for i, spec in enumerate(jobs)]


# --- manifest -------------------------------------------------------------------------------
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


# --- job state ------------------------------------------------------------------------------
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


# --- running --------------------------------------------------------------------------------
def train_config(grid: Grid, job: Job, folder: Path):
    """The `TrainConfig` of a job: the preset's scale overrides on the data set's recipe.

    `resume` is always on: a fresh folder starts from scratch, an interrupted one continues
    from its last checkpoint (exactly, see `odenets.training.fit`).
    """
    from odenets.training import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__)
    overrides = grid.train_overrides
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"preset {grid.preset.name!r}: unknown training settings {unknown}; "
            "accepted: the fields of odenets.training.TrainConfig"
        )
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
    from odenets.errors import DivergenceError
    from odenets.training import fit

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
) -> dict[str, Any]:
    """Evaluate one run, or several as an ensemble, as `odenets evaluate` does, with the
    preset's settings (attack steps included); returns the eval.json dictionary.

    The test subset (`settings.limit`) is the same seeded subset `odenets evaluate --limit`
    takes, so results agree with the command.
    """
    import numpy as np
    import torch

    from odenets.data import load_dataset
    from odenets.robustness import evaluate
    from odenets.training import load_run, read_run

    dataset = read_run(run_dirs[0]).config["dataset"]
    device = resolve_device("auto")
    models = [load_run(p, device=device) for p in run_dirs]
    root = data_root if data_root is not None and dataset["name"] != "digits" else None
    test = load_dataset(dataset["name"], root=root or dataset.get("root"), split="test")
    order = np.arange(len(test.labels))
    if settings.limit and settings.limit < len(order):
        order = np.sort(np.random.default_rng(seed).permutation(len(order))[: settings.limit])
    images = torch.from_numpy(test.images[order]).permute(0, 3, 1, 2).float() / 255  # (N,C,H,W)
    labels = torch.from_numpy(test.labels[order])
    steps = {"steps": settings.steps} if settings.steps else {}
    noise = ("official" if noise_root else "generated") if settings.noise else None
    return evaluate(
        models,
        images,
        labels,
        attacks=list(settings.attacks),
        eps_list=[e / 255 for e in settings.eps],
        threat_model=settings.threat_model,
        noise=noise,
        noise_root=noise_root,
        attack_options={a: steps for a in settings.attacks if a in ("ifgsm", "pgd")},
        seed=seed,
        indices=torch.from_numpy(order),
        info={"runs": [str(p) for p in run_dirs], "dataset": dataset["name"], "split": "test"},
        progress=sys.stderr.isatty(),
    )


def evaluate_job(grid: Grid, job: Job, out: Path) -> None:
    """Evaluate one run (or an ensemble) of the grid into its eval.json."""
    folder = out / RUNS / job.name
    members = job.members if job.is_ensemble else (job.name,)
    result = evaluate_run(
        [out / RUNS / m for m in members],
        grid.eval_settings,
        data_root=grid.data_root,
        noise_root=grid.noise_root if grid.eval_settings.noise else None,
    )
    write_json_atomic(folder / "eval.json", result)


def run_job(grid: Grid, out: str | Path, job: Job) -> str:
    """Bring one job to its end state; returns the state reached (see `job_state`)."""
    out = Path(out)
    folder = out / RUNS / job.name
    state = job_state(out, job)
    if state in ("finished", "diverged", "failed"):
        return state
    if job.is_ensemble:
        missing = [m for m in job.members if not (out / RUNS / m / "eval.json").exists()]
        if missing:
            log.warning("ensemble %s waits for runs %s", job.name, ", ".join(missing))
            return "waiting"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"preset": grid.preset.name, "scale": grid.scale, "table": grid.preset.table}
    write_json_atomic(folder / JOB_FILE, {**record, **asdict(job)})
    if not job.is_ensemble and state in ("pending", "running"):
        train_job(grid, job, folder)
        state = job_state(out, job)
        if state in ("diverged", "failed"):
            return state
        if state != "trained":
            raise OdenetsError(f"training of job {job.index} ({job.name}) did not finish")
    evaluate_job(grid, job, out)
    return "finished"


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
) -> dict[str, str]:
    """Run every selected job not yet finished; returns job name -> state reached."""
    jobs = prepare_folder(grid, out)
    states = {}
    for job in select_jobs(jobs, shard=shard, only=only):
        before = job_state(out, job)
        start = time.perf_counter()
        if before in ("finished", "diverged", "failed"):
            states[job.name] = before
            if on_event:
                on_event(job, f"skipped ({before})", 0.0)
            continue
        states[job.name] = run_job(grid, out, job)
        if on_event:
            on_event(job, states[job.name], time.perf_counter() - start)
    return states


def load_grid(
    preset: str,
    *,
    scale: str = "quick",
    seeds: int = 0,
    datasets: Sequence[str] = (),
    data_root: str | Path | None = None,
    noise_root: str | Path | None = None,
    train_limit: int = 0,
) -> Grid:
    """A `Grid` from a preset name or .toml path and the command-line options."""
    return Grid(
        preset=load_preset(preset),
        scale=scale,
        seeds=seeds,
        datasets=tuple(datasets),
        data_root=None if data_root is None else str(data_root),
        noise_root=None if noise_root is None else str(noise_root),
        train_limit=int(train_limit),
        preset_ref=str(preset),
    )


def python_executable() -> str:
    return sys.executable or "python"
