"""Trainer robustness: SIGKILL + resume gives identical weights, divergence handling and the
CLI exit code, torchrun DDP equals one process with the same global batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_training import TINY_SOURCE, tiny_net_registered

import odenets
from odenets.checkpoint import load_safetensors, read_json, read_jsonl
from odenets.cli import main
from odenets.commands.train import EXIT_DIVERGED
from odenets.data import load_digits
from odenets.models.base import to_channels_last
from odenets.training import TrainConfig, fit, read_run
from odenets.training.state import load_train_state, restore_train_state, save_train_state


@pytest.fixture(autouse=True, scope="module")
def _tiny_net():
    with tiny_net_registered():
        yield


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """The 8x8 digits as a folder of grey PNGs: child processes then need no scikit-learn."""
    root = tmp_path_factory.mktemp("digits_folder")
    for split in ("train", "test"):
        images, labels = load_digits(split=split)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0], mode="L").save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    """`python script.py ARGS` is `odenets ARGS` with the tiny test network registered."""
    path = tmp_path_factory.mktemp("script") / "odenets_tiny.py"
    path.write_text(
        TINY_SOURCE + "\nimport sys\nfrom odenets.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    return path


def _child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("WORLD_SIZE", None)
    return env


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(path)[0]


def _tiny_args(out: Path, root: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        "tiny_net",
        "--dataset",
        "folder",
        "--data-root",
        str(root),
        "--recipe",
        "digits",
        "--lr",
        "0.1",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


# --- SIGKILL at random moments, then resume -------------------------------------------------


def _wait_for(predicate, proc, timeout=120.0) -> bool:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def _checkpoint_epoch(out: Path) -> int:
    """Epoch of the run's last checkpoint; -1 before the first one is written."""
    return read_json(out / "last.json")["epoch"] if (out / "last.json").exists() else -1


@pytest.mark.slow
def test_sigkill_and_resume_give_identical_weights(tmp_path, digits_folder, script):
    epochs = 12
    reference = fit(
        TrainConfig(
            model="tiny_net",
            dataset="folder",
            data_root=str(digits_folder),
            recipe="digits",
            lr=0.1,
            epochs=epochs,
            out=str(tmp_path / "ref"),
            progress=False,
        )
    )
    out = tmp_path / "killed"
    args = [
        sys.executable,
        str(script),
        *_tiny_args(
            out, digits_folder, "--epochs", str(epochs), "--resume", "--checkpoint-steps", "6"
        ),
    ]
    rng = np.random.default_rng(5)
    epoch_time = float(np.median([m["time_s"] for m in reference.metrics]))
    # Kill once soon after start-up, then after the checkpoints of epochs 3 and 7, each time
    # a random fraction of an epoch later (in a training step, an evaluation or a write).
    resumed_from = []
    for target in (0, 3, 7):
        proc = subprocess.Popen(
            args, env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        reached = _wait_for(lambda t=target: _checkpoint_epoch(out) >= t, proc)
        assert reached, proc.stderr.read().decode()
        time.sleep(float(rng.uniform(0.0, 1.5 * epoch_time)))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL  # it was still running when killed
        proc.stderr.close()
        resumed_from.append(_checkpoint_epoch(out))
    assert resumed_from == sorted(resumed_from) and resumed_from[-1] >= 7
    done = subprocess.run(args, env=_child_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    final, expected = (
        _weights(out / "final.safetensors"),
        _weights(reference.path / "final.safetensors"),
    )
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key  # bitwise
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))
    assert [m["test_acc"] for m in metrics] == [m["test_acc"] for m in reference.metrics]
    assert read_json(out / "summary.json")["status"] == "finished"
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


# --- divergence ---------------------------------------------------------------------------


def test_divergence_from_the_start(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--model",
            "tiny_net",
            "--dataset",
            "digits",
            "--epochs",
            "3",
            "--lr",
            "1e6",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == EXIT_DIVERGED == 3
    err = capsys.readouterr().err
    assert "non-finite training loss at epoch 1, step" in err and "diverged" in err
    summary = read_json(out / "summary.json")
    assert summary["status"] == "diverged" and summary["epochs_done"] == 0
    assert "epoch 1, step" in summary["error"]
    assert not (out / "final.safetensors").exists()
    assert read_jsonl(out / "metrics.jsonl") == []
    # last.safetensors is the last good state: the initial weights of seed 0.
    torch.manual_seed(0)
    fresh = odenets.create_model("tiny_net", num_classes=10, in_chans=1).state_dict()
    saved = _weights(out / "last.safetensors")
    for key, value in fresh.items():
        assert torch.equal(saved[f"model.{key}"], value), key


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                "tiny_net",
                "--dataset",
                "digits",
                "--epochs",
                "2",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    kept = ["last.safetensors", "last.json", "metrics.jsonl", "final.safetensors"]
    before = {name: (out / name).read_bytes() for name in kept}
    rc = main(["train", "--out", str(out), "--resume", "--epochs", "4", "--lr", "1e6"])
    assert rc == EXIT_DIVERGED
    err = capsys.readouterr().err
    assert (
        f"odenets train: warning: resuming {out} with changed settings ['lr']; the run will "
        "not match an uninterrupted one\n"
    ) in err
    assert "warnings.warn" not in err and "UserWarning" not in err
    assert "epoch 3, step" in err
    stored = read_json(out / "config.json")["train"]["milestones"]
    assert (
        f"resuming with 4 epochs instead of 2; the learning rate still drops after epochs {stored}"
        in err
    )
    for name in kept:
        assert (out / name).read_bytes() == before[name], name
    summary = read_json(out / "summary.json")
    assert summary["status"] == "diverged" and summary["epochs_done"] == 2
    assert "epoch 3" in summary["error"] and "last.safetensors" in summary["error"]
    assert read_json(out / "config.json")["train"]["lr"] == 1e6  # what diverged is recorded


# --- the command line ---------------------------------------------------------------------


def test_cli_flags_map_to_fields_and_resume_reads_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--model",
            "tiny_net",
            "--model-kwargs",
            '{"width": 4}',
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--lr",
            "0.05",
            "--milestones",
            "0.5",
            "--weight-decay",
            "0",
            "--no-augment",
            "--seed",
            "3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    assert "finished: 1/1 epochs" in captured.out
    assert captured.err.count("epoch 1/1") == 1  # one log line per epoch, no bar off a tty
    train = read_json(out / "config.json")["train"]
    assert train["model_kwargs"] == {"width": 4} and train["batch_size"] == 32
    assert (train["lr"], train["weight_decay"], train["seed"]) == (0.05, 0.0, 3)
    assert train["augment"] is False and train["milestones"] == [1]
    # --resume with only --out and --epochs: the rest comes from the stored run.
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert capsys.readouterr().err.count("epoch 2/2") == 1  # the handler is not doubled
    info = read_run(out)
    assert info.config["train"]["batch_size"] == 32 and len(info.metrics) == 2


def _train_digits(out: Path, *extra: str) -> int:
    """`odenets train` of the tiny network on the digits into `out`."""
    args = ["train", "--model", "tiny_net", "--dataset", "digits", "--out", str(out)]
    return main([*args, "--no-progress", *extra])


def test_out_naming_a_file_is_refused_in_one_line(tmp_path, capsys):
    target = tmp_path / "config.json"
    target.write_text("{}")
    assert _train_digits(target, "--epochs", "1") == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"odenets train: error: --out {target} is a file; it must name a folder (new, or a run "
        "folder to resume)"
    ]
    assert target.read_text() == "{}"


def test_an_os_error_of_a_command_is_one_line(tmp_path, capsys):
    parent = tmp_path / "file"
    parent.write_text("")
    assert _train_digits(parent / "run", "--epochs", "1") == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("odenets train: error: ") and str(parent / "run") in err


def test_ctrl_c_records_interrupted_and_says_how_to_continue(tmp_path, capsys, monkeypatch):
    fit_module = sys.modules["odenets.training.fit"]  # the package exports the function fit
    run_epoch = fit_module._run_epoch

    def ctrl_c_in_epoch_2(cfg, ctx, loader, epoch, *args):
        if epoch == 2:
            raise KeyboardInterrupt
        return run_epoch(cfg, ctx, loader, epoch, *args)

    monkeypatch.setattr(fit_module, "_run_epoch", ctrl_c_in_epoch_2)
    out = tmp_path / "run"
    assert _train_digits(out, "--epochs", "3") == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"interrupted; continue with: odenets train --resume --out {out}"
    summary = read_json(out / "summary.json")
    assert (summary["status"], summary["epochs_done"]) == ("interrupted", 1)
    monkeypatch.setattr(fit_module, "_run_epoch", run_epoch)
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert read_json(out / "summary.json")["status"] == "finished"


def test_resume_of_a_finished_run_with_another_lr_is_a_one_line_warning(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train_digits(out, "--epochs", "1") == 0
    before = (out / "config.json").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--lr", "0.02"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"odenets train: warning: resuming {out} with changed settings ['lr']; they are not "
        "used: no epochs are left to train (1 done)"
    ]
    assert (out / "config.json").read_bytes() == before


def test_resume_with_another_model_is_refused_without_the_epochs_note(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train_digits(out, "--epochs", "1") == 0
    capsys.readouterr()
    rc = main(["train", "--resume", "--out", str(out), "--epochs", "3", "--model", "resnet20"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"odenets train: error: cannot resume {out}: it was trained with model 'tiny_net', but "
        "this run asks for 'resnet20'. Use another --out folder."
    ]


# --- DDP ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path, digits_folder, script):
    common = [
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--train-limit",
        "640",
        "--recipe",
        "digits",
        "--augment",
    ]
    single = fit(
        TrainConfig(
            model="tiny_net",
            dataset="folder",
            data_root=str(digits_folder),
            recipe="digits",
            lr=0.1,
            epochs=2,
            batch_size=64,
            train_limit=640,
            augment=True,
            out=str(tmp_path / "one"),
            progress=False,
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        *_tiny_args(tmp_path / "two", digits_folder),
        *common,
    ]
    done = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = read_run(tmp_path / "two")
    assert two.config["world_size"] == 2
    a, b = _weights(single.path / "final.safetensors"), _weights(two.path / "final.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    for m1, m2 in zip(single.metrics, two.metrics, strict=True):
        assert m2["train_loss"] == pytest.approx(m1["train_loss"], rel=1e-4)
        assert m2["test_acc"] == pytest.approx(m1["test_acc"], abs=2 / 359)


def test_restored_momentum_takes_the_layout_of_channels_last_weights(tmp_path):
    def build():
        torch.manual_seed(0)
        model = to_channels_last(odenets.create_model("resnet20"))
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    model, opt = build()
    F.cross_entropy(model(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    save_train_state(tmp_path, model=model, optimizer=opt, epoch=1, info={})
    fresh, fresh_opt = build()
    restore_train_state(*load_train_state(tmp_path), model=fresh, optimizer=fresh_opt)
    buffers = [fresh_opt.state[p]["momentum_buffer"] for p in fresh.parameters() if p.dim() == 4]
    assert buffers and all(b.is_contiguous(memory_format=torch.channels_last) for b in buffers)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(opt.state[p]["momentum_buffer"], fresh_opt.state[q]["momentum_buffer"])
