"""The run results of a results folder, read into plain records.

`collect(folder)` finds every run folder (job.json, summary.json, eval.json) and flattens
each into a `RunRecord`: its job, its status, and its metrics as fractions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odenets.checkpoint import read_json
from odenets.errors import OdenetsError
from odenets.experiments.grid_folder import JOB_FILE, MANIFEST, eval_freshness
from odenets.training.run_folder import (
    EVAL,
    SUMMARY,
    RunFolder,
    further_eval_file,
    parse_eval_file_name,
)

RUN_FILES = (SUMMARY, EVAL)
# The metric of the per-sample worst case over the attacks at one radius (eval.json's
# "worst_case" entries).
WORST_CASE = "worst_case"


# (test-split indices, per-sample score in [0, 1]) of one measurement of one eval.json: 1 or
# 0 for correct or not (clean, an attack, the worst case); for noise, the share of its
# noisy versions classified correctly. The indices are eval.json's own list (not copied).
SampleRecord = tuple[Sequence[int], tuple[float, ...]]


@dataclass
class RunRecord:
    """What one run folder holds, flattened; accuracies as fractions."""

    path: Path
    job: dict[str, Any]  # job.json ({} for a folder not made by `reproduce`)
    status: str  # "finished", "diverged", "failed", "running", "trained", "evaluated", "stale"
    metrics: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None  # eval.json, unless it is stale
    # Whether eval.json scored the run's current weights: "current", "stale" (its numbers
    # are left out), "unknown" (it does not say) or "" (no eval.json); `eval_note` says why.
    eval_state: str = ""
    eval_note: str = ""
    # The evaluation file read ("eval.json", or "eval.limit-N.json" for a run without
    # eval.json), and the other evaluation files of the folder, each with why it was left out.
    eval_file: str = ""
    skipped_evals: list[tuple[str, str]] = field(default_factory=list)
    # The further evaluations of the folder (eval.<name>.json) that scored its current
    # weights, by name; the stale ones by name, with why.
    further: dict[str, dict[str, Any]] = field(default_factory=dict)
    stale_further: dict[str, str] = field(default_factory=dict)
    # Per metric of `metrics` that eval.json records per sample: `SampleRecord`.
    samples: dict[str, SampleRecord] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def origin(self) -> tuple[str, str]:
        return (self.job.get("preset", ""), self.job.get("scale", ""))


def find_run_folders(folder: Path) -> list[Path]:
    """Folders under `folder` (itself included) holding a summary.json or an eval.json."""
    found = set()
    for name in (*RUN_FILES, JOB_FILE):
        for path in folder.rglob(name):
            found.add(path.parent)
    return sorted(found)


def read_run(path: Path, *, eps_255: float, threat_model: str) -> RunRecord:
    """One run folder as a record. An eval.json that scored other weights than the run's
    current ones (training went on after it) is stale: its numbers are left out."""
    run = RunFolder(path)
    job = read_json(path / JOB_FILE) if (path / JOB_FILE).exists() else {}
    summary = run.read_summary()
    eval_file, skipped = pick_eval_file(run)
    ev = run.read_eval(eval_file) if eval_file else None
    freshness, note = ("", "") if ev is None else eval_freshness(ev, _scored_runs(path, job, ev))
    if freshness == "stale":
        ev = None
    status = summary.get("status", "evaluated" if ev else ("stale" if freshness else "running"))
    if status == "finished" and ev is None:
        status = "trained"
    metrics: dict[str, float] = {}
    for key, metric in (("final_train_acc", "train"), ("final_test_acc", "test")):
        if summary.get(key) is not None:
            metrics[metric] = float(summary[key])
    samples: dict[str, SampleRecord] = {}
    if ev is not None:
        metrics.update(eval_metrics(ev, eps_255=eps_255, threat_model=threat_model))
        if "test" not in metrics:
            metrics["test"] = float(ev["clean"])
        for metric in metrics:
            record = sample_record(ev, metric, threat_model, eps_255)
            if record is not None:
                samples[metric] = record
    further, stale_further = {}, {}
    for name in run.further_evals():
        other = run.read_eval(further_eval_file(name))
        state, why = eval_freshness(other, _scored_runs(path, job, other))
        if state == "stale":
            stale_further[name] = why
        else:
            further[name] = other
    return RunRecord(
        path,
        job,
        status,
        metrics,
        ev,
        eval_state=freshness,
        eval_note=note,
        eval_file=eval_file,
        skipped_evals=skipped,
        further=further,
        stale_further=stale_further,
        samples=samples,
    )


def pick_eval_file(run: RunFolder) -> tuple[str, list[tuple[str, str]]]:
    """The evaluation file that stands for a run: eval.json (the whole test set), else the
    `odenets evaluate --limit N` file of the largest N; and every other evaluation file of
    the folder with why it is left out. ("", [...]) when none stands for it."""
    others = [(name, parse_eval_file_name(name)) for name in run.eval_files()]
    limited = sorted(
        ((p["limit"], name) for name, p in others if p["shard"] is None), key=lambda t: t[0]
    )
    skipped = [
        (name, f"shard {p['shard'][0]} of {p['shard'][1]} of an evaluation: merge the shards "
         "with `odenets evaluate --merge SHARD.json ... --out RUN/eval.json`")
        for name, p in others
        if p["shard"] is not None
    ]  # fmt: skip
    if run.has(EVAL):
        chosen = EVAL
        skipped += [(name, f"{EVAL} (the whole test set) is used") for _, name in limited]
    elif limited:
        chosen = limited[-1][1]
        skipped += [(name, f"{chosen} evaluates more images") for _, name in limited[:-1]]
    else:
        chosen = ""
    return chosen, sorted(skipped)


def _scored_runs(path: Path, job: dict[str, Any], ev: dict[str, Any]) -> list[Path]:
    """The run folders an eval.json in `path` scored: an ensemble job's members, the folder
    itself when it is a run, else the folders eval.json names."""
    if job.get("members"):
        return [path.parent / m for m in job["members"]]
    if RunFolder(path).is_run:
        return [path]
    return [Path(r) for r in ev.get("runs", [])]


def eval_metrics(ev: dict[str, Any], *, eps_255: float, threat_model: str) -> dict[str, float]:
    """The table's columns from one eval.json: clean, noise mean, attacks at one radius and
    their per-sample worst case ("worst_case": robust only if correct clean and under every
    attack at that radius)."""
    out = {"clean": float(ev["clean"])}
    if ev.get("noise"):
        out["noise"] = float(ev["noise"]["mean"])
    entries = [*(ev.get("attacks") or []), *(ev.get("worst_case") or [])]
    for entry in _at_radius(entries, threat_model, eps_255):
        out[entry.get("name", WORST_CASE)] = float(entry["accuracy"])
    return out


def sample_record(
    ev: Mapping[str, Any], what: str, threat_model: str, eps_255: float | None
) -> SampleRecord | None:
    """The per-sample record of one measurement of an eval.json ("clean", "noise", an
    attack's name or the worst case, at a threat model and radius), from its "samples"
    section and the entry's "samples"; None where it has none (older odenets, or a
    measurement it did not make)."""
    samples = ev.get("samples")
    if not samples or not samples.get("indices"):
        return None
    if what == "clean":
        bits = samples.get("clean")
    elif what == "noise":
        counts, per = samples.get("noise"), ((ev.get("counts") or {}).get("noise") or {})
        conditions = sum(len(by_severity) for by_severity in per.values())
        if not counts or not conditions or len(counts) != len(samples["indices"]):
            return None
        return samples["indices"], tuple(c / conditions for c in counts)
    else:
        worst = what in (WORST_CASE, "worst case")
        entries = ev.get("worst_case" if worst else "attacks") or []
        at = _at_radius(entries, threat_model, eps_255) if eps_255 is not None else []
        entry = next((e for e in at if worst or e.get("name") == what), None)
        bits = entry.get("samples") if entry else None
    if not bits or len(bits) != len(samples["indices"]):
        return None
    return samples["indices"], tuple(map(float, bits))  # "1" -> 1.0, "0" -> 0.0


def _at_radius(entries: Sequence[Mapping], threat_model: str, eps_255: float) -> list[Mapping]:
    """The eval.json entries at one radius of one threat model."""
    return [
        e
        for e in entries
        if e.get("threat_model", "pixel") == threat_model
        and math.isclose(float(e["eps_255"]), eps_255, abs_tol=1e-6)
    ]


def collect(folder: str | Path) -> tuple[dict[str, Any] | None, list[RunRecord]]:
    """The manifest (or None) and every run record of a results folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"results folder {folder} does not exist")
    manifest = read_json(folder / MANIFEST) if (folder / MANIFEST).exists() else None
    ev_settings = (manifest or {}).get("evaluate", {})
    eps = ev_settings.get("eps") or [8.0]
    threat_model = ev_settings.get("threat_model", "pixel")
    runs = [
        read_run(p, eps_255=float(eps[0]), threat_model=threat_model)
        for p in find_run_folders(folder)
    ]
    runs = [r for r in runs if r.job or r.metrics or r.status != "running"]
    if not any(r.metrics for r in runs):
        raise OdenetsError(
            f"no results in {folder}: expected run folders with summary.json or eval.json "
            "(written by `odenets reproduce`, `odenets train` and `odenets evaluate`)"
        )
    return manifest, runs


def failed_checks(runs: Sequence[RunRecord]) -> list[tuple[str, str, str]]:
    """(run name, check name, detail) of every sanity check of eval.json that failed (a
    check that was not run, "ok": null, did not fail)."""
    return [
        (r.name, c["name"], c.get("detail", ""))
        for r in runs
        if r.evaluation
        for c in r.evaluation.get("checks", [])
        if c.get("ok") is False
    ]
