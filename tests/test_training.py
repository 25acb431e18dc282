"""Trainer: recipes, run folder, load_run, resume checks, model selection, NAIS hooks.

A tiny network (one conv, BatchNorm, a learnable coefficient) on the embedded 8x8 digits
keeps every run to about a second. The same source is executed in the subprocess tests of
test_training_resume.py.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import odenets
from odenets.checkpoint import load_safetensors, read_json, read_jsonl, sha256_file
from odenets.data import load_digits
from odenets.errors import CheckpointError
from odenets.training import (
    TrainConfig,
    fit,
    list_recipes,
    load_run,
    lr_at,
    read_run,
    resolve_config,
    resolve_milestones,
)
from odenets.training.fit import frozen_coefficients

TINY_SOURCE = '''
import torch
from torch import nn
from torch.nn import functional as F
from odenets.models.base import OdeNet
from odenets.models.registry import is_model, register_model


@torch.compiler.disable  # untraced: dynamo would guard on the counter and recompile each call
def _count_forward() -> None:
    TinyNet.calls += 1
    if TinyNet.calls == TinyNet.crash_at:
        raise RuntimeError("simulated crash")


class TinyNet(OdeNet):
    """conv 3x3 -> BN -> ReLU -> 2x2 pool, scaled by a learnable (1 + λ); linear head."""

    family = "tiny"
    depth = 2
    project_calls = 0
    calls = 0  # forward passes, to simulate a crash at a chosen one
    crash_at = None

    def __init__(self, *, num_classes=10, in_chans=1, width=8):
        super().__init__(in_chans=in_chans, mean=(0.5,), std=(0.25,))
        self.conv = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.lam = nn.Parameter(torch.tensor(0.2))
        self.fc = nn.Linear(width * 16, num_classes)

    def forward_features(self, x):
        _count_forward()
        x = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 4)  # (N, width, 4, 4)
        return x.flatten(1) * (1 + self.lam)

    def head(self, features):
        return self.fc(features)

    def coefficients(self):
        return self.lam.detach().reshape(1)

    def coefficient_parameters(self):
        return [self.lam]

    def project_(self):
        TinyNet.project_calls += 1


if not is_model("tiny_net"):
    @register_model
    def tiny_net(**kwargs):
        return TinyNet(**kwargs)
'''


@contextlib.contextmanager
def tiny_net_registered():
    """tiny_net in the registry (and one CPU thread) only while this module's tests run, so
    tests that walk the whole registry never meet it."""
    from odenets.models import registry

    exec(TINY_SOURCE, {})
    yield
    registry._MODELS.pop("tiny_net", None)


@pytest.fixture(autouse=True, scope="module")
def _tiny_net():
    with tiny_net_registered():
        yield


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        model="tiny_net",
        dataset="digits",
        out=str(tmp_path / "run"),
        epochs=3,
        batch_size=64,
        lr=0.2,
        progress=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def finished_run(_tiny_net, tmp_path_factory):
    """One 3-epoch run shared by the read-only tests."""
    tmp = tmp_path_factory.mktemp("finished")
    info = fit(tiny_config(tmp, epochs=6))
    return info


# --- recipes and schedules ------------------------------------------------------------------


def test_paper_recipes():
    assert {"paper-cifar10", "paper-cifar100", "digits"} <= set(list_recipes())
    c10 = resolve_config(TrainConfig(dataset="cifar10"), device_type="cpu")
    assert (c10.epochs, c10.milestones, c10.lr, c10.momentum) == (160, [80, 120], 0.1, 0.9)
    assert (c10.weight_decay, c10.batch_size, c10.gamma, c10.pad) == (1e-4, 128, 0.1, 2)
    assert c10.augment and not c10.nesterov and c10.coefficient_weight_decay is None
    c100 = resolve_config(TrainConfig(dataset="cifar100"), device_type="cpu")
    assert (c100.epochs, c100.milestones) == (300, [150, 225])


def test_schedule_matches_paper_and_scales():
    c = resolve_config(TrainConfig(recipe="paper-cifar10"), device_type="cpu")
    assert [lr_at(c, e) for e in (1, 80, 81, 120, 121, 160)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    short = resolve_config(TrainConfig(recipe="paper-cifar10", epochs=20), device_type="cpu")
    assert short.milestones == [10, 15]
    assert resolve_milestones([0.5, 0.75, 200], 300) == [150, 200, 225]
    assert resolve_milestones([0.5, 0.75], 160) == [80, 120]  # the paper's schedule, unchanged


@pytest.mark.parametrize(
    ("epochs", "lrs"),
    [(3, [0.1, 0.01, 0.001]), (4, [0.1, 0.1, 0.01, 0.001]), (5, [0.1, 0.1, 0.1, 0.01, 0.001])],
)
def test_few_epochs_still_take_each_decay(epochs, lrs):
    cfg = TrainConfig(dataset="digits", epochs=epochs, lr=0.1, gamma=0.1, milestones=[0.5, 0.75])
    cfg = resolve_config(cfg, device_type="cpu")
    got = [lr_at(cfg, e) for e in range(1, epochs + 1)]
    np.testing.assert_allclose(got, lrs)


def test_speed_switches_follow_device():
    cpu = resolve_config(TrainConfig(), device_type="cpu")
    cuda = resolve_config(TrainConfig(), device_type="cuda")
    assert cpu.channels_last and not (cpu.amp or cpu.compile) and cpu.deterministic
    assert cuda.amp and cuda.channels_last and cuda.compile and not cuda.deterministic
    off = resolve_config(TrainConfig(channels_last=False), device_type="cpu")
    assert off.channels_last is False


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"milestones": [1.5]}, "milestone"),
        ({"select": "best-test"}, "allow_test_selection"),
        ({"select": "best-val"}, "val_fraction"),
        ({"dataset": "mnist"}, "cifar10, cifar100, folder, digits"),
        ({"recipe": "paper-imagenet"}, "paper-cifar10"),
        ({"lr": -1.0}, "lr must be > 0"),
    ],
)
def test_bad_config_is_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(TrainConfig(**overrides), device_type="cpu")


# --- a finished run ----------------------------------------------------------------------


def test_run_folder_contents(finished_run):
    path = finished_run.path
    names = {p.name for p in path.iterdir()}
    assert names == {
        "config.json",
        "metrics.jsonl",
        "last.safetensors",
        "last.json",
        "final.safetensors",
        "summary.json",
        "digests.json",  # the SHA-256 of every weights file
        ".lock",  # the training's flock (released with its process)
    }
    digests = read_json(path / "digests.json")
    assert set(digests) == {"last.safetensors", "final.safetensors"}
    assert digests["final.safetensors"] == {"sha256": sha256_file(path / "final.safetensors")}
    config = read_json(path / "config.json")
    assert config["model"] == "tiny_net" and config["seed"] == 0
    assert config["dataset"]["name"] == "digits" and config["dataset"]["num_classes"] == 10
    assert config["dataset"]["in_chans"] == 1 and config["dataset"]["n_train"] == len(
        load_digits(split="train")[1]
    )
    assert config["odenets_version"] == odenets.__version__
    assert config["torch_version"] == torch.__version__ and config["device"] == "cpu"
    assert config["train"]["milestones"] == [3, 5] and config["train"]["recipe"] == "digits"
    metrics = finished_run.metrics
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert [m["lr"] for m in metrics] == pytest.approx([0.2, 0.2, 0.2, 0.02, 0.02, 0.002])
    for m in metrics:
        assert {"train_loss", "train_acc", "test_loss", "test_acc", "time_s"} <= set(m)
        assert 0.0 <= m["test_acc"] <= 1.0 and len(m["coefficients"]) == 1
    s = finished_run.summary
    assert s["status"] == "finished" and s["error"] is None
    assert (s["epochs_done"], s["epochs"]) == (6, 6)
    assert s["final_test_acc"] == metrics[-1]["test_acc"]
    assert s["final_test_acc"] > 0.9  # chance is 0.1


def test_load_run_reproduces_the_recorded_accuracy(finished_run):
    model = load_run(finished_run.path)
    assert not model.training
    images, labels = load_digits(split="test")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        acc = (model(x).argmax(1) == torch.from_numpy(labels)).float().mean().item()
    assert acc == pytest.approx(finished_run.summary["final_test_acc"], abs=1e-6)
    last = load_run(finished_run.path, which="last")
    for a, b in zip(model.state_dict().values(), last.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_read_run_matches_files(finished_run):
    info = read_run(finished_run.path)
    assert info.summary == finished_run.summary and info.metrics == finished_run.metrics


def test_last_checkpoint_holds_optimizer_and_rng(finished_run):
    tensors, meta = load_safetensors(finished_run.path / "last.safetensors")
    state = read_json(finished_run.path / "last.json")
    assert meta["epoch"] == "6" and state["epoch"] == 6
    assert {"rng.torch", "rng.numpy"} <= set(tensors)
    momentum = [k for k in tensors if k.startswith("optim.")]
    assert len(momentum) == 6 and all(k.endswith(".momentum_buffer") for k in momentum)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.002)


def test_project_is_called_after_every_step(tmp_path):
    tiny = odenets.create_model("tiny_net", in_chans=1)
    cls = type(tiny)
    cls.project_calls = 0
    fit(tiny_config(tmp_path, epochs=2))
    assert cls.project_calls == 2 * 23  # ceil(1437 / 64) steps per epoch


def test_training_skips_the_models_input_range_check(tmp_path, monkeypatch):
    # The loaders yield uint8 / 255 images: training and its evaluation passes call the
    # model with check_input=False, so the hot path has no range reduction.
    import odenets.models.base as base

    calls = []
    real = base.check_pixel_range
    monkeypatch.setattr(base, "check_pixel_range", lambda x, **kw: calls.append(1) or real(x, **kw))
    info = fit(tiny_config(tmp_path, epochs=1))
    assert calls == [] and info.summary["status"] == "finished"
    odenets.create_model("tiny_net", in_chans=1)(torch.rand(2, 1, 8, 8))
    assert calls == [1]  # a direct call is checked


# --- refusing the wrong run --------------------------------------------------------------


def test_existing_folder_needs_resume(finished_run, tmp_path):
    with pytest.raises(CheckpointError, match="already holds a run"):
        fit(tiny_config(tmp_path, out=str(finished_run.path)))


def test_resume_of_finished_run_changes_nothing(finished_run):
    before = (finished_run.path / "final.safetensors").read_bytes()
    info = fit(tiny_config(finished_run.path, out=str(finished_run.path), epochs=6, resume=True))
    assert info.summary == finished_run.summary
    assert (finished_run.path / "final.safetensors").read_bytes() == before


def test_resume_with_no_epochs_left_keeps_config_json(finished_run):
    before = (finished_run.path / "config.json").read_bytes()
    config = tiny_config(finished_run.path, out=str(finished_run.path), epochs=6, lr=0.02)
    with pytest.warns(UserWarning, match=r"settings \['lr'\]; they are not used: no epochs"):
        info = fit(dataclasses.replace(config, resume=True))
    assert info.summary == finished_run.summary
    assert (finished_run.path / "config.json").read_bytes() == before


@pytest.mark.parametrize(
    "overrides, what",
    [
        ({"model": "resnet20"}, "model"),
        ({"model_kwargs": {"width": 4}}, "model_kwargs"),
        ({"train_limit": 500}, "dataset"),
    ],
)
def test_resume_refuses_another_model_or_dataset(tmp_path, overrides, what):
    fit(tiny_config(tmp_path, epochs=1))
    config = tiny_config(tmp_path, epochs=2, resume=True, **overrides)
    with pytest.raises(CheckpointError, match=f"trained with {what}"):
        fit(config)


def test_corrupt_checkpoint_is_refused_on_resume(tmp_path):
    fit(tiny_config(tmp_path, epochs=1))
    path = tmp_path / "run" / "last.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        fit(tiny_config(tmp_path, epochs=2, resume=True))
    path.write_bytes(bytes(data[:-1000]))
    with pytest.raises(CheckpointError, match="truncated"):
        fit(tiny_config(tmp_path, epochs=2, resume=True))


def test_stop_between_the_two_checkpoint_writes(tmp_path):
    """last.json one epoch behind last.safetensors: the safetensors file wins."""
    fit(tiny_config(tmp_path, epochs=1, milestones=[5]))
    run = tmp_path / "run"
    old_json = (run / "last.json").read_text()
    with pytest.warns(UserWarning, match=r"2 epochs instead of 1; .* drops after epochs \[5\]"):
        fit(tiny_config(tmp_path, epochs=2, milestones=[5], resume=True))
    reference = load_safetensors(run / "final.safetensors")[0]
    # Rewind: epoch-2 weights but the epoch-1 last.json, and no final weights yet.
    (run / "last.json").write_text(old_json)
    (run / "final.safetensors").unlink()
    with pytest.warns(UserWarning, match="stopped between the two writes"):
        info = fit(tiny_config(tmp_path, epochs=2, milestones=[5], resume=True))
    assert info.summary["status"] == "finished"
    again = load_safetensors(run / "final.safetensors")[0]
    assert all(torch.equal(reference[k], again[k]) for k in reference)


def test_pickle_in_run_folder_is_ignored(finished_run, tmp_path):
    from test_checkpoint import _Marker

    marker = tmp_path / "pwned"
    (tmp_path / "model.pt").write_bytes(__import__("pickle").dumps(_Marker(str(marker))))
    with pytest.raises(CheckpointError, match="pickle"):
        load_run(tmp_path / "model.pt")
    assert not marker.exists()


# --- model selection ---------------------------------------------------------------------


def test_best_val_selection(tmp_path):
    info = fit(tiny_config(tmp_path, epochs=4, val_fraction=0.2, select="best-val"))
    val = [m["val_acc"] for m in info.metrics]
    best = int(np.argmax(val)) + 1
    assert info.summary["selected_epoch"] == best
    assert info.summary["final_val_acc"] == max(val)
    n_full = len(load_digits(split="train")[1])
    n_val = info.config["dataset"]["n_val"]
    assert abs(n_val - 0.2 * n_full) <= 5  # rounded per class (stratified)
    assert info.config["dataset"]["n_train"] == n_full - n_val
    final = load_safetensors(info.path / "final.safetensors")[0]
    chosen = load_safetensors(info.path / "best.safetensors")[0]
    assert all(torch.equal(final[k], chosen[k]) for k in final)


def test_coefficient_weight_decay_exemption(tmp_path):
    """wd pulls λ toward 0 only when it applies to the coefficient (lr=0 for the rest)."""
    common = dict(epochs=1, lr=0.5, weight_decay=0.5, momentum=0.0)
    a = fit(tiny_config(tmp_path / "a", **common))
    b = fit(tiny_config(tmp_path / "b", coefficient_weight_decay=0.0, **common))
    assert a.metrics[0]["coefficients"] != b.metrics[0]["coefficients"]


def test_freeze_coefficients_keeps_the_initial_damping(tmp_path):
    """Frozen, the coefficient stays bit for bit at its initial 0.2 under weight decay and
    momentum while the other weights train; the same run unfrozen moves it."""
    common = dict(epochs=2, lr=0.5, weight_decay=0.5, momentum=0.9)
    frozen = fit(tiny_config(tmp_path / "a", freeze_coefficients=True, **common))
    free = fit(tiny_config(tmp_path / "b", **common))
    assert [m["coefficients"] for m in frozen.metrics] == [[0.2], [0.2]]  # as recorded
    assert free.metrics[-1]["coefficients"] != [0.2]
    weights = load_safetensors(frozen.path / "final.safetensors")[0]
    assert torch.equal(weights["lam"], torch.tensor(0.2))
    torch.manual_seed(0)
    start = odenets.create_model("tiny_net", num_classes=10, in_chans=1).state_dict()
    assert not torch.equal(weights["fc.weight"], start["fc.weight"])
    assert frozen.config["train"]["freeze_coefficients"] is True


def test_freeze_coefficients_needs_coefficients(tmp_path):
    """A network without interpolation coefficients is refused before any data is read; a
    network of one's own built from In-ResNet blocks has them; the setting must be a switch
    and says that coefficient weight decay would do nothing beside it."""
    cfg = tiny_config(tmp_path, model="resnet20", freeze_coefficients=True)
    with pytest.raises(ValueError, match="resnet20 has no interpolation coefficients") as err:
        fit(cfg)
    assert "in_resnet_gating" in str(err.value) and "e.g. in_resnet110" in str(err.value)
    assert not (tmp_path / "run").exists()
    own = torch.nn.Sequential(odenets.InResNetBlock(8), odenets.InResNetBlock(8))
    assert len(frozen_coefficients(own, "own")) == 2
    with pytest.raises(ValueError, match="freeze_coefficients must be true or false; got 'no'"):
        resolve_config(tiny_config(tmp_path, freeze_coefficients="no"), device_type="cpu")
    both = tiny_config(tmp_path, freeze_coefficients=True, coefficient_weight_decay=0.0)
    with pytest.raises(ValueError, match="coefficient_weight_decay has no effect on frozen"):
        resolve_config(both, device_type="cpu")


def test_frozen_runs_resume_frozen_and_refuse_to_switch(tmp_path):
    """Resumed, a frozen run keeps its coefficients; switching the setting on a resume would
    leave a record that says one thing of epochs trained both ways, so it is refused (either
    way), as long as epochs are left to train."""
    common = dict(epochs=1, lr=0.5, weight_decay=0.5, momentum=0.9, milestones=[50])
    frozen = tiny_config(tmp_path / "a", freeze_coefficients=True, **common)
    fit(frozen)
    with pytest.warns(UserWarning, match="resuming with 2 epochs instead of 1"):
        info = fit(dataclasses.replace(frozen, epochs=2, resume=True))
    assert [m["coefficients"] for m in info.metrics] == [[0.2], [0.2]]
    for folder, switched in (("a", False), ("b", True)):
        if folder == "b":
            fit(tiny_config(tmp_path / folder, **common))
        cfg = tiny_config(tmp_path / folder, **{**common, "epochs": 3})
        cfg = dataclasses.replace(cfg, resume=True, freeze_coefficients=switched)
        with pytest.raises(CheckpointError, match=f"freeze_coefficients {switched}: its"):
            fit(cfg)


@pytest.mark.parametrize(
    "name", ["in_resnet20", "lambda_in_resnet20", "in_resnet_gating_sig20", "etd_resnet20"]
)
def test_frozen_coefficients_leave_every_other_gradient_as_it_was(name):
    """Freezing takes the coefficients out of autograd and changes no other gradient (the
    fused junctions skip the coefficient's gradient when it is not needed)."""
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    grads = []
    for freeze in (False, True):
        torch.manual_seed(1)
        model = odenets.create_model(name)
        frozen = frozen_coefficients(model, name) if freeze else []
        for p in frozen:
            p.requires_grad_(False)
        F.cross_entropy(model(x), y).backward()
        assert all(p.grad is None for p in frozen)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    loose, fixed = grads
    assert 0 < len(fixed) < len(loose)
    for n, g in fixed.items():
        torch.testing.assert_close(g, loose[n], rtol=0, atol=0)


def test_nais_model_metrics(tmp_path):
    info = fit(tiny_config(tmp_path, model="naisnet1", epochs=1, train_limit=128, test_limit=64))
    m = info.metrics[0]
    assert "coefficients" not in m
    assert m["depth_mean"] >= 1.0 and m["depth_max"] >= m["depth_mean"]
    assert 0.0 < m["spectral_radius"] <= 1.0 + 1e-4  # projected blocks stay stable


def test_config_json_is_valid_utf8_json(finished_run):
    text = (finished_run.path / "config.json").read_bytes().decode("utf-8")
    assert json.loads(text)["train"]["select"] == "final"


def test_no_warnings_on_a_clean_run(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fit(tiny_config(tmp_path, epochs=1, train_limit=256))
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 1


# --- real data --------------------------------------------------------------------------


@pytest.mark.slow
def test_cifar10_slice_accuracy_rises_well_above_chance(cifar10_jpeg_root, tmp_path):
    """2,000 CIFAR-10 training images (200 per class), 6 epochs: test accuracy > 35%."""
    root = tmp_path / "cifar_slice"
    for split, per_class in (("train", 200), ("test", 100)):
        for class_dir in sorted((cifar10_jpeg_root / split).iterdir()):
            (root / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:per_class]:
                (root / split / class_dir.name / image.name).symlink_to(image)
    info = fit(
        TrainConfig(
            model="tiny_net",
            model_kwargs={"width": 16},
            dataset="folder",
            data_root=str(root),
            recipe="short-cifar",
            epochs=6,
            lr=0.05,
            batch_size=64,
            out=str(tmp_path / "run"),
            progress=False,
        )
    )
    assert info.config["dataset"]["n_train"] == 2000 and info.config["dataset"]["n_test"] == 1000
    assert info.config["dataset"]["in_chans"] == 3
    assert info.summary["final_test_acc"] > 0.35  # chance: 0.10
    assert info.metrics[-1]["train_loss"] < info.metrics[0]["train_loss"]


# --- switches, progress and logging -------------------------------------------------------


def test_bf16_and_channels_last_on_cpu(tmp_path):
    info = fit(tiny_config(tmp_path, epochs=2, amp=True, channels_last=True))
    assert info.config["train"]["amp"] and info.config["train"]["channels_last"]
    assert info.summary["final_test_acc"] > 0.8  # bf16 autocast still learns the digits


def test_channels_last_with_untied_nais_blocks(tmp_path):
    # Untied NAIS blocks hold 5-D kernel stacks, which Module.to(memory_format=...) refuses.
    cfg = tiny_config(
        tmp_path,
        model="naisnet10",
        model_kwargs={"tied": False},
        epochs=1,
        train_limit=64,
        test_limit=32,
        channels_last=True,
    )
    info = fit(cfg)
    assert info.summary["status"] == "finished"
    assert info.config["train"]["channels_last"]


def test_progress_bar_and_log_lines(tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="odenets.training")
    fit(tiny_config(tmp_path, epochs=1, train_limit=256, progress=True))
    assert "epoch 1/1" in capsys.readouterr().err  # the tqdm bar (images/s, loss, acc)
    lines = [r.getMessage() for r in caplog.records if r.name == "odenets.training"]
    cfg = tiny_config(tmp_path, epochs=1)
    # The model leads each epoch line, so the lines of several runs are told apart.
    assert len(lines) == 1 and lines[0].startswith(f"{cfg.model}  epoch 1/1")
    assert "test_acc" in lines[0]


@pytest.mark.gpu
def test_cuda_fast_path_defaults_learn(tmp_path):
    info = fit(tiny_config(tmp_path, epochs=3, device="cuda"))
    train = info.config["train"]
    assert train["amp"] and train["channels_last"] and train["compile"]
    assert not train["deterministic"]
    assert info.summary["final_test_acc"] > 0.8


def test_cpu_sync_batchnorm_matches_batchnorm_in_a_group_of_one(tmp_path):
    """With one rank the synchronised statistics are the batch's own: outputs, gradients
    and running statistics equal nn.BatchNorm2d's."""
    import torch.distributed as dist

    from odenets.training.distributed import convert_sync_batchnorm

    torch.manual_seed(1)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    synced = convert_sync_batchnorm(copy.deepcopy(plain), "cpu")
    assert type(synced[1]).__name__ == "CpuSyncBatchNorm"
    x = torch.randn(6, 3, 7, 7)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        outputs = []
        for net in (plain, synced):
            y = net(x)
            (y * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
            outputs.append((y, [p.grad for p in net.parameters()], net[1].running_var))
    finally:
        dist.destroy_process_group()
    (y0, g0, v0), (y1, g1, v1) = outputs
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_crash_inside_an_epoch_resumes_from_the_mid_epoch_checkpoint(tmp_path):
    cls = type(odenets.create_model("tiny_net", in_chans=1))
    reference = fit(tiny_config(tmp_path / "ref", epochs=2, checkpoint_steps=5))
    # 23 training steps and one evaluation batch per epoch: crash in step 13 of epoch 2.
    cls.calls, cls.crash_at = 0, 24 + 13
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tiny_config(tmp_path, epochs=2, checkpoint_steps=5))
    cls.crash_at = None
    state = read_json(tmp_path / "run" / "last.json")
    assert state["epoch"] == 1 and state["partial_epoch"]["step"] == 10
    assert state["global_step"] == 23 + 10
    # fewer epochs than the checkpoint has begun would save half an epoch as the final weights
    with pytest.raises(CheckpointError, match="inside epoch 2; give --epochs 2 or more"):
        fit(tiny_config(tmp_path, epochs=1, checkpoint_steps=5, resume=True))
    assert read_json(tmp_path / "run" / "last.json") == state
    info = fit(tiny_config(tmp_path, epochs=2, checkpoint_steps=5, resume=True))
    final = load_safetensors(info.path / "final.safetensors")[0]
    expected = load_safetensors(reference.path / "final.safetensors")[0]
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    for got, want in zip(info.metrics, reference.metrics, strict=True):
        assert got["train_loss"] == want["train_loss"] and got["train_acc"] == want["train_acc"]
        assert got["test_acc"] == want["test_acc"]


def test_resume_with_fewer_epochs_than_trained_is_refused(tmp_path):
    fit(tiny_config(tmp_path, epochs=2))
    with pytest.raises(CheckpointError, match="after epoch 2; give --epochs 2 or more"):
        fit(tiny_config(tmp_path, epochs=1, resume=True))


def test_kill_between_final_weights_and_summary(tmp_path):
    from odenets.checkpoint import write_json_atomic

    info = fit(tiny_config(tmp_path, epochs=1))
    final, meta = load_safetensors(info.path / "final.safetensors")
    write_json_atomic(info.path / "summary.json", {**info.summary, "status": "running"})
    again = fit(tiny_config(tmp_path, epochs=1, resume=True))
    assert again.summary["status"] == "finished" and again.metrics == info.metrics
    rewritten, meta2 = load_safetensors(info.path / "final.safetensors")
    assert meta2 == meta and all(torch.equal(rewritten[k], final[k]) for k in final)


def test_best_test_selection_needs_the_flag_and_picks_the_best_test_epoch(tmp_path):
    info = fit(tiny_config(tmp_path, epochs=3, select="best-test", allow_test_selection=True))
    test = [m["test_acc"] for m in info.metrics]
    assert info.summary["selected_epoch"] == int(np.argmax(test)) + 1
    assert info.summary["final_test_acc"] == max(test)


def test_coefficients_held_at_zero_by_their_relu_are_reported(tmp_path, caplog):
    """λ-In-ResNet started at λ = 0 exactly: ReLU(k) at k = 0 passes no gradient and weight
    decay leaves 0 where it is, so every coefficient stays 0 and the network trains as a
    plain ResNet. The first epoch says so once (a warning), later epochs do not repeat it."""
    import logging

    from odenets.training.metrics import inactive_coefficients, inactive_message

    cfg = tiny_config(
        tmp_path, model="lambda_in_resnet20", model_kwargs={"lambda_init": [0.0, 0.0]},
        epochs=2, train_limit=128, test_limit=32,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="odenets"):
        fit(cfg)
    said = [
        r.getMessage() for r in caplog.records if "interpolation coefficients" in r.getMessage()
    ]
    assert said == [
        "epoch 1: all 6 interpolation coefficients are 0: while they are, their ReLU passes "
        "no gradient and the network trains as a plain ResNet (the raw coefficients move by "
        "weight decay alone; --freeze-coefficients keeps them at their initial values)"
    ]
    # Frozen at 0 on purpose: nothing to warn about.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="odenets"):
        fit(dataclasses.replace(cfg, out=str(tmp_path / "held"), freeze_coefficients=True))
    assert not [r for r in caplog.records if "interpolation coefficients" in r.getMessage()]
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["coefficients"] for r in rows] == [[0.0] * 6, [0.0] * 6]
    # Some held at 0: named by block; none: nothing to say.
    record = {"epoch": 4, "coefficients": [0.2, 0.0, 0.31, 0.0]}
    assert inactive_coefficients(record) == [1, 3]
    assert inactive_message(record).startswith(
        "epoch 4: 2 of 4 interpolation coefficients are 0 (interpolating blocks 1, 3)"
    )
    assert inactive_message({"epoch": 1, "coefficients": [0.2]}) == ""
    assert inactive_coefficients({"epoch": 1}) == [] and inactive_coefficients(None) == []
