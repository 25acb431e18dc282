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


# --- the zoo is generated from the junction and depth tables ---------------------------


@pytest.fixture
def restore_registries():
    """Undo the junction and model registrations a test makes."""
    from odenets.models import layers, registry

    saved = [(d, dict(d)) for d in (layers.JUNCTIONS, registry._MODELS, registry._KWARGS_TO)]
    yield
    for d, copy in saved:
        d.clear()
        d.update(copy)


@pytest.mark.parametrize(
    "name, parameters, doc",
    [
        ("resnet20", 272_378, "Pre-activation ResNet-20 (plain residual blocks)."),
        ("in_resnet20", 272_384, "In-ResNet-20: (1 - ReLU(λ)) x + f, raw k with λ = ReLU(1 - k)."),
        ("lambda_in_resnet20", 272_384, "λ-In-ResNet-20: (1 - ReLU(λ)) x + (1 + ReLU(λ)) f."),
        ("in_resnet_sig20", 272_384, "In-ResNet-sig-20: (1 - sigmoid(d)) x + f."),
        ("in_resnet_gating20", 283_354, "In-ResNet-gating-20: (1 - ReLU(W x + b)) ⊙ x + f."),
        (
            "in_resnet_gating_sig20",
            283_354,
            "In-ResNet-gating-sig-20: (1 - sigmoid(W x + b)) ⊙ x + f.",
        ),
        ("etd_resnet20", 272_384, "ETD-ResNet-20: e^(-λ) x + (1 - e^(-λ)) / λ · (1 + λ) f."),
    ],
)
def test_generated_factories_keep_their_size_and_docstring(name, parameters, doc):
    from odenets.models.registry import _MODELS

    model = odenets.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert _MODELS[name].__doc__ == doc


def test_a_new_junction_is_one_class_and_appears_everywhere(restore_registries, tmp_path, capsys):
    from odenets.cli import main
    from odenets.experiments.jobs import expand_jobs, load_grid
    from odenets.models.layers import Junction, register_junction
    from odenets.models.registry import _MODELS

    @register_junction("toy_resnet")
    class ToyJunction(Junction):
        """x_{n+1} = x_n + f_n(x_n) / 2."""

        model_doc = "Toy-ResNet-{depth}: x + f / 2."

        def __init__(self, channels: int):
            super().__init__()

        def forward(self, x, fx):
            return x + fx / 2

    # create_model and list_models: one network per depth, documented by the junction.
    names = [f"toy_resnet{d}" for d in DEPTHS]
    assert odenets.list_models("toy_resnet*") == sorted(names)
    assert _MODELS["toy_resnet56"].__doc__ == "Toy-ResNet-56: x + f / 2."
    model = odenets.create_model("toy_resnet20").eval()
    assert (model.family, model.depth) == ("toy_resnet", 20)
    # The first block and the two projection blocks stay plain; the other 6 use the junction.
    toy = [b for b in model.blocks if isinstance(b.junction, ToyJunction)]
    assert len(toy) == 6
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(toy[0](x), x + toy[0].f(x) / 2)
    with pytest.raises(ValueError, match="lambda_init does not apply to 'toy_resnet' blocks"):
        odenets.create_model("toy_resnet20", lambda_init=(0.1, 0.2))
    with pytest.raises(ValueError, match="its keywords go to PreActResNet.__init__()"):
        odenets.create_model("toy_resnet20", foo=1)

    # odenets models: the same layout as resnet20 (the junction adds no parameters).
    assert main(["models", "--pattern", "toy_resnet*"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert [r[0] for r in rows] == names and {r[1] for r in rows} == {"toy_resnet"}
    assert (
        rows[0][3] == f"{sum(p.numel() for p in odenets.create_model('resnet20').parameters()):,}"
    )

    # A preset row names it like any network.
    preset = tmp_path / "toy.toml"
    preset.write_text(
        'name = "toy"\nseeds = 2\n[scale.quick]\ntrain = { epochs = 1 }\n'
        '[[rows]]\nkey = "toy"\nmodel = "toy_resnet110"\nquick_model = "toy_resnet20"\n',
        encoding="utf-8",
    )
    jobs = expand_jobs(load_grid(str(preset), scale="quick", data_root=str(tmp_path)))
    assert [j.model for j in jobs] == ["toy_resnet20", "toy_resnet20"]

    # odenets train trains it.
    out = tmp_path / "run"
    args = ["train", "--model", "toy_resnet20", "--dataset", "digits", "--epochs", "1"]
    args += ["--train-limit", "64", "--test-limit", "32", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    from odenets.training import read_run

    info = read_run(out)
    assert info.config["model"] == "toy_resnet20" and info.summary["status"] == "finished"


def test_keywords_are_checked_against_the_signature_before_building(restore_registries):
    from odenets.models.registry import register_model

    calls = []

    def _build(*, width: int = 4, depth: int, num_classes: int = 10, in_chans: int = 3):
        calls.append(width)
        if width < 0:
            # A bug inside a constructor is not reported as a wrong keyword of the model.
            _build(widht=width)
        return torch.nn.Linear(width, num_classes)

    @register_model(kwargs_to=_build)
    def sig_checked(**kwargs):
        return _build(**{"depth": 1, **kwargs})

    @register_model
    def unchecked(**kwargs):
        return _build(depth=1, **kwargs)

    with pytest.raises(
        ValueError, match="has no keyword 'wdth'; its keywords go to .*_build"
    ) as err:
        odenets.create_model("sig_checked", wdth=3)
    # depth is accepted (the factory sets it) but not offered: it has no default.
    assert str(err.value).endswith(
        "_build(), which accepts width besides num_classes, in_chans and check_input"
    )
    assert calls == []  # refused before anything was built
    assert odenets.create_model("sig_checked", width=3, depth=2).in_features == 3
    with pytest.raises(TypeError, match="unexpected keyword argument 'widht'"):
        odenets.create_model("sig_checked", width=-1)
    # A factory that passes **kwargs on without naming the receiver is called as is.
    with pytest.raises(TypeError, match="unexpected keyword argument 'wdth'"):
        odenets.create_model("unchecked", wdth=3)


def test_naisnet_presets_accept_every_keyword_of_their_constructor():
    # steps has no default in the constructor the preset passes its keywords to.
    assert {b.steps for b in odenets.create_model("naisnet1", steps=2).nais_blocks()} == {2}
