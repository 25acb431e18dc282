"""Every registered network builds, runs forward and backward on CPU, and trains every
parameter; the registry finds names, filters them and suggests close matches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import odenets
from odenets.models.base import OdeNet

DEPTHS = (20, 32, 44, 56, 110, 164)
FAMILIES = (
    "resnet",
    "in_resnet",
    "lambda_in_resnet",
    "in_resnet_sig",
    "in_resnet_gating",
    "in_resnet_gating_sig",
    "etd_resnet",
)


def test_in_resnet_zoo_is_registered():
    names = set(odenets.list_models())
    expected = {f"{family}{depth}" for family in FAMILIES for depth in DEPTHS}
    assert len(expected) == 42
    assert expected <= names


@pytest.mark.parametrize("name", odenets.list_models())
def test_model_forward_backward(name):
    model = odenets.create_model(name, num_classes=7)
    assert isinstance(model, OdeNet)
    assert model.model_name == name
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) > 0
    images = model.example_input(2, generator=torch.Generator().manual_seed(0))
    logits = model(images)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([1, 5])).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert bad == []
    # The common surface holds for every network, whatever its family.
    coeffs = model.coefficients()
    assert coeffs.dim() == 1 and torch.isfinite(coeffs).all()
    assert isinstance(model.family, str) and model.depth > 0


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match="in_resnet110"):
        odenets.create_model("in_resnet111")
    with pytest.raises(KeyError, match="lambda_in_resnet20"):
        odenets.create_model("lamda_in_resnet20")


def test_list_models_pattern():
    names = odenets.list_models("in_resnet*")
    assert "in_resnet110" in names and "in_resnet_gating_sig164" in names
    assert "lambda_in_resnet110" not in names and "resnet110" not in names
    assert odenets.list_models("*164") == sorted(odenets.list_models("*164"))
    assert set(odenets.list_models("*resnet20")) >= {"resnet20", "in_resnet20", "etd_resnet20"}
    assert odenets.list_models("no_such_model*") == []


@pytest.mark.parametrize(
    "name, accepted",
    [
        (
            "resnet20",
            "its keywords go to PreActResNet.__init__(), which accepts block, junction, "
            "mean, std, lambda_init, gate besides",
        ),
        (
            "nais_mlp",
            "it accepts in_features, hidden, blocks, steps, h, act, x0, tied, stable, "
            "eps, tol, max_steps besides",
        ),
    ],
)
def test_unknown_override_names_the_accepted_keywords(name, accepted):
    with pytest.raises(ValueError, match="has no keyword 'foo'; ") as err:
        odenets.create_model(name, foo=1)
    assert accepted in str(err.value)
    with pytest.raises(ValueError, match="lambda_init does not apply"):
        odenets.create_model("resnet20", lambda_init=(0.1, 0.2))


def test_unknown_model_kwarg_is_one_line_in_the_cli(tmp_path, capsys):
    from odenets.cli import main

    args = ["train", "--model", "resnet20", "--dataset", "digits", "--out", str(tmp_path / "r")]
    assert main([*args, "--model-kwargs", '{"foo": 1}', "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("odenets train: error: model 'resnet20' has no keyword 'foo'; ")
    assert len(err.splitlines()) == 1


def test_models_command_prints_the_table(capsys):
    from odenets.cli import main

    assert main(["models", "--pattern", "*resnet1??"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "family", "depth", "parameters", "interpolating"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:-1]}
    assert rows["resnet110"] == ["resnet", "110", "1,730,618", "0"]
    assert rows["in_resnet164"][:2] == ["in_resnet", "164"] and rows["in_resnet164"][3] == "51"
    assert list(rows).index("resnet110") < list(rows).index("resnet164")
    assert lines[-1] == f"{len(rows)} models"
    assert main(["models", "--pattern", "no_such*"]) == 1
    assert "no registered model matches" in capsys.readouterr().err
