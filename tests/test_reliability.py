"""Fault trials (docs/reliability.md): kill -9 at seeded moments and inside every kind of
write, tampered files of every kind, concurrent writers, a full disk, crafted archives;
and run folders written by odenets 0.1.0 load, resume and evaluate."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_data_archives import py2_pickle
from test_training import tiny_net_registered

from odenets.checkpoint import load_safetensors, read_json, read_jsonl, sha256_file
from odenets.cli import main
from odenets.errors import CheckpointError, DataError, DivergenceError
from odenets.training import TrainConfig, fit, load_run, read_run
from odenets.training.run_folder import LockedError, RunFolder

LEGACY = Path(__file__).parent / "data" / "legacy-run-0.1.0"  # written by odenets 0.1.0


@pytest.fixture(autouse=True, scope="module")
def _tiny_net():
    with tiny_net_registered():
        yield


def tiny(out: Path, **overrides) -> TrainConfig:
    """The configuration the legacy folder was trained with (4 steps an epoch)."""
    values = dict(
        model="tiny_net",
        model_kwargs={"width": 2},
        dataset="digits",
        out=str(out),
        epochs=2,
        batch_size=64,
        lr=0.2,
        train_limit=256,
        test_limit=64,
        progress=False,
        seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(path)[0]


def _same_weights(a: Path, b: Path) -> bool:
    x, y = _weights(a), _weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _metrics(run: Path) -> list[dict]:
    return [
        {k: v for k, v in m.items() if k != "time_s"} for m in read_jsonl(run / "metrics.jsonl")
    ]


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file's bytes except the lock (it holds the last holder's pid)."""
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.name != ".lock"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run with mid-epoch checkpoints (every 2 of its 4 steps)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    fit(tiny(out, checkpoint_steps=2))
    return out


# --- run folders of odenets 0.1.0 ---------------------------------------------------------


def test_legacy_run_folder_loads_evaluates_and_resumes(tmp_path, capsys):
    run = tmp_path / "legacy"
    shutil.copytree(LEGACY, run)
    assert not (run / "digests.json").exists()  # 0.1.0 recorded no digests
    model = load_run(run)
    assert model.run_weights["file"] == "final.safetensors"
    assert model.run_weights["sha256"] == sha256_file(run / "final.safetensors")
    # This odenets trains the same configuration to the same weights and metrics, up to the
    # float rounding of the CPU's kernels (the folder was written on another CPU: AVX2 and
    # AVX-512 kernels round differently, by about 1e-7 here).
    fresh = tmp_path / "fresh"
    fit(tiny(fresh))
    ours, theirs = (load_safetensors(r / "final.safetensors")[0] for r in (fresh, run))
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)
    for mine, old in zip(_metrics(fresh), _metrics(run), strict=True):
        assert mine.keys() == old.keys()
        for key, value in old.items():
            assert mine[key] == pytest.approx(value, rel=1e-6), key

    args = ["evaluate", str(run), "--attacks", "fgsm", "--eps", "8"]
    assert main([*args, "--device", "cpu", "--no-checks"]) == 0
    ev = read_json(run / "eval.json")
    assert ev["weights"][0]["sha256"] == sha256_file(run / "final.safetensors")

    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "3"]) == 0
    err = capsys.readouterr().err
    assert "resuming with 3 epochs instead of 2" in err and "changed settings" not in err
    info = read_run(run)
    assert info.summary["status"] == "finished" and info.summary["epochs_done"] == 3
    assert [m["epoch"] for m in info.metrics] == [1, 2, 3]
    digests = read_json(run / "digests.json")  # recorded from the first write on
    assert digests["final.safetensors"]["sha256"] == sha256_file(run / "final.safetensors")
    assert digests["last.safetensors"]["sha256"] == sha256_file(run / "last.safetensors")
    assert load_run(run).run_weights["epoch"] == 3


# --- kill -9 at seeded moments and inside every kind of write -----------------------------


def _fork(work) -> int:
    """Run `work()` in a forked child; exit 0 done, 17 refused by a lock, 2 other error."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 2
        try:
            work()
            code = 0
        except LockedError:
            code = 17
        finally:
            os._exit(code)
    return pid


def _wait(pid: int, timeout: float = 120.0) -> int:
    """The child's exit code, or -signal; kills it after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


class _WriteEvents:
    """Wraps os.fsync and os.replace: lists each write step as (phase, file name) and can
    SIGKILL the process at the k-th one."""

    def __init__(self, kill_at: int | None = None):
        self.events: list[tuple[str, str]] = []
        self.kill_at = kill_at
        self._fsync, self._replace = os.fsync, os.replace

    def _step(self, phase: str, name: str) -> None:
        self.events.append((phase, name))
        if len(self.events) == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def fsync(self, fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if not os.path.isdir(target):  # the data is written, not yet renamed
            self._step("written", _dest(Path(target).name))
        return self._fsync(fd)

    def replace(self, src, dst):
        self._step("before rename", Path(dst).name)
        self._replace(src, dst)
        self._step("after rename", Path(dst).name)

    @contextlib.contextmanager
    def installed(self):
        os.fsync, os.replace = self.fsync, self.replace
        try:
            yield self
        finally:
            os.fsync, os.replace = self._fsync, self._replace


def _dest(temp: str) -> str:
    """'.last.json.abc123.tmp' -> 'last.json'."""
    return temp[1:].rsplit(".", 2)[0] if temp.endswith(".tmp") else temp


def _resume_and_compare(run: Path, reference: Path) -> None:
    fit(tiny(run, checkpoint_steps=2, resume=True))
    assert read_run(run).summary["status"] == "finished"
    assert _same_weights(run / "final.safetensors", reference / "final.safetensors")
    assert _metrics(run) == _metrics(reference)
    assert not list(run.glob(".*.tmp"))
    load_run(run)  # every recorded digest matches


def test_kill_inside_every_kind_of_write_resumes_identically(tmp_path, reference):
    """One trial per (write step, file) of a run, at a seeded occurrence of it."""
    probe = _WriteEvents()
    with probe.installed():
        fit(tiny(tmp_path / "probe", checkpoint_steps=2))
    events = probe.events
    kinds = sorted(set(events))
    assert len(kinds) >= 21  # 3 steps x config, metrics, summary, last.*, final, digests
    rng = random.Random(18)
    trials = []
    for kind in kinds:
        where = [i for i, e in enumerate(events, start=1) if e == kind]
        trials.append((kind, rng.choice(where)))
    for n, (kind, k) in enumerate(trials):
        run = tmp_path / f"trial{n}"

        def work(run=run, k=k):
            with _WriteEvents(kill_at=k).installed():
                fit(tiny(run, checkpoint_steps=2))

        assert _wait(_fork(work)) == -signal.SIGKILL, kind
        with warnings_allowed():
            _resume_and_compare(run, reference)
    assert len(trials) >= 21


@contextlib.contextmanager
def warnings_allowed():
    """A kill between last.safetensors and last.json is reported by a warning on resume."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def test_kill_at_seeded_random_moments_resumes_identically(tmp_path, reference):
    start = time.perf_counter()
    fit(tiny(tmp_path / "timing", checkpoint_steps=2))
    duration = time.perf_counter() - start
    rng = random.Random(1718)
    outcomes = []
    for n in range(8):
        run = tmp_path / f"trial{n}"
        pid = _fork(lambda run=run: fit(tiny(run, checkpoint_steps=2)))
        time.sleep(rng.uniform(0.2, 0.2 + 2 * duration))  # import-free child: starts at once
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        outcomes.append(_wait(pid))
        if run.exists():
            with warnings_allowed():
                _resume_and_compare(run, reference)
    assert set(outcomes) <= {0, -signal.SIGKILL}


# --- tampered files: one line naming the file and the field, nothing overwritten -----------


def _rewrite_last(run: Path, edit) -> None:
    """Rewrite last.safetensors with `edit(tensors)` applied, keeping its header, and record
    the new digest in last.json and digests.json (a consistent file of the wrong shape)."""
    tensors, meta = load_safetensors(run / "last.safetensors")
    edit(tensors)
    save_file(tensors, str(run / "last.safetensors"), metadata=meta)
    sha = sha256_file(run / "last.safetensors")
    last = read_json(run / "last.json")
    (run / "last.json").write_text(json.dumps({**last, "weights_sha256": sha}))
    digests = read_json(run / "digests.json")
    digests["last.safetensors"] = {"sha256": sha}
    (run / "digests.json").write_text(json.dumps(digests))


def _edit_json(name, edit):
    def tamper(run: Path) -> None:
        data = read_json(run / name)
        data = edit(data)
        (run / name).write_text(json.dumps(data))

    return tamper


def _set(path: str, value):
    def edit(data):
        node = data
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
        return data

    return edit


def _drop(path: str):
    def edit(data):
        node = data
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        del node[last]
        return data

    return edit


def _flip(name: str):
    def tamper(run: Path) -> None:
        data = bytearray((run / name).read_bytes())
        data[-20] ^= 0xFF  # one byte of tensor data
        (run / name).write_bytes(bytes(data))

    return tamper


def _write(name: str, text: str):
    return lambda run: (run / name).write_text(text)


TAMPERED = [
    ("config.json", _write("config.json", "[1, 2, 3]"), "load", "expected a JSON object"),
    (
        "config.json",
        _edit_json("config.json", _set("dataset.num_classes", "ten")),
        "load",
        'field "dataset.num_classes" must be an integer in 1..1000000',
    ),
    (
        "config.json",
        _edit_json("config.json", _set("dataset.num_classes", 10**12)),
        "resume",
        'field "dataset.num_classes" must be an integer in 1..1000000',
    ),
    (
        "config.json",
        _edit_json("config.json", _set("train.epochs", "3")),
        "read",
        'field "train.epochs" must be an integer',
    ),
    (
        "config.json",
        _edit_json("config.json", _drop("model")),
        "load",
        'field "model" missing \\(written by odenets 0.1.0\\?\\)',
    ),
    ("summary.json", _write("summary.json", '"finished"'), "read", "expected a JSON object"),
    (
        "summary.json",
        _edit_json("summary.json", _set("final_test_acc", 97.5)),
        "read",
        'field "final_test_acc" must be a number in \\[0, 1\\]',
    ),
    (
        "metrics.jsonl",
        _write("metrics.jsonl", '{"epoch": "one"}\n'),
        "read",
        'metrics.jsonl, line 1: field "epoch"',
    ),
    (
        "last.json",
        _edit_json("last.json", _drop("rng.python")),
        "resume",
        'last.json: field "rng.python" missing \\(written by odenets',
    ),
    (
        "last.safetensors",
        lambda run: _rewrite_last(run, lambda t: t.update({"rng.torch": t["rng.torch"][:100]})),
        "resume",
        'tensor "rng.torch" must be torch.uint8 of shape',
    ),
    (
        "last.safetensors",
        lambda run: _rewrite_last(
            run, lambda t: t.update({"optim.0.momentum_buffer": torch.zeros(3, 3)})
        ),
        "resume",
        'optimizer tensor "optim.0.momentum_buffer" has shape \\(3, 3\\)',
    ),
    ("last.safetensors", _flip("last.safetensors"), "resume", "last.safetensors: SHA-256 "),
    ("final.safetensors", _flip("final.safetensors"), "load", "final.safetensors: SHA-256 "),
    ("digests.json", _write("digests.json", "[]"), "load", "digests.json: expected a JSON"),
    (
        "digests.json",
        _write("digests.json", '{"final.safetensors": {"sha256": "beef"}}'),
        "load",
        'digests.json: field "final.safetensors" must be',
    ),
    (
        "eval.json",
        _write("eval.json", '{"clean": "high", "models": ["tiny_net"]}'),
        "eval",
        'eval.json: field "clean" must be a finite number',
    ),
]


def _operate(run: Path, operation: str) -> None:
    if operation == "load":
        load_run(run)
    elif operation == "read":
        read_run(run)
    elif operation == "eval":
        RunFolder(run).read_eval()
    else:
        fit(tiny(run, epochs=3, resume=True))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    fit(tiny(out, epochs=1))
    (out / "eval.json").write_text('{"clean": 0.5, "models": ["tiny_net"]}')
    return out


@pytest.mark.parametrize(
    "name, tamper, operation, message",
    TAMPERED,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(TAMPERED)],
)
def test_tampered_file_is_one_clear_error_and_nothing_is_overwritten(
    tmp_path, finished, name, tamper, operation, message
):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    tamper(run)
    before = _snapshot(run)
    with pytest.raises(CheckpointError, match=message) as caught:
        _operate(run, operation)
    text = str(caught.value)
    assert "\n" not in text and name in text
    assert _snapshot(run) == before


def test_cli_names_the_bad_file_in_one_line(tmp_path, finished, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    _edit_json("config.json", _set("dataset.num_classes", "ten"))(run)
    assert main(["evaluate", str(run), "--limit", "8"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config.json" in err and "dataset.num_classes" in err


def test_resume_of_a_finished_run_without_last_refuses_and_restart_starts_over(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "last.safetensors").unlink()
    (run / "last.json").unlink()
    before = _snapshot(run)
    with pytest.raises(CheckpointError, match="--restart to start over on purpose"):
        fit(tiny(run, epochs=1, resume=True))
    assert _snapshot(run) == before
    fit(tiny(run, epochs=1, restart=True))
    assert not (run / "eval.json").exists()  # it scored the weights that were discarded
    assert _same_weights(run / "final.safetensors", finished / "final.safetensors")


# --- the last good checkpoint is good ------------------------------------------------------


def test_non_finite_update_in_the_last_step_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    fit_module = sys.modules["odenets.training.fit"]  # the package exports the function fit
    run = tmp_path / "run"
    fit(tiny(run, epochs=1))
    good = _snapshot(run)
    real = fit_module._epoch_record

    def blow_up(cfg, ctx, *args):
        with torch.no_grad():
            ctx.model.fc.weight[0, 0] = float("inf")  # the last update overflowed
        return real(cfg, ctx, *args)

    monkeypatch.setattr(fit_module, "_epoch_record", blow_up)
    with pytest.raises(DivergenceError, match="after epoch 2, model fc.weight is not finite") as e:
        fit(tiny(run, epochs=2, resume=True))
    assert "The last good state (after epoch 1) is kept" in str(e.value)
    after = _snapshot(run)
    for name in ("last.safetensors", "last.json", "final.safetensors", "metrics.jsonl"):
        assert after[name] == good[name]
    assert read_run(run).summary["status"] == "diverged"
    tensors, _ = load_safetensors(run / "last.safetensors")
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


# --- concurrent writers --------------------------------------------------------------------


def _hold_lock(folder: Path):
    """A child that holds the folder's lock until killed; returns its pid once it holds it."""
    read, write = os.pipe()

    def work():
        with RunFolder(folder).lock():
            os.write(write, b"x")
            time.sleep(600)

    pid = _fork(work)
    os.read(read, 1)
    os.close(read)
    os.close(write)
    return pid


def test_second_writer_is_refused_naming_pid_and_host_and_kill_leaves_no_stale_lock(
    tmp_path, finished
):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = _snapshot(run)
    pid = _hold_lock(run)
    with pytest.raises(LockedError, match=f"locked by pid {pid} on host {socket.gethostname()}"):
        fit(tiny(run, epochs=2, resume=True))
    assert _snapshot(run) == before
    os.kill(pid, signal.SIGKILL)
    assert _wait(pid) == -signal.SIGKILL
    fit(tiny(run, epochs=2, resume=True))  # the kernel dropped the lock with its process
    assert read_run(run).summary["epochs_done"] == 2


def test_two_trainings_into_one_folder_never_mix(tmp_path, reference):
    run = tmp_path / "run"
    pids = [_fork(lambda: fit(tiny(run, checkpoint_steps=2, resume=True))) for _ in range(2)]
    codes = sorted(_wait(p) for p in pids)
    assert codes in ([0, 0], [0, 17])  # the second is refused, or finds the run finished
    assert _same_weights(run / "final.safetensors", reference / "final.safetensors")
    assert _metrics(run) == _metrics(reference)


def test_grid_processes_split_the_jobs_and_none_runs_twice(tmp_path, monkeypatch):
    from odenets.experiments import job_runner
    from odenets.experiments.jobs import expand_jobs, load_grid
    from odenets.experiments.reproduce import run_grid

    log = tmp_path / "trained.log"

    def fake_train(grid, job, folder):
        with open(log, "a") as f:
            f.write(f"{job.name}\n")
        time.sleep(0.2)
        (folder / "summary.json").write_text('{"status": "finished"}')

    def fake_evaluate(grid, job, out):
        RunFolder(out / "runs" / job.name).write_eval({"clean": 0.5, "models": ["m"]})

    monkeypatch.setattr(job_runner, "train_job", fake_train)
    monkeypatch.setattr(job_runner, "evaluate_job", fake_evaluate)
    grid = load_grid("inresnet-table1", scale="quick", datasets=["cifar10"], data_root="data")
    out = tmp_path / "grid"
    pids = [_fork(lambda: run_grid(grid, out)) for _ in range(3)]
    assert [_wait(p) for p in pids] == [0, 0, 0]
    trained = log.read_text().split()
    expected = sorted(j.name for j in expand_jobs(grid) if not j.is_ensemble)
    assert sorted(trained) == expected  # each job once, by one of the processes


def test_locked_job_is_skipped_not_run(tmp_path, monkeypatch):
    from odenets.experiments import job_runner
    from odenets.experiments.jobs import expand_jobs, load_grid

    monkeypatch.setattr(job_runner, "train_job", lambda *a: pytest.fail("trained a locked job"))
    grid = load_grid("inresnet-table1", scale="quick", datasets=["cifar10"], data_root="data")
    job = expand_jobs(grid)[0]
    folder = tmp_path / "runs" / job.name
    read, write = os.pipe()

    def work():
        from odenets.training.run_folder import hold_lock

        with hold_lock(folder / job_runner.JOB_LOCK, what="job"):
            os.write(write, b"x")
            time.sleep(600)

    pid = _fork(work)
    os.read(read, 1)
    assert job_runner.run_job(grid, tmp_path, job) == "locked"
    os.kill(pid, signal.SIGKILL)
    _wait(pid)


# --- a full disk ---------------------------------------------------------------------------


@contextlib.contextmanager
def _small_disk(path: Path, size_kib: int, *, mount: bool):
    """A tmpfs of `size_kib` at `path` when asked and this process may mount one."""
    path.mkdir()
    mounted = (
        mount
        and os.geteuid() == 0
        and shutil.which("mount")
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.mark.parametrize("disk_kind", ["tmpfs", "injected"])
def test_full_disk_fails_cleanly_and_the_checkpoint_stays_intact(tmp_path, monkeypatch, disk_kind):
    import odenets.checkpoint as checkpoint

    disk = tmp_path / "disk"
    with _small_disk(disk, 160, mount=disk_kind == "tmpfs") as mounted:
        if disk_kind == "tmpfs" and not mounted:
            pytest.skip("not run: this process may not mount a tmpfs (the injected case runs)")
        run = disk / "run"
        if mounted:  # a real full disk: fill it up after epoch 1
            fit(tiny(run, epochs=1))
            filler = disk / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            with contextlib.suppress(OSError):  # until the disk is full
                while True:
                    os.write(fd, b"\0" * 512)
            os.close(fd)
        else:  # no mount here: new files fail as on a full disk (rewrites in place work)
            fit(tiny(run, epochs=1))

            def full(*args, **kwargs):
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(checkpoint.tempfile, "mkstemp", full)
        good = {n: (run / n).read_bytes() for n in ("last.safetensors", "last.json")}
        with pytest.raises(CheckpointError, match="No space left on device") as caught:
            fit(tiny(run, epochs=2, resume=True))
        message = str(caught.value)
        assert "could not write" in message and str(run) in message
        assert "The last checkpoint" in message and "is intact" in message
        assert "\n" not in message
        summary = read_json(run / "summary.json")
        assert summary["status"] == "failed" and "No space left on device" in summary["error"]
        assert {n: (run / n).read_bytes() for n in good} == good
        assert not list(run.glob(".*.tmp"))
        if mounted:
            (disk / "filler").unlink()
        monkeypatch.undo()
        fit(tiny(run, epochs=2, resume=True))
        assert read_run(run).summary["status"] == "finished"


# --- archives ----------------------------------------------------------------------------


def _huge_array_pickle() -> bytes:
    """A batch whose 'data' asks numpy for a 7 TiB array."""

    class Huge:
        def __reduce__(self):
            return (np.ndarray, ((7 << 40,), "u1"))

    return py2_pickle({b"data": Huge(), b"labels": [0]})


def _tiny_cifar10_archive(path: Path, batch: bytes) -> None:
    from odenets.data.archives import ARCHIVES

    spec = ARCHIVES[("cifar10", "python")]
    with tarfile.open(path / spec.filename, "w:gz") as tar:
        for name in (*spec.train, *spec.test, spec.meta[0]):
            info = tarfile.TarInfo(f"{spec.folder}/{name}")
            info.size = len(batch)
            tar.addfile(info, io.BytesIO(batch))


def test_pickle_asking_for_a_huge_array_is_a_data_error(tmp_path):
    from odenets.data import load_cifar

    _tiny_cifar10_archive(tmp_path, _huge_array_pickle())
    with pytest.raises(DataError, match=r"asks for an array of shape \(7696581394432,\)"):
        load_cifar("cifar10", tmp_path, split="test", verify=False)


def test_archive_md5_is_verified_once_and_no_verify_is_recorded(tmp_path, monkeypatch):
    import dataclasses

    from odenets.data import archives, load_cifar

    monkeypatch.setenv("ODENETS_CACHE", str(tmp_path / "cache"))
    images = np.zeros((2, 3072), np.uint8)
    batch = py2_pickle({b"data": images, b"labels": [1, 2]})
    _tiny_cifar10_archive(tmp_path, batch)
    with pytest.raises(DataError, match=r"md5 [0-9a-f]{32} is not the official"):
        load_cifar("cifar10", tmp_path, split="test")
    archive = tmp_path / archives.ARCHIVES[("cifar10", "python")].filename
    spec = archives.ARCHIVES[("cifar10", "python")]
    monkeypatch.setitem(
        archives.ARCHIVES,
        ("cifar10", "python"),
        dataclasses.replace(spec, md5=sha_md5(archive)),
    )
    hashed = []
    real = archives.file_md5
    monkeypatch.setattr(archives, "file_md5", lambda p: hashed.append(p) or real(p))
    for _ in range(3):
        assert load_cifar("cifar10", tmp_path, split="test")[1].tolist() == [1, 2]
    assert len(hashed) == 0  # cached by the failed check above: same size and time stamp
    os.utime(archive, ns=(1, 1))
    load_cifar("cifar10", tmp_path, split="test")
    assert len(hashed) == 1  # a new time stamp is hashed again


def test_training_refuses_an_unofficial_archive_unless_no_verify_which_is_recorded(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("ODENETS_CACHE", str(tmp_path / "cache"))
    images = np.zeros((2, 3072), np.uint8)
    _tiny_cifar10_archive(tmp_path, py2_pickle({b"data": images, b"labels": [1, 2]}))
    settings = dict(dataset="cifar10", data_root=str(tmp_path), epochs=1, batch_size=2)
    with pytest.raises(DataError, match="is not the official"):
        fit(tiny(tmp_path / "refused", **settings))
    assert not (tmp_path / "refused").exists()
    code = main(
        [
            "train",
            "--model",
            "tiny_net",
            "--dataset",
            "cifar10",
            "--data-root",
            str(tmp_path),
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--no-verify",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    assert read_json(tmp_path / "run" / "config.json")["train"]["verify"] is False
    # evaluate follows the run: the private copy is not checked again
    assert main(["evaluate", str(tmp_path / "run"), "--attacks", "fgsm", "--no-checks"]) == 0


def sha_md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


# --- silently wrong inputs are errors ------------------------------------------------------


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_evaluate_limit_must_be_positive(finished, limit, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", str(finished), "--limit", limit])
    assert f"must be a positive number of images; got {int(limit)}" in capsys.readouterr().err


def test_image_folder_with_test_classes_missing_from_train(tmp_path):
    from PIL import Image

    from odenets.data import load_image_folder

    for split, classes in (("train", ["ant", "bee"]), ("test", ["ant", "bee", "cat"])):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / name / "0.png")
    with pytest.raises(DataError, match=r"test has classes with no folder in .*train: \['cat'\]"):
        load_image_folder(tmp_path, split="test")


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0.0, 1.0]), "labels must be an integer tensor .* got torch.float32"),
        (torch.tensor([0, 10]), r"labels must be in 0..9 \(the model has 10 classes\); got 0..10"),
        (torch.tensor([-1, 3]), r"labels must be in 0..9 .*; got -1..3"),
        (torch.tensor([0, 1, 2]), r"labels must have shape \(2,\), one per image; got \(3,\)"),
    ],
)
def test_bad_labels_are_refused_by_evaluate(labels, message):
    from odenets import create_model
    from odenets.robustness import evaluate

    model = create_model("tiny_net", num_classes=10, in_chans=1, width=2)
    with pytest.raises(ValueError, match=message):
        evaluate(model, torch.rand(2, 1, 8, 8), labels, attacks=["fgsm"], checks=False)


@pytest.mark.parametrize("value", ["ten", 0, 2.5, True])
def test_num_classes_must_be_a_positive_int(value):
    from odenets import create_model

    with pytest.raises(ValueError, match=f"num_classes must be a positive integer; got {value!r}"):
        create_model("resnet20", num_classes=value)


@pytest.mark.parametrize("bad", [(float("nan"), 0.5), (0.1, float("inf"))])
def test_lambda_init_must_be_finite(bad):
    from odenets import create_model

    with pytest.raises(ValueError, match="lambda_init must be finite numbers"):
        create_model("in_resnet20", lambda_init=bad)
