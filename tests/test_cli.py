"""The command line describes itself from the library: `train --help` from TrainConfig's
field metadata; errors meant for people are one line, bugs keep their traceback."""

from __future__ import annotations

import dataclasses
import json

import pytest

from odenets.cli import main
from odenets.training import TrainConfig


def test_train_help_gives_every_field_its_flag_and_text(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    packed = "".join(text.split())  # and breaks them after hyphens
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f"TrainConfig.{f.name} has no help text"
        flag = "--" + f.name.replace("_", "-")
        assert f" {flag}" in text
        assert "".join(f.metadata["help"].split()) in packed
    assert "--batch-size BATCH_SIZE global batch (split across DDP ranks), paper: 128" in text
    assert "(default: the recipe's)" in text and "(default: runs/run)" in text
    assert "--amp, --no-amp bf16 autocast" in text  # bool | None fields are switches


def test_flags_take_the_field_types(tmp_path):
    from odenets.cli import build_parser
    from odenets.commands.train import config_from_args

    args = build_parser().parse_args(
        ["train", "--epochs", "3", "--lr", "0.05", "--milestones", "0.5", "0.75", "--no-augment"]
        + ["--model-kwargs", '{"lambda_init": [0.3, 0.4]}', "--out", str(tmp_path / "r")]
    )
    config = config_from_args(args)
    assert (config.epochs, config.lr, config.milestones) == (3, 0.05, [0.5, 0.75])
    assert config.augment is False and config.model_kwargs == {"lambda_init": [0.3, 0.4]}
    assert config.batch_size is None  # not given: the recipe's


def _models_raising(monkeypatch, error_of):
    import odenets.commands.models as models_command

    def model_rows(*args, **kwargs):
        raise error_of()

    monkeypatch.setattr(models_command, "model_rows", model_rows)


def test_odenets_errors_are_one_line(capsys):
    # ValueError from odenets code, an unknown name, and odenets' own error classes.
    assert main(["models", "--pattern", "no_such*"]) == 1
    assert main(["reproduce", "table9", "--list-jobs"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("odenets models: error: no registered model matches 'no_such*'")
    assert err[1].startswith("odenets reproduce: error: unknown preset 'table9'; known: ")
    assert len(err) == 2


@pytest.mark.parametrize(
    "error_of, kind",
    [
        (lambda: {}["dataset"], KeyError),  # a lookup bug, not an unknown name
        (lambda: json.loads("{"), json.JSONDecodeError),  # a ValueError outside odenets
        (lambda: len(None), TypeError),
    ],
)
def test_a_bug_keeps_its_traceback(monkeypatch, capsys, error_of, kind):
    _models_raising(monkeypatch, lambda: _raise(error_of))
    with pytest.raises(kind):
        main(["models"])
    assert "error:" not in capsys.readouterr().err


def _raise(error_of):
    try:
        error_of()
    except Exception as err:
        return err
    raise AssertionError("expected an error")


def test_an_os_error_names_its_path(monkeypatch, capsys):
    _models_raising(monkeypatch, lambda: FileNotFoundError(2, "No such file", "/nowhere/x"))
    assert main(["models"]) == 1
    assert capsys.readouterr().err.strip() == (
        "odenets models: error: [Errno 2] No such file: '/nowhere/x'"
    )
