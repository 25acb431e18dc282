"""The command line describes itself from the library: `train --help` from TrainConfig's
field metadata; errors meant for people are one line, bugs keep their traceback."""

from __future__ import annotations

import dataclasses
import json

import pytest

from odenets.cli import main
from odenets.training import TrainConfig, list_recipes


def test_train_help_gives_every_field_its_flag_and_text(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    packed = "".join(text.split())  # and breaks them after hyphens
    recipes = ", ".join(list_recipes())
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f"TrainConfig.{f.name} has no help text"
        flag = "--" + f.name.replace("_", "-")
        assert f" {flag}" in text
        described = f.metadata["help"].replace("{recipes}", recipes)
        assert "".join(described.split()) in packed
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


def _subparsers(parser, prefix=()):
    """(command words, parser) of every command and sub-command, the root's children first."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def test_every_option_of_every_command_states_its_default_in_user_terms():
    """`--help` of each command gives every option's default in words a user reads: no bare
    None, no Python call; a plain on/off switch (--quick) is off unless given."""
    import argparse

    from odenets.cli import build_parser

    switches = (argparse._StoreTrueAction, argparse._HelpAction, argparse._VersionAction)
    missing, code_words = [], []
    commands = dict(_subparsers(build_parser()))
    assert {("train",), ("evaluate",), ("plot",), ("data", "corrupt")} <= set(commands)
    for words, parser in commands.items():
        for action in parser._actions:
            if not action.option_strings or action.required or isinstance(action, switches):
                continue
            text = action.help or ""
            where = f"odenets {' '.join(words)} {action.option_strings[-1]}: {text!r}"
            if "default" not in text.lower():
                missing.append(where)
            if "None" in text or "()" in text:
                code_words.append(where)
    assert missing == [] and code_words == []


def test_help_of_the_speed_switches_and_the_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "bf16 autocast for forward passes (default: on for CUDA, off for CPU)" in text
    recipe = text[text.rindex("--recipe RECIPE") :].split("--epochs")[0]  # the option, not usage
    assert all(name in recipe for name in list_recipes())
    assert "the data set's paper recipe" in recipe
