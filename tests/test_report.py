"""The report writer on hand-made run folders: known means, the paper column beside ours,
runs of another preset kept apart, and a clear refusal for a folder with no results."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from odenets.checkpoint import write_json_atomic
from odenets.errors import OdenetsError
from odenets.experiments.aggregate import build_report
from odenets.experiments.grid_folder import JOB_FILE, RUNS, prepare_folder
from odenets.experiments.jobs import load_grid
from odenets.experiments.paper import get_table, list_tables
from odenets.experiments.report import write_report
from odenets.experiments.report_markdown import render_markdown


def fake_eval(clean, noise, fgsm, ifgsm, pgd) -> dict:
    attacks = [
        {
            "name": n,
            "threat_model": "pixel",
            "eps": 8 / 255,
            "eps_255": 8.0,
            "steps": 20,
            "alpha": 1 / 255,
            "restarts": 1,
            "accuracy": a,
            "correct": int(a * 100),
            "n": 100,
        }
        for n, a in (("fgsm", fgsm), ("ifgsm", ifgsm), ("pgd", pgd))
    ]
    # A second radius that the table must ignore.
    attacks.append({**attacks[0], "eps": 4 / 255, "eps_255": 4.0, "accuracy": 0.99})
    return {
        "runs": [],
        "models": ["resnet20"],
        "ensemble": False,
        "dataset": "cifar10",
        "split": "test",
        "n": 100,
        "seed": 0,
        "clean": clean,
        "noise": {"source": "generated", "per_corruption": {}, "mean": noise},
        "attacks": attacks,
        "worst_case": [],
        "checks": [],
    }


def fill(out: Path, grid, values: dict[str, tuple]) -> None:
    """Write job.json, summary.json and eval.json for each job name in `values`."""
    jobs = {j.name: j for j in prepare_folder(grid, out)}
    for name, metrics in values.items():
        job = jobs[name]
        folder = out / RUNS / name
        record = {
            "preset": grid.preset.name,
            "scale": grid.scale,
            "table": grid.preset.table,
            **{
                k: getattr(job, k)
                for k in ("index", "name", "row", "dataset", "paper_dataset", "seed", "model")
            },
        }
        write_json_atomic(folder / JOB_FILE, record)
        write_json_atomic(
            folder / "summary.json",
            {
                "status": "finished",
                "epochs_done": 1,
                "epochs": 1,
                "final_train_acc": 0.5,
                "final_test_acc": metrics[0],
                "wall_time_s": 1.0,
                "error": None,
            },
        )
        write_json_atomic(folder / "eval.json", fake_eval(*metrics))


@pytest.fixture
def variants_folder(tmp_path) -> Path:
    grid = load_grid("inresnet-variants", seeds=2, data_root="data")
    fill(
        tmp_path,
        grid,
        {
            "cifar10-resnet110-seed0": (0.90, 0.50, 0.40, 0.05, 0.04),
            "cifar10-resnet110-seed1": (0.92, 0.52, 0.42, 0.07, 0.06),
            "cifar10-in_resnet110-seed0": (0.88, 0.70, 0.50, 0.30, 0.30),
        },
    )
    return tmp_path


def test_paper_tables_hold_spec_numbers():
    assert list_tables() == sorted(
        [
            "inresnet-table1",
            "inresnet-variants",
            "inresnet-init",
            "inresnet-ensemble",
            "naisnet-cifar",
        ]
    )
    t1 = get_table("inresnet-table1")
    assert len(t1.rows) == 12
    assert t1.value("cifar100", "lambda_in_resnet164", "noise").mean == 34.58
    assert get_table("inresnet-variants").value("cifar10", "resnet110", "fgsm").mean == 41.48
    init = get_table("inresnet-init")
    assert init.value("cifar10", "lambda_in_resnet110@0.30-0.40", "clean").mean == 90.17
    ens = get_table("inresnet-ensemble")
    assert ens.value("cifar10", "in_resnet110+ensemble", "pgd").mean == 34.03
    nais = get_table("naisnet-cifar").value("cifar100", "naisnet1", "train")
    assert (nais.mean, nais.std, str(nais)) == (86.90, 1.47, "86.90 ± 1.47")


def test_report_means_paper_column_and_difference(variants_folder):
    report = build_report(variants_folder)
    rows = {r.key: r for r in report.rows}
    assert len(rows) == 5  # every row of the table, run or not
    resnet = rows["resnet110"].cells
    assert resnet["clean"].mean == pytest.approx(91.0)
    assert resnet["clean"].std == pytest.approx(2**0.5)  # sample std of 90 and 92
    assert resnet["fgsm"].mean == pytest.approx(41.0)  # the ε = 4/255 entry is ignored
    assert resnet["fgsm"].paper.mean == 41.48
    assert resnet["fgsm"].diff == pytest.approx(41.0 - 41.48)
    assert rows["in_resnet110"].cells["pgd"].values == [pytest.approx(30.0)]
    assert rows["in_resnet_sig110"].cells["clean"].mean is None
    text = render_markdown(report)
    assert "| In-ResNet-110 | in_resnet20 | 1/1 | 88.00 | 92.28 | -4.28 |" in text
    assert "91.00 ± 1.41 | 93.58 | -2.58" in text
    assert "Acc. ours | Acc. paper | Acc. Δ" in text  # never one mixed column
    assert "ε = 8/255" in text and "pixel threat model" in text


def test_report_files(variants_folder):
    write_report(variants_folder, figures=False)
    rows = list(csv.DictReader(open(variants_folder / "report.csv", encoding="utf-8")))
    assert len(rows) == 5 * 5  # rows x metrics
    pgd = next(r for r in rows if r["row"] == "in_resnet110" and r["metric"] == "pgd")
    assert float(pgd["ours_mean"]) == pytest.approx(30.0)
    assert float(pgd["paper_mean"]) == 31.74
    data = json.loads((variants_folder / "report.json").read_text(encoding="utf-8"))
    assert data["preset"] == "inresnet-variants" and data["units"] == "percent"
    assert {r["path"] for r in data["runs"]} == {
        f"runs/{n}"
        for n in (
            "cifar10-resnet110-seed0",
            "cifar10-resnet110-seed1",
            "cifar10-in_resnet110-seed0",
        )
    }


def test_runs_of_another_preset_are_listed_apart(variants_folder, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    grid = load_grid("inresnet-table1", seeds=1, data_root="data")
    fill(other, grid, {"cifar10-resnet110-seed0": (0.10, 0.10, 0.10, 0.10, 0.10)})
    src = other / RUNS / "cifar10-resnet110-seed0"
    dst = variants_folder / RUNS / "cifar10-resnet110-seed2"  # looks like a third seed
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    report = build_report(variants_folder)
    assert [r.name for r in report.foreign] == ["cifar10-resnet110-seed2"]
    resnet = next(r for r in report.rows if r.key == "resnet110")
    assert resnet.cells["clean"].mean == pytest.approx(91.0)  # not merged
    text = render_markdown(report)
    assert "## Results from other presets (not merged)" in text
    assert "| cifar10-resnet110-seed2 | inresnet-table1 | quick |" in text


def test_reproduce_refuses_folder_of_another_preset(variants_folder):
    grid = load_grid("inresnet-table1", data_root="data")
    with pytest.raises(OdenetsError, match="holds results of preset 'inresnet-variants'"):
        prepare_folder(grid, variants_folder)


def test_report_refuses_folder_without_results(tmp_path):
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    with pytest.raises(OdenetsError, match="no results in"):
        write_report(tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_report_command_refuses_empty_folder(tmp_path, capsys):
    from odenets.cli import main

    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no results in" in err and "odenets reproduce" in err


def test_a_row_mixing_evaluation_sizes_is_flagged(variants_folder):
    path = variants_folder / RUNS / "cifar10-resnet110-seed1" / "eval.json"
    write_json_atomic(path, {**json.loads(path.read_text()), "n": 20})
    report = build_report(variants_folder)
    rows = {r.key: r for r in report.rows}
    assert rows["resnet110"].odd_sizes() == ([("cifar10-resnet110-seed1", 20)], 100)
    assert rows["in_resnet110"].odd_sizes() == ([], 100)
    text = render_markdown(report)
    assert "**Mixed evaluation sizes**" in text
    assert (
        "- ResNet-110: `cifar10-resnet110-seed1` (n = 20); the row's other evaluations have "
        "n = 100" in text
    )


# --- eval.json against the run's current weights ----------------------------------------
def _train(out: Path, epochs: int, *extra: str) -> None:
    from odenets.cli import main

    args = ["train", "--model", "resnet20", "--dataset", "digits", "--train-limit", "64"]
    args += ["--batch-size", "32", "--epochs", str(epochs), "--out", str(out), "--no-progress"]
    assert main([*args, *extra]) == 0


@pytest.fixture(scope="module")
def retrained(tmp_path_factory) -> dict:
    """A grid-like folder whose one run was evaluated after 1 epoch, then trained to 2."""
    from odenets.cli import main
    from odenets.experiments.grid_folder import job_state
    from odenets.experiments.jobs import Job

    out = tmp_path_factory.mktemp("retrained")
    run = out / RUNS / "digits-resnet20-seed0"
    job = Job(0, run.name, "resnet20", "digits", "", 0, "resnet20")
    _train(run, 1)
    assert main(["evaluate", str(run), "--attacks", "fgsm", "--eps", "8", "--no-checks"]) == 0
    before = job_state(out, job)
    _train(run, 2, "--resume")
    return {"out": out, "run": run, "before": before, "after": job_state(out, job)}


def test_eval_json_of_older_weights_is_stale_and_left_out(retrained):
    scored = json.loads((retrained["run"] / "eval.json").read_text())["weights"][0]
    assert (scored["file"], scored["epoch"], scored["epochs"]) == ("final.safetensors", 1, 1)
    # reproduce re-evaluates the job: it is trained, no longer finished
    assert (retrained["before"], retrained["after"]) == ("finished", "trained")
    report = build_report(retrained["out"])
    (run,) = report.loose
    assert run.status == "trained" and run.eval_state == "stale" and run.evaluation is None
    assert "clean" not in run.metrics and "test" in run.metrics
    text = render_markdown(report)
    assert "## Stale evaluations (left out)" in text
    assert "final.safetensors (epoch 1 of 1)" in text
    assert "final.safetensors (epoch 2 of 2)" in text


def test_transfer_results_go_stale_when_their_surrogate_is_trained_on(tmp_path):
    # The transfer attacks were crafted on the surrogate's weights of then: trained on, the
    # surrogate makes them stale, also once the folders have moved (found by name).
    from odenets.cli import main
    from odenets.experiments.grid_folder import eval_freshness

    runs = tmp_path / "first" / RUNS
    target, surrogate = runs / "target", runs / "surrogate"
    _train(target, 1)
    _train(surrogate, 1)
    args = ["evaluate", str(target), "--attacks", "fgsm", "--eps", "8", "--no-checks"]
    assert main([*args, "--transfer-from", str(surrogate)]) == 0
    ev = json.loads((target / "eval.json").read_text())
    (crafted_on,) = ev["transfer_weights"]
    assert (crafted_on["file"], crafted_on["epoch"]) == ("final.safetensors", 1)
    assert eval_freshness(ev, [target]) == ("current", "")
    moved = tmp_path / "moved"
    (tmp_path / "first").rename(moved)
    assert eval_freshness(ev, [moved / RUNS / "target"]) == ("current", "")
    _train(moved / RUNS / "surrogate", 2, "--resume")
    assert eval_freshness(ev, [moved / RUNS / "target"]) == (
        "stale",
        "its transfer attacks were crafted on final.safetensors (epoch 1 of 1) of surrogate, "
        "which now holds final.safetensors (epoch 2 of 2)",
    )
    # A copy without the surrogate's weights cannot be checked: unknown, not stale (the
    # target's weights are there and unchanged).
    for weights in (moved / RUNS / "surrogate").glob("*.safetensors"):
        weights.unlink()
    assert eval_freshness(ev, [moved / RUNS / "target"]) == (
        "unknown",
        "surrogate holds no weights to check it against (results copied without their weights?)",
    )
    # An eval.json of an older odenets has no such key: it stays current.
    ev.pop("transfer_weights")
    assert eval_freshness(ev, [moved / RUNS / "target"]) == ("current", "")


def test_results_copied_without_weights_are_used_and_said_to_be_unchecked(retrained, tmp_path):
    """A run folder copied without its weights (results shared in git, say): its eval.json
    cannot be checked, so it is of unknown provenance (numbers used, the report says why),
    never stale; one whose weights are there but changed stays stale."""
    import shutil

    from odenets.experiments.grid_folder import eval_freshness

    copy = tmp_path / "copy"
    shutil.copytree(retrained["out"], copy)
    run = copy / RUNS / "digits-resnet20-seed0"
    ev = json.loads((run / "eval.json").read_text())
    assert eval_freshness(ev, [run])[0] == "stale"  # epoch 1 scored, epoch 2 held
    for weights in run.glob("*.safetensors"):
        weights.unlink()
    assert eval_freshness(ev, [run]) == (
        "unknown",
        "digits-resnet20-seed0 holds no weights to check it against (results copied without "
        "their weights?)",
    )
    report = build_report(copy)
    (record,) = report.loose
    assert record.eval_state == "unknown" and record.metrics["clean"] == ev["clean"]
    text = render_markdown(report)
    assert "Stale evaluations" not in text
    assert (
        "- `digits-resnet20-seed0` (eval.json): digits-resnet20-seed0 holds no weights to check "
        "it against" in text
    )


def test_eval_json_of_the_current_weights_counts(retrained, tmp_path):
    from odenets.cli import main

    out = tmp_path / "eval.json"
    args = ["evaluate", str(retrained["run"]), "--attacks", "", "--no-checks", "--out", str(out)]
    assert main(args) == 0
    (retrained["run"] / "eval.json").write_bytes(out.read_bytes())
    (run,) = build_report(retrained["out"]).loose
    assert run.status == "finished" and run.eval_state == "current" and "clean" in run.metrics


def test_eval_json_without_weights_is_of_unknown_provenance(variants_folder):
    report = build_report(variants_folder)
    assert {r.eval_state for r in report.mine} == {"unknown"}
    assert report.rows[0].n_finished == 2  # still in the table
    text = render_markdown(report)
    assert "Evaluations of unknown provenance (their numbers are used" in text
    assert (
        "- `cifar10-in_resnet110-seed0` (eval.json): it records no weights (written by an "
        "older odenets)" in text
    )


def test_report_figures_get_only_the_options_they_take(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from odenets.analysis import figures as analysis_figures
    from odenets.experiments import figures as report_figures

    calls = {}

    def kind(name, options):
        def draw(inputs, out_dir, **kwargs):
            assert set(kwargs) <= set(options)  # what a figure without **kwargs would refuse
            calls[name] = kwargs
            return []

        return analysis_figures.FigureKind(draw, "runs", name, options)

    fake = {
        name: kind(name, analysis_figures.FIGURE_KINDS[name].options)
        for name in report_figures.TITLES
    }
    monkeypatch.setattr(analysis_figures, "FIGURE_KINDS", fake)
    monkeypatch.setattr(report_figures, "_inputs", lambda kind, runs, report: ["input"])
    run = SimpleNamespace(status="finished")
    manifest = {"evaluate": {"eps": [4], "threat_model": "normalized"}}
    report = SimpleNamespace(folder=tmp_path, mine=[run], loose=[], manifest=manifest)
    figures, notes = report_figures.draw_figures(report)
    assert notes == [] and set(calls) == set(report_figures.TITLES)
    assert calls["ensemble-gain"] == {"eps_255": 4.0, "threat_model": "normalized"}
    assert calls["coefficients"] == {} and calls["depth"] == {}


def test_a_run_evaluated_with_limit_is_reported_and_every_file_left_out_is_named(tmp_path):
    """`odenets evaluate --limit N` writes RUN/eval.limit-N.json: a run without eval.json is
    reported from its largest such file; the others, and shards, are named with why."""
    run = tmp_path / "r1"
    summary = {"status": "finished", "epochs_done": 1, "epochs": 1, "final_train_acc": 0.5}
    write_json_atomic(run / "summary.json", {**summary, "final_test_acc": 0.6})
    for name, clean in (("limit-30", 0.5), ("limit-60", 0.7), ("limit-60.shard-1-of-2", 0.1)):
        write_json_atomic(run / f"eval.{name}.json", fake_eval(clean, 0.4, 0.3, 0.2, 0.1))
    report = write_report(tmp_path, figures=False)
    (record,) = report.loose
    assert (record.status, record.eval_file) == ("finished", "eval.limit-60.json")
    assert record.metrics["clean"] == 0.7 and record.metrics["pgd"] == 0.1
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Evaluations of a subset of the test set" in text
    assert "- `r1`: eval.limit-60.json (n = 100)" in text
    assert "- `r1`: eval.limit-30.json: eval.limit-60.json evaluates more images" in text
    assert "- `r1`: eval.limit-60.shard-1-of-2.json: shard 1 of 2 of an evaluation" in text
    runs = json.loads((tmp_path / "report.json").read_text())["other_runs"]
    assert runs[0]["eval_file"] == "eval.limit-60.json" and runs[0]["metrics"]["clean"] == 70
    # The whole test set's eval.json wins; the limited files are named as left out.
    write_json_atomic(run / "eval.json", fake_eval(0.9, 0.4, 0.3, 0.2, 0.1))
    (record,) = build_report(tmp_path).loose
    assert record.eval_file == "eval.json" and record.metrics["clean"] == 0.9
    assert ("eval.limit-60.json", "eval.json (the whole test set) is used") in record.skipped_evals
    assert "Evaluations of a subset" not in render_markdown(build_report(tmp_path))


def test_paired_standard_error_is_mcnemars_on_the_same_images():
    """Against the textbook form for paired proportions, √((b + c)/n - ((b - c)/n)²)/√n
    with b, c the discordant samples; over seeds the pairs' spread where larger; no pairing
    (None) unless every run has a partner of its seed on the same images."""
    import random

    from odenets.experiments.comparison import paired_standard_error

    rng = random.Random(0)
    n = 400
    idx = tuple(range(n))
    ours = tuple(float(rng.random() < 0.6) for _ in range(n))
    base = tuple(float(rng.random() < 0.5) for _ in range(n))
    b = sum(x > y for x, y in zip(ours, base, strict=True))
    c = sum(x < y for x, y in zip(ours, base, strict=True))
    textbook = 100 * ((b + c) / n - ((b - c) / n) ** 2) ** 0.5 / n**0.5
    se = paired_standard_error([(0, (idx, ours))], [(0, (idx, base))])
    assert se == pytest.approx(textbook, rel=1e-12)
    # Two seeds whose differences disagree far more than the samples say: their spread.
    other = tuple(1.0 - v for v in base)
    two = paired_standard_error(
        [(0, (idx, ours)), (1, (idx, ours))], [(0, (idx, base)), (1, (idx, other))]
    )
    d0 = (sum(ours) - sum(base)) / n
    d1 = (sum(ours) - sum(other)) / n
    assert two == pytest.approx(100 * abs(d0 - d1) / 2, rel=1e-9)  # s/√2 of two values
    # Three seeds that agree image by image: the image is the unit, so the error is the one
    # seed's (not √3 smaller); on other images each, the pairs are independent (√3 smaller).
    same = paired_standard_error([(s, (idx, ours)) for s in range(3)],
                                 [(s, (idx, base)) for s in range(3)])  # fmt: skip
    assert same == pytest.approx(textbook, rel=1e-12)
    apart = [tuple(range(s * n, (s + 1) * n)) for s in range(3)]
    separate = paired_standard_error([(s, (apart[s], ours)) for s in range(3)],
                                     [(s, (apart[s], base)) for s in range(3)])  # fmt: skip
    assert separate == pytest.approx(textbook / 3**0.5, rel=1e-12)
    # No pairing: other images, a missing record, other seeds, two runs of one seed.
    shifted = (tuple(range(1, n + 1)), base)
    assert paired_standard_error([(0, (idx, ours))], [(0, shifted)]) is None
    assert paired_standard_error([(0, (idx, ours))], [(0, None)]) is None
    assert paired_standard_error([(0, (idx, ours))], [(1, (idx, base))]) is None
    dup = [(0, (idx, ours)), (0, (idx, ours))]
    assert paired_standard_error(dup, [(0, (idx, base))]) is None
    assert paired_standard_error([], []) is None


def test_exact_mcnemar_p_known_answers():
    """Two-sided exact McNemar p, by hand: 5 against 0 discordant samples, 2 · 2⁻⁵; 8 against
    0, 2 · 2⁻⁸; 10 against 2, 2 · (1 + 12 + 66) / 2¹²; none discordant, 1. It applies to one
    right-or-wrong record a side, of one seed, on the same images."""
    from odenets.experiments.comparison import Comparison, exact_mcnemar_p

    def p(only_ours, only_base, both=7, neither=3):
        n = only_ours + only_base + both + neither
        idx = list(range(n))
        ours = [1.0] * only_ours + [0.0] * only_base + [1.0] * both + [0.0] * neither
        base = [0.0] * only_ours + [1.0] * only_base + [1.0] * both + [0.0] * neither
        return exact_mcnemar_p([(0, (idx, ours))], [(0, (idx, base))])

    assert p(5, 0) == pytest.approx(0.0625)
    assert p(0, 5) == pytest.approx(0.0625)
    assert p(8, 0) == pytest.approx(2 / 256)
    assert p(10, 2) == pytest.approx(2 * 79 / 4096)
    assert p(0, 0) == 1.0
    assert p(3, 3) == 1.0
    idx, bits = [0, 1], [1.0, 0.0]
    assert exact_mcnemar_p([(0, (idx, bits))], [(0, (idx, [0.4, 1.0]))]) is None  # shares
    assert exact_mcnemar_p([(0, (idx, bits))], [(1, (idx, bits))]) is None  # other seed
    assert exact_mcnemar_p([(0, (idx, bits))], [(0, ([2, 3], bits))]) is None  # other images
    two = [(0, (idx, bits)), (1, (idx, bits))]
    assert exact_mcnemar_p(two, two) is None  # several seeds
    # Both tests must agree for a verdict: 8 against 0 points on 100 images passes both.
    assert Comparison("pgd", 13.0, 5.0, 2.7, True, p(8, 0)).verdict == "more robust"
    assert Comparison("pgd", 10.0, 5.0, 2.2, True, p(5, 0)).verdict == "no clear difference"
    assert Comparison("pgd", 10.0, 5.0, 2.2, True, None).verdict == "more robust"


def test_per_sample_records_make_the_verdict_paired(tmp_path):
    """PGD at 8/255, 100 images: ResNet right on 5, In-ResNet on the same 5 and 5 more.
    Independent errors give √(.05·.95/100 + .10·.90/100) = 3.7 points (+5 is within two);
    paired, only the 5 discordant samples count: √(.05 - .05²)/√100 = 2.2 points, and +5
    exceeds two of them, but the exact McNemar test does not pass (p = 0.0625). Noise (5
    noisy versions each): all 5 right on the first 50 and 52 images, so the per-image shares
    differ on 2: √(.02 - .02²)/√100 = 1.4 points, and no exact test (shares). FGSM's
    records at another radius are not taken for 8/255. Runs without records (IFGSM) keep
    the independent error."""
    grid = load_grid("inresnet-variants", seeds=1, data_root="data")
    values = {
        "cifar10-resnet110-seed0": (0.90, 0.50, 0.40, 0.06, 0.05),
        "cifar10-in_resnet110-seed0": (0.88, 0.52, 0.41, 0.11, 0.10),
    }
    fill(tmp_path, grid, values)
    text = render_markdown(build_report(tmp_path))
    assert "difference +5.0 points, standard error 3.7)" in text
    # No records: the rule explains the independent error only, once per table.
    independent = "The standard error is that of two independent accuracies"
    assert "paired" not in text and text.count(independent) >= 2
    for name, correct in (("resnet110", 5), ("in_resnet110", 10)):
        path = tmp_path / RUNS / f"cifar10-{name}-seed0" / "eval.json"
        ev = json.loads(path.read_text(encoding="utf-8"))
        right = 50 if name == "resnet110" else 52
        ev["samples"] = {
            "indices": list(range(100)),
            "clean": "1" * 90 + "0" * 10,
            "noise": [5] * right + [0] * (100 - right),
        }
        ev["counts"] = {"noise": {"gaussian": {str(s): right for s in range(1, 6)}}}
        for entry in ev["attacks"]:
            if entry["name"] == "pgd" and entry["eps_255"] == 8.0:
                entry["samples"] = "1" * correct + "0" * (100 - correct)
            if entry["name"] == "fgsm" and entry["eps_255"] == 4.0:  # another radius
                entry["samples"] = "1" * correct + "0" * (100 - correct)
        write_json_atomic(path, ev)
    text = render_markdown(build_report(tmp_path))
    # +5 exceeds two paired standard errors, but 5 against 0 discordant samples is what an
    # even split gives with probability 2 · 2⁻⁵ = 0.0625: the exact McNemar test says no.
    assert (
        "- In-ResNet-110 vs ResNet-110: **no clear difference** under PGD at ε = 8/255 "
        "(10.0% vs 5.0%, difference +5.0 points, paired standard error 2.2, exact McNemar "
        "p = 0.062)." in text
    )
    assert "IFGSM +5.0 ± 3.9 (no clear difference); PGD +5.0 ± 2.2 (no clear difference, " in text
    assert "paired, p = 0.062)." in text
    assert "Noise +2.0 ± 1.4 (no clear difference, paired); FGSM +1.0 ± 6.9 (no clear" in text
    every = text[text.index("**Every measurement") :]
    pgd = next(line for line in every.splitlines() if line.startswith("| PGD | pixel | 8/255"))
    assert pgd.endswith("| +5.0 ± 2.2 (no clear difference, paired, p = 0.062) |")
    # Now the rule says what "paired" means, and the exact test, under the verdict and the
    # difference columns.
    explained = 'Marked "paired": both networks\' evaluations record each sample'
    assert text.count(explained) == 2 and independent not in text


def test_the_report_says_in_words_whether_in_resnet_is_more_robust(variants_folder):
    """PGD at 8/255: In-ResNet-110 30% (one run of 100 images) against ResNet-110 4% and 6%
    (two seeds scored on the same 100 images, so N = 100, not 200): standard errors
    100·√(0.3·0.7/100) = 4.58 and max(100·√(0.05·0.95/100), s/√2 = 1.0) = 2.18, of the
    difference 5.07; +25 points is more than twice that."""
    from odenets.experiments.comparison import MARGIN_SE, Comparison, row_standard_error

    report = build_report(variants_folder)
    rows = {r.key: r for r in report.rows}
    assert row_standard_error(rows["in_resnet110"], "pgd") == pytest.approx(4.5826, abs=1e-4)
    assert row_standard_error(rows["resnet110"], "pgd") == pytest.approx(2.1794, abs=1e-4)
    text = render_markdown(report)
    assert "**Is In-ResNet more robust than ResNet on this data?**" in text
    assert (
        "- In-ResNet-110 vs ResNet-110: **more robust** than ResNet-110 under PGD at "
        "ε = 8/255 (30.0% vs 5.0%, difference +25.0 points, standard error 5.1)." in text
    )
    assert "Noise +19.0 ± 6.8 (more robust); FGSM +9.0 ± 7.0 (no clear difference)" in text
    assert f"exceeds {MARGIN_SE:g} standard errors of the difference" in text
    # The rule at its edges: more, less, and within the margin.
    assert Comparison("pgd", 50.0, 40.0, 4.9).verdict == "more robust"
    assert Comparison("pgd", 40.0, 50.0, 4.9).verdict == "less robust"
    assert Comparison("pgd", 50.0, 40.0, 5.0).verdict == "no clear difference"


def test_the_verdict_is_headed_by_the_strongest_column(tmp_path):
    """The worst case where the table has it, else the attack under which the ResNet is
    least accurate, else noise; noise never heads while an attack can."""
    from odenets.experiments.comparison import Comparison, headline

    found = {
        m: Comparison(m, ours, base, 1.0)
        for m, ours, base in [
            ("noise", 50, 5),
            ("fgsm", 40, 30),
            ("ifgsm", 25, 12),
            ("pgd", 20, 10),
        ]
    }
    assert headline(found).metric == "pgd"
    assert headline({**found, "worst_case": Comparison("worst_case", 15, 9, 1.0)}).metric == (
        "worst_case"
    )
    assert headline({"noise": found["noise"]}).metric == "noise"
    assert headline({}) is None
    # Columns where both are at 0% tell nothing (every multi-step attack at a large radius):
    # the weakest attack that leaves either above 0 heads, else noise.
    zero = {m: Comparison(m, 0.0, 0.0, 0.0) for m in ("ifgsm", "pgd", "worst_case")}
    assert headline({**found, **zero}).metric == "fgsm"
    assert headline({"noise": found["noise"], **zero}).metric == "noise"
    assert headline(zero).metric == "worst_case"
    from odenets.experiments.comparison import verdict_lines

    grid = load_grid("inresnet-variants", seeds=1, data_root="data")
    broken = {"cifar10-resnet110-seed0": (0.9, 0.5, 0.0, 0.0, 0.0)}
    fill(tmp_path, grid, {**broken, "cifar10-in_resnet110-seed0": (0.88, 0.7, 0.0, 0.0, 0.0)})
    report = build_report(tmp_path)
    text = "\n".join(verdict_lines(report.rows, ("noise", "ifgsm", "pgd"), setting="ε = 8/255"))
    assert (
        "under noise (mean over the corruptions and severities); every attack at ε = 8/255 " in text
    )


def test_a_table_of_ours_has_apgd_and_the_worst_case_and_its_caption_gives_eps_alpha_steps():
    from odenets.experiments.aggregate import metrics_of
    from odenets.experiments.demo import demo_grid
    from odenets.experiments.grid_folder import manifest_dict
    from odenets.experiments.report_markdown import caption
    from odenets.experiments.results import RunRecord, eval_metrics

    grid = demo_grid(quick=True)
    manifest = manifest_dict(grid, [])
    assert metrics_of(manifest) == (
        "clean", "noise", "fgsm", "ifgsm", "pgd", "apgd_ce", "worst_case"
    )  # fmt: skip
    ev = fake_eval(0.9, 0.5, 0.4, 0.3, 0.2)
    ev["worst_case"] = [
        {"eps": 8 / 255, "eps_255": 8.0, "threat_model": "pixel", "accuracy": 0.15},
        {"eps": 4 / 255, "eps_255": 4.0, "threat_model": "pixel", "accuracy": 0.6},
    ]
    assert eval_metrics(ev, eps_255=8.0, threat_model="pixel")["worst_case"] == 0.15
    # Without an evaluation the caption gives the settings of the attacks the preset builds
    # (as an evaluation would record them); with one, what it recorded.
    words = caption(manifest, [], "digits")
    assert "ε = 16/255" in words and "fgsm: 1 step of α = ε" in words
    assert "pgd: 20 steps, α = 2/255 at ε = 16/255, random start" in words
    assert "apgd_ce: 20 steps from α = 2ε, halved by its schedule" in words
    assert "Worst case: per sample over these attacks" in words
    ev = fake_eval(0.9, 0.5, 0.4, 0.3, 0.2)
    for a in ev["attacks"]:
        a.update(eps=16 / 255, eps_255=16.0, alpha=4 / 255 if a["name"] != "fgsm" else 16 / 255)
    ev["attacks"][0]["steps"] = 1
    run = RunRecord(Path("r"), {"dataset": "digits"}, "finished", evaluation=ev)
    words = caption(manifest, [run], "digits")
    assert "fgsm: 1 step of α = ε, at ε = 16/255" in words
    assert "ifgsm: 20 steps, α = 4/255 at ε = 16/255" in words


def test_every_measurement_of_the_evaluation_is_tabled_when_the_table_shows_one_radius(
    variants_folder, tmp_path
):
    # fake_eval also measured FGSM at 4/255, which the table (8/255) leaves out.
    text = render_markdown(build_report(variants_folder))
    section = text[text.index("**Every measurement of these evaluations**") :]
    section = section[: section.index("\n\n", section.index("| measurement"))]
    assert "| measurement | threat model | ε | ResNet-110 (" in section
    assert "| In-ResNet-110 (" in section  # a column per row that has runs, in table order
    assert "| FGSM | pixel | 4/255 | 99.00 ± 0.00 | 99.00 |" in section
    # Means and sample std over seeds, as the table: PGD 4% and 6% for the ResNet's two seeds.
    assert "| PGD | pixel | 8/255 | 5.00 ± 1.41 | 30.00 |" in section
    assert section.index("| FGSM | pixel | 4/255") < section.index("| FGSM | pixel | 8/255")
    # The difference column: 30% - 5% = +25.0, standard error √(2.1794² + 4.5826²) = 5.1,
    # the same numbers as the verdict's comparison of the table's rows.
    from odenets.experiments.comparison import compare_rows

    assert "| In-ResNet-110 − ResNet-110 |" in section.splitlines()[2]
    assert "| PGD | pixel | 8/255 | 5.00 ± 1.41 | 30.00 | +25.0 ± 5.1 (more robust) |" in section
    rows = {r.key: r for r in build_report(variants_folder).rows}
    (pgd,) = compare_rows(rows["in_resnet110"], rows["resnet110"], ["pgd"])
    assert f"{pgd.diff:+.1f} ± {pgd.se:.1f} ({pgd.verdict})" == "+25.0 ± 5.1 (more robust)"
    assert "| clean |  |  | 91.00 ± 1.41 | 88.00 | -3.0 ± 4.3 (no clear difference) |" in section
    # With nothing but the table's radius, the table says it all: no second table.
    for path in variants_folder.rglob("eval.json"):
        ev = json.loads(path.read_text())
        ev["attacks"] = [a for a in ev["attacks"] if a["eps_255"] == 8.0]
        write_json_atomic(path, ev)
    assert "Every measurement" not in render_markdown(build_report(variants_folder))
    # The per-sample worst case is no column of the paper's table: with one, it is tabled.
    for path in variants_folder.rglob("eval.json"):
        ev = json.loads(path.read_text())
        ev["worst_case"] = [{**ev["attacks"][2], "name": "worst_case", "accuracy": 0.01}]
        write_json_atomic(path, ev)
    text = render_markdown(build_report(variants_folder))
    assert "| worst case | pixel | 8/255 | 1.00 ± 0.00 | 1.00 |" in text


def test_difference_columns_pair_networks_of_the_same_depth_and_data_set():
    from odenets.experiments.comparison import column_pairs
    from odenets.experiments.further import Column, column_titles

    def col(model, dataset, label=""):
        return Column(label=label or model, model=model, runs=[], dataset=dataset)

    r10, r100 = col("resnet56", "cifar10"), col("resnet56", "cifar100")
    i10, i100 = col("in_resnet56", "cifar10"), col("in_resnet56", "cifar100")
    deeper = col("lambda_in_resnet110", "cifar10")
    assert column_pairs([r10, r100, i10, i100, deeper]) == [(i10, r10), (i100, r100)]
    assert column_titles([r10, i100]) == [
        "resnet56 (resnet56), cifar10",
        "in_resnet56 (in_resnet56), cifar100",
    ]
    assert column_titles([r10, i10]) == ["resnet56 (resnet56)", "in_resnet56 (in_resnet56)"]
    # Two ResNet-56 columns of one data set (runs with no job record): no pair is guessed.
    assert column_pairs([r10, col("resnet56", "cifar10", "other"), i10]) == []


def test_an_ensemble_column_is_not_the_resnet_its_members_are(tmp_path):
    """The inresnet-ensemble grid: the ResNet-110 ensemble's column is "resnet110 x 2", as
    the table names it, so the In-ResNet-110 column pairs with the single ResNet-110 (not
    with nothing, for two columns named resnet110)."""
    from odenets.experiments.comparison import column_pairs
    from odenets.experiments.further import columns
    from odenets.experiments.results import RunRecord

    ev = fake_eval(0.9, 0.5, 0.4, 0.1, 0.1)
    jobs = [
        {"dataset": "cifar10", "row": "resnet110", "model": "resnet110"},
        {"dataset": "cifar10", "row": "resnet110+ensemble", "model": "resnet110",
         "members": ["a", "b"]},
        {"dataset": "cifar10", "row": "in_resnet110", "model": "in_resnet110"},
    ]  # fmt: skip
    runs = [RunRecord(tmp_path / str(i), job, "evaluated", {}, ev) for i, job in enumerate(jobs)]
    single, ensemble, ours = columns("", runs, {})
    assert (single.model, ensemble.model, ours.model) == (
        "resnet110",
        "resnet110 x 2",
        "in_resnet110",
    )
    assert column_pairs([single, ensemble, ours]) == [(ours, single)]


def test_runs_without_a_job_record_get_every_measurement_too(tmp_path):
    """Loose runs (no manifest): the runs table has one radius; every radius, attack and
    transfer attack of their evaluation files is tabled below it, a column per run."""
    summary = {"status": "finished", "epochs_done": 1, "epochs": 1, "final_train_acc": 0.5}
    for name, pgd in (("plain", 0.1), ("damped", 0.3)):
        ev = fake_eval(0.9, 0.4, 0.3, 0.2, pgd)
        ev["models"] = [f"{name}_net"]
        transfer = {**ev["attacks"][2], "name": "transfer_pgd", "eps": 2 / 255, "eps_255": 2.0}
        ev["attacks"].append({**transfer, "accuracy": pgd + 0.5})
        write_json_atomic(tmp_path / name / "summary.json", {**summary, "final_test_acc": 0.9})
        write_json_atomic(tmp_path / name / "eval.limit-100.json", ev)
    text = render_markdown(build_report(tmp_path))
    section = text[text.index("## Other runs") :]
    assert "| measurement | threat model | ε | damped (damped_net) | plain (plain_net) |" in section
    assert "| transfer PGD | pixel | 2/255 | 80.00 | 60.00 |" in section
    assert "| FGSM | pixel | 4/255 | 99.00 | 99.00 |" in section
    assert "| PGD | pixel | 8/255 | 30.00 | 10.00 |" in section


def test_a_difference_cell_says_higher_or_lower_for_clean_accuracy():
    from odenets.experiments.comparison import Comparison, difference_cell

    assert (
        difference_cell(Comparison("clean", 95.0, 90.0, 1.0), clean=True) == "+5.0 ± 1.0 (higher)"
    )
    assert difference_cell(Comparison("pgd", 10.0, 30.0, 2.0)) == "-20.0 ± 2.0 (less robust)"
    assert difference_cell(Comparison("pgd", 31.0, 30.0, 2.0)) == "+1.0 ± 2.0 (no clear difference)"
    assert difference_cell(None) == "—"


def test_the_report_names_runs_whose_coefficients_ended_at_zero(tmp_path):
    """From metrics.jsonl: a run whose every λ_n is 0 (again since epoch 3 here, after one came
    back at epoch 2) ended as a plain ResNet; one with some at 0 gets the count; a plain
    ResNet has no line."""
    from odenets.checkpoint import append_jsonl

    summary = {"status": "finished", "epochs_done": 3, "epochs": 3, "final_train_acc": 0.5}
    histories = {
        "dead": [[0.0, 0.0], [0.2, 0.0], [0.0, 0.0], [0.0, 0.0]],
        "alive": [[0.2, 0.3], [0.0, 0.4], [0.0, 0.4], [0.0, 0.5]],
        "plain": [None, None, None, None],
        "held": [[0.2, 0.3]] * 4,
    }
    for name, history in histories.items():
        write_json_atomic(tmp_path / name / "summary.json", {**summary, "final_test_acc": 0.6})
        write_json_atomic(tmp_path / name / "eval.json", fake_eval(0.6, 0.4, 0.3, 0.2, 0.1))
        for epoch, lam in enumerate(history, start=1):
            row = {"epoch": epoch, "test_acc": 0.6, **({"coefficients": lam} if lam else {})}
            append_jsonl(tmp_path / name / "metrics.jsonl", row)
    config = {
        "model": "in_resnet20",
        "model_kwargs": {},
        "dataset": {"name": "digits", "num_classes": 10, "in_chans": 1},
        "train": {"epochs": 4, "freeze_coefficients": True},
    }
    write_json_atomic(tmp_path / "held" / "config.json", config)
    write_json_atomic(tmp_path / "alive" / "config.json", {**config, "train": {"epochs": 4}})
    text = render_markdown(build_report(tmp_path))
    section = text[text.index("## Interpolation coefficients") :].split("\n## ")[0]
    assert (
        "- `dead` (interpolating), after epoch 4: 2 coefficients, mean 0.000, largest 0.000; "
        "2 at 0 (all of them since epoch 3): **this run ended as a plain ResNet**." in section
    )
    assert (
        "- `alive` (interpolating), after epoch 4: 2 coefficients, mean 0.250, largest " in section
    )
    assert "0.500; 1 at 0." in section
    assert (
        "- `held` (interpolating), after epoch 4: 2 coefficients, mean 0.250, largest " in section
    )
    assert "0.300; 0 at 0; held at their initial values (`--freeze-coefficients`)." in section
    bullets = section[: section.index("\n\n", section.index("- `"))]
    assert bullets.count("\n- `") == 3 and "`plain`" not in bullets
    assert bullets.count("held at their initial values") == 1


def test_seeds_scored_on_the_same_images_count_those_images_once():
    from odenets.experiments.comparison import distinct_images, standard_error

    ev = {"dataset": "cifar10", "split": "test", "n": 1000, "seed": 0, "shard": None}
    # Three seeds of a network on one fixed subset: 1,000 images, not 3,000.
    assert distinct_images([ev, dict(ev), dict(ev)]) == 1000
    # Other subsets, shards, sizes or data sets are other images.
    assert distinct_images([ev, {**ev, "seed": 1}]) == 2000
    assert distinct_images([ev, {**ev, "shard": {"index": 1, "count": 2}}]) == 2000
    assert distinct_images([ev, {**ev, "n": 500}]) == 1500
    assert distinct_images([ev, {**ev, "dataset": "cifar100"}]) == 2000
    # A field an older file lacks: taken as the same images, the wider error.
    assert distinct_images([{"n": 100}, {"n": 100}]) == 100
    assert distinct_images([]) == 0

    # With the test-split positions recorded: their union, whatever the keys say (the whole
    # split under two seeds; a shard beside the merged whole).
    def at(positions, **fields):
        return {**ev, **fields, "n": len(positions), "samples": {"indices": positions}}

    assert distinct_images([at([0, 1, 2], seed=0), at([0, 1, 2], seed=1)]) == 3
    assert distinct_images([at([0, 1, 2, 3]), at([2, 3], shard={"index": 1, "count": 2})]) == 4
    assert distinct_images([at([0, 1]), at([5, 6], seed=1)]) == 4
    assert distinct_images([at([0, 1]), at([0, 1], dataset="cifar100")]) == 4
    # One evaluation without them: the keys decide.
    assert distinct_images([at([0, 1]), {**ev, "n": 2, "seed": 1}]) == 4
    # With identical seeds the error is the binomial one of the 1,000 images: √3 wider
    # than counting 3,000.
    same = standard_error([0.5, 0.5, 0.5], distinct_images([ev] * 3))
    assert same == pytest.approx(100 * (0.25 / 1000) ** 0.5)
    assert same == pytest.approx(standard_error([0.5] * 3, 3000) * 3**0.5)


def test_legend_and_caption_describe_an_attack_alike():
    from odenets.robustness.table import attack_setting, attack_settings

    pgd = [
        {"name": "pgd", "eps": e / 255, "eps_255": e, "alpha": e / 255 / 4, "steps": 20,
         "random_start": True, "restarts": 5}
        for e in (2, 8)
    ]  # fmt: skip
    apgd = [{"name": "apgd_ce", "eps": 8 / 255, "eps_255": 8, "steps": 100, "loss": "ce",
             "restarts": 2}]  # fmt: skip
    assert attack_setting(pgd) == "20 steps, α = 0.25·ε, random start, 5 restarts"
    assert attack_setting(apgd) == "100 steps from α = 2ε, halved by its schedule, 2 restarts"
    assert attack_settings(pgd + apgd) == (
        "pgd: 20 steps, α = 0.5/255 at ε = 2/255, 2/255 at ε = 8/255, random start, "
        "5 restarts; apgd_ce: 100 steps from α = 2ε, halved by its schedule, at ε = 8/255, "
        "2 restarts."
    )
    assert attack_setting([{"name": "square", "queries": 1000}]) == "1000 queries"
    assert attack_setting([{"name": "aa", "version": "standard"}]) == "AutoAttack, version standard"
    assert attack_setting([{"name": "x"}]) == ""
