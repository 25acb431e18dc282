"""evaluate(): the eval.json structure, ensembles, sanity checks, shards, and the CLI."""

from __future__ import annotations

import copy
import functools
import importlib
import json
import logging

import pytest
import torch
from _robustness_models import TinyNet, digits, train_tiny

import odenets
import odenets.progress
from odenets.models.base import channels_last_weights
from odenets.robustness import (
    Ensemble,
    correct_mask,
    create_attack,
    evaluate,
    format_table,
    merge_shards,
    shard_slice,
)
from odenets.robustness.checks import sanity_checks

FAST = {"pgd": {"steps": 5, "alpha": 0.04}, "apgd_ce": {"steps": 10}}
TOP_KEYS = {
    "runs", "models", "ensemble", "dataset", "split", "n", "seed", "odenets_version",
    "torch_version", "device", "clean", "noise", "attacks", "worst_case", "checks",
    "channels_last",
}  # fmt: skip
ATTACK_KEYS = {
    "name", "threat_model", "eps", "eps_255", "steps", "alpha", "restarts", "accuracy",
    "correct", "n",
}  # fmt: skip


@functools.lru_cache(maxsize=1)
def _trained():
    return train_tiny()


@pytest.fixture(scope="module")
def data():
    x, y = digits("test")
    return x[:90], y[:90]


def _run(models, x, y, **kw):
    opts = dict(
        attacks=("fgsm", "pgd", "apgd_ce"),
        eps_list=(0.05, 0.1),
        attack_options=FAST,
        batch_size=30,
    )
    opts.update(kw)
    return evaluate(models, x, y, **opts)


def test_eval_json_structure_and_consistency(data):
    x, y = data
    res = _run(_trained(), x, y, threat_model=["pixel", "normalized"], noise="generated")
    assert TOP_KEYS <= set(res)
    json.dumps(res, allow_nan=False)  # plain JSON
    assert res["n"] == 90 and res["models"] == ["tinynet"] and not res["ensemble"]
    assert res["clean"] == res["counts"]["clean"] / 90 > 0.9
    assert len(res["attacks"]) == 2 * 2 * 3
    for a in res["attacks"]:
        assert ATTACK_KEYS <= set(a)
        assert a["accuracy"] == a["correct"] / a["n"]
        assert a["eps_255"] == pytest.approx(a["eps"] * 255)
    noise = res["noise"]
    assert noise["source"] == "generated"
    assert set(noise["per_corruption"]) == {"gaussian", "shot", "impulse", "speckle"}
    for per in noise["per_corruption"].values():
        assert set(per) == {"1", "2", "3", "4", "5", "mean"}
        assert per["mean"] == pytest.approx(sum(per[s] for s in "12345") / 5)
    assert noise["mean"] == pytest.approx(
        sum(p["mean"] for p in noise["per_corruption"].values()) / 4
    )
    for w in res["worst_case"]:
        same = [
            a["accuracy"]
            for a in res["attacks"]
            if a["eps"] == w["eps"] and a["threat_model"] == w["threat_model"]
        ]
        assert w["accuracy"] <= min(same + [res["clean"]])
        assert w["attacks"] == ["fgsm", "pgd", "apgd_ce"]
    checks = {c["name"]: c["ok"] for c in res["checks"]}
    assert checks == {
        "attack_not_above_clean": True,
        "multi_step_not_weaker_than_fgsm": True,
        "accuracy_non_increasing_in_eps": True,
        "eps1_accuracy_near_zero": True,
        "gradients_finite": True,
        "apgd_close_to_pgd": True,
    }
    table = format_table(res)
    assert "| worst case | normalized |" in table and "ε=25.5/255" in table


def test_channels_last_changes_the_layout_not_the_result(data):
    x, y = data
    model = copy.deepcopy(_trained())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = _run(model, x, y, channels_last=False, checks=False)
    b = _run(model, x, y, checks=False)
    assert (a["channels_last"], b["channels_last"]) == (False, True)
    assert a["clean"] == b["clean"]
    for ea, eb in zip(a["attacks"], b["attacks"], strict=True):
        # float32 rounding of another summation order may flip a sample on the boundary
        assert abs(ea["correct"] - eb["correct"]) <= 2, (ea, eb)
    # the model leaves evaluate as it came: same values, same (contiguous) layout
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]) and value.is_contiguous(), key


def test_channels_last_weights_restores_layout_and_keeps_changes():
    model = TinyNet()
    conv = model.conv2.weight
    with channels_last_weights([model, model]):  # a module twice is converted once
        assert conv.is_contiguous(memory_format=torch.channels_last)
        assert not conv.is_contiguous()
        with torch.no_grad():
            conv.add_(1.0)
        inside = conv.detach().clone()
    assert conv.is_contiguous() and torch.equal(conv.detach(), inside)


@pytest.mark.parametrize("copies", [2, 4])
def test_ensemble_of_copies_equals_the_single_model(data, copies):
    x, y = data
    single = _trained()
    members = [copy.deepcopy(single) for _ in range(copies)]
    kw = dict(threat_model=["pixel", "normalized"], checks=False)
    one, ens = _run(single, x, y, **kw), _run(members, x, y, **kw)
    assert ens["ensemble"] and ens["models"] == ["tinynet"] * copies
    assert ens["clean"] == one["clean"]
    assert [a["correct"] for a in ens["attacks"]] == [a["correct"] for a in one["attacks"]]
    assert [w["correct"] for w in ens["worst_case"]] == [w["correct"] for w in one["worst_case"]]


def test_ensemble_is_the_log_of_the_mean_softmax(data):
    x, _ = data
    a, b = _trained(), TinyNet().eval()
    with torch.no_grad():
        out = Ensemble([a, b])(x)
        expected = torch.log((a(x).softmax(1) + b(x).softmax(1)) / 2)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(out.exp().sum(1), torch.ones(len(x)))


def test_ensemble_refuses_normalised_images_unless_told_they_are_checked(data):
    x, _ = data
    ens = Ensemble([_trained(), TinyNet().eval()])
    normalised = (x - 0.3) / 0.4
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\]; got values in \[-0.75, 1.75\]"):
        ens(normalised)
    with torch.no_grad():
        out = ens(normalised, check_input=False)
        expected = ens.forward_normalized(ens.normalize(normalised))
    torch.testing.assert_close(out, expected)


def test_ensemble_without_shared_normalisation_refuses_normalized_space(data):
    x, y = data
    other = TinyNet().eval()
    other.normalize.mean.fill_(0.5)
    ens = Ensemble([_trained(), other])
    with pytest.raises(ValueError, match="normalise their input the same way"):
        evaluate(ens, x, y, attacks=["fgsm"], eps_list=[0.1], threat_model="normalized")


def test_shards_merge_to_the_unsharded_result_exactly(data, monkeypatch):
    x, y = data
    # the ε = 1 check covers the first 40 of the 90 samples: shards 0 and 1 share them
    evaluate_module = importlib.import_module("odenets.robustness.evaluate")
    monkeypatch.setattr(evaluate_module, "EPS1_SAMPLES", 40)
    kw = dict(noise="generated", gaussian_sigmas=[0.2], seed=7)
    whole = _run(_trained(), x, y, **kw)
    shards = []
    for i in range(3):
        start, stop = shard_slice(len(x), i, 3)
        shard = {"index": i, "count": 3, "start": start, "stop": stop, "total": len(x)}
        idx = torch.arange(start, stop)
        shards.append(
            _run(_trained(), x[start:stop], y[start:stop], indices=idx, info={"shard": shard}, **kw)
        )
    merged = merge_shards(shards[::-1])
    for key in ("n", "clean", "noise", "gaussian"):
        assert merged[key] == whole[key]
    for key in ("attacks", "worst_case"):
        assert [e["correct"] for e in merged[key]] == [e["correct"] for e in whole[key]]
        assert [e["accuracy"] for e in merged[key]] == [e["accuracy"] for e in whole[key]]
    assert merged["counts"]["noise"] == whole["counts"]["noise"]
    assert merged["counts"]["eps1"] == whole["counts"]["eps1"]
    assert whole["counts"]["eps1"]["n"] == 40 and shards[2]["counts"]["eps1"]["n"] == 0
    assert [c["ok"] for c in merged["checks"]] == [c["ok"] for c in whole["checks"]]
    # Per sample too (the shards were given in reverse): each record joined in shard order.
    assert merged["samples"] == whole["samples"]
    assert whole["samples"]["indices"] == list(range(len(x)))
    for key in ("attacks", "worst_case"):
        assert [e["samples"] for e in merged[key]] == [e["samples"] for e in whole[key]]
    older = copy.deepcopy(shards[1])  # written before eval.json recorded samples
    older.pop("samples")
    for entry in (*older["attacks"], *older["worst_case"]):
        entry.pop("samples")
    mixed = merge_shards([shards[0], older, shards[2]])
    assert "samples" not in mixed and mixed["clean"] == whole["clean"]
    assert not any("samples" in e for e in (*mixed["attacks"], *mixed["worst_case"]))
    with pytest.raises(ValueError, match="exactly once"):
        merge_shards(shards[:2])
    with pytest.raises(ValueError, match="exactly once"):
        merge_shards([shards[0], shards[0], shards[2]])
    # a shard of another evaluation set (another --limit) does not merge
    other = copy.deepcopy(shards[1])
    other["shard"].update(total=300, start=100, stop=200)
    with pytest.raises(ValueError, match="different sizes"):
        merge_shards([shards[0], other, shards[2]])
    retrained = copy.deepcopy(shards[1])
    retrained["weights"] = [{"file": "final.safetensors", "sha256": "0" * 64}]
    with pytest.raises(ValueError, match="disagree on 'weights'"):
        merge_shards([shards[0], retrained, shards[2]])
    # A key eval.json gained later is compared only where both shards have it.
    crafted = [copy.deepcopy(s) for s in shards]
    for s in crafted:
        s["transfer_weights"] = [{"file": "final.safetensors", "sha256": "1" * 64}]
    older = copy.deepcopy(shards[1])
    older.pop("transfer_weights", None)
    assert merge_shards([crafted[0], older, crafted[2]])["clean"] == whole["clean"]
    crafted[1]["transfer_weights"] = [{"file": "final.safetensors", "sha256": "2" * 64}]
    with pytest.raises(ValueError, match="disagree on 'transfer_weights'"):
        merge_shards(crafted)
    gap = copy.deepcopy(shards[1])
    gap["shard"]["start"] += 1
    with pytest.raises(ValueError, match="expected to start at 30"):
        merge_shards([shards[0], gap, shards[2]])


def test_per_sample_records_agree_with_the_counts(data):
    """eval.json's per-sample records: each entry's "1"s are its correct count; a robust
    sample is also correct clean; the worst case is the samples every attack left correct;
    the noise record counts, per sample, the noisy versions classified correctly."""
    x, y = data
    ev = _run(_trained(), x, y, noise="generated", seed=3)
    samples = ev["samples"]
    assert samples["indices"] == list(range(len(x)))
    clean = [c == "1" for c in samples["clean"]]
    assert sum(clean) == ev["counts"]["clean"]
    for entry in ev["attacks"]:
        bits = [c == "1" for c in entry["samples"]]
        assert len(bits) == len(x) and sum(bits) == entry["correct"]
        assert all(c for c, b in zip(clean, bits, strict=True) if b)
    for worst in ev["worst_case"]:
        at = [e for e in ev["attacks"] if e["eps"] == worst["eps"]]
        every = ["1" if all(e["samples"][i] == "1" for e in at) else "0" for i in range(len(x))]
        assert (
            worst["samples"] == "".join(every) and worst["samples"].count("1") == worst["correct"]
        )
    noise = samples["noise"]
    conditions = sum(len(by) for by in ev["counts"]["noise"].values())
    assert len(noise) == len(x) and all(0 <= c <= conditions for c in noise)
    assert sum(noise) == sum(c for by in ev["counts"]["noise"].values() for c in by.values())


def test_shard_slices_partition_the_set():
    cuts = [shard_slice(10, i, 3) for i in range(3)]
    assert cuts == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError, match="0 <= i < n"):
        shard_slice(10, 3, 3)


def _fake(attacks, clean=0.9):
    return {
        "clean": clean,
        "counts": {"eps1": {"correct": 0, "n": 10}, "nonfinite_grads": 0},
        "attacks": [
            {"name": n, "threat_model": "pixel", "eps": e, "eps_255": e * 255, "accuracy": a}
            for n, e, a in attacks
        ],
    }


def test_checks_flag_suspicious_numbers():
    res = _fake(
        [
            ("fgsm", 0.03, 0.40),
            ("pgd", 0.03, 0.50),  # multi-step far weaker than FGSM
            ("apgd_ce", 0.03, 0.20),  # APGD far stronger than PGD: gradient masking?
            ("fgsm", 0.06, 0.45),  # accuracy rises with ε
            ("pgd", 0.06, 0.95),  # above clean
        ]
    )
    res["counts"]["eps1"] = {"correct": 5, "n": 10}
    res["counts"]["nonfinite_grads"] = 2
    assert {c["name"]: c["ok"] for c in sanity_checks(res)} == {
        "attack_not_above_clean": False,
        "multi_step_not_weaker_than_fgsm": False,
        "accuracy_non_increasing_in_eps": False,
        "eps1_accuracy_near_zero": False,
        "gradients_finite": False,
        "apgd_close_to_pgd": False,
    }
    fine = _fake(
        [
            ("fgsm", 0.03, 0.4),
            ("pgd", 0.03, 0.2),
            ("apgd_ce", 0.03, 0.19),
            ("fgsm", 0.06, 0.3),
            ("pgd", 0.06, 0.1),
        ]
    )
    assert all(c["ok"] is True for c in sanity_checks(fine))


def test_a_check_with_nothing_to_compare_is_not_run_never_passed(tmp_path):
    """FGSM alone at one radius: no multi-step attack beside FGSM, no second radius, no
    PGD/APGD pair. Those checks say "not run" (ok None), and the table and the report's
    list of failed checks read them so."""
    from odenets.experiments.results import RunRecord, failed_checks

    res = _fake([("fgsm", 0.03, 0.4)])
    checks = {c["name"]: c for c in sanity_checks(res)}
    assert {k: c["ok"] for k, c in checks.items()} == {
        "attack_not_above_clean": True,
        "multi_step_not_weaker_than_fgsm": None,
        "accuracy_non_increasing_in_eps": None,
        "eps1_accuracy_near_zero": True,
        "gradients_finite": True,
        "apgd_close_to_pgd": None,
    }
    for name in ("multi_step_not_weaker_than_fgsm", "apgd_close_to_pgd"):
        assert checks[name]["detail"].startswith("not run: needs ")
    # No attack at all: nothing was checked.
    bare = {**_fake([]), "counts": {"eps1": None, "nonfinite_grads": 0}}
    assert all(c["ok"] is None for c in sanity_checks(bare))
    shown = {"models": ["m"], "ensemble": False, "n": 10, "seed": 0, "attacks": []}
    table = format_table({**res, **shown, "checks": list(checks.values())})
    assert "- [not run] apgd_close_to_pgd: not run: needs PGD and APGD" in table
    assert "[ok] apgd_close_to_pgd" not in table
    record = RunRecord(tmp_path, {}, "finished", evaluation={"checks": list(checks.values())})
    assert failed_checks([record]) == []


def test_bad_attack_name_fails_before_any_work(data):
    x, y = data
    with pytest.raises(KeyError, match="Did you mean 'pgd'"):
        evaluate(_trained(), x, y, attacks=["pgdd"], eps_list=[0.1])
    with pytest.raises(ValueError, match="Did you mean 8/255"):
        evaluate(_trained(), x, y, attacks=["pgd"], eps_list=[8])


# --- the command line ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from odenets.training import TrainConfig, fit

    out = tmp_path_factory.mktemp("runs") / "resnet20-digits"
    cfg = TrainConfig(
        model="resnet20", dataset="digits", epochs=1, train_limit=64, batch_size=32,
        out=str(out), progress=False,
    )  # fmt: skip
    fit(cfg)
    return out


def test_cli_evaluate_shards_and_merge(run_dir, tmp_path, capsys):
    from odenets.cli import main

    common = ["--limit", "40", "--attacks", "fgsm,pgd", "--eps", "4,8", "--seed", "3"]
    common += ["--noise", "--threat-model", "pixel,normalized", "--batch-size", "16"]
    assert main(["evaluate", str(run_dir), *common]) == 0
    table = capsys.readouterr().out
    assert "| fgsm | pixel |" in table and "| worst case | normalized |" in table
    whole = json.loads((run_dir / "eval.limit-40.json").read_text())
    assert whole["runs"] == [str(run_dir)] and whole["dataset"] == "digits"
    assert whole["n"] == 40 and whole["models"] == ["resnet20"]
    shard_files = []
    for i in range(2):
        path = tmp_path / f"s{i}.json"
        assert (
            main(["evaluate", str(run_dir), *common, "--shard", f"{i + 1}/2", "--out", str(path)])
            == 0
        )
        shard_files.append(str(path))
    out = tmp_path / "merged.json"
    assert main(["evaluate", "--merge", *shard_files, "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert merged["clean"] == whole["clean"] and merged["noise"] == whole["noise"]
    assert [a["correct"] for a in merged["attacks"]] == [a["correct"] for a in whole["attacks"]]


def test_a_grid_job_and_the_command_give_one_evaluation(run_dir, tmp_path, capsys):
    from odenets.cli import main
    from odenets.experiments.job_runner import evaluate_run
    from odenets.experiments.presets import EvalSettings

    settings = EvalSettings(attacks=("fgsm", "pgd"), eps=(4.0, 8.0), noise=True, limit=20, steps=2)
    grid = evaluate_run([run_dir], settings)
    out = tmp_path / "eval.json"
    flags = ["--attacks", "fgsm,pgd", "--eps", "4,8", "--noise", "--limit", "20", "--steps", "2"]
    assert main(["evaluate", str(run_dir), *flags, "--out", str(out)]) == 0
    command = json.loads(out.read_text())

    def timeless(value):
        if isinstance(value, dict):
            return {k: timeless(v) for k, v in value.items() if k not in ("time_s", "wall_time_s")}
        return [timeless(v) for v in value] if isinstance(value, list) else value

    assert grid["n"] == 20 and [a["steps"] for a in grid["attacks"]] == [1, 2, 1, 2]
    assert timeless(json.loads(json.dumps(grid))) == timeless(command)


def test_cli_limit_and_shard_leave_eval_json_alone(run_dir, capsys):
    from odenets.cli import main

    before = (run_dir / "eval.json").read_bytes() if (run_dir / "eval.json").exists() else None
    quick = ["--attacks", "", "--no-checks"]
    assert main(["evaluate", str(run_dir), *quick, "--limit", "20"]) == 0
    assert main(["evaluate", str(run_dir), *quick, "--limit", "20", "--shard", "1/2"]) == 0
    assert "eval.limit-20.json" in capsys.readouterr().out
    assert json.loads((run_dir / "eval.limit-20.json").read_text())["n"] == 20
    assert json.loads((run_dir / "eval.limit-20.shard-1-of-2.json").read_text())["n"] == 10
    after = (run_dir / "eval.json").read_bytes() if (run_dir / "eval.json").exists() else None
    assert after == before


def test_cli_shards_count_from_one_as_in_reproduce(run_dir, capsys):
    from odenets.cli import main

    quick = ["--attacks", "", "--no-checks", "--limit", "20"]
    assert main(["evaluate", str(run_dir), *quick, "--shard", "2/2"]) == 0
    shard = json.loads((run_dir / "eval.limit-20.shard-2-of-2.json").read_text())["shard"]
    assert (shard["index"], shard["start"], shard["stop"]) == (1, 10, 20)  # 0-based inside
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["evaluate", str(run_dir), *quick, "--shard", "0/2"])
    assert "--shard i/n needs 1 <= i <= n; got '0/2'" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_cli_refuses_an_unwritable_out_before_any_work(run_dir, tmp_path, capsys, where):
    from odenets.cli import main

    (tmp_path / "file.json").write_text("{}")
    out = tmp_path if where == "folder" else tmp_path / "file.json" / "eval.json"
    # A data root that does not exist: the check must come before the data is read.
    args = ["evaluate", str(run_dir), "--out", str(out), "--data-root", str(tmp_path / "none")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("odenets evaluate: error: --out ")
    assert ("not a folder" if where == "folder" else "is a file, not a folder") in err


def test_cli_help_lists_gradient_attacks_and_refuses_noises_as_attacks(run_dir, capsys):
    from odenets.cli import main

    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    listed = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("attacks:")
    )
    assert "fgsm" in listed and "apgd_ce" in listed
    assert "gaussian" not in listed and "shot_noise" not in listed
    assert main(["evaluate", str(run_dir), "--attacks", "fgsm,gaussian_noise"]) == 1
    err = capsys.readouterr().err
    assert "'gaussian_noise' is a noise" in err and "--noise" in err and "--gaussian-sigma" in err
    assert "takes no eps" not in err


@pytest.mark.parametrize("eps", ["300", "-8"])
def test_cli_rejects_eps_outside_0_255_in_the_users_numbers(run_dir, capsys, eps):
    from odenets.cli import main

    assert main(["evaluate", str(run_dir), "--eps", eps, "--out", "unused.json"]) == 1
    err = capsys.readouterr().err
    assert f"--eps takes radii in 1/255 units from 0 to 255 (--eps 8 is 8/255); got {eps}" in err


def test_cli_warns_that_a_fractional_eps_is_in_255ths(run_dir, tmp_path, capsys):
    from odenets.cli import main

    out = tmp_path / "e.json"
    args = ["evaluate", str(run_dir), "--attacks", "fgsm", "--eps", "0.03,8", "--limit", "10"]
    assert main([*args, "--no-checks", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: --eps 0.03 means 0.03/255" in err and "give --eps 7.65" in err
    assert "--eps 8 " not in err
    assert [a["eps_255"] for a in json.loads(out.read_text())["attacks"]] == pytest.approx(
        [0.03, 8]
    )


def test_cli_warns_about_an_unfinished_run_and_records_its_epoch(run_dir, tmp_path, capsys):
    import shutil

    from odenets.checkpoint import sha256_file
    from odenets.cli import main

    run = tmp_path / "unfinished"
    shutil.copytree(run_dir, run)
    (run / "final.safetensors").unlink()  # as a run stopped before its end
    args = ["evaluate", str(run), "--attacks", "", "--no-checks", "--out", str(tmp_path / "e")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"warning: {run} has not finished training; evaluating last.safetensors (epoch 1 " in err
    scored = json.loads((tmp_path / "e").read_text())["weights"]
    assert scored == [
        {
            "run": str(run),
            "file": "last.safetensors",
            "epoch": 1,
            "epochs": 1,
            "sha256": sha256_file(run / "last.safetensors"),
        }
    ]


def test_cli_is_silent_about_a_finished_run(run_dir, tmp_path, capsys):
    from odenets.cli import main

    args = ["evaluate", str(run_dir), "--attacks", "", "--no-checks", "--out", str(tmp_path / "e")]
    assert main(args) == 0
    assert "warning" not in capsys.readouterr().err
    assert json.loads((tmp_path / "e").read_text())["weights"][0]["file"] == "final.safetensors"


def _write_cifar_c(root, images, labels):
    """Fake official files: severity s holds the clean images darkened by 10·(s-1) levels."""
    import numpy as np

    sev = [np.clip(images.astype(int) - 10 * s, 0, 255).astype(np.uint8) for s in range(5)]
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"):
        np.save(root / f"{name}.npy", np.concatenate(sev))
    np.save(root / "labels.npy", np.tile(labels, 5))


def test_official_noise_files_are_indexed_by_sample(tmp_path):
    from odenets.data import load_digits
    from odenets.errors import DataError

    images, labels = load_digits(split="test")
    _write_cifar_c(tmp_path, images, labels)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(labels)
    idx = torch.arange(100, 160)  # a slice of the test set, as a shard would be
    res = evaluate(
        _trained(), x[idx], y[idx], attacks=[], noise="official", noise_root=tmp_path,
        indices=idx,
    )  # fmt: skip
    per = res["noise"]["per_corruption"]
    assert res["noise"]["source"] == "official"
    assert per["gaussian"]["1"] == res["clean"]  # severity 1 of the fake files is clean
    assert per["gaussian"] == per["speckle"]
    with pytest.raises(DataError, match="differ from the test labels"):
        evaluate(_trained(), x[:60], (y[:60] + 1) % 10, attacks=[], noise="official",
                 noise_root=tmp_path)  # fmt: skip


def test_evaluate_gives_back_each_module_its_mode(data):
    x, y = data
    model = odenets.create_model("resnet20", in_chans=1, num_classes=10)
    model.train()
    model.blocks[0].f.bn1.eval()  # a frozen BatchNorm inside a network in train mode
    modes = [m.training for m in model.modules()]
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    _run(model, x[:20], y[:20], attacks=("fgsm", "pgd"), eps_list=(0.1,), checks=False)
    assert [m.training for m in model.modules()] == modes
    for key, value in model.state_dict().items():  # running statistics untouched
        assert torch.equal(value, stats[key]), key
    model.eval()
    _run(model, x[:20], y[:20], attacks=("fgsm",), eps_list=(0.1,), checks=False)
    assert not any(m.training for m in model.modules())


def test_attacks_stay_float32_inside_a_callers_autocast(data):
    x, y = data
    model, attack = _trained(), create_attack("pgd", eps=0.1, steps=3, seed=0)
    plain = attack(model, x[:30], y[:30])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = attack(model, x[:30], y[:30])
        mask = correct_mask(model, inside, y[:30])
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)
    assert torch.equal(mask, correct_mask(model, plain, y[:30]))


def test_evaluation_runs_without_tf32_and_restores_the_flags(data):
    x, y = data
    model = copy.deepcopy(_trained())
    seen = []
    model.register_forward_pre_hook(
        lambda *_: seen.append(
            (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        )
    )
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        _run(model, x[:10], y[:10], attacks=("fgsm",), eps_list=(0.1,), checks=False)
        assert seen and set(seen) == {(False, False)}
        assert torch.backends.cuda.matmul.allow_tf32 is True
        assert torch.backends.cudnn.allow_tf32 == before[0]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before[1]


def test_cli_evaluate_off_a_terminal_prints_a_line_per_pass(run_dir, tmp_path, capsys):
    """A batch job's log (stderr is no terminal under pytest) gets one line per attack and
    radius: the count correct, the seconds, the evaluation's time so far and its ETA (the
    last line: done), and no carriage-return bars."""
    import re

    from odenets.cli import main

    out = tmp_path / "e.json"
    argv = ["evaluate", str(run_dir), "--attacks", "fgsm", "--eps", "2,8", "--limit", "20"]
    assert main([*argv, "--no-checks", "--no-masking-checks", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    line = re.compile(
        r"(?P<desc>.+): (?P<k>\d+)/20 correct \((?P<pct>[\d.]+)%\) in [\d.]+ s; "
        r"evaluation [\d.]+ s so far, (ETA [\d.]+ s|done)"
    )
    found = {m["desc"]: m for m in map(line.fullmatch, lines) if m}
    assert list(found) == ["clean", "fgsm 2/255", "fgsm 8/255"], lines
    for m in found.values():
        assert float(m["pct"]) == pytest.approx(100 * int(m["k"]) / 20, abs=0.005)
    assert lines[-1].endswith(", done") and all(", ETA " in x for x in lines[:-1])


class _Recorded(odenets.progress.WorkLog):
    made: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.planned_bound, self.planned_total = self.bounded_cost, self.total_cost
        _Recorded.made.append(self)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"noise": "generated", "gaussian_sigmas": (0.05,), "checks": False},
        {"masking": False, "threat_model": ["pixel", "normalized"]},
    ],
    ids=["checks-and-masking", "noise", "two-threat-models"],
)
def test_the_eta_is_measured_against_the_cost_of_every_pass_made(data, monkeypatch, options):
    """The whole an ETA is measured against (planned before any pass) is exactly the sum of
    the passes made, whatever the evaluation runs; each pass is counted once."""
    evaluation = importlib.import_module("odenets.robustness.evaluate")  # not the function

    x, y = data
    _Recorded.made = []
    monkeypatch.setattr(evaluation, "WorkLog", _Recorded)
    _run(_trained(), x[:40], y[:40], **options)
    (log,) = _Recorded.made
    assert log.total_cost > 0 and log.done_cost == pytest.approx(log.total_cost)
    assert log.eta() == pytest.approx(0.0, abs=1e-6)
    # On a terminal there are tqdm bars and no log lines: no plan either.
    _Recorded.made = []
    _run(_trained(), x[:40], y[:40], progress=True, **options)
    assert _Recorded.made == []


def test_attacks_that_stop_early_make_the_planned_eta_a_bound(data, monkeypatch, caplog):
    """APGD leaves a sample once it breaks it: its planned cost is the most it can take, so
    the plan counts it as bounded (the ETA says "up to"); PGD and FGSM run every step. APGD
    crafted for transfer runs every step on every sample: not bounded."""
    from odenets.robustness.base import create_attack

    evaluation = importlib.import_module("odenets.robustness.evaluate")
    x, y = data
    _Recorded.made = []
    monkeypatch.setattr(evaluation, "WorkLog", _Recorded)
    model = _trained()
    with caplog.at_level(logging.INFO, logger="odenets"):
        _run(model, x[:40], y[:40], checks=False, masking=False,
             transfer_from=model, transfer_attacks=["apgd_ce"])  # fmt: skip
    (log,) = _Recorded.made
    lines = {r.getMessage().split(":")[0]: r.getMessage() for r in caplog.records}
    # "up to" while an APGD pass is still to come; plain after the last one (radius 0.1,
    # then the transfer attacks, which run every step).
    assert ", ETA up to " in lines["clean"] and ", ETA up to " in lines["apgd_ce 12.75/255"]
    assert ", ETA up to " not in lines["apgd_ce 25.5/255"]
    apgd = create_attack("apgd_ce", eps=0.05, **FAST["apgd_ce"])
    assert apgd.stops_early and not apgd.for_transfer().stops_early
    assert log.planned_bound == pytest.approx(2 * 40 * apgd.cost())  # two radii, 40 images
    assert log.bounded_cost == 0 and log.done_cost == pytest.approx(log.total_cost)


def test_a_long_pass_logs_its_accuracy_so_far(data, monkeypatch, caplog):
    """A pass longer than HEARTBEAT_S logs its count so far on the way (here: after every
    batch), with the evaluation's ETA; the pass's own line follows."""
    import logging

    x, y = data
    monkeypatch.setattr(odenets.progress, "HEARTBEAT_S", 0.0)
    with caplog.at_level(logging.INFO, logger="odenets"):
        _run(_trained(), x[:90], y[:90], attacks=("fgsm",), eps_list=(0.05,), checks=False,
             masking=False)  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fgsm 12.75")]
    assert [x.split(":")[1].split(" done")[0] for x in lines[:-1]] == [" 30/90", " 60/90"]
    assert all(" correct so far (" in x and ", ETA " in x for x in lines[:-1])
    assert " 90/90 " not in lines[-2] and lines[-1].startswith("fgsm 12.75/255: ")
    assert " correct (" in lines[-1]


def test_a_pass_counts_robust_samples_as_the_table_does(caplog):
    """A sample correct under attack but wrong clean is not robust: the mask and the line
    logged for the pass both leave it out (the line gives the table's number)."""
    from odenets.robustness.metrics import correct_mask

    class ByMean(torch.nn.Module):  # class 1 when the image is bright, else class 0
        def forward(self, x):
            bright = x.flatten(1).mean(1) > 0.5
            return torch.stack([(~bright).float(), bright.float()], dim=1)

    images = torch.tensor([0.2, 0.8, 0.2, 0.8]).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    labels = torch.tensor([0, 0, 1, 1])  # clean: samples 0 and 3 correct

    def brighten(model, x, y, indices=None):  # makes every sample correct
        return torch.where(y.view(-1, 1, 1, 1) == 1, torch.ones_like(x), torch.zeros_like(x))

    model = ByMean()
    clean = correct_mask(model, images, labels)
    assert clean.tolist() == [True, False, False, True]
    assert correct_mask(model, images, labels, attack=brighten).all()  # correct, attacked
    with caplog.at_level("INFO"):
        robust = correct_mask(model, images, labels, attack=brighten, desc="brighten", within=clean)
    assert robust.tolist() == clean.tolist()
    assert "brighten: 2/4 correct (50.00%)" in caplog.text
