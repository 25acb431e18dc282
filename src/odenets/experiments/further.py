"""Further evaluations of a grid as tables.

A preset's scale may ask for further evaluations besides the one behind the paper table
(`further_evaluations` in the preset; each writes eval.<name>.json into the runs it covers):
another threat model, the referee attacks on a smaller subset, transfer from a surrogate.
Each becomes one table in the report: a line per measurement (clean, noise, each attack at
each threat model and radius, the per-sample worst case) and a column per row of the grid,
mean ± std over its seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from odenets.experiments.results import RunRecord, SampleRecord, sample_record
from odenets.robustness.base import attack_title

WORST = "worst case"


def measurements(ev: Mapping[str, Any]) -> dict[tuple[str, str, float | None], float]:
    """The accuracies (fractions) of one eval.json by (what, threat model, ε in 1/255):
    ("clean", "", None), ("noise", "", None), (attack name, tm, ε) and ("worst case", tm,
    ε), in the order eval.json lists them."""
    out: dict[tuple[str, str, float | None], float] = {("clean", "", None): float(ev["clean"])}
    if ev.get("noise"):
        out[("noise", "", None)] = float(ev["noise"]["mean"])
    for entry in ev.get("attacks") or []:
        key = (entry["name"], entry.get("threat_model", "pixel"), float(entry["eps_255"]))
        out[key] = float(entry["accuracy"])
    for entry in ev.get("worst_case") or []:
        key = (WORST, entry.get("threat_model", "pixel"), float(entry["eps_255"]))
        out[key] = float(entry["accuracy"])
    return out


def measurement_key(key: tuple[str, str, float | None]) -> str:
    """A flat name for report.json: "clean", "noise", "pgd@pixel@8", "worst_case@pixel@2"."""
    what, tm, eps = key
    if eps is None:
        return what
    return f"{what.replace(' ', '_')}@{tm}@{eps:g}"


def measurement_title(key: tuple[str, str, float | None]) -> list[str]:
    """(measurement, threat model, ε) as table cells."""
    what, tm, eps = key
    if eps is None:
        return ["clean" if what == "clean" else "noise (mean)", "", ""]
    name = WORST if what == WORST else _title(what)
    return [name, tm, f"{eps:g}/255"]


def _title(name: str) -> str:
    if name.startswith("transfer_"):
        return f"transfer {attack_title(name.removeprefix('transfer_'))}"
    return attack_title(name)


@dataclass
class Column:
    """The runs of one row of the grid (one data set) that have the evaluation."""

    label: str
    model: str
    runs: list[RunRecord]
    dataset: str = ""
    _measured: dict = field(default_factory=dict, repr=False, compare=False)

    def measured_runs(self, name: str) -> list[tuple[dict, dict[str, Any]]]:
        """(measurements, evaluation) of the evaluation `name` ("": eval.json) of each of its
        runs that has one, worked out once per column."""
        if name not in self._measured:
            evals = [ev for r in self.runs if (ev := evaluation(r, name)) is not None]
            self._measured[name] = [(measurements(ev), ev) for ev in evals]
        return self._measured[name]

    def found(self, name: str, key) -> list[tuple[float, dict[str, Any]]]:
        """(value, evaluation) of measurement `key` in each run that has it."""
        return [(m[key], ev) for m, ev in self.measured_runs(name) if key in m]

    def values(self, name: str, key) -> list[float]:
        return [v for v, _ in self.found(name, key)]

    def sample_records(self, name: str, key) -> list[tuple[Any, SampleRecord | None]]:
        """(training seed, per-sample record or None) of measurement `key` in each run that
        has it, in the order of `found`; worked out once per column."""
        cached = ("samples", name, key)
        if cached not in self._measured:
            what, tm, eps = key
            runs = [r for r in self.runs if evaluation(r, name) is not None]
            self._measured[cached] = [
                (run.job.get("seed"), sample_record(ev, what, tm, eps))
                for run, (m, ev) in zip(runs, self.measured_runs(name), strict=True)
                if key in m
            ]
        return self._measured[cached]


def evaluation(run: RunRecord, name: str) -> dict[str, Any] | None:
    """The run's further evaluation `name` (eval.<name>.json), or with name "" the table's
    own (eval.json); None where the run has none that is current."""
    return run.further.get(name) if name else run.evaluation


def columns(
    name: str, runs: Sequence[RunRecord], labels: Mapping[tuple[str, str], str]
) -> list[Column]:
    """The grid's rows whose runs hold the evaluation `name` ("": eval.json), in the order of
    `labels` ((data set, row key) -> display name: the report's table rows), then any
    others."""
    by_row: dict[tuple[str, str], Column] = {}
    for run in runs:
        ev = evaluation(run, name)
        if ev is None:
            continue
        key = (run.job.get("dataset", ""), run.job.get("row", run.name))
        # A run with no job record: the networks and data set its evaluation names; an
        # ensemble as the table names it ("resnet110 x 5", no network of the zoo to pair).
        model = run.job.get("model") or "+".join(ev.get("models") or [])
        if run.job.get("members"):
            model = f"{model} x {len(run.job['members'])}"
        dataset = key[0] or str(ev.get("dataset") or "")
        column = by_row.setdefault(
            key, Column(label=labels.get(key, key[1]), model=model, runs=[], dataset=dataset)
        )
        column.runs.append(run)
    order = {key: i for i, key in enumerate(labels)}
    return [by_row[k] for k in sorted(by_row, key=lambda k: order.get(k, len(order)))]


def cell(values: Sequence[float]) -> str:
    """Mean (± sample std over seeds) in percent; "—" for none."""
    if not values:
        return "—"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def table(
    name: str, cols: Sequence[Column], extra: Sequence[tuple[str, Callable]] = ()
) -> tuple[list[str], list[list[str]]]:
    """(header, body) of the evaluation's table ("": eval.json): a line per measurement, a
    column per row, then the `extra` columns ((title, measurement key -> cell text))."""
    header = ["measurement", "threat model", "ε", *column_titles(cols), *(t for t, _ in extra)]
    body = [
        [
            *measurement_title(key),
            *(cell(c.values(name, key)) for c in cols),
            *(text(key) for _, text in extra),
        ]
        for key in measured(name, cols)
    ]
    return header, body


def column_titles(cols: Sequence[Column]) -> list[str]:
    """ "ResNet-56 (resnet56)", with the data set where the columns span several."""
    return [
        (f"{c.label} ({c.model})" if c.model else c.label) + dataset_suffix(c, cols) for c in cols
    ]


def dataset_suffix(col: Column, cols: Sequence[Column]) -> str:
    """ ", cifar10" where the columns span several data sets, else ""."""
    return f", {col.dataset}" if len({c.dataset for c in cols}) > 1 else ""


def measured(name: str, cols: Sequence[Column]) -> list[tuple[str, str, float | None]]:
    """Every measurement of the evaluation `name` ("": eval.json) in any run of the columns,
    in table order."""
    keys: dict = {}
    for column in cols:
        for m, _ in column.measured_runs(name):
            keys.update(dict.fromkeys(m))
    return _ordered(keys)


def _ordered(keys) -> list:
    """Clean and noise first, then each measurement by threat model, name, radius."""
    plain = [k for k in keys if k[2] is None]
    attacks = [k for k in keys if k[2] is not None and k[0] != WORST]
    worst = [k for k in keys if k[0] == WORST]
    order = {name: i for i, name in enumerate(dict.fromkeys(k[0] for k in attacks))}

    def rank(k):
        return (k[1] != "pixel", k[1], order.get(k[0], math.inf), k[2])

    return [*plain, *sorted(attacks, key=rank), *sorted(worst, key=rank)]


def sample_eval(name: str, cols: Sequence[Column]) -> dict[str, Any] | None:
    """One eval.<name>.json of the evaluation that has transfer entries if any has (it names
    the surrogate), else the first."""
    evals = [evaluation(r, name) for c in cols for r in c.runs]
    with_transfer = [ev for ev in evals if ev.get("transfer_from")]
    return (with_transfer or evals or [None])[0]
