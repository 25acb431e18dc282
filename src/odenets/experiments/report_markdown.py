"""report.md: the tables (ours, the paper's, the difference), their captions, the figures,
failed sanity checks and every run, as markdown."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from odenets.errors import CheckpointError, OdenetsError
from odenets.experiments import further
from odenets.experiments.aggregate import DONE, Cell, Report, TableRow, metric_title
from odenets.experiments.comparison import (
    Comparison,
    column_pairs,
    compare_columns,
    difference_cell,
    rule,
    verdict_lines,
)
from odenets.experiments.paper import get_table
from odenets.experiments.presets import eval_attack_options
from odenets.experiments.results import WORST_CASE, RunRecord, failed_checks
from odenets.robustness.base import attack_title, create_attack
from odenets.robustness.masking import diagnostics, same_depth_resnet, verdict
from odenets.robustness.table import attack_settings
from odenets.training.metrics import inactive_coefficients
from odenets.training.run_folder import EVAL, RunFolder

DATASET_NAMES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "folder": "an image folder",
    "digits": "the 8x8 digits",
}


# --- cells and tables ---------------------------------------------------------------------
def fmt_ours(cell: Cell) -> str:
    if cell.mean is None:
        return "—"
    return f"{cell.mean:.2f} ± {cell.std:.2f}" if len(cell.values) > 1 else f"{cell.mean:.2f}"


def fmt_paper(cell: Cell) -> str:
    return "—" if cell.paper is None else str(cell.paper)


def fmt_diff(cell: Cell) -> str:
    return "—" if cell.diff is None else f"{cell.diff:+.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rows_markdown(rows: Sequence[TableRow], metrics: Sequence[str], *, paper: bool) -> str:
    header = ["Model", "network", "runs"]
    for m in metrics:
        title = metric_title(m)
        header += [f"{title} ours", f"{title} paper", f"{title} Δ"] if paper else [title]
    body = []
    for row in rows:
        runs = f"{row.n_finished}/{len(row.runs) or 0}"
        if row.n_diverged:
            runs += f" ({row.n_diverged} diverged)"
        line = [row.label, row.model, runs]
        for m in metrics:
            cell = row.cells[m]
            line += [fmt_ours(cell), fmt_paper(cell), fmt_diff(cell)] if paper else [fmt_ours(cell)]
        body.append(line)
    return markdown_table(header, body)


def runs_markdown(runs: Sequence[RunRecord], metrics: Sequence[str]) -> str:
    header = ["Run", "preset", "scale", "seed", "status", *[metric_title(m) for m in metrics]]
    body = []
    for r in runs:
        line = [r.name, r.job.get("preset", "—"), r.job.get("scale", "—")]
        seed = r.job.get("seed")
        line += ["—" if seed is None else str(seed), r.status]
        line += [f"{100 * r.metrics[m]:.2f}" if m in r.metrics else "—" for m in metrics]
        body.append(line)
    return markdown_table(header, body)


# --- captions -----------------------------------------------------------------------------
def _data_sentence(manifest: dict[str, Any], dataset: str, sample: dict | None) -> str:
    n = f"{sample['n']} test images" if sample and sample.get("n") else "the test split"
    data = DATASET_NAMES.get(dataset, dataset)
    if dataset in ("folder", "cifar10", "cifar100") and manifest.get("data_root"):
        data += f" read from `{Path(manifest['data_root']).name}`"
    return f"Data: {data}, {n}."


def _settings_words(ev: dict[str, Any], sample: dict | None) -> str:
    """Each attack's steps and step size α at the table's radius: as the evaluation
    recorded them, else as the attacks built from the preset's settings will record them."""
    eps_255, tm = float((ev.get("eps") or [8])[0]), ev.get("threat_model", "pixel")
    recorded = [
        a
        for a in (sample or {}).get("attacks", [])
        if a.get("threat_model", "pixel") == tm and abs(a["eps_255"] - eps_255) < 1e-6
    ]
    if recorded:
        return attack_settings(recorded)
    options = eval_attack_options(ev)
    planned, unbuilt = [], []
    for name in ev["attacks"]:
        try:
            attack = create_attack(
                name, eps=eps_255 / 255, threat_model=tm, **options.get(name, {})
            )
        except OdenetsError:  # not registered, or its optional package is not installed here
            unbuilt.append(name)
            continue
        planned.append({"name": name, "eps": attack.eps, "eps_255": eps_255, **attack.settings()})
    words = [attack_settings(planned).removesuffix(".")] if planned else []
    return "; ".join([*words, *unbuilt]) + "."


def _attacks_sentence(ev: dict[str, Any], sample: dict | None = None) -> str:
    eps = ev.get("eps") or [8]
    tm = ev.get("threat_model", "pixel")
    tm_words = (
        "pixel threat model (ε and steps in [0, 1] pixel units, ball centred on the clean "
        "image, images clamped to [0, 1])"
        if tm == "pixel"
        else "normalized threat model of the authors' first code (ε on the standardised "
        "tensor, about five times weaker)"
    )
    worst = (
        " Worst case: per sample over these attacks, robust only if correct clean and under "
        "every one."
        if len(ev["attacks"]) > 1
        else ""
    )
    return (
        f"Attacks: untargeted L∞ {', '.join(attack_title(a) for a in ev['attacks'])} at "
        f"ε = {eps[0]:g}/255, {tm_words}; the model in eval mode; robust means correct both "
        f"clean and attacked. Steps and step size α: "
        f"{_settings_words(ev, sample)}{worst}"
    )


def _noise_sentence(sample: dict | None) -> str:
    source = (sample or {}).get("noise") or {}
    return (
        "Noise: mean accuracy over the gaussian, shot, impulse and speckle corruptions "
        f"at severities 1-5 ({source.get('source', 'generated')} CIFAR-C noise)."
    )


def _ours_sentence(manifest: dict[str, Any]) -> str:
    scale_words = {
        "quick": " (shorter schedule and shallower networks than the paper: differences are "
        "expected)",
        "cpu": " (the largest grid a 2-core CPU affords: shallower networks, a compressed "
        "schedule and fewer seeds than the paper; its column is for the paper's depth)",
        "paper": " (the paper's recipe)",
    }.get(manifest["scale"], "")
    train = ", ".join(f"{k} = {v}" for k, v in (manifest.get("train") or {}).items())
    return f"Ours: mean ± sample std over seeds, in %; scale `{manifest['scale']}`{scale_words}" + (
        f"; training overrides: {train}." if train else "."
    )


def caption(manifest: dict[str, Any], runs: Sequence[RunRecord], dataset: str) -> str:
    """Data, threat model and paper source of one table, in words."""
    ev = manifest.get("evaluate", {})
    sample = next(
        (r.evaluation for r in runs if r.evaluation and r.job.get("dataset") == dataset), None
    )
    parts = [_data_sentence(manifest, dataset, sample)]
    if ev.get("attacks"):
        parts.append(_attacks_sentence(ev, sample))
    if ev.get("noise"):
        parts.append(_noise_sentence(sample))
    parts.append(_ours_sentence(manifest))
    if manifest.get("table"):
        table = get_table(manifest["table"])
        parts.append(f"Paper: {table.source}. {table.protocol}")
    return " ".join(parts)


# --- report.md ----------------------------------------------------------------------------
def _tables_section(report: Report) -> list[str]:
    """Title, then one table per data set with its caption (a folder with a manifest)."""
    m = report.manifest
    table = get_table(m["table"]) if m.get("table") else None
    out = [f"# odenets report: {m['preset']} ({m['scale']} scale)\n"]
    if table:
        out.append(f"Reproduces: {table.title}. Paper: {table.source}.\n")
    for d in dict.fromkeys(r.dataset for r in report.rows):
        rows = [r for r in report.rows if r.dataset == d]
        has_paper = any(c.paper is not None for r in rows for c in r.cells.values())
        out.append(f"## {DATASET_NAMES.get(d, d)}\n")
        out.append(rows_markdown(rows, report.metrics, paper=has_paper) + "\n")
        out.append("*" + caption(m, report.mine, d) + "*\n")
        out += robustness_verdict(rows, report.metrics, m)
        out += _every_measurement(report, d)
        out += _sizes_note(rows)
        if not has_paper:
            out.append("The paper has no numbers for this data set; only ours are shown.\n")
    return out


def _every_measurement(report: Report, dataset: str) -> list[str]:
    """The table's evaluation (eval.json) of one data set, every measurement of it, a column
    per row of the grid (see `_measurement_table`)."""
    labels = {(r.dataset, r.key): r.label for r in report.rows if r.dataset == dataset}
    runs = [r for r in report.mine if r.job.get("dataset", "") == dataset and r.status in DONE]
    return _measurement_table(report, runs, labels, "the runs and images of the table")


def _measurement_table(
    report: Report, runs: Sequence[RunRecord], labels: dict, images: str
) -> list[str]:
    """Every measurement of the runs' evaluations read for the tables (eval.json, else
    eval.limit-N.json): each attack at each radius and threat model (transfer attacks
    included), the worst case; a column per row of the grid (a run with no job record is its
    own). Shown only where they measured more than the table's columns (other radii or
    attacks)."""
    cols = further.columns("", runs, labels)
    if not cols:
        return []
    ev = (report.manifest or {}).get("evaluate", {})
    eps = float((ev.get("eps") or [8])[0])
    tm = ev.get("threat_model", "pixel").split(",")[0].strip()  # the table's (its first)
    shown = [further.WORST if m == WORST_CASE else m for m in report.metrics]
    in_table = {(m, tm, eps) for m in shown}
    if all(k in in_table for k in further.measured("", cols) if k[2] is not None):
        return []  # the table shows it all
    seen: list[Comparison | None] = []
    extra = _differences("", cols, seen)
    header, body = further.table("", cols, extra)
    return [
        "**Every measurement of these evaluations** (each attack at each radius and threat "
        "model, the worst case per sample over the attacks at one radius), accuracy in %, "
        f"{images}:\n",
        markdown_table(header, body) + "\n",
        *([differences_caption(seen) + "\n"] if extra else []),
    ]


def differences_caption(seen: Sequence[Comparison | None]) -> str:
    """The caption of a table's difference columns, given the comparisons they showed."""
    return (
        "Difference columns: an In-ResNet-family network minus the ResNet of the same depth, "
        "in points ± the standard error of the difference. "
        + rule(any(c is not None and c.paired for c in seen))
    )


def _differences(
    name: str, cols: Sequence[further.Column], seen: list | None = None
) -> list[tuple[str, Any]]:
    """The difference columns of a measurement table: one per In-ResNet-family column with a
    ResNet column of the same depth (`comparison.column_pairs`). Each comparison a cell
    shows is appended to `seen`, for the caption."""

    def text(ours, base, key) -> str:
        found = compare_columns(name, ours, base, key)
        if seen is not None:
            seen.append(found)
        return difference_cell(found, clean=key[0] == "clean")

    return [
        (
            f"{ours.label} − {base.label}{further.dataset_suffix(ours, cols)}",
            functools.partial(text, ours, base),
        )
        for ours, base in column_pairs(cols)
    ]


def table_setting(manifest: dict[str, Any]) -> str:
    """The radius (and threat model, when not pixel) of a table's attack columns."""
    ev = manifest.get("evaluate", {})
    eps = (ev.get("eps") or [8])[0]
    tm = ev.get("threat_model", "pixel")
    return f"ε = {eps:g}/255" + ("" if tm == "pixel" else f" ({tm} threat model)")


def robustness_verdict(
    rows: Sequence[TableRow], metrics: Sequence[str], manifest: dict[str, Any]
) -> list[str]:
    """In words, from the table's numbers: whether each In-ResNet-family row is more robust
    than the ResNet of the same depth (`odenets.experiments.comparison`)."""
    lines = verdict_lines(rows, metrics, setting=table_setting(manifest))
    if not lines:
        return []
    return ["**Is In-ResNet more robust than ResNet on this data?**\n", *lines, ""]


def _sizes_note(rows: Sequence[TableRow]) -> list[str]:
    """A warning for the rows that average evaluations of different sizes (an `odenets
    evaluate --limit` beside full ones)."""
    lines = []
    for row in rows:
        odd, usual = row.odd_sizes()
        if odd:
            runs = ", ".join(f"`{name}` (n = {n})" for name, n in odd)
            lines.append(f"- {row.label}: {runs}; the row's other evaluations have n = {usual}")
    if not lines:
        return []
    head = "**Mixed evaluation sizes**: these rows average evaluations of different numbers "
    return [head + "of test images, so the caption's n does not hold for every run:\n", *lines, ""]


def _no_manifest_section() -> list[str]:
    return [
        "# odenets report\n",
        "This folder has no manifest (not written by `odenets reproduce`): every run "
        "found is listed below, with no paper column.\n",
    ]


def _figures_section(report: Report) -> list[str]:
    if not report.figures:
        return []
    out = ["## Figures\n"]
    out += [f"**{title}**\n\n![{title}]({rel})\n" for title, rel in report.figures]
    return out


def _held_fixed(path: Path) -> bool:
    """Whether the run trained with its coefficients frozen (config.json says so)."""
    run = RunFolder(path)
    try:
        return bool(run.is_run and run.read_config()["train"].get("freeze_coefficients"))
    except (CheckpointError, KeyError, AttributeError):  # an unreadable config: not said
        return False


def _coefficients_section(report: Report) -> list[str]:
    """Per run of an interpolating network: its coefficients λ_n after the last epoch, and
    how many a ReLU holds at exactly 0 (`training.metrics.inactive_coefficients`): such a
    block is a plain residual block, so a run whose every λ_n is 0 ended as a plain ResNet,
    whatever its name says."""
    lines = []
    for run in report.mine or report.loose:
        try:
            history = [m for m in RunFolder(run.path).read_metrics() if m.get("coefficients")]
        except CheckpointError as err:  # a figure or a note must never cost the report
            lines.append(f"- `{run.name}`: metrics.jsonl could not be read ({err}).")
            continue
        if not history:
            continue
        last = history[-1]
        lam, dead = last["coefficients"], inactive_coefficients(last)
        line = (
            f"- `{run.name}` ({run.job.get('model') or 'interpolating'}), after epoch "
            f"{last['epoch']}: {len(lam)} coefficients, mean {statistics.fmean(lam):.3f}, "
            f"largest {max(lam):.3f}; {len(dead)} at 0"
        )
        if dead and len(dead) == len(lam):
            since = last["epoch"]  # the start of the last unbroken stretch of all at 0
            for m in reversed(history):
                if len(inactive_coefficients(m)) != len(lam):
                    break
                since = m["epoch"]
            line += f" (all of them since epoch {since}): **this run ended as a plain ResNet**"
        if _held_fixed(run.path):
            line += "; held at their initial values (`--freeze-coefficients`)"
        lines.append(line + ".")
    if not lines:
        return []
    return [
        "## Interpolation coefficients at the end of training\n",
        "λ_n of each interpolating block after the last epoch (metrics.jsonl; for a gated "
        "block the mean gate over the last batch). A coefficient at 0 sits on the flat side "
        "of its ReLU: while it is there no gradient reaches it, its block is a plain residual "
        "block, and only weight decay (and the momentum of earlier steps) moves its raw "
        "parameter: that can bring In-ResNet's back above 0, never λ-In-ResNet's.\n",
        *lines,
        "",
    ]


def _checks_section(report: Report) -> list[str]:
    failed = failed_checks(report.mine or report.loose)
    if not failed:
        return []
    return [
        "## Sanity checks that failed\n",
        "Each evaluation runs sanity checks (attacks never above clean accuracy, multi-step "
        "attacks not weaker than FGSM, accuracy falling with ε, ~0% at ε = 1, finite "
        "gradients); these did not pass, so read the numbers concerned with care:\n",
        *[f"- `{run}`: {name}: {detail}" for run, name, detail in failed],
        "",
    ]


def _masking_section(report: Report) -> list[str]:
    """The gradient-masking verdict of every evaluated run, with its evidence; the gradient
    norm is compared with a plain ResNet of the same depth among the report's runs."""
    runs = [r for r in (report.mine or report.loose) if r.evaluation]
    runs = [r for r in runs if (r.evaluation.get("masking") or {}).get("grad_norm") is not None]
    if not runs:
        return []
    out = [
        "## Gradient masking\n",
        "A verdict per evaluated run, from the diagnostics of Carlini et al. 2019 (each with "
        "the numbers it rests on): (a) black-box or transfer attacks breaking samples no "
        "white-box attack broke, (b) accuracy at ε = 1, (c) PGD with more steps or restarts, "
        "(d) the median loss-gradient norm at clean inputs, beside a plain ResNet's of the "
        "same depth when this report has one.\n",
    ]
    out += _verdict_lines([(r, r.evaluation) for r in runs], _grad_candidates(report))
    return out


def _further_section(report: Report) -> list[str]:
    """The preset's further evaluations (eval.<name>.json): per evaluation, its table (a line
    per measurement, a column per row of the grid), a caption, and, where it ran the masking
    checks, the gradient-masking verdict of each run with its evidence."""
    settings = (report.manifest or {}).get("further_evaluations") or []
    if not settings:
        return []
    labels = {(r.dataset, r.key): r.label for r in report.rows}
    out = [
        "## Further evaluations\n",
        "Besides the table's evaluation, the preset evaluates the runs again with other "
        "attacks, threat models or surrogates, each on its own seeded subset of the test "
        "set (the first n images of the same seeded order, so the subsets are nested).\n",
    ]
    for ev in settings:
        cols = further.columns(ev["name"], report.mine, labels)
        out.append(f"### `{ev['name']}`\n")
        if not cols:
            out.append("Not run yet (`odenets reproduce` runs it after the trainings).\n")
            continue
        pending = [
            f"`{r.name}`"
            for r in report.mine
            if ev["name"] in (r.job.get("evaluations") or [])
            and ev["name"] not in r.further
            and ev["name"] not in r.stale_further  # those are named below, with why
        ]
        if pending:
            out.append(
                f"Not evaluated yet: {', '.join(pending)} (`odenets reproduce` writes "
                f"their eval.{ev['name']}.json; the table has the runs that have it).\n"
            )
        seen: list[Comparison | None] = []
        extra = _differences(ev["name"], cols, seen)
        header, body = further.table(ev["name"], cols, extra)
        out.append(markdown_table(header, body) + "\n")
        runs = [r for c in cols for r in c.runs]
        caption = _further_caption(ev, further.sample_eval(ev["name"], cols))
        caption += "".join(
            f" No transfer attacks on `{r.name}`: {r.further[ev['name']]['transfer_skipped']}."
            for r in runs
            if r.further[ev["name"]].get("transfer_skipped")
        )
        out.append("*" + caption + (" " + differences_caption(seen) if extra else "") + "*\n")
        # A verdict where the evaluation gathered the masking evidence (`masking_checks`).
        checked = [r for r in runs if (r.further[ev["name"]].get("masking") or {}).get("grad_norm")]
        out += _verdict_lines(
            [(r, r.further[ev["name"]]) for r in checked], _grad_candidates(report)
        )
    return out


def _further_caption(settings: dict[str, Any], sample: dict[str, Any]) -> str:
    parts = [
        f"Data: {sample['n']} test images (seed {sample['seed']}). Accuracy in %, robust "
        "means correct both clean and attacked; the worst case is per sample over the "
        "attacks at one radius."
    ]
    if sample.get("attacks"):
        parts.append("Attacks: " + attack_settings(sample["attacks"]))
    if settings.get("transfer_from"):
        parts.append(
            f"Transfer attacks are crafted on the run of row `{settings['transfer_from']}` "
            "with the same data set and seed (its own column has none)."
        )
    return " ".join(parts)


def _grad_candidates(report: Report) -> list[tuple[str, dict]]:
    """Every input-gradient norm section of the report's evaluations, labelled, for the
    same-depth ResNet comparison of diagnostic (d)."""
    out = []
    for r in report.mine or report.loose:
        evals = [("", r.evaluation)] + [(f" (eval.{n}.json)", e) for n, e in r.further.items()]
        for where, ev in evals:
            grad = ((ev or {}).get("masking") or {}).get("grad_norm")
            if grad is not None:
                out.append((f"`{r.name}`{where}", grad))
    return out


def _verdict_lines(
    evaluated: Sequence[tuple[RunRecord, dict[str, Any]]], candidates: Sequence[tuple[str, dict]]
) -> list[str]:
    """A gradient-masking verdict per (run, evaluation) with the diagnostics it rests on."""
    marks = {True: "FLAG", False: "ok", None: "not run"}
    out = []
    for run, ev in evaluated:
        grad = (ev.get("masking") or {}).get("grad_norm")
        others = [c for c in candidates if not c[0].startswith(f"`{run.name}`")]
        diags = diagnostics(ev, reference=same_depth_resnet(grad, others))
        models = ", ".join(ev.get("models", []))
        out.append(f"- `{run.name}` ({models}): **{verdict(diags)['text']}**")
        out += [f"  - [{marks[d['flag']]}] {d['name']}: {d['detail']}" for d in diags]
    return [*out, ""] if out else []


def _provenance_section(report: Report) -> list[str]:
    """Evaluations left out (stale: the run trained on after them) or not checkable."""
    runs = [*report.mine, *report.foreign, *report.loose]
    stale = [r for r in runs if r.eval_state == "stale"]
    stale_further = [(r, name, why) for r in runs for name, why in r.stale_further.items()]
    unknown = [r for r in runs if r.eval_state == "unknown"]
    out = []
    if stale:
        out.append("## Stale evaluations (left out)\n")
        out.append(
            "These eval.json files scored other weights than their runs hold now, so their "
            "numbers are left out; evaluate the runs again (`odenets evaluate RUN`, or "
            "`odenets reproduce`, which re-evaluates them):\n"
        )
        out += [f"- `{r.name}` ({r.eval_file}): {r.eval_note}" for r in stale]
        out.append("")
    if stale_further:
        out.append("## Stale further evaluations (left out)\n")
        out += [f"- `{r.name}` (eval.{name}.json): {why}" for r, name, why in stale_further]
        out.append("")
    if unknown:
        out.append(
            "Evaluations of unknown provenance (their numbers are used, but could not be "
            "checked against the weights their runs hold now):\n"
        )
        out += [f"- `{r.name}` ({r.eval_file}): {r.eval_note}" for r in unknown]
        out.append("")
    return out


def _eval_files_section(report: Report) -> list[str]:
    """Runs whose numbers come from a subset of the test set (no eval.json, an `odenets
    evaluate --limit N` file instead), and every evaluation file left out, with why."""
    runs = [*report.mine, *report.foreign, *report.loose]
    subset = [r for r in runs if r.eval_file and r.eval_file != EVAL]
    skipped = [(r, name, why) for r in runs for name, why in r.skipped_evals]
    out = []
    if subset:
        out.append("## Evaluations of a subset of the test set\n")
        out.append(
            f"These runs have no {EVAL} (the whole test set); their numbers come from "
            "`odenets evaluate --limit N`, a seeded subset of N test images, so they carry "
            "more sampling noise:\n"
        )
        for r in subset:
            n = (r.evaluation or {}).get("n")
            out.append(f"- `{r.name}`: {r.eval_file}" + (f" (n = {n})" if n else ""))
        out.append("")
    if skipped:
        out.append("## Evaluation files left out\n")
        out += [f"- `{r.name}`: {name}: {why}" for r, name, why in skipped]
        out.append("")
    return out


def _runs_sections(report: Report) -> list[str]:
    """Every run of this manifest, then runs of other presets, then runs with no job."""
    out = []
    if report.mine:
        out.append("## Every run\n")
        out.append(runs_markdown(report.mine, report.metrics) + "\n")
    if report.foreign:
        out.append("## Results from other presets (not merged)\n")
        out.append(
            "These run folders were produced by another preset or scale than this folder's "
            "manifest; they are listed for reference and left out of the tables above.\n"
        )
        out.append(runs_markdown(report.foreign, report.metrics) + "\n")
    if report.loose:
        out.append("## Other runs (no job record)\n")
        out.append(runs_markdown(report.loose, report.metrics) + "\n")
        out += _measurement_table(report, report.loose, {}, "each run's own test images")
    return out


def render_markdown(report: Report) -> str:
    """The whole of report.md."""
    out = _tables_section(report) if report.manifest else _no_manifest_section()
    out += _figures_section(report)
    out += _coefficients_section(report)
    out += _checks_section(report)
    out += _masking_section(report)
    out += _further_section(report)
    out += _provenance_section(report)
    out += _eval_files_section(report)
    out += _runs_sections(report)
    out += [f"> {note}\n" for note in report.notes]
    return "\n".join(out)
