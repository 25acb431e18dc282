"""Every GPU figure in one command of at most 9 minutes, and the same stages at toy size on a CPU.

    bash benchmarks/device_check.sh OUT                 # one CUDA device (an H100 or H200)
    bash benchmarks/device_check.sh OUT --cpu-dry-run   # the same stages, toy size, on a CPU

The data travels as `.device/cifar10-jpeg.tar.gz` (`make device-data`). Stages, in order,
each with its own time budget and a hard deadline: a stage that runs over is stopped with
every process it started and recorded as timed out, a stage that fails is recorded, and the
next stage runs either way.

  data     unpack the archive into the working folder and decode it into the image cache,
           one thread per core (data_cache.py)
  pytest   pytest -m gpu: the CUDA-only tests
  ladder   train_throughput.py for In-ResNet-110, batch 128: eager, cl, cl+bf16 timed
           together in one process, each compiled configuration in a process of its own
           (a failure costs only that row); ResNet-110 for comparison if time is left
  attacks  attack_throughput.py: PGD-20 and APGD-CE images/s over 10,000 test images,
           float32, L-inf 8/255
  scaling  N = 1, 2, 4, 8 training processes at once on the device (train_throughput.py
           --barrier): their total images/s
  study    ResNet-110, In-ResNet-110 and lambda-In-ResNet-110 trained together on all of
           cifar10-jpeg (odenets reproduce --jobs-per-device 3 --train-only), the epochs
           computed from the measured throughput and the time left; each evaluated
           (clean, noise, PGD-20, APGD-CE; pixel and normalized threat models) on as many
           test images as the time left allows (odenets evaluate); then odenets report.
           The plan and its inputs are recorded.

Results, written again after every stage (a check cut short keeps what it measured):
OUT/summary.md (tables for docs/benchmarks.md), OUT/device_check.json (every stage: status,
seconds, budget, figures), OUT/device_check.tar.gz (every log, each script's JSON, the
study's folder without weights: report.md for docs/results/) and OUT/device_check.log.
OUT holds only these four files, so a remote runner that returns a few files returns all
of it. The working folder (--work; default a fresh temporary folder) keeps everything,
data and weights included.

--cpu-dry-run runs every stage at toy size on the CPU in about a minute (a few images per
class from the archive, 20-layer networks, one or two steps). What needs CUDA is recorded as
"not run (no CUDA)", never as passed; the figures of a dry run say nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
STAGES = ("data", "pytest", "ladder", "attacks", "scaling", "study")
STUDY_ROWS = ("resnet110", "in_resnet110", "lambda_in_resnet110")  # In-ResNet Table 1 rows
NO_CUDA = "not run (no CUDA)"
NO_TIME = "not run (no time left)"


@dataclass(frozen=True)
class Sizes:
    """Everything the GPU check and the CPU dry run differ in. Times are wall-clock seconds."""

    total_s: float  # the whole check, from start to the last file written
    # stage -> (own budget, the least kept for it while earlier stages run); the study's
    # own budget is whatever is left
    budgets: dict[str, tuple[float, float]]
    per_class: tuple[int, int] | None  # (train, test) images per class unpacked; None: all
    batch: int  # training batch of the benchmarks (the paper's 128)
    ladder_model: str
    eager_configs: tuple[str, ...]  # timed together (interleaved) in one process
    compiled_configs: tuple[str, ...]  # one process each
    compare_model: str  # timed after the ladder when compare_min_s are left in the stage
    compare_configs: tuple[str, ...]
    compare_min_s: float
    ladder_steps: tuple[int, int, int]  # (warm-up steps, steps per repetition, repetitions)
    peak: bool  # measure the matmul peak (a few seconds per process on a CPU)
    not_run: dict[str, str]  # configuration -> why this mode does not time it
    attack_model: str
    attack_images: int
    attack_batch: int
    attack_steps: tuple[int, int]  # (PGD, APGD-CE) iterations
    attack_reps: tuple[int, int]  # (PGD, APGD-CE) timed repetitions
    attack_startup_s: float  # start of attack_throughput.py: imports, data, model
    scaling_jobs: tuple[int, ...]  # processes at once on the device
    scaling_config: str
    scaling_steps: tuple[int, int, int]  # (warm-up, steps per repetition, repetitions)
    study_models: tuple[str, str, str]  # the networks of the STUDY_ROWS in this mode
    study_batch: int  # 0: the recipe's (128)
    study_max_epochs: int
    eval_steps: tuple[int, int]  # (PGD, APGD-CE) iterations of the study's evaluation
    eval_images_step: int  # the evaluated test images are a multiple of this (or all)
    # Cost model of the study's plan (see plan_study); assumed rates stand in for a stage
    # that gave no figure.
    train_startup_s: float  # odenets reproduce, then its job processes: imports, data, model
    eval_startup_s: float  # odenets evaluate: imports, data, the run's weights
    report_s: float  # odenets report, figures included
    assumed_rates: dict[str, float] = field(default_factory=dict)  # images/s


GPU = Sizes(
    total_s=525,  # 9 minutes less the start of the shell, Python and the final copy
    budgets={
        "data": (30, 15),  # unpacking 60,000 files, decoding them on every core
        "pytest": (80, 30),  # two compilations of In-ResNet-20 and a short compiled fit
        "ladder": (160, 60),  # 6 configurations x 175 steps, 3 compilations of 110 layers
        "attacks": (75, 30),  # PGD-20 twice over 10,000 images, APGD-CE once over what fits
        "scaling": (55, 25),  # 1 + 2 + 4 + 8 processes, each a start-up and 60 steps
        "study": (math.inf, 130),  # what is left: at least 525 - 5 - 390 = 130 s
    },
    per_class=None,
    batch=128,
    ladder_model="in_resnet110",
    eager_configs=("eager", "cl", "cl+bf16"),
    compiled_configs=(
        "cl+bf16+compile",
        "cl+bf16+compile+graphs",
        "cl+bf16+compile+graphs+loader",
    ),
    compare_model="resnet110",
    compare_configs=("cl+bf16", "cl+bf16+compile"),
    compare_min_s=45,
    ladder_steps=(25, 50, 3),  # 175 steps a configuration
    peak=True,
    not_run={},
    attack_model="in_resnet110",
    attack_images=10_000,
    attack_batch=2500,
    attack_steps=(20, 100),
    attack_reps=(2, 1),
    attack_startup_s=15,
    scaling_jobs=(1, 2, 4, 8),
    scaling_config="cl+bf16",  # eager: eight compilations at once would take the stage
    scaling_steps=(10, 20, 3),
    study_models=("resnet110", "in_resnet110", "lambda_in_resnet110"),
    study_batch=0,
    study_max_epochs=160,
    eval_steps=(20, 100),
    eval_images_step=500,
    train_startup_s=40,
    eval_startup_s=25,
    report_s=30,
    assumed_rates={"train": 2000.0, "pgd": 200.0, "apgd_ce": 40.0},
)

DRY_RUN = Sizes(
    total_s=120,  # most of it is starting Python processes: 20 of them
    budgets={
        "data": (10, 3),
        "pytest": (15, 8),
        "ladder": (20, 8),
        "attacks": (15, 5),
        "scaling": (25, 8),
        "study": (math.inf, 50),  # 3 trainings, then 3 evaluations at once, the report
    },
    per_class=(4, 2),
    batch=8,
    ladder_model="in_resnet20",
    eager_configs=("eager", "cl", "cl+bf16"),
    compiled_configs=(),
    compare_model="resnet20",
    compare_configs=(),  # one Python start less
    compare_min_s=6,
    ladder_steps=(1, 1, 1),
    peak=False,
    not_run={
        "cl+bf16+compile": "not run (dry run: compiling takes about a minute on a CPU)",
        "cl+bf16+compile+graphs": NO_CUDA,
        "cl+bf16+compile+graphs+loader": NO_CUDA,
    },
    attack_model="in_resnet20",
    attack_images=4,
    attack_batch=4,
    attack_steps=(2, 2),
    attack_reps=(1, 1),
    attack_startup_s=4,
    scaling_jobs=(1, 2),
    scaling_config="cl",
    scaling_steps=(1, 1, 1),
    study_models=("resnet20", "in_resnet20", "lambda_in_resnet20"),
    study_batch=16,  # 40 training images: two steps an epoch
    study_max_epochs=1,
    eval_steps=(2, 2),
    eval_images_step=10,  # 10 of the 20 test images, through --limit
    train_startup_s=25,  # two Python starts, the second three at once on two cores
    eval_startup_s=10,
    report_s=15,
    assumed_rates={"train": 50.0, "pgd": 20.0, "apgd_ce": 5.0},
)


# --- processes with deadlines --------------------------------------------------------------


@dataclass
class Command:
    """How one process ended: exit code (None if stopped), wall seconds, stopped or not."""

    argv: list[str]
    log: Path
    rc: int | None = None
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def describe(self) -> str:
        if self.timed_out:
            return f"stopped at its deadline after {self.seconds:.0f} s"
        return f"exit {self.rc} after {self.seconds:.1f} s"


def _stop_groups(procs: Sequence[subprocess.Popen], grace: float = 5.0) -> None:
    """End the process groups of `procs` (each its own session): TERM to all, `grace`
    seconds to exit (a run writes its summary), then KILL what is left."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    until = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, until - time.monotonic()))
        _kill_stragglers(proc)


def _kill_stragglers(proc: subprocess.Popen) -> None:
    """KILL whatever is left in the group of `proc` (workers its children left behind)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_together(
    commands: Sequence[Command],
    *,
    deadline: float,
    env: dict[str, str] | Sequence[dict[str, str]],
    cwd: Path = REPO,
) -> list[Command]:
    """Run the commands at once, each in its own session with output to its log, until
    they end or `deadline` (time.monotonic()) passes; then each left is stopped with its
    whole process group. Returns the commands with rc, seconds and timed_out filled in."""
    envs = [env] * len(commands) if isinstance(env, dict) else list(env)
    procs = []
    start = time.monotonic()
    for command, cmd_env in zip(commands, envs, strict=True):
        command.log.parent.mkdir(parents=True, exist_ok=True)
        with command.log.open("ab") as log:
            log.write(f"$ {subprocess.list2cmdline(command.argv)}\n".encode())
            log.flush()
            procs.append(
                subprocess.Popen(
                    command.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=cmd_env,
                    cwd=cwd,
                    start_new_session=True,  # its own process group: stopped as a whole
                )
            )
    running = dict(zip(range(len(procs)), procs, strict=True))
    while running:
        for i, proc in list(running.items()):
            if proc.poll() is not None:
                commands[i].rc = proc.returncode
                commands[i].seconds = time.monotonic() - start
                _kill_stragglers(proc)
                del running[i]
        if running and time.monotonic() >= deadline:
            for i in running:
                commands[i].timed_out = True
                commands[i].seconds = time.monotonic() - start
            _stop_groups(list(running.values()))
            running = {}
        time.sleep(0.05 if running else 0)
    for command in commands:
        with command.log.open("a") as log:
            log.write(f"# {command.describe()}\n")
    return list(commands)


def run_command(argv: Sequence[str], log: Path, *, deadline: float, env: dict[str, str]) -> Command:
    """Run one command until it ends or `deadline` passes (see `run_together`)."""
    return run_together([Command(list(argv), log)], deadline=deadline, env=env)[0]


# --- the check ------------------------------------------------------------------------------


@dataclass
class StageResult:
    status: str  # "ok", "partial", "failed", "timed out" or "not run (why)"
    detail: str = ""
    results: dict = field(default_factory=dict)


def _slug(config: str) -> str:
    return config.replace("+", "-")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_text(path: Path, text: str) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class Check:
    """One run of the check: its folders, sizes, clock, and the record of every stage."""

    def __init__(self, args: argparse.Namespace):
        self.dry_run = args.cpu_dry_run
        base = DRY_RUN if self.dry_run else GPU
        factor = args.time_factor
        self.sizes = dataclasses.replace(
            base,
            total_s=base.total_s * factor,
            budgets={k: (own * factor, least * factor) for k, (own, least) in base.budgets.items()},
        )
        self.out = Path(args.out).resolve()
        self.work = Path(args.work or tempfile.mkdtemp(prefix="odenets-device-check-")).resolve()
        self.archive = Path(args.archive).resolve()
        self.python = args.python
        self.wanted = set(args.stages)
        self.device = "cpu" if self.dry_run else "cuda"
        self.start = time.monotonic()
        self.end = self.start + self.sizes.total_s
        self.finish_reserve = 5.0 * factor  # for the last summary, JSON and archive
        self.data_root: Path | None = None
        self.stages: list[dict] = []
        self.record = {
            "mode": "cpu-dry-run" if self.dry_run else "gpu",
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "budget_s": self.sizes.total_s,
            "work": str(self.work),
            "machine": machine_summary(),
            "sizes": _jsonable(dataclasses.asdict(self.sizes)),
            "stages": self.stages,
        }
        for folder in (self.out, self.work / "logs", self.work / "stages"):
            folder.mkdir(parents=True, exist_ok=True)
        self.env = self._child_env()

    # --- time ---

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def stage_deadline(self, name: str) -> float:
        """The stage's own budget from now, cut so that each later stage keeps its least."""
        own, _ = self.sizes.budgets[name]
        later = STAGES[STAGES.index(name) + 1 :]
        kept = sum(self.sizes.budgets[s][1] for s in later if s in self.wanted)
        return min(time.monotonic() + own, self.end - self.finish_reserve - kept)

    # --- output ---

    def say(self, message: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {message}"
        print(line, flush=True)
        with (self.out / "device_check.log").open("a") as log:
            log.write(line + "\n")

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def stage_file(self, name: str) -> Path:
        return self.work / "stages" / name

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        src = str(REPO / "src")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env["MPLBACKEND"] = "Agg"  # figures of the report, no display
        env["ODENETS_CACHE"] = str(self.work / "cache")  # the decoded data, shared by all
        env.pop("ODENETS_NO_CACHE", None)
        if self.dry_run:
            env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def publish(self) -> None:
        """device_check.json, summary.md and the archive of everything else, in OUT."""
        self.record["elapsed_s"] = round(self.elapsed(), 1)
        text = json.dumps(_jsonable(self.record), indent=2) + "\n"
        _write_text(self.work / "device_check.json", text)
        _write_text(self.out / "device_check.json", text)
        try:
            summary = summary_markdown(self.record)
        except Exception as err:  # the figures are in the JSON; the check goes on
            with self.log("summary-error").open("a") as log:
                traceback.print_exc(file=log)
            summary = f"# Device check\n\nThe summary could not be written ({err!r}); see "
            summary += "device_check.json and logs/summary-error.log.\n"
        _write_text(self.work / "summary.md", summary)
        _write_text(self.out / "summary.md", summary)
        pack_results(self.work, self.out / "device_check.tar.gz")

    # --- stages ---

    def run(self) -> int:
        self.say(
            f"device check ({self.record['mode']}), budget {self.sizes.total_s:.0f} s, "
            f"work folder {self.work}"
        )
        for name in STAGES:
            self.run_stage(name, getattr(self, f"stage_{name}"))
        self.say(f"done in {self.elapsed():.0f} s; results in {self.out}")
        print()
        print(summary_markdown(self.record, brief=True))
        return 0 if all(not s["status"].startswith(("failed", "timed")) for s in self.stages) else 1

    def run_stage(self, name: str, fn: Callable[[float], StageResult]) -> dict:
        """Run one stage until its deadline and record it, whatever happens inside."""
        deadline = self.stage_deadline(name)
        budget = deadline - time.monotonic()
        started = time.monotonic()
        if name not in self.wanted:
            result = StageResult("not run (not asked for)")
        elif budget < 1:
            result = StageResult(NO_TIME)
        else:
            self.say(f"{name}: started, {budget:.0f} s")
            try:
                result = fn(deadline)
            except Exception as err:  # a broken stage must not stop the later ones
                with self.log(f"{name}-error").open("a") as log:
                    traceback.print_exc(file=log)
                result = StageResult("failed", f"{type(err).__name__}: {err}")
        entry = {
            "name": name,
            "status": result.status,
            "seconds": round(time.monotonic() - started, 1),
            "budget_s": round(max(budget, 0.0), 1),
            "detail": result.detail,
            "results": result.results,
        }
        self.stages.append(entry)
        self.say(f"{name}: {result.status} in {entry['seconds']:.0f} s. {result.detail}")
        try:
            self.publish()
        except OSError as err:  # a full disk must not stop the later stages either
            self.say(f"could not write the results: {err}")
        return entry

    def stage_data(self, deadline: float) -> StageResult:
        """Unpack the archive (a slice of it in a dry run), decode it into the image cache."""
        if not self.archive.is_file():
            return StageResult(
                "failed", f"no archive {self.archive}: run `make device-data` (or give --archive)"
            )
        dest = self.work / "data"
        dest.mkdir(parents=True, exist_ok=True)
        argv = ["tar", "-xzf", str(self.archive), "-C", str(dest)]
        if self.sizes.per_class is not None:
            members = archive_slice(self.archive, *self.sizes.per_class)
            listing = self.stage_file("data-members.txt")
            listing.write_text("".join(m + "\n" for m in members))
            argv += ["--verbatim-files-from", "-T", str(listing)]
        unpack = run_command(argv, self.log("data-unpack"), deadline=deadline, env=self.env)
        if not unpack.ok:
            return StageResult("failed", f"unpacking: {unpack.describe()}")
        root = find_image_folder(dest)
        if root is None:
            return StageResult("failed", f"no folder with train/ and test/ in {dest}")
        out = self.stage_file("data.json")
        decode = run_command(
            [self.python, str(BENCH / "data_cache.py"), str(root), "--user-cache"]
            + ["--repeats", "1", "--workers", str(os.cpu_count() or 1), "--json", str(out)],
            self.log("data-decode"),
            deadline=deadline,
            env=self.env,
        )
        report = _read_json(out) if decode.ok else None
        if report is None:
            return StageResult(_failed(decode), f"decoding: {decode.describe()}")
        self.data_root = root
        splits = {r["split"]: r for r in report["results"]}
        results = {
            "root": str(root),
            "unpack_s": round(unpack.seconds, 2),
            "splits": report["results"],
            "workers": report["settings"]["workers"],
        }
        detail = (
            f"unpacked in {unpack.seconds:.1f} s; decoded {splits['train']['images']} train "
            f"images in {splits['train']['first_load_s']:.1f} s and "
            f"{splits['test']['images']} test images in {splits['test']['first_load_s']:.1f} s"
        )
        return StageResult("ok", detail, results)

    def stage_pytest(self, deadline: float) -> StageResult:
        """pytest -m gpu over the test files that use the marker (collecting only those)."""
        xml = self.stage_file("pytest-gpu.xml")
        files = [str(p.relative_to(REPO)) for p in gpu_test_files(REPO / "tests")]
        command = run_command(
            [self.python, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider"]
            + ["-p", "no:randomly", f"--junitxml={xml}", *(files or ["tests"])],
            self.log("pytest-gpu"),
            deadline=deadline,
            env=self.env,
        )
        # The JUnit file is written at the end; a run stopped at its deadline leaves the
        # verbose log, which names each test's outcome as it finishes.
        counts = junit_counts(xml) or verbose_log_counts(self.log("pytest-gpu"))
        if counts is None:
            return StageResult(_failed(command), f"pytest -m gpu: {command.describe()}")
        detail = ", ".join(f"{n} {k}" for k, n in counts.items() if k != "failures_list")
        if counts["failures_list"]:
            detail += ": " + ", ".join(counts["failures_list"])
        if command.timed_out:
            return StageResult("timed out", f"{detail} before the deadline", counts)
        if counts["failed"] or counts["errors"]:
            return StageResult("failed", detail, counts)
        if counts["passed"] == 0:
            return StageResult(NO_CUDA if self.dry_run else "failed", detail, counts)
        return StageResult("ok", detail, counts)

    def throughput(
        self, name: str, model: str, configs: Sequence[str], deadline: float
    ) -> tuple[list[dict], Command]:
        """train_throughput.py for `model` in `configs` (one process): its rows and command."""
        out = self.stage_file(f"{name}.json")
        warmup, steps, reps = self.sizes.ladder_steps
        argv = [self.python, str(BENCH / "train_throughput.py"), "--model", model]
        argv += ["--batch", str(self.sizes.batch), "--device", self.device, "--configs", *configs]
        argv += ["--warmup", str(warmup), "--steps", str(steps), "--reps", str(reps)]
        argv += ["--json", str(out), *([] if self.sizes.peak else ["--no-peak"])]
        command = run_command(argv, self.log(name), deadline=deadline, env=self.env)
        report = _read_json(out) if command.ok else None
        if report is not None:
            self.record["machine"].setdefault("benchmark", report["machine"])
        return (report["results"] if report else []), command

    def time_configs(self, model: str, eager, compiled, deadline: float) -> tuple[list, list]:
        """Rows of `model`: the eager configurations in one process, each compiled one in its
        own; and a {model, config, why} entry for each configuration that gave no row."""
        rows, missing = [], []
        groups = [("ladder-" + model, tuple(eager))] if eager else []
        groups += [(f"ladder-{model}-{_slug(c)}", (c,)) for c in compiled]
        for name, configs in groups:
            why = NO_TIME
            if deadline - time.monotonic() >= 1:
                got, command = self.throughput(name, model, configs, deadline)
                rows += got
                if got:
                    continue
                why = "timed out" if command.timed_out else f"failed ({command.describe()})"
                why += f"; see logs/{name}.log"
            missing += [{"model": model, "config": c, "why": why} for c in configs]
        return rows, missing

    def stage_ladder(self, deadline: float) -> StageResult:
        s = self.sizes
        rows, missing = self.time_configs(
            s.ladder_model, s.eager_configs, s.compiled_configs, deadline
        )
        if s.compare_configs and deadline - time.monotonic() >= s.compare_min_s:
            eager = [c for c in s.compare_configs if "compile" not in c]
            compiled = [c for c in s.compare_configs if "compile" in c]
            more, also = self.time_configs(s.compare_model, eager, compiled, deadline)
            rows, missing = rows + more, missing + also
        else:
            missing += [
                {"model": s.compare_model, "config": c, "why": NO_TIME} for c in s.compare_configs
            ]
        missing += [{"model": s.ladder_model, "config": c, "why": w} for c, w in s.not_run.items()]
        results = {"rows": rows, "not_run": missing}
        wanted = len(s.eager_configs) + len(s.compiled_configs)
        got = sum(1 for r in rows if r["model"] == s.ladder_model)
        status = "ok" if got == wanted else ("partial" if got else "failed")
        best = max(rows, key=lambda r: r["images_per_s"], default=None)
        detail = f"{got} of {wanted} configurations of {s.ladder_model} timed"
        if best:
            detail += (
                f"; fastest {best['model']} [{best['config']}] {best['images_per_s']:,.0f} img/s"
            )
        return StageResult(status, detail, results)

    def stage_attacks(self, deadline: float) -> StageResult:
        """PGD over all the attack images, then APGD-CE over as many as the time left allows
        (its images/s is what is measured; the count is recorded)."""
        s = self.sizes
        rows, failed, source, n = [], [], None, s.attack_images
        attacks = zip(("pgd", "apgd_ce"), s.attack_steps, s.attack_reps, strict=True)
        for attack, steps, reps in attacks:
            if rows:  # APGD after PGD: size it from PGD's seconds per image and step
                pgd = rows[0]
                per_image = pgd["seconds"] / pgd["n"] * (steps + 1) / (pgd["steps"] + 1)
                n = apgd_images(deadline - time.monotonic(), per_image, reps, s)
            out = self.stage_file(f"attacks-{attack}.json")
            argv = [self.python, str(BENCH / "attack_throughput.py"), "--model", s.attack_model]
            argv += ["--device", self.device, "--n", str(n), "--batch", str(s.attack_batch)]
            argv += ["--attacks", attack, "--reps", str(reps), "--json", str(out)]
            argv += ["--pgd-steps", str(steps), "--apgd-steps", str(steps)]
            if self.data_root is not None:
                argv += ["--data", str(self.data_root)]
            if deadline - time.monotonic() < 1:
                failed.append(f"{attack}: {NO_TIME}")
                continue
            command = run_command(
                argv, self.log(f"attacks-{attack}"), deadline=deadline, env=self.env
            )
            report = _read_json(out) if command.ok else None
            if report is None:
                failed.append(f"{attack}: {command.describe()}")
            else:
                rows += report["results"]
                source = report["settings"]["data_source"]
        status = "ok" if not failed else ("partial" if rows else "failed")
        detail = "; ".join(
            f"{r['attack']}-{r['steps']} {r['images_per_s']:,.0f} img/s over {r['n']} images "
            f"({r['seconds_per_10k']:.1f} s per 10,000)"
            for r in rows
        )
        detail = "; ".join(x for x in (detail, *failed) if x)
        results = {"rows": rows, "data": source, "not_run": failed}
        return StageResult(status, detail, results)

    def stage_scaling(self, deadline: float) -> StageResult:
        s = self.sizes
        rows, failed = [], []
        cores = os.cpu_count() or 1
        for jobs in s.scaling_jobs:
            if deadline - time.monotonic() < 1:
                failed.append(f"{jobs} processes: {NO_TIME}")
                continue
            folder = self.stage_file(f"scaling-{jobs}")
            commands, envs = [], []
            warmup, steps, reps = s.scaling_steps
            for i in range(jobs):
                argv = [self.python, str(BENCH / "train_throughput.py")]
                argv += ["--model", s.ladder_model, "--batch", str(s.batch)]
                argv += ["--device", self.device, "--configs", s.scaling_config]
                argv += ["--warmup", str(warmup), "--steps", str(steps), "--reps", str(reps)]
                argv += ["--no-peak", "--barrier", str(folder / "barrier")]
                argv += ["--barrier-count", str(jobs), "--json", str(folder / f"process{i}.json")]
                argv += ["--barrier-timeout", f"{max(deadline - time.monotonic(), 1):.0f}"]
                commands.append(Command(argv, self.log(f"scaling-{jobs}-{i}")))
                env = dict(self.env)
                # The cores shared out, as `odenets reproduce --jobs-per-device` does.
                env.setdefault("OMP_NUM_THREADS", str(max(1, cores // jobs)))
                envs.append(env)
            done = run_together(commands, deadline=deadline, env=envs)
            reports = [_read_json(folder / f"process{i}.json") for i in range(jobs)]
            if all(c.ok for c in done) and all(reports):
                rows.append(scaling_row(jobs, reports))
            else:
                bad = next(c for c, r in zip(done, reports, strict=True) if not (c.ok and r))
                failed.append(f"{jobs} processes: {bad.describe()}")
        single = next((r for r in rows if r["processes"] == 1), None)
        for row in rows:
            if single:
                row["vs_one"] = row["images_per_s"] / single["images_per_s"]
        status = "ok" if not failed else ("partial" if rows else "failed")
        detail = "; ".join(
            [f"{r['processes']}: {r['images_per_s']:,.0f} img/s" for r in rows] + failed
        )
        return StageResult(status, detail, {"config": s.scaling_config, "rows": rows})

    def stage_study(self, deadline: float) -> StageResult:
        if self.data_root is None:
            return StageResult("not run (no data: the data stage failed)")
        s = self.sizes
        study = self.work / "study"
        data = {r["split"]: r for r in self.stage_result("data")["splits"]}
        rates = measured_rates(self.stages, s)
        plan = plan_study(
            seconds=deadline - time.monotonic(),
            n_train=data["train"]["images"],
            n_test=data["test"]["images"],
            rates=rates,
            sizes=s,
        )
        results = {"plan": plan, "runs": []}
        preset = self.stage_file("study-preset.toml")
        preset.write_text(study_preset(plan, s))
        self.say(f"study: {plan['decision']}")

        # Training may use the time planned for evaluation only to finish its one epoch.
        train_deadline = max(
            deadline - plan["expected_eval_s"] - s.report_s,
            min(time.monotonic() + 1.3 * plan["expected_train_s"], deadline - s.report_s),
        )
        argv = [self.python, "-m", "odenets", "reproduce", str(preset), "--scale", "quick"]
        argv += ["--dataset", "folder", "--data-root", str(self.data_root), "--out", str(study)]
        argv += ["--jobs-per-device", str(len(s.study_models)), "--train-only"]
        train = run_command(argv, self.log("study-train"), deadline=train_deadline, env=self.env)
        results["train"] = {"seconds": round(train.seconds, 1), "result": train.describe()}
        runs = sorted(p.parent for p in (study / "runs").glob("*/config.json"))
        commands = [
            Command(evaluate_argv(self.python, run, plan, s), self.log(f"study-eval-{run.name}"))
            for run in runs
        ]
        evals = run_together(commands, deadline=deadline - s.report_s, env=self.env)
        results["evaluate"] = {c.log.stem: c.describe() for c in evals}
        report = None
        if any(c.ok for c in evals):
            report = run_command(
                [self.python, "-m", "odenets", "report", str(study)],
                self.log("study-report"),
                deadline=deadline,
                env=self.env,
            )
            results["report"] = report.describe()
        results["runs"] = [study_run_row(run) for run in runs]
        results["report_md"] = str(study / "report.md") if (study / "report.md").is_file() else None
        finished = [
            r for r in results["runs"] if r["status"] == "finished" and r.get("clean") is not None
        ]
        ok = train.ok and len(finished) == len(s.study_models) and report is not None and report.ok
        status = "ok" if ok else ("partial" if finished else _failed(train))
        detail = (
            f"{plan['epochs']} epochs, {plan['eval_images']} test images evaluated; training "
            f"{train.describe()}; {len(finished)} of {len(s.study_models)} runs trained and "
            f"evaluated; report {'written' if results['report_md'] else 'missing'}"
        )
        return StageResult(status, detail, results)

    def stage_result(self, name: str) -> dict:
        return next((s["results"] for s in self.stages if s["name"] == name), {})


def _failed(command: Command) -> str:
    return "timed out" if command.timed_out else "failed"


# --- pieces of the stages --------------------------------------------------------------------


def archive_slice(archive: Path, n_train: int, n_test: int) -> list[str]:
    """The first `n_train` (`n_test`) files of each class folder of train/ (test/), sorted by
    name: the members a dry run unpacks."""
    listing = subprocess.run(
        ["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    per_folder: dict[str, list[str]] = {}
    for member in listing:
        parts = member.split("/")
        if len(parts) >= 3 and parts[-3] in ("train", "test") and parts[-1]:
            per_folder.setdefault("/".join(parts[:-1]), []).append(member)
    keep = []
    for folder, members in sorted(per_folder.items()):
        n = n_train if folder.split("/")[-2] == "train" else n_test
        keep += sorted(members)[:n]
    return keep


def find_image_folder(dest: Path) -> Path | None:
    """`dest` or the folder inside it that holds train/ and test/."""
    for candidate in (dest, *sorted(p for p in dest.iterdir() if p.is_dir())):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    return None


def gpu_test_files(tests: Path) -> list[Path]:
    """The test files that mark tests with `gpu` (`@pytest.mark.gpu` or `pytestmark`)."""
    return sorted(p for p in tests.glob("test_*.py") if "mark.gpu" in p.read_text())


def junit_counts(path: Path) -> dict | None:
    """passed / failed / errors / skipped of a pytest JUnit XML file, and the failed tests."""
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    cases = list(root.iter("testcase"))
    failed = [c for c in cases if c.find("failure") is not None]
    errors = [c for c in cases if c.find("error") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    return {
        "passed": len(cases) - len(failed) - len(errors) - len(skipped),
        "failed": len(failed),
        "errors": len(errors),
        "skipped": len(skipped),
        "failures_list": [f"{c.get('classname')}::{c.get('name')}" for c in failed + errors],
    }


def apgd_images(seconds: float, per_image: float, reps: int, sizes: Sizes) -> int:
    """Images APGD-CE attacks in `seconds`: whole batches (at least one, at most all the
    attack images), counting the start-up and the untimed warm-up batch, with 20% to spare."""
    batch = sizes.attack_batch
    usable = (seconds - sizes.attack_startup_s) / 1.2 / per_image
    batches = int((usable - batch) / reps // batch)
    return max(batch, min(sizes.attack_images, batches * batch))


def verbose_log_counts(log: Path) -> dict | None:
    """The same counts from the lines `pytest -v` prints per test (PASSED, FAILED, ...)."""
    outcomes = {}
    for line in _lines(log):
        match = re.match(r"(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", line)
        if match:
            outcomes[match[1]] = match[2]
    if not outcomes:
        return None
    values = list(outcomes.values())
    bad = [name for name, outcome in outcomes.items() if outcome in ("FAILED", "ERROR")]
    return {
        "passed": values.count("PASSED") + values.count("XPASS"),
        "failed": values.count("FAILED"),
        "errors": values.count("ERROR"),
        "skipped": values.count("SKIPPED") + values.count("XFAIL"),
        "failures_list": bad,
    }


def scaling_row(jobs: int, reports: Sequence[dict]) -> dict:
    """Total images/s of `jobs` processes timed together: the images they all trained over
    the common window from the first start to the last end, and the sum of their rates."""
    images = 0.0
    for report in reports:
        settings = report["settings"]
        images += settings["batch"] * settings["steps"] * settings["reps"]
    starts = [r["timed_window_unix_s"][0] for r in reports]
    ends = [r["timed_window_unix_s"][1] for r in reports]
    rates = [r["results"][0]["images_per_s"] for r in reports]
    return {
        "processes": jobs,
        "images_per_s": images / (max(ends) - min(starts)),
        "sum_of_rates": sum(rates),
        "per_process": sum(rates) / jobs,
        "window_s": max(ends) - min(starts),
        "start_spread_s": max(starts) - min(starts),
    }


def measured_rates(stages: Sequence[dict], sizes: Sizes) -> dict:
    """The figures the study's plan needs, from the earlier stages where they gave them:
    images/s of one of the study's concurrent training processes, of the compiled
    configuration relative to eager with its warm-up, and of the two attacks."""
    results = {s["name"]: s["results"] for s in stages}
    rates, sources = {}, {}
    n = len(sizes.study_models)
    scaling = {
        r["processes"]: r["images_per_s"] for r in results.get("scaling", {}).get("rows", [])
    }
    ladder = {
        r["config"]: r
        for r in results.get("ladder", {}).get("rows", [])
        if r["model"] == sizes.ladder_model
    }
    total = _interpolate(scaling, n)
    if total is not None:
        rates["train"], sources["train"] = total / n, f"scaling stage, {n} processes"
    elif sizes.scaling_config in ladder:
        rates["train"] = ladder[sizes.scaling_config]["images_per_s"] / n
        sources["train"] = f"ladder [{sizes.scaling_config}] shared by {n} processes"
    compiled = ladder.get(sizes.scaling_config + "+compile")
    if compiled and sizes.scaling_config in ladder:
        rates["compile_speedup"] = (
            compiled["images_per_s"] / ladder[sizes.scaling_config]["images_per_s"]
        )
        rates["compile_warmup_s"] = compiled["warmup_s"]
        sources["compile_speedup"] = f"ladder [{compiled['config']}] / [{sizes.scaling_config}]"
    for row in results.get("attacks", {}).get("rows", []):
        rates[row["attack"]] = row["images_per_s"]
        sources[row["attack"]] = f"attacks stage, {row['model']}"
    for key, value in sizes.assumed_rates.items():
        if key not in rates:
            rates[key], sources[key] = value, "assumed (no figure from the earlier stages)"
    return {"rates": rates, "sources": sources}


def _interpolate(points: dict[int, float], x: int) -> float | None:
    """Linear interpolation of measured points at x; beyond the last, the last (flat)."""
    if not points:
        return None
    if x in points:
        return points[x]
    below = [k for k in points if k < x]
    above = [k for k in points if k > x]
    if below and above:
        lo, hi = max(below), min(above)
        return points[lo] + (points[hi] - points[lo]) * (x - lo) / (hi - lo)
    return points[max(below)] if below else None


# The study's cost model: an epoch costs its training images at the measured rate of one of
# the concurrent processes, times TRAIN_OVERHEAD (the test pass after each epoch, the loader,
# checkpoints); an evaluated image costs one PGD and one APGD-CE attack per threat model at
# the attack stage's rates, times EVAL_OVERHEAD (clean and 20 noise passes, the sanity
# checks' small attack), and the models' evaluations share the device.
TRAIN_OVERHEAD = 1.25
EVAL_OVERHEAD = 1.3
EVAL_SHARE = 0.3  # at most this share of the study's time goes to evaluation
THREAT_MODELS = ("pixel", "normalized")


def plan_study(*, seconds: float, n_train: int, n_test: int, rates: dict, sizes: Sizes) -> dict:
    """Epochs, evaluated test images and torch.compile for the study, sized to `seconds`.

    Evaluation gets at most EVAL_SHARE of the time (the whole test set if it fits, else the
    largest multiple of `sizes.eval_images_step`); training the rest, in whole epochs
    (at least 1, at most `sizes.study_max_epochs`); torch.compile is on only where its
    measured speed-up wins back its measured warm-up within the schedule.
    """
    r = rates["rates"]
    n_models = len(sizes.study_models)
    per_image = EVAL_OVERHEAD * len(THREAT_MODELS) * (1 / r["pgd"] + 1 / r["apgd_ce"])
    usable = max(seconds - sizes.report_s, 0.0)
    eval_budget = EVAL_SHARE * usable - sizes.eval_startup_s
    fit = int(eval_budget / (n_models * per_image)) if eval_budget > 0 else 0
    step = sizes.eval_images_step
    eval_images = min(n_test, max(step, fit // step * step))
    expected_eval = sizes.eval_startup_s + n_models * eval_images * per_image
    train_budget = usable - expected_eval

    def epochs_with(speedup: float, warmup: float) -> tuple[int, float]:
        epoch = n_train / (r["train"] * speedup) * TRAIN_OVERHEAD
        fit = int((train_budget - sizes.train_startup_s - warmup) // epoch)
        return max(1, min(sizes.study_max_epochs, fit)), epoch

    epochs, epoch_s = epochs_with(1.0, 0.0)
    compile_on, why = False, "no compiled figure from the ladder"
    if "compile_speedup" in r:
        # Training and the per-epoch test pass each compile once; three processes compile at
        # the same time, on a third of the cores each.
        warmup = 2 * 1.5 * r["compile_warmup_s"]
        epochs_c, epoch_c = epochs_with(r["compile_speedup"], warmup)
        compile_on = epochs_c > epochs
        why = (
            f"compiled: {epochs_c} epochs of {epoch_c:.1f} s after {warmup:.0f} s of "
            f"compilation; eager: {epochs} of {epoch_s:.1f} s"
        )
        if compile_on:
            epochs, epoch_s = epochs_c, epoch_c
    expected_train = sizes.train_startup_s + epochs * epoch_s
    decision = (
        f"{epochs} epochs of {n_train} images ({epoch_s:.1f} s each expected), "
        f"compile {'on' if compile_on else 'off'} ({why}); {eval_images} of {n_test} test "
        f"images evaluated ({per_image * eval_images * n_models:.0f} s of attacks expected); "
        f"{seconds:.0f} s left for the study"
    )
    return {
        "epochs": epochs,
        "eval_images": eval_images,
        "n_train": n_train,
        "n_test": n_test,
        "compile": compile_on,
        "seconds_available": round(seconds, 1),
        "expected_train_s": round(expected_train, 1),
        "expected_eval_s": round(expected_eval, 1),
        "epoch_s": round(epoch_s, 2),
        "eval_s_per_image_per_model": per_image,
        "inputs": rates,
        "cost_model": {
            "train_overhead": TRAIN_OVERHEAD,
            "eval_overhead": EVAL_OVERHEAD,
            "eval_share": EVAL_SHARE,
            "train_startup_s": sizes.train_startup_s,
            "eval_startup_s": sizes.eval_startup_s,
            "report_s": sizes.report_s,
        },
        "decision": decision,
    }


def study_preset(plan: dict, sizes: Sizes) -> str:
    """The study's preset: the three 110-layer rows of In-ResNet Table 1 on one schedule."""
    train = [f"epochs = {plan['epochs']}", f"compile = {str(plan['compile']).lower()}"]
    if sizes.study_batch:
        train.append(f"batch_size = {sizes.study_batch}")
    limit = 0 if plan["eval_images"] >= plan["n_test"] else plan["eval_images"]
    lines = [
        "# The short GPU study of benchmarks/device_check.py: epochs and test images sized to",
        "# the time the check had left (see the plan in device_check.json).",
        'name = "gpu-short"',
        'description = "ResNet-110, In-ResNet-110, λ-In-ResNet-110: a short schedule on one GPU"',
        'table = "inresnet-table1"',
        'datasets = ["cifar10"]',
        "seeds = 1",
        "",
        "[scale.quick]",
        "train = { " + ", ".join(train) + " }",
        f'evaluate = {{ attacks = ["pgd", "apgd_ce"], eps = [8], noise = true, limit = {limit},'
        f" steps = {sizes.eval_steps[0]} }}",
    ]
    for key, model in zip(STUDY_ROWS, sizes.study_models, strict=True):
        lines += ["", "[[rows]]", f'key = "{key}"', f'model = "{key}"', f'quick_model = "{model}"']
    return "\n".join(lines) + "\n"


def evaluate_argv(python: str, run: Path, plan: dict, sizes: Sizes) -> list[str]:
    """`odenets evaluate` of one study run, pixel and normalized, into its eval.json."""
    pgd, apgd = sizes.eval_steps
    argv = [python, "-m", "odenets", "evaluate", str(run), "--attacks", "pgd,apgd_ce"]
    argv += ["--eps", "8", "--threat-model", ",".join(THREAT_MODELS), "--noise"]
    argv += ["--steps", str(pgd), "--apgd-steps", str(apgd), "--no-masking-checks"]
    argv += ["--out", str(run / "eval.json")]
    if plan["eval_images"] < plan["n_test"]:
        argv += ["--limit", str(plan["eval_images"])]
    return argv


def study_run_row(run: Path) -> dict:
    """One study run in figures: status, epochs, accuracies clean / noise / per attack."""
    summary = _read_json(run / "summary.json") or {}
    config = _read_json(run / "config.json") or {}
    row = {
        "run": run.name,
        "model": config.get("model"),
        "status": summary.get("status", "not finished"),
        "epochs": summary.get("epochs_done"),
        "final_test_acc": summary.get("final_test_acc"),
        "train_wall_s": summary.get("wall_time_s"),
        "fast_path": config.get("fast_path"),
    }
    metrics = [json.loads(line) for line in _lines(run / "metrics.jsonl")]
    if metrics:
        row["epoch_s"] = sum(m["time_s"] for m in metrics) / len(metrics)
        n_train = (config.get("dataset") or {}).get("n_train")
        if n_train:
            row["train_images_per_s"] = n_train / row["epoch_s"]
    ev = _read_json(run / "eval.json")
    if ev:
        row["clean"] = ev.get("clean")
        row["noise"] = (ev.get("noise") or {}).get("mean")
        row["eval_images"] = ev.get("n")
        for attack in ev.get("attacks", []):
            row[f"{attack['name']}_{attack.get('threat_model', 'pixel')}"] = attack["accuracy"]
        row["eval_wall_s"] = ev.get("wall_time_s")
    return row


def _lines(path: Path) -> list[str]:
    return (
        [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


def machine_summary() -> dict:
    """The machine as far as the driver sees it without taking the GPU."""
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    smi = _output(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    )
    if smi:
        info["nvidia_smi"] = smi
    commit = _output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if commit:
        info["commit"] = commit
    return info


def _output(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def pack_results(work: Path, archive: Path) -> None:
    """Everything in the working folder but the data, caches and weights, as one .tar.gz."""
    skip_dirs = {"data", "cache"}
    fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=f".{archive.name}.", suffix=".tmp")
    os.close(fd)
    with tarfile.open(tmp, "w:gz") as tar:
        for top in sorted(p for p in work.iterdir() if p.name not in skip_dirs):
            for path in [top] if top.is_file() else sorted(top.rglob("*")):
                if not path.is_file() or path.name.endswith(
                    (".safetensors", ".tmp", ".ready", ".lock")
                ):
                    continue
                tar.add(path, arcname=str(Path("device_check") / path.relative_to(work)))
    os.chmod(tmp, 0o644)
    os.replace(tmp, archive)


def _jsonable(obj):
    """`obj` with infinite budgets written as null (JSON has no infinity)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


# --- the summary -----------------------------------------------------------------------------


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def summary_markdown(record: dict, *, brief: bool = False) -> str:
    """The check as markdown: the stages, then each stage's figures (brief: stages only)."""
    stages = {s["name"]: s for s in record["stages"]}
    lines = _header(record)
    lines += ["", "## Stages", ""]
    lines += _table(
        ["stage", "status", "seconds", "budget s", "detail"],
        [
            [s["name"], s["status"], f"{s['seconds']:.0f}", f"{s['budget_s']:.0f}", s["detail"]]
            for s in record["stages"]
        ],
    )
    if brief:
        return "\n".join(lines) + "\n"
    for name, section in (
        ("ladder", _ladder_section),
        ("attacks", _attacks_section),
        ("scaling", _scaling_section),
        ("study", _study_section),
        ("pytest", _pytest_section),
        ("data", _data_section),
    ):
        if name in stages and stages[name]["results"]:
            lines += ["", *section(stages[name]["results"], record)]
    return "\n".join(lines) + "\n"


def _header(record: dict) -> list[str]:
    m = record["machine"]
    bench = m.get("benchmark", {})
    gpu = bench.get("gpu") or (m.get("nvidia_smi") or "").split(",")[0] or None
    title = "CPU dry run" if record["mode"] == "cpu-dry-run" else (gpu or "no GPU found")
    lines = [f"# Device check: {title} ({record['started'][:10]})", ""]
    if record["mode"] == "cpu-dry-run":
        lines += [
            "**CPU dry run**: every stage at toy size (a few images per class, 20-layer "
            "networks, one or two steps). The figures say nothing about speed; what needs "
            "CUDA is marked not run.",
            "",
        ]
    versions = [
        (f"GPU {gpu}" if gpu else "no GPU")
        + (f" ({m['nvidia_smi']})" if m.get("nvidia_smi") else ""),
        f"{m['cpu_cores']} CPU cores ({bench.get('cpu', 'CPU')})",
        f"Python {m['python']}",
        f"torch {m['torch']}",
        f"CUDA {m['cuda'] or '-'}"
        + (f", cuDNN {bench['cudnn_version']}" if "cudnn_version" in bench else ""),
        f"odenets {bench.get('odenets_version', '?')}"
        + (f" at {m['commit']}" if "commit" in m else ""),
    ]
    lines.append("Machine: " + "; ".join(versions) + ".")
    elapsed = record.get("elapsed_s")
    if elapsed is not None:
        lines.append(f"Whole check: {elapsed:.0f} s of a {record['budget_s']:.0f} s budget.")
    return lines


def _ladder_section(results: dict, record: dict) -> list[str]:
    lines = ["## Training throughput", ""]
    settings = record["sizes"]
    warmup, steps, reps = settings["ladder_steps"]
    lines += [
        f"`train_throughput.py`, batch {settings['batch']}, {warmup} warm-up steps, then "
        f"median of {reps} repetitions of {steps} steps (timed with CUDA events on a GPU).",
        "",
    ]
    rows = [
        [
            r["model"],
            r["config"],
            f"{1000 * r['step_s']:.1f} ({1000 * r['step_s_min']:.1f})",
            _num(r["images_per_s"]),
            _num(r["tflops"], ".1f"),
            _pct(r.get("peak_fraction")) + ("%" if r.get("peak_fraction") else ""),
            _num(r["warmup_s"], ".1f"),
        ]
        for r in results["rows"]
    ]
    rows += [[c["model"], c["config"], "", c["why"], "", "", ""] for c in results["not_run"]]
    lines += _table(
        ["model", "config", "step ms (fastest)", "images/s", "TFLOP/s", "of peak", "warm-up s"],
        rows,
    )
    best = max(
        (r for r in results["rows"] if r["model"] == settings["ladder_model"]),
        key=lambda r: r["images_per_s"],
        default=None,
    )
    if best:
        lines += [
            "",
            f"Target: 14,000 images/s for one run of In-ResNet-110 (stretch 28,000). Measured: "
            f"{best['images_per_s']:,.0f} images/s with [{best['config']}] for "
            f"`{best['model']}`.",
        ]
    return lines


def _attacks_section(results: dict, record: dict) -> list[str]:
    lines = ["## Attacks", ""]
    lines += [
        f"`attack_throughput.py`, float32 (TF32 off), L∞ 8/255, pixel threat model, "
        f"channels_last weights; data: {results.get('data')}.",
        "",
    ]
    lines += _table(
        ["model", "attack", "steps", "images", "batch", "seconds", "images/s", "s per 10,000"],
        [
            [
                r["model"],
                r["attack"],
                r["steps"],
                r["n"],
                r["batch"],
                f"{r['seconds']:.2f}",
                _num(r["images_per_s"]),
                f"{r['seconds_per_10k']:.1f}",
            ]
            for r in results["rows"]
        ],
    )
    if results.get("not_run"):
        lines += ["", "Not timed: " + "; ".join(results["not_run"]) + "."]
    pgd = next((r for r in results["rows"] if r["attack"] == "pgd"), None)
    if pgd:
        lines += [
            "",
            f"Target: PGD-20 over the 10,000 test images in under 30 s. Measured: "
            f"{pgd['seconds_per_10k']:.1f} s per 10,000 images.",
        ]
    return lines


def _scaling_section(results: dict, record: dict) -> list[str]:
    warmup, steps, reps = record["sizes"]["scaling_steps"]
    lines = ["## Several training processes on one device", ""]
    lines += [
        f"`train_throughput.py --barrier`: N processes of `{record['sizes']['ladder_model']}` "
        f"[{results['config']}], batch {record['sizes']['batch']}, each {reps} x {steps} timed "
        "steps after the warm-up, all starting together. Total: every process's images over "
        "the window from the first start to the last end.",
        "",
    ]
    lines += _table(
        ["processes", "total images/s", "sum of rates", "per process", "vs one", "window s"],
        [
            [
                r["processes"],
                _num(r["images_per_s"]),
                _num(r["sum_of_rates"]),
                _num(r["per_process"]),
                _num(r.get("vs_one"), ".2f"),
                f"{r['window_s']:.1f}",
            ]
            for r in results["rows"]
        ],
    )
    lines += ["", "Target: 5 runs together at 3x one run's images/s (N = 4 and 8 bracket 5)."]
    return lines


def _study_section(results: dict, record: dict) -> list[str]:
    plan = results["plan"]
    pgd, apgd = record["sizes"]["eval_steps"]
    lines = ["## 110-layer short study", ""]
    lines += [f"Plan: {plan['decision']}.", ""]
    headers = ["run", "status", "epochs", "test acc", "clean", "noise"]
    keys = []
    for attack in ("pgd", "apgd_ce"):
        for tm in THREAT_MODELS:
            headers.append(f"{attack} {tm}")
            keys.append(f"{attack}_{tm}")
    headers += ["epoch s", "train img/s", "fast path"]
    rows = [
        [
            r["run"],
            r["status"],
            _num(r.get("epochs"), "d"),
            _pct(r.get("final_test_acc")),
            _pct(r.get("clean")),
            _pct(r.get("noise")),
            *[_pct(r.get(k)) for k in keys],
            _num(r.get("epoch_s"), ".1f"),
            _num(r.get("train_images_per_s")),
            _fast_path_words(r.get("fast_path")),
        ]
        for r in results["runs"]
    ]
    lines += _table(headers, rows)
    lines += [
        "",
        f"Accuracies in percent; robust accuracy at 8/255 (PGD-{pgd}, APGD-CE {apgd} steps), "
        f"on {plan['eval_images']} of the {plan['n_test']} test images. Fast path: what the "
        "training ran with (config.json), fallbacks included. The report (`odenets report`) "
        "is `study/report.md` in device_check.tar.gz, with its CSV, JSON and figures.",
    ]
    return lines


def _fast_path_words(fast_path: dict | None) -> str:
    """config.json's fast_path in words: the features that ran, then each fallback."""
    if not fast_path:
        return "-"
    names = {"amp": "bf16", "compile": "compile", "cuda_graphs": "CUDA graphs"}
    on = [word for key, word in names.items() if fast_path.get(key)]
    words = "+".join(on) if on else "eager float32"
    for fallback in fast_path.get("fallbacks") or []:
        words += f"; {fallback.get('feature')} dropped: {fallback.get('cause')}"
    return words


def _pytest_section(results: dict, record: dict) -> list[str]:
    lines = ["## pytest -m gpu", ""]
    lines.append(
        f"{results['passed']} passed, {results['failed']} failed, {results['errors']} errors, "
        f"{results['skipped']} skipped."
    )
    if results["failures_list"]:
        lines += ["", "Failed: " + ", ".join(f"`{n}`" for n in results["failures_list"]) + "."]
    return lines


def _data_section(results: dict, record: dict) -> list[str]:
    lines = ["## Data", ""]
    lines.append(
        f"Unpacked in {results['unpack_s']:.1f} s; decoded with {results['workers']} threads:"
    )
    lines += [""] + _table(
        ["split", "images", "classes", "first load s", "images/s"],
        [
            [
                r["split"],
                r["images"],
                r["classes"],
                f"{r['first_load_s']:.2f}",
                _num(r["first_load_images_per_s"]),
            ]
            for r in results["splits"]
        ],
    )
    return lines


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", help="folder for summary.md, device_check.json, .tar.gz and .log")
    p.add_argument("--cpu-dry-run", action="store_true", help="every stage at toy size on a CPU")
    p.add_argument(
        "--archive",
        default=str(REPO / ".device" / "cifar10-jpeg.tar.gz"),
        help="the data (make device-data); default .device/cifar10-jpeg.tar.gz",
    )
    p.add_argument("--work", default=None, help="working folder (default: a fresh temporary one)")
    p.add_argument(
        "--stages",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        default=list(STAGES),
        help=f"comma-separated stages to run (default: all of {','.join(STAGES)})",
    )
    p.add_argument(
        "--time-factor",
        type=float,
        default=1.0,
        help="multiply every time budget (a slower machine, or a longer lease)",
    )
    p.add_argument("--python", default=sys.executable, help="Python of the stages' processes")
    args = p.parse_args(argv)
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        p.error(f"--stages: unknown {unknown}; choose from {','.join(STAGES)}")
    if args.time_factor <= 0:
        p.error(f"--time-factor must be > 0; got {args.time_factor}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.cpu_dry_run:
        import torch

        if not torch.cuda.is_available():
            print(
                "device_check.py: no CUDA device here; --cpu-dry-run runs the stages at toy "
                "size on the CPU",
                file=sys.stderr,
            )
            return 2
    return Check(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
