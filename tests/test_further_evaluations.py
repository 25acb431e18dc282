"""A preset's further evaluations: each written to eval.<name>.json of the runs it covers by
`odenets reproduce` (restart-safe, transfer from a surrogate row), and shown in the report."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from odenets.cli import main
from odenets.data.splits import subset_indices
from odenets.experiments.presets import parse_preset
from odenets.training.run_folder import RunFolder, further_eval_file

PRESET = """
name = "tiny-further"
description = "two digits models and two further evaluations"
datasets = ["digits"]
seeds = 1

[scale.quick]
train = { epochs = 1, batch_size = 64, train_limit = 128, test_limit = 40 }
evaluate = { attacks = ["fgsm"], eps = [16], noise = false, limit = 40, masking_checks = false }

[[scale.quick.further_evaluations]]
name = "referee"
attacks = ["fgsm", "pgd"]
eps = [8, 16]
steps = 3
noise = false
limit = 24
transfer_from = "plain"
transfer_attacks = ["pgd"]

[[scale.quick.further_evaluations]]
name = "normalized"
rows = ["damped"]
attacks = ["fgsm"]
eps = [16]
threat_model = ["normalized"]
noise = false
limit = 24
masking_checks = false

[[rows]]
key = "plain"
model = "resnet20"
label = "ResNet-20"

[[rows]]
key = "damped"
model = "in_resnet20"
label = "In-ResNet-20"
"""
PLAIN, DAMPED = "digits-plain-seed0", "digits-damped-seed0"


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("further")
    preset = base / "tiny-further.toml"
    preset.write_text(PRESET, encoding="utf-8")
    out = base / "grid"
    assert main(["reproduce", str(preset), "--out", str(out)]) == 0
    return {"preset": preset, "out": out}


def _eval(out: Path, run: str, name: str) -> dict:
    return json.loads((out / "runs" / run / further_eval_file(name)).read_text())


def test_each_run_gets_the_further_evaluations_that_cover_its_row(grid):
    out = grid["out"]
    assert RunFolder(out / "runs" / PLAIN).further_evals() == ["referee"]
    assert RunFolder(out / "runs" / DAMPED).further_evals() == ["normalized", "referee"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["name"] for e in manifest["further_evaluations"]] == ["referee", "normalized"]
    jobs = {j["name"]: j["evaluations"] for j in manifest["jobs"]}
    assert jobs == {PLAIN: ["referee"], DAMPED: ["referee", "normalized"]}

    referee = _eval(out, DAMPED, "referee")
    assert referee["n"] == 24 and referee["seed"] == 0
    names = {(a["name"], a["eps_255"]) for a in referee["attacks"]}
    assert names == {(n, e) for n in ("fgsm", "pgd", "transfer_pgd") for e in (8.0, 16.0)}
    assert all(a["steps"] == 3 for a in referee["attacks"] if "pgd" in a["name"])
    # The surrogate is the plain row's run of the same data set and seed; the surrogate's own
    # evaluation has no transfer attacks.
    assert [Path(p).name for p in referee["transfer_from"]] == [PLAIN]
    plain = _eval(out, PLAIN, "referee")
    assert plain["transfer_from"] is None
    assert {a["name"] for a in plain["attacks"]} == {"fgsm", "pgd"}
    normalized = _eval(out, DAMPED, "normalized")
    assert {a["threat_model"] for a in normalized["attacks"]} == {"normalized"}
    # The main evaluation is unchanged by them: eval.json on its own 40 images.
    main_eval = json.loads((out / "runs" / DAMPED / "eval.json").read_text())
    assert main_eval["n"] == 40 and {a["name"] for a in main_eval["attacks"]} == {"fgsm"}


def test_subsets_of_different_sizes_are_nested():
    # The caption says so: a further evaluation on 24 images scores a subset of the 40.
    small, large = set(subset_indices(359, 24, 0)), set(subset_indices(359, 40, 0))
    assert small < large


def test_a_missing_further_evaluation_is_run_again_and_nothing_else(grid, capsys):
    out = grid["out"]
    run = out / "runs" / DAMPED
    files = lambda: [p for p in run.iterdir() if p.is_file() and not p.name.startswith(".")]  # noqa: E731
    stamps = {p.name: p.stat().st_mtime_ns for p in files()}
    (run / further_eval_file("normalized")).unlink()
    assert main(["reproduce", str(grid["preset"]), "--out", str(out), "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert f"{PLAIN}: skipped (finished)" in printed and f"{DAMPED}: finished" in printed
    after = {p.name: p.stat().st_mtime_ns for p in files()}  # the locks aside
    changed = sorted(k for k in after if after[k] != stamps.get(k))
    assert changed == [further_eval_file("normalized"), "job.json"]


class Killed(Exception):
    pass


def _untimed(value):
    """`value` without its wall times (they differ between any two runs)."""
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k != "time_s"}
    return value


def _killed_in_the_referee(tmp_path, monkeypatch) -> tuple[list, list[str], Path]:
    """Job 0 of the grid evaluated in parts of 10 images (eval.json in 4 parts, the referee's
    24 images in 3), its process stopped during the referee's third part. Returns the
    (run, limit, shard) of every part made (cleared; it goes on counting), the job's
    `reproduce` arguments and the run's parts folder."""
    from odenets.experiments import job_runner

    monkeypatch.setattr(job_runner, "PART_IMAGES", 10)
    made = []
    real = job_runner.evaluate_run

    def evaluate_run(run_dirs, settings, **kwargs):
        made.append((Path(run_dirs[0]).name, settings.limit, kwargs.get("shard")))
        if len(made) == 7 and settings.limit == 24:
            raise Killed  # the process is stopped
        return real(run_dirs, settings, **kwargs)

    monkeypatch.setattr(job_runner, "evaluate_run", evaluate_run)
    preset, out = _grid_with(tmp_path, PRESET)
    args = ["reproduce", str(preset), "--out", str(out), "--no-report", "--job", "0"]
    with pytest.raises(Killed):
        main(args)
    assert made == [(PLAIN, 40, (i, 4)) for i in range(4)] + [(PLAIN, 24, (i, 3)) for i in range(3)]
    made.clear()
    return made, args, out / "runs" / PLAIN / job_runner.PARTS


def test_evaluations_in_parts_resume_after_a_kill_and_equal_the_whole(grid, tmp_path, monkeypatch):
    # A process killed during the referee's third part leaves two parts; the next call makes
    # only the third and merges them into what one pass over the images gives (the module's
    # grid).
    made, args, parts = _killed_in_the_referee(tmp_path, monkeypatch)
    out = parts.parents[2]
    assert [p.name for p in sorted(parts.glob("*/*.json"))] == [
        "part-1-of-3.json",
        "part-2-of-3.json",
    ]
    assert main(args) == 0
    assert made == [(PLAIN, 24, (2, 3))]
    assert not parts.exists()
    for file in ("eval.json", further_eval_file("referee")):
        got = json.loads((out / "runs" / PLAIN / file).read_text())
        want = json.loads((grid["out"] / "runs" / PLAIN / file).read_text())
        assert got["merged_shards"] == (4 if file == "eval.json" else 3) and got["n"] == want["n"]
        for key in ("clean", "attacks", "worst_case", "checks", "counts", "samples"):
            assert _untimed(got[key]) == _untimed(want[key]), (file, key)
        assert len(got["samples"]["indices"]) == got["n"]
        assert got["masking"]["pgd_steps"] == want["masking"]["pgd_steps"]
        assert got["masking"].get("verdict") == want["masking"].get("verdict")


def test_parts_that_do_not_merge_are_removed_and_made_again(tmp_path, monkeypatch, capsys):
    # A part that disagrees with the others (here: another seed) cannot be merged: one
    # line names the file, the parts go, and the next call makes them all again.
    made, args, parts = _killed_in_the_referee(tmp_path, monkeypatch)
    out = parts.parents[2]
    (first,) = parts.glob("eval.referee.json-*/part-1-of-3.json")
    record = json.loads(first.read_text())
    first.write_text(json.dumps({**record, "seed": 1}))
    capsys.readouterr()
    assert main(args) != 0
    assert "eval.referee.json: its parts could not be merged" in capsys.readouterr().err
    assert made == [(PLAIN, 24, (2, 3))] and not list(parts.glob("eval.referee.json-*"))
    made.clear()
    assert main(args) == 0
    assert made == [(PLAIN, 24, (i, 3)) for i in range(3)]
    assert RunFolder(out / "runs" / PLAIN).further_evals() == ["referee"]


def test_a_whole_test_split_is_counted_for_its_parts(grid):
    # limit = 0 (the whole split) is split into parts by the test split's size.
    from odenets.data.datasets import load_dataset
    from odenets.robustness.runs import count_test_images

    want = len(load_dataset("digits", split="test").labels)
    assert count_test_images(grid["out"] / "runs" / PLAIN) == want > 100


def test_the_report_has_a_table_per_further_evaluation(grid):
    out = grid["out"]
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Further evaluations" in report
    referee = report[report.index("### `referee`") : report.index("### `normalized`")]
    header = (
        "| measurement | threat model | ε | ResNet-20 (resnet20) | In-ResNet-20 (in_resnet20) |"
    )
    assert header in referee
    ev = _eval(out, DAMPED, "referee")
    pgd8 = next(a for a in ev["attacks"] if a["name"] == "transfer_pgd" and a["eps_255"] == 8)
    # The transfer line: blank for the surrogate's own column, the number for In-ResNet.
    assert f"| transfer PGD | pixel | 8/255 | — | {100 * pgd8['accuracy']:.2f} |" in referee
    assert "crafted on the run of row `plain`" in referee
    assert f"`{DAMPED}` (in_resnet20): **" in referee  # a masking verdict per run
    normalized = report[report.index("### `normalized`") :]
    assert "| FGSM | normalized | 16/255 | —" not in normalized  # one column: In-ResNet only
    assert "| measurement | threat model | ε | In-ResNet-20 (in_resnet20) |" in normalized
    # Without the masking checks (masking_checks = false) no verdict, as in the main section.
    assert "(in_resnet20): **" not in normalized[: normalized.find("\n## ")]
    data = json.loads((out / "report.json").read_text())
    runs = {Path(r["path"]).name: r for r in data["runs"]}
    assert set(runs[DAMPED]["further_evaluations"]) == {"referee", "normalized"}
    assert runs[DAMPED]["further_evaluations"]["referee"]["transfer_pgd@pixel@8"] == round(
        100 * pgd8["accuracy"], 4
    )


def test_the_report_names_the_runs_a_further_evaluation_has_not_reached(grid, tmp_path):
    """While a grid is evaluated, a further evaluation's table has the runs that have it;
    the others of its rows are named, not silently missing."""
    out = tmp_path / "grid"
    shutil.copytree(grid["out"], out)
    (out / "runs" / DAMPED / further_eval_file("referee")).unlink()
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    referee = report[report.index("### `referee`") : report.index("### `normalized`")]
    assert f"Not evaluated yet: `{DAMPED}` (`odenets reproduce` writes their" in referee
    assert "| measurement | threat model | ε | ResNet-20 (resnet20) |\n" in referee
    assert "Not evaluated yet" not in report[report.index("### `normalized`") :]


@pytest.mark.parametrize(
    ("further", "message"),
    [
        ('name = "Bad-Name"\nattacks = ["fgsm"]', "needs a name of lower case letters"),
        ('name = "x"\nrows = ["nope"]', "rows ['nope'] are not training rows"),
        ('name = "x"\ntransfer_from = "nope"', "transfer_from 'nope' is not a training row"),
        ('name = "x"\nthreat_model = "pixels"', "threat_model must be pixel, normalized"),
        ('name = "x"\nqueries = 5', "unknown evaluate settings ['queries']"),
    ],
)
def test_bad_further_evaluations_are_refused(further, message):
    text = PRESET.split("[[scale.quick.further_evaluations]]")[0]
    text += f"[[scale.quick.further_evaluations]]\n{further}\n\n"
    text += "[[rows]]" + PRESET.split("[[rows]]", 1)[1]
    from odenets._toml import loads

    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_preset(loads(text), source="x.toml")


def test_repeated_names_and_table_settings_in_the_main_evaluation_are_refused():
    from odenets._toml import loads

    twice = PRESET.replace('name = "normalized"', 'name = "referee"')
    with pytest.raises(ValueError, match="further evaluation names repeat"):
        parse_preset(loads(twice), source="x.toml")
    main_named = PRESET.replace("masking_checks = false }", 'masking_checks = false, name = "x" }')
    with pytest.raises(ValueError, match="belong to further_evaluations"):
        parse_preset(loads(main_named), source="x.toml")


def _grid_with(tmp_path: Path, preset_text: str) -> tuple[Path, Path]:
    preset = tmp_path / "tiny-further.toml"
    preset.write_text(preset_text, encoding="utf-8")
    return preset, tmp_path / "grid"


def test_a_job_waits_for_a_surrogate_trained_after_it_then_gets_another_turn(tmp_path, capsys):
    # The surrogate row comes second: the first row's referee waits for it, and once the
    # surrogate is done the same reproduce call gives the waiting job another turn.
    preset, out = _grid_with(tmp_path, PRESET.replace('"plain"\ntransfer', '"damped"\ntransfer'))
    # Job 0 alone cannot finish: it trains, evaluates what it can and waits (exit 0 for
    # --job, as for an ensemble whose members are not done).
    assert main(["reproduce", str(preset), "--out", str(out), "--job", "0"]) == 0
    assert "1 waiting" in capsys.readouterr().out
    assert RunFolder(out / "runs" / PLAIN).further_evals() == []
    assert main(["reproduce", str(preset), "--out", str(out), "--no-report"]) == 0
    printed = capsys.readouterr().out
    lines = [x for x in printed.splitlines() if PLAIN in x or DAMPED in x]
    assert [x.split(": ", 1)[1].split(" ")[0] for x in lines] == ["waiting", "finished", "finished"]
    assert "2 finished" in printed
    referee = _eval(out, PLAIN, "referee")
    assert [Path(p).name for p in referee["transfer_from"]] == [DAMPED]
    assert _eval(out, DAMPED, "referee")["transfer_from"] is None


def test_with_jobs_per_device_a_waiting_job_is_reported_waiting_then_gets_another_turn(
    tmp_path, capsys, monkeypatch
):
    # One process per job: the job whose transfer evaluation waits for the surrogate of a
    # later job says "waiting" (not "trained") and is run again once that job is done.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    preset, out = _grid_with(tmp_path, PRESET.replace('"plain"\ntransfer', '"damped"\ntransfer'))
    args = ["reproduce", str(preset), "--out", str(out), "--no-report", "--jobs-per-device", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    lines = [x for x in printed.splitlines() if PLAIN in x or DAMPED in x]
    assert [x.split(": ", 1)[1].split(" ")[0] for x in lines] == ["waiting", "finished", "finished"]
    assert [Path(p).name for p in _eval(out, PLAIN, "referee")["transfer_from"]] == [DAMPED]


def test_a_diverged_surrogate_leaves_its_transfer_attacks_out_and_says_so(tmp_path, capsys):
    # A diverged run is an end of the grid: the runs that would transfer from it are
    # evaluated without those attacks (the file and the report say why), not kept waiting.
    preset, out = _grid_with(tmp_path, PRESET)
    assert main(["reproduce", str(preset), "--out", str(out), "--train-only"]) == 0
    surrogate = out / "runs" / PLAIN
    summary = json.loads((surrogate / "summary.json").read_text())
    summary.update(status="diverged", error="non-finite training loss at epoch 1, step 2")
    (surrogate / "summary.json").write_text(json.dumps(summary))
    (surrogate / "final.safetensors").unlink()  # a diverged run has no final weights
    assert main(["reproduce", str(preset), "--out", str(out)]) == 0
    assert "1 diverged, 1 finished" in capsys.readouterr().out
    referee = _eval(out, DAMPED, "referee")
    assert referee["transfer_from"] is None
    assert {a["name"] for a in referee["attacks"]} == {"fgsm", "pgd"}
    assert referee["transfer_skipped"] == f"the surrogate run {PLAIN} diverged"
    report = (out / "report.md").read_text(encoding="utf-8")
    assert f"No transfer attacks on `{DAMPED}`: the surrogate run {PLAIN} diverged." in report


def test_list_jobs_says_transfer_evaluations_need_their_surrogate_first(tmp_path, capsys):
    preset, out = _grid_with(tmp_path, PRESET)
    assert main(["reproduce", str(preset), "--out", str(out), "--list-jobs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("# transfer evaluations need the job of row plain (same data")
    assert sum("--job" in line for line in lines) == 2 and not out.exists()


def test_an_evaluation_that_cannot_run_stops_the_grid_before_any_training(
    tmp_path, capsys, monkeypatch
):
    # Square needs the optional package: without it the grid must not train its first job
    # and then stop at that job's evaluation on every rerun, the others never trained.
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # the package is not installed
    text = PRESET.replace('attacks = ["fgsm", "pgd"]', 'attacks = ["fgsm", "square"]')
    preset, out = _grid_with(tmp_path, text)
    assert main(["reproduce", str(preset), "--out", str(out)]) == 1
    assert 'pip install "odenets[autoattack]"' in capsys.readouterr().err
    assert not (out / "runs").exists()
    # Training alone needs no attack.
    assert main(["reproduce", str(preset), "--out", str(out), "--train-only"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == [DAMPED, PLAIN]
