"""The one-command device check (benchmarks/device_check.py): its CPU dry run end to end on
an archive built here in the layout of the real one, its deadlines, and its study plan."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _load_device_check():
    spec = importlib.util.spec_from_file_location(
        "device_check", REPO / "benchmarks" / "device_check.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


dc = _load_device_check()


def fake_archive(folder: Path, *, train: int = 5, test: int = 3) -> Path:
    """cifar10-jpeg.tar.gz as `make device-data` packs it: cifar10-jpeg/{train,test}/<class>/
    NNNN.jpg, 32x32 RGB, seeded noise images."""
    rng = np.random.default_rng(0)
    root = folder / "cifar10-jpeg"
    for split, n in (("train", train), ("test", test)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:04d}.jpg", quality=75)
    archive = folder / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="cifar10-jpeg")
    return archive


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One whole CPU dry run through the shell entry point; its folders and exit code."""
    base = tmp_path_factory.mktemp("device-check")
    archive = fake_archive(base / "src")
    out, work = base / "out", base / "work"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    # Generous budgets: the stages must end on their own here; deadlines are tested below.
    argv = ["bash", str(REPO / "benchmarks" / "device_check.sh"), str(out), "--cpu-dry-run"]
    argv += ["--archive", str(archive), "--work", str(work), "--time-factor", "4"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    record = json.loads((out / "device_check.json").read_text())
    return {"out": out, "work": work, "done": done, "record": record}


def _stage(record: dict, name: str) -> dict:
    return next(s for s in record["stages"] if s["name"] == name)


@pytest.mark.slow
def test_dry_run_records_every_stage_in_order(dry_run):
    done, record = dry_run["done"], dry_run["record"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert record["mode"] == "cpu-dry-run"
    assert [s["name"] for s in record["stages"]] == list(dc.STAGES)
    # OUT holds four files only, so a runner that returns a few files returns all of it.
    names = sorted(p.name for p in dry_run["out"].iterdir())
    assert names == ["device_check.json", "device_check.log", "device_check.tar.gz", "summary.md"]
    for stage in record["stages"]:
        assert stage["seconds"] <= stage["budget_s"] + 10, stage


@pytest.mark.slow
def test_dry_run_unpacks_a_slice_and_marks_cuda_work_not_run(dry_run):
    record = dry_run["record"]
    data = _stage(record, "data")
    assert data["status"] == "ok"
    splits = {r["split"]: r for r in data["results"]["splits"]}
    # 4 of the 5 training and 2 of the 3 test images of each of the 10 classes.
    assert (splits["train"]["images"], splits["test"]["images"]) == (40, 20)
    assert splits["train"]["classes"] == 10
    pytest_stage = _stage(record, "pytest")
    if not torch.cuda.is_available():
        assert pytest_stage["status"] == dc.NO_CUDA
        assert pytest_stage["results"]["passed"] == 0
        assert pytest_stage["results"]["skipped"] >= 1
    ladder = _stage(record, "ladder")
    assert ladder["status"] == "ok"
    timed = {(r["model"], r["config"]) for r in ladder["results"]["rows"]}
    assert {("in_resnet20", c) for c in ("eager", "cl", "cl+bf16")} <= timed
    assert all(r["images_per_s"] > 0 for r in ladder["results"]["rows"])
    not_run = {c["config"]: c["why"] for c in ladder["results"]["not_run"]}
    assert not_run["cl+bf16+compile+graphs"] == dc.NO_CUDA
    assert all(why.startswith("not run") for why in not_run.values())


@pytest.mark.slow
def test_dry_run_times_both_attacks_and_the_process_counts(dry_run):
    record = dry_run["record"]
    attacks = _stage(record, "attacks")
    assert attacks["status"] == "ok"
    rows = {r["attack"]: r for r in attacks["results"]["rows"]}
    assert set(rows) == {"pgd", "apgd_ce"}
    assert (rows["pgd"]["steps"], rows["apgd_ce"]["steps"]) == (2, 2)
    assert rows["pgd"]["n"] == 4 and "cifar10-jpeg" in attacks["results"]["data"]
    scaling = _stage(record, "scaling")
    assert scaling["status"] == "ok"
    assert [r["processes"] for r in scaling["results"]["rows"]] == [1, 2]
    for row in scaling["results"]["rows"]:
        assert row["images_per_s"] > 0 and row["window_s"] > 0
    assert scaling["results"]["rows"][0]["vs_one"] == pytest.approx(1.0)


@pytest.mark.slow
def test_dry_run_study_trains_evaluates_and_reports(dry_run):
    study = _stage(dry_run["record"], "study")
    assert study["status"] == "ok", study["detail"]
    plan = study["results"]["plan"]
    assert plan["epochs"] == 1 and 1 <= plan["eval_images"] <= plan["n_test"] == 20
    runs = study["results"]["runs"]
    assert sorted(r["model"] for r in runs) == ["in_resnet20", "lambda_in_resnet20", "resnet20"]
    for run in runs:
        assert run["status"] == "finished" and run["epochs"] == 1
        assert run["eval_images"] == plan["eval_images"]
        for key in ("pgd_pixel", "pgd_normalized", "apgd_ce_pixel", "apgd_ce_normalized"):
            assert 0.0 <= run[key] <= run["clean"]
    work = dry_run["work"]
    assert (work / "study" / "report.md").read_text().startswith("# odenets report: gpu-short")
    with tarfile.open(dry_run["out"] / "device_check.tar.gz") as tar:
        members = tar.getnames()
    assert "device_check/study/report.md" in members
    assert "device_check/stages/study-preset.toml" in members
    assert not [m for m in members if m.endswith(".safetensors") or "/data/" in m]
    summary = (dry_run["out"] / "summary.md").read_text()
    assert "CPU dry run" in summary and "## 110-layer short study" in summary
    for name in dc.STAGES:
        assert f"| {name} |" in summary


def test_a_failed_stage_is_recorded_and_the_next_one_runs(tmp_path):
    out = tmp_path / "out"
    argv = [str(out), "--cpu-dry-run", "--archive", str(tmp_path / "missing.tar.gz")]
    code = dc.main([*argv, "--work", str(tmp_path / "work"), "--stages", "data,study"])
    assert code == 1
    record = json.loads((out / "device_check.json").read_text())
    stages = {s["name"]: s for s in record["stages"]}
    assert stages["data"]["status"] == "failed"
    assert "make device-data" in stages["data"]["detail"]
    assert stages["study"]["status"].startswith("not run (no data")
    assert stages["ladder"]["status"] == "not run (not asked for)"


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_command_past_its_deadline_is_stopped_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pid_file}; wait"
    started = time.monotonic()
    command = dc.run_command(
        ["bash", "-c", script], tmp_path / "log.txt", deadline=started + 1.5, env=dict(os.environ)
    )
    assert command.timed_out and command.rc is None
    assert time.monotonic() - started < 15
    pid = int(pid_file.read_text())
    for _ in range(100):  # the kill is delivered asynchronously
        if not _alive(pid):
            break
        time.sleep(0.05)
    assert not _alive(pid)
    assert "stopped at its deadline" in (tmp_path / "log.txt").read_text()


def test_commands_run_together_each_with_its_own_outcome(tmp_path):
    commands = [
        dc.Command(["bash", "-c", "exit 0"], tmp_path / "a.log"),
        dc.Command(["bash", "-c", "exit 3"], tmp_path / "b.log"),
        dc.Command(["bash", "-c", "sleep 60"], tmp_path / "c.log"),
    ]
    done = dc.run_together(commands, deadline=time.monotonic() + 1.5, env=dict(os.environ))
    assert [(c.rc, c.timed_out) for c in done] == [(0, False), (3, False), (None, True)]
    assert done[0].seconds < done[2].seconds


SIZES = dc.GPU


def _rates(train=5000.0, pgd=1000.0, apgd=200.0, **more) -> dict:
    return {"rates": {"train": train, "pgd": pgd, "apgd_ce": apgd, **more}, "sources": {}}


def test_plan_fits_whole_epochs_and_the_whole_test_set_when_it_can():
    plan = dc.plan_study(seconds=1300, n_train=50_000, n_test=10_000, rates=_rates(), sizes=SIZES)
    # Evaluation: 1.3 * 2 * (1/1000 + 1/200) = 0.0156 s an image and model, 3 models.
    per_image = 1.3 * 2 * (1 / 1000 + 1 / 200)
    assert plan["eval_s_per_image_per_model"] == pytest.approx(per_image)
    budget = 0.3 * (1300 - SIZES.report_s) - SIZES.eval_startup_s
    assert plan["eval_images"] == int(budget / (3 * per_image)) // 500 * 500 == 7500
    # Training: what is left, in epochs of 50,000 / 5000 * 1.25 = 12.5 s.
    train = 1300 - SIZES.report_s - (SIZES.eval_startup_s + 3 * 7500 * per_image)
    assert plan["epochs"] == int((train - SIZES.train_startup_s) // 12.5)
    assert not plan["compile"]
    big = dc.plan_study(seconds=9000, n_train=50_000, n_test=10_000, rates=_rates(), sizes=SIZES)
    assert big["eval_images"] == 10_000


def test_plan_takes_at_least_one_epoch_and_one_step_of_images():
    plan = dc.plan_study(seconds=10, n_train=50_000, n_test=10_000, rates=_rates(), sizes=SIZES)
    assert (plan["epochs"], plan["eval_images"]) == (1, 500)


@pytest.mark.parametrize(("speedup", "warmup", "on"), [(2.0, 30.0, True), (1.1, 120.0, False)])
def test_plan_compiles_only_when_the_speedup_wins_back_the_warmup(speedup, warmup, on):
    rates = _rates(compile_speedup=speedup, compile_warmup_s=warmup)
    plan = dc.plan_study(seconds=600, n_train=50_000, n_test=10_000, rates=rates, sizes=SIZES)
    off = dc.plan_study(seconds=600, n_train=50_000, n_test=10_000, rates=_rates(), sizes=SIZES)
    assert plan["compile"] is on
    assert plan["epochs"] > off["epochs"] if on else plan["epochs"] == off["epochs"]


def test_measured_rates_share_out_the_device_and_fall_back_to_assumed_ones():
    stages = [
        {"name": "scaling", "results": {"rows": [
            {"processes": 2, "images_per_s": 8000.0},
            {"processes": 4, "images_per_s": 12000.0},
        ]}},
        {"name": "attacks", "results": {"rows": [
            {"attack": "pgd", "images_per_s": 700.0, "model": "in_resnet110"},
        ]}},
    ]  # fmt: skip
    got = dc.measured_rates(stages, SIZES)
    # 3 processes: between 8,000 and 12,000 images/s in total, a third each.
    assert got["rates"]["train"] == pytest.approx(10_000 / 3)
    assert got["rates"]["pgd"] == 700.0
    assert got["rates"]["apgd_ce"] == SIZES.assumed_rates["apgd_ce"]
    assert got["sources"]["apgd_ce"].startswith("assumed")
    assert "compile_speedup" not in got["rates"]


def test_apgd_images_are_whole_batches_within_the_time_left():
    # 100 s less 15 s of start-up, 20% spare: 70.8 s at 0.01 s an image = 7083 images,
    # one batch of them the warm-up: 4583 timed, so one whole batch of 2500.
    assert dc.apgd_images(100, 0.01, 1, SIZES) == 2500
    assert dc.apgd_images(10_000, 0.01, 1, SIZES) == 10_000
    assert dc.apgd_images(1, 0.01, 1, SIZES) == 2500


def test_scaling_row_counts_every_process_over_the_common_window():
    def report(start, end, rate):
        return {
            "settings": {"batch": 128, "steps": 20, "reps": 3},
            "timed_window_unix_s": [start, end],
            "results": [{"images_per_s": rate}],
        }

    row = dc.scaling_row(2, [report(100.0, 110.0, 800.0), report(101.0, 112.0, 700.0)])
    assert row["images_per_s"] == pytest.approx(2 * 128 * 60 / 12.0)
    assert row["sum_of_rates"] == 1500.0 and row["start_spread_s"] == 1.0


def test_pytest_outcomes_are_read_from_the_verbose_log(tmp_path):
    log = tmp_path / "pytest.log"
    log.write_text(
        "tests/test_a.py::test_one PASSED                 [ 33%]\n"
        "tests/test_a.py::test_two[cuda] FAILED           [ 66%]\n"
        "tests/test_b.py::test_three SKIPPED (needs a CUDA device) [100%]\n"
    )
    counts = dc.verbose_log_counts(log)
    assert {k: counts[k] for k in ("passed", "failed", "errors", "skipped")} == {
        "passed": 1,
        "failed": 1,
        "errors": 0,
        "skipped": 1,
    }
    assert counts["failures_list"] == ["tests/test_a.py::test_two[cuda]"]
