"""`odenets reproduce` end to end on a tiny grid (two models, two seeds, one epoch, a slice of
CIFAR-10 as JPEG folders): killed during its second run and restarted, finished runs are
not repeated; `--list-jobs` run line by line gives the same results; grid bookkeeping."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from odenets.cli import main
from odenets.experiments.grid_folder import RUNS
from odenets.experiments.job_commands import job_command
from odenets.experiments.jobs import expand_jobs, load_grid
from odenets.experiments.presets import list_presets
from odenets.experiments.reproduce import parse_shard, select_jobs

REPO = Path(__file__).resolve().parents[1]

TINY_PRESET = """
name = "tiny"
description = "two models, two seeds, one epoch"
table = "inresnet-table1"
datasets = ["cifar10"]
seeds = 2

[scale.quick]
train = { epochs = 1, batch_size = 30, train_limit = 60, test_limit = 30 }
evaluate = { attacks = ["fgsm", "pgd"], eps = [8], noise = false, limit = 30, steps = 2 }

[[rows]]
key = "resnet110"
model = "resnet110"
quick_model = "resnet20"

[[rows]]
key = "in_resnet110"
model = "in_resnet110"
quick_model = "in_resnet20"
"""
RUN_NAMES = [
    "folder-resnet110-seed0",
    "folder-resnet110-seed1",
    "folder-in_resnet110-seed0",
    "folder-in_resnet110-seed1",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, cifar10_jpeg_root) -> dict[str, Path]:
    """A tiny preset file and a 10-class slice of the CIFAR-10 JPEG folders."""
    base = tmp_path_factory.mktemp("tiny")
    data = base / "data"
    for split, per_class in (("train", 10), ("test", 5)):
        for class_dir in sorted((cifar10_jpeg_root / split).iterdir()):
            dst = data / split / class_dir.name
            dst.mkdir(parents=True)
            for f in sorted(class_dir.glob("*.jpg"))[:per_class]:
                shutil.copyfile(f, dst / f.name)
    preset = base / "tiny.toml"
    preset.write_text(TINY_PRESET, encoding="utf-8")
    return {"base": base, "data": data, "preset": preset}


def _args(tiny, out: Path) -> list[str]:
    return [
        str(tiny["preset"]),
        "--data-root",
        str(tiny["data"]),
        "--out",
        str(out),
        "--dataset",
        "folder",
    ]


def _env() -> dict[str, str]:
    # One thread, as the in-process runs of this session (conftest): float32 reductions of
    # BatchNorm and convolutions split across threads round differently.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def killed_and_rerun(tiny) -> dict:
    """Run the grid in a subprocess, SIGKILL it once the second run has started training,
    note the first run's file times (`rerun` then finishes the grid)."""
    out = tiny["base"] / "killed"
    cmd = [sys.executable, "-m", "odenets", "reproduce", *_args(tiny, out)]
    proc = subprocess.Popen(
        cmd,
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    second = out / RUNS / RUN_NAMES[1] / "summary.json"  # written once training has begun
    deadline = time.monotonic() + 300
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = out / RUNS / RUN_NAMES[0]
    stamps = {f.name: f.stat().st_mtime_ns for f in first.iterdir()}
    killed_summary = json.loads((out / RUNS / RUN_NAMES[1] / "summary.json").read_text())
    return {
        "out": out,
        "stamps": stamps,
        "killed_summary": killed_summary,
        "killed_report": (out / "report.md").exists(),
    }


@pytest.fixture(scope="module")
def rerun(tiny, killed_and_rerun) -> dict:
    """The killed grid rerun to the end in-process, once, with what that rerun printed (the
    tests that compare with the finished grid need it, whatever order they run in)."""
    out = killed_and_rerun["out"]
    printed, logged = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(logged):
        code = main(["reproduce", *_args(tiny, out)])
    return {
        **killed_and_rerun,
        "code": code,
        "printed": printed.getvalue(),
        "logged": logged.getvalue(),
    }


def test_kill_then_rerun_skips_finished_runs(tiny, rerun, capsys):
    out = rerun["out"]
    # The kill came during the second run: it had started and not finished.
    assert rerun["killed_summary"]["status"] == "running"
    assert not rerun["killed_report"]
    assert rerun["code"] == 0
    printed = rerun["printed"]
    # A line per job: its number in the grid, name and state, the jobs done, an ETA.
    assert f"[1/4] {RUN_NAMES[0]}: skipped (finished); 1/4 jobs done\n" in printed
    for k, name in enumerate(RUN_NAMES[1:], start=2):
        assert re.search(rf"\[{k}/4\] {name}: finished in [\d.]+ s; {k}/4 jobs done", printed)
    assert ", ETA " in printed.splitlines()[2] and ", ETA " not in printed.splitlines()[3]
    # Each line the jobs log (training epochs, evaluation passes) names its job.
    logged = [x for x in rerun["logged"].splitlines() if "  epoch " in x or " correct (" in x]
    labels = {f"[{k}/4] {name}:" for k, name in enumerate(RUN_NAMES, start=1)}
    assert len(logged) > 6
    assert all(re.match(r"\[\d/4\] \S+:", x)[0] in labels for x in logged)
    assert any(x.startswith(f"[2/4] {RUN_NAMES[1]}: resnet20  epoch 1/1") for x in logged)
    pgd = [x for x in logged if x.startswith(f"[4/4] {RUN_NAMES[3]}: pgd 8/255: ")]
    assert pgd and "; evaluation " in pgd[0] and (", ETA " in pgd[0] or pgd[0].endswith("done"))
    first = out / RUNS / RUN_NAMES[0]
    assert {f.name: f.stat().st_mtime_ns for f in first.iterdir()} == rerun["stamps"]
    for name in RUN_NAMES:
        summary = json.loads((out / RUNS / name / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["epochs_done"] == 1
        assert (out / RUNS / name / "eval.json").exists()
    # The report lists every run, and the paper's numbers sit beside ours.
    report = (out / "report.md").read_text(encoding="utf-8")
    for name in RUN_NAMES:
        assert f"| {name} | tiny | quick |" in report
    assert "| ResNet-110 | resnet20 | 2/2 |" in report
    assert "| In-ResNet-110 | in_resnet20 | 2/2 |" in report
    assert "Acc. ours | Acc. paper | Acc. Δ" in report
    assert "| 93.58 |" in report and "| 92.28 |" in report  # Table 1, CIFAR-10, Acc.
    # A second rerun does nothing.
    assert main(["reproduce", *_args(tiny, out), "--no-report"]) == 0
    assert capsys.readouterr().out.count("skipped (finished)") == 4


@pytest.mark.slow
def test_list_jobs_lines_give_the_same_results(tiny, rerun, capsys):
    out = tiny["base"] / "by-lines"
    assert main(["reproduce", *_args(tiny, out), "--list-jobs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = [line for line in lines if line and not line.startswith("#")]
    assert len(commands) == len(RUN_NAMES) + 1  # one per run, then the report
    assert all("--job" in c for c in commands[:-1]) and " report " in commands[-1]
    for command in commands:
        subprocess.run(
            ["bash", "-c", command],
            check=True,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ref = rerun["out"]
    assert sorted(p.name for p in (out / RUNS).iterdir()) == sorted(RUN_NAMES)
    for name in RUN_NAMES:
        files = {p.name for p in (out / RUNS / name).iterdir()}
        assert files == {p.name for p in (ref / RUNS / name).iterdir()}
        a = json.loads((out / RUNS / name / "eval.json").read_text())
        b = json.loads((ref / RUNS / name / "eval.json").read_text())
        assert (a["clean"], a["attacks"][0]["accuracy"]) == (
            b["clean"],
            b["attacks"][0]["accuracy"],
        )
    rows = json.loads((out / "report.json").read_text())["rows"]
    ref_rows = json.loads((ref / "report.json").read_text())["rows"]
    assert rows == ref_rows


def test_presets_expand_to_complete_grids():
    assert list_presets() == [
        "inresnet-ensemble",
        "inresnet-init",
        "inresnet-table1",
        "inresnet-variants",
        "naisnet-cifar",
    ]
    table1 = load_grid("inresnet-table1", scale="paper", data_root="d")
    jobs = expand_jobs(table1)
    assert len(jobs) == 6 * 2 * 5  # models x data sets x seeds
    assert len({j.name for j in jobs}) == len(jobs)
    assert {j.model for j in jobs} == {
        "resnet110",
        "in_resnet110",
        "lambda_in_resnet110",
        "resnet164",
        "in_resnet164",
        "lambda_in_resnet164",
    }
    init = expand_jobs(load_grid("inresnet-init", scale="quick", seeds=1, data_root="d"))
    assert {tuple(j.model_kwargs["lambda_init"]) for j in init} == {
        (0.0, 0.1),
        (0.1, 0.2),
        (0.2, 0.25),
        (0.25, 0.3),
        (0.3, 0.4),
    }
    ens = expand_jobs(load_grid("inresnet-ensemble", scale="paper", data_root="d"))
    ensembles = [j for j in ens if j.is_ensemble]
    assert len(ensembles) == 3 and all(len(j.members) == 5 for j in ensembles)
    assert ens[-3:] == ensembles  # after every training job


@pytest.mark.parametrize("n", [1, 3, 7])
def test_shards_partition_the_training_jobs(n):
    jobs = expand_jobs(load_grid("inresnet-variants", scale="paper", data_root="d"))
    picked = [j.index for i in range(1, n + 1) for j in select_jobs(jobs, shard=(i, n))]
    assert sorted(picked) == list(range(len(jobs)))
    assert parse_shard(f"{n}/{n}") == (n, n)


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1-2", "a/b"])
def test_bad_shard_is_refused(bad):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(bad)


def test_job_command_is_self_contained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths become absolute (jobs may start elsewhere)
    grid = load_grid("inresnet-ensemble", scale="paper", seeds=3, data_root="my data")
    job = expand_jobs(grid)[4]
    cmd = job_command(grid, "runs/ens", job, python="python")
    assert cmd == (
        f"python -m odenets reproduce inresnet-ensemble --out {tmp_path / 'runs/ens'} "
        f"--scale paper --seeds 3 --data-root '{tmp_path / 'my data'}' --dataset cifar10 "
        "--job 4"
    )


def test_unknown_preset_and_missing_root_are_clear():
    with pytest.raises(KeyError, match="unknown preset 'table9'; known: inresnet-ensemble"):
        load_grid("table9")
    with pytest.raises(ValueError, match="needs --data-root"):
        load_grid("inresnet-table1")


def _list_jobs(capsys, tmp_path, *extra: str) -> tuple[int, list[str], str]:
    args = ["reproduce", "inresnet-table1", "--scale", "paper", "--dataset", "cifar10"]
    rc = main([*args, "--out", str(tmp_path / "out"), "--list-jobs", *extra])
    captured = capsys.readouterr()
    return rc, captured.out.splitlines(), captured.err


def test_list_jobs_writes_nothing(tmp_path, capsys):
    rc, lines, _ = _list_jobs(capsys, tmp_path, "--data-root", str(tmp_path))
    assert rc == 0 and sum("--job" in line for line in lines) == 6 * 5
    assert not (tmp_path / "out").exists()  # no manifest: a later run may use another scale


def test_missing_data_root_is_refused(tmp_path, capsys):
    rc, lines, err = _list_jobs(capsys, tmp_path, "--data-root", str(tmp_path / "nope"))
    assert rc == 1 and lines == []
    assert err.splitlines() == [
        f"odenets reproduce: error: --data-root {tmp_path / 'nope'} is not an existing folder"
    ]


@pytest.mark.parametrize("seeds", ["0", "-1"])
def test_seeds_below_one_are_refused(tmp_path, capsys, seeds):
    rc, lines, err = _list_jobs(capsys, tmp_path, "--data-root", str(tmp_path), "--seeds", seeds)
    assert rc == 1 and lines == []
    assert err.splitlines() == [
        f"odenets reproduce: error: --seeds must be >= 1 (default: the preset's); got {seeds}"
    ]


def test_list_jobs_of_a_shard_lists_only_its_jobs(tmp_path, capsys):
    grid = load_grid("inresnet-ensemble", scale="paper", seeds=2, data_root=str(tmp_path))
    jobs = expand_jobs(grid)
    expected = select_jobs(jobs, shard=(2, 3))
    assert 0 < len(expected) < len(jobs)
    args = ["reproduce", "inresnet-ensemble", "--scale", "paper", "--seeds", "2", "--data-root"]
    out = str(tmp_path / "out")
    assert main([*args, str(tmp_path), "--out", out, "--list-jobs", "--shard", "2/3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [line for line in lines if "--job" in line]
    assert [line.split("  # ")[0] for line in listed] == [
        job_command(grid, out, j, python=sys.executable) for j in expected
    ]


def test_list_jobs_needs_no_data_root_and_names_each_job(tmp_path, capsys):
    """Without --data-root the lines carry the placeholder DATA_ROOT to fill in, and each
    ends with a comment naming the model, the data set and the seed."""
    rc, lines, err = _list_jobs(capsys, tmp_path, "--seeds", "2")
    assert rc == 0 and err == ""
    commands = [line for line in lines if "--job" in line]
    assert len(commands) == 6 * 2
    assert any(line.startswith("# replace DATA_ROOT with the data folder") for line in lines)
    grid = load_grid(
        "inresnet-table1", scale="paper", seeds=2, datasets=["cifar10"], data_root=str(tmp_path)
    )
    for line, job in zip(commands, expand_jobs(grid), strict=True):
        command, comment = line.split("  # ")
        assert " --data-root DATA_ROOT " in command and str(tmp_path) + " " not in command
        assert comment == f"{job.model} on cifar10, seed {job.seed}"
    assert lines[-1].endswith(f"odenets report {tmp_path / 'out'}")
    assert not (tmp_path / "out").exists()
    # A run still needs the data.
    assert main(["reproduce", "inresnet-table1", "--out", str(tmp_path / "o")]) == 1
    assert "needs --data-root" in capsys.readouterr().err


def test_ensemble_caption_states_no_seed_count():
    from odenets.experiments.paper import get_table

    protocol = get_table("inresnet-ensemble").protocol  # captions runs of any --seeds
    assert "Ensembles average the predictions of one model per seed" in protocol
    assert not any(f"{n} seeds" in protocol for n in range(1, 100))


def test_a_training_run_folder_is_refused_as_the_grid_folder(tmp_path, capsys):
    run = tmp_path / "r1"
    run.mkdir()
    (run / "config.json").write_text("{}")
    args = ["reproduce", "inresnet-table1", "--scale", "quick", "--dataset", "cifar10"]
    assert main([*args, "--out", str(run), "--data-root", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"odenets reproduce: error: --out {run} is a training run folder (it holds config.json); "
        "give the grid a folder of its own"
    ]
    assert [p.name for p in run.iterdir()] == ["config.json"]


def test_cpu_scale_of_table1_is_the_56_layer_grid(tmp_path):
    grid = load_grid("inresnet-table1", scale="cpu", data_root=tmp_path, datasets=["folder"])
    jobs = expand_jobs(grid)
    assert [(j.name, j.model) for j in jobs] == [
        ("folder-resnet110-seed0", "resnet56"),
        ("folder-in_resnet110-seed0", "in_resnet56"),
        ("folder-lambda_in_resnet110-seed0", "lambda_in_resnet56"),
    ]
    # Without --dataset the scale's own data set list applies (CIFAR-10 only).
    assert load_grid("inresnet-table1", scale="cpu", data_root=tmp_path).resolved_datasets == (
        "cifar10",
    )
    overrides = grid.train_overrides
    assert overrides["epochs"] == 15 and overrides["amp"] is True
    from odenets.training.config import TrainConfig, lr_at, resolve_config

    config = resolve_config(TrainConfig(recipe="paper-cifar10", **overrides), device_type="cpu")
    assert (config.lr, config.momentum, config.weight_decay, config.batch_size) == (
        0.1,
        0.9,
        1e-4,
        128,
    )
    lrs = [round(lr_at(config, e), 6) for e in range(1, 16)]
    assert lrs == [0.1] * 8 + [0.01] * 4 + [0.001] * 3
    settings = grid.eval_settings
    assert settings.limit == 1000 and sorted(settings.eps) == [1, 2, 4, 8]
    assert "apgd_ce" in settings.attacks
    # Then the authors' threat models and the referee, into eval.<name>.json of every run.
    further = {e.name: e for e in grid.further_evals}
    assert list(further) == ["normalized", "start_centred", "referee"]
    assert further["normalized"].threat_models == ["normalized"]
    assert further["start_centred"].attacks == ("pgd_start_centred",)
    referee = further["referee"]
    assert (referee.attacks, referee.eps, referee.limit) == (("autoattack", "square"), (2, 8), 500)
    assert referee.transfer_from == "resnet110"
    assert all(j.evaluations == tuple(further) for j in jobs)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("[scale.cpu]\nrows = ['nope']\nevaluate = {}\n", "unknown rows ['nope']"),
        ("[scale.cpu]\nepochs = 3\nevaluate = {}\n", "unknown fields ['epochs']"),
    ],
)
def test_bad_scale_sections_are_refused(bad, message):
    from odenets._toml import loads
    from odenets.experiments.presets import parse_preset

    text = 'name = "x"\n[[rows]]\nkey = "a"\nmodel = "resnet20"\n' + bad
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_preset(loads(text), source="x.toml")


def test_train_only_trains_and_a_later_call_evaluates(tiny, capsys):
    out = tiny["base"] / "train-only"
    args = [*_args(tiny, out), "--seeds", "1"]
    assert main(["reproduce", *args, "--train-only"]) == 0
    printed = capsys.readouterr().out
    for name in RUN_NAMES[::2]:
        assert (out / RUNS / name / "final.safetensors").exists()
        assert not (out / RUNS / name / "eval.json").exists()
        assert f"{name}: trained" in printed
    assert not (out / "report.md").exists()
    stamps = (out / RUNS / RUN_NAMES[0] / "final.safetensors").stat().st_mtime_ns
    assert main(["reproduce", *args]) == 0
    for name in RUN_NAMES[::2]:
        assert (out / RUNS / name / "eval.json").exists()
    # The trained weights were evaluated, not trained again.
    assert (out / RUNS / RUN_NAMES[0] / "final.safetensors").stat().st_mtime_ns == stamps
    assert (out / "report.md").exists()


def test_jobs_per_device_gives_the_serial_results(tiny, rerun, capsys, monkeypatch):
    """Two jobs at a time, one process and one thread each: the same weights and evaluations
    as the serial run."""
    from odenets.checkpoint import load_safetensors

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tiny["base"] / "pooled"
    assert main(["reproduce", *_args(tiny, out), "--jobs-per-device", "2"]) == 0
    printed = capsys.readouterr().out
    ref = rerun["out"]
    for k, name in enumerate(RUN_NAMES, start=1):
        assert f"[{k}/4] {name}: finished in " in printed
        # Each job's own log names it on every line it logs.
        log = (out / "logs" / f"{name}.log").read_text(encoding="utf-8").splitlines()
        logged = [x for x in log if "  epoch " in x or " correct (" in x]
        assert logged and all(x.startswith(f"[{k}/4] {name}: ") for x in logged)
        got = load_safetensors(out / RUNS / name / "final.safetensors")[0]
        want = load_safetensors(ref / RUNS / name / "final.safetensors")[0]
        assert got.keys() == want.keys()
        assert all(got[key].equal(want[key]) for key in want), name
        a = json.loads((out / RUNS / name / "eval.json").read_text())
        b = json.loads((ref / RUNS / name / "eval.json").read_text())
        assert (a["clean"], a["attacks"]) != (None, None)
        assert a["clean"] == b["clean"]
        assert [x["correct"] for x in a["attacks"]] == [x["correct"] for x in b["attacks"]]


@pytest.mark.parametrize(
    ("count", "visible", "want"),
    [
        (2, None, ["0", "1"]),
        (2, "", ["0", "1"]),
        (2, "2,3", ["2", "3"]),
        (1, " 3 ", ["3"]),
        (2, "GPU-8f1c,GPU-77aa", ["GPU-8f1c", "GPU-77aa"]),
    ],
)
def test_jobs_get_the_parents_devices_under_cuda_visible_devices(count, visible, want):
    from odenets.experiments.job_pool import visible_device_ids

    assert visible_device_ids(count, visible) == want


def test_jobs_per_device_below_zero_is_refused(tmp_path, capsys):
    assert main(["reproduce", "inresnet-table1", "--jobs-per-device", "-1"]) != 0
    assert "--jobs-per-device must be >= 1" in capsys.readouterr().err


def _tree_stamps(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root (and root itself) with its size and modification time."""
    paths = [root, *sorted(root.rglob("*"))]
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in paths}


def test_train_evaluate_reproduce_leave_the_data_folder_unchanged(tiny, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    before = _tree_stamps(data)
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("ODENETS_CACHE", str(cache))
    run = tmp_path / "run"
    common = ["--dataset", "folder", "--data-root", str(data)]
    train = ["train", "--model", "resnet20", *common, "--out", str(run), "--epochs", "1"]
    assert main([*train, "--train-limit", "20", "--test-limit", "10", "--batch-size", "10"]) == 0
    assert main(["evaluate", str(run), "--attacks", "fgsm", "--eps", "8", "--limit", "10"]) == 0
    out = tmp_path / "grid"
    assert main(["reproduce", *_args(tiny, out)[:1], *common, "--out", str(out), "--job", "0"]) == 0
    assert _tree_stamps(data) == before
    # The decoded folder went to the user cache, one sub-folder for this data folder.
    assert len(list((cache / "folders").glob("data-*/t*-*.npz"))) == 2
    # --cache-dir and --no-cache on the commands that load data.
    other = tmp_path / "other-cache"
    argv = ["evaluate", str(run), "--attacks", "", "--limit", "10", "--out"]
    assert main([*argv, str(tmp_path / "e1.json"), "--cache-dir", str(other)]) == 0
    assert len(list((other / "folders").glob("data-*/test-*.npz"))) == 1
    shutil.rmtree(cache)
    assert main([*argv, str(tmp_path / "e2.json"), "--no-cache"]) == 0
    assert not cache.exists()
    assert _tree_stamps(data) == before


def test_list_jobs_lines_carry_the_cache_flags(tiny, tmp_path, capsys):
    argv = ["reproduce", *_args(tiny, tmp_path / "g"), "--list-jobs"]
    assert main([*argv, "--cache-dir", str(tmp_path / "c")]) == 0
    lines = [x.split("  # ")[0] for x in capsys.readouterr().out.splitlines() if "--job" in x]
    assert lines and all(x.endswith(f"--cache-dir {tmp_path / 'c'}") for x in lines)
    assert main([*argv, "--no-cache"]) == 0
    lines = [x.split("  # ")[0] for x in capsys.readouterr().out.splitlines() if "--job" in x]
    assert lines and all(x.endswith("--no-cache") for x in lines)


def test_a_frozen_scale_with_a_plain_row_fails_before_any_training(tmp_path):
    """freeze_coefficients in a scale's train settings applies to every row: a row whose
    network has no coefficients stops the grid before anything is trained or written."""
    from odenets.experiments.reproduce import run_grid

    preset = tmp_path / "frozen.toml"
    preset.write_text(
        TINY_PRESET.replace(
            "train = { epochs = 1,", "train = { freeze_coefficients = true, epochs = 1,"
        )
    )
    grid = load_grid(str(preset), scale="quick", datasets=["digits"])
    with pytest.raises(
        ValueError, match=r"scale 'quick'.*no interpolation coefficients: resnet110 \(resnet20\);"
    ):
        run_grid(grid, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_row_trains_with_its_own_settings(tmp_path):
    """A row's `train` table goes over the scale's for its runs only, so learned and frozen
    coefficients sit in one grid; job.json records it; a setting TrainConfig does not take
    is refused before any training, naming the row."""
    from odenets.experiments.grid_folder import prepare_folder, write_job_record
    from odenets.experiments.job_runner import check_training, train_config
    from odenets.experiments.reproduce import run_grid

    frozen_row = """
[[rows]]
key = "in_resnet110+frozen"
model = "in_resnet110"
quick_model = "in_resnet20"
label = "In-ResNet (λ held fixed)"
train = { freeze_coefficients = true, lr = 0.05 }
"""
    preset = tmp_path / "rows.toml"
    preset.write_text(TINY_PRESET + frozen_row, encoding="utf-8")
    grid = load_grid(str(preset), scale="quick", datasets=["digits"])
    check_training(grid)
    jobs = {j.name: j for j in prepare_folder(grid, tmp_path / "out")}
    assert sorted(jobs) == [
        "digits-in_resnet110-frozen-seed0",
        "digits-in_resnet110-frozen-seed1",
        "digits-in_resnet110-seed0",
        "digits-in_resnet110-seed1",
        "digits-resnet110-seed0",
        "digits-resnet110-seed1",
    ]
    configs = {n: train_config(grid, j, tmp_path / n) for n, j in jobs.items()}
    held = configs["digits-in_resnet110-frozen-seed1"]
    assert held.freeze_coefficients and held.lr == 0.05 and held.epochs == 1 and held.seed == 1
    learned = configs["digits-in_resnet110-seed1"]
    assert not learned.freeze_coefficients and learned.lr is None and learned.epochs == 1
    job = jobs["digits-in_resnet110-frozen-seed0"]
    write_job_record(grid, job, tmp_path / "job")
    record = json.loads((tmp_path / "job" / "job.json").read_text(encoding="utf-8"))
    assert record["train"] == {"freeze_coefficients": True, "lr": 0.05}
    # --list-jobs tells the two rows of one model apart.
    from odenets.experiments.job_commands import job_comment

    assert job_comment(jobs["digits-in_resnet110-seed0"]) == "# in_resnet20 on digits, seed 0"
    assert job_comment(job) == (
        "# in_resnet20 on digits, seed 0"
        " (row in_resnet110+frozen: freeze_coefficients = true, lr = 0.05)"
    )

    preset.write_text(TINY_PRESET + frozen_row.replace("lr = 0.05", "lr_typo = 1"))
    grid = load_grid(str(preset), scale="quick", datasets=["digits"])
    with pytest.raises(
        ValueError, match=r"row 'in_resnet110\+frozen': unknown training settings \['lr_typo'\]"
    ):
        run_grid(grid, tmp_path / "typo")
    assert not (tmp_path / "typo").exists()
