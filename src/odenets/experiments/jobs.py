"""The jobs of a grid: a preset at a scale (`Grid`) expanded into one `Job` per run.

Training jobs come first, in (data set, row, seed) order, then the ensembles, which
evaluate finished training runs together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odenets.experiments.presets import Preset, load_preset

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
    train: dict[str, Any] = field(default_factory=dict)  # the row's own training settings
    # The preset's further evaluations of this run (each its eval.<name>.json)
    evaluations: tuple[str, ...] = ()

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
        return self.datasets or self.preset.datasets_for(self.scale)

    @property
    def train_overrides(self) -> dict[str, Any]:
        overrides = dict(self.preset.train.get(self.scale, {}))
        if self.train_limit:
            overrides["train_limit"] = self.train_limit
        return overrides

    @property
    def eval_settings(self):
        return self.preset.evaluate[self.scale]

    @property
    def further_evals(self):
        """The further evaluations of the scale (`EvalSettings` with a name)."""
        return self.preset.further_for(self.scale)

    def further_eval(self, name: str):
        for settings in self.further_evals:
            if settings.name == name:
                return settings
        raise ValueError(f"preset {self.preset.name!r} has no further evaluation {name!r}")


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


def _training_specs(grid: Grid, row, dataset: str, paper: str) -> list[dict[str, Any]]:
    """The `Job` fields of one row's training runs on one data set, one per seed."""
    evaluations = tuple(e.name for e in grid.further_evals if not e.rows or row.key in e.rows)
    return [
        dict(
            name=run_name(dataset, row.key, seed),
            row=row.key,
            dataset=dataset,
            paper_dataset=paper,
            seed=seed,
            model=row.model_for(grid.scale),
            model_kwargs=dict(row.kwargs),
            label=row.label,
            evaluations=evaluations,
            train=dict(row.train),
        )
        for seed in range(grid.n_seeds)
    ]


def run_name(dataset: str, row_key: str, seed: int) -> str:
    """The folder name of a row's training run on a data set with a seed."""
    return f"{dataset}-{_slug(row_key)}-seed{seed}"


def _ensemble_spec(grid: Grid, row, dataset: str, paper: str) -> dict[str, Any]:
    """The `Job` fields of one ensemble row on one data set: its members are the seeds of
    the row it ensembles."""
    members = tuple(run_name(dataset, row.ensemble_of, s) for s in range(grid.n_seeds))
    return dict(
        name=f"{dataset}-{_slug(row.key)}",
        row=row.key,
        dataset=dataset,
        paper_dataset=paper,
        seed=None,
        model=grid.preset.row(row.ensemble_of).model_for(grid.scale),
        members=members,
        label=row.label,
    )


def expand_jobs(grid: Grid) -> list[Job]:
    """The jobs of a grid, training jobs first (data set, row, seed), then ensembles."""
    training, ensembles = [], []
    for dataset in grid.resolved_datasets:
        paper = paper_dataset_for(dataset, grid.preset)
        for row in grid.preset.rows_for(grid.scale):
            if row.ensemble_of:
                ensembles.append(_ensemble_spec(grid, row, dataset, paper))
            else:
                training += _training_specs(grid, row, dataset, paper)
    return [Job(index=i, **spec) for i, spec in enumerate(training + ensembles)]
