"""A new attack is one class in one file: registered here, and nowhere else, it is run by
`odenets evaluate` with its options, held to FGSM by the sanity checks, given a column of
the report and named by its title in the figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from odenets.robustness import base
from odenets.robustness.base import Attack, register_attack


class Toy(Attack):
    """A do-nothing multi-step attack: the images come back unchanged, so its accuracy is
    the clean accuracy (and FGSM's is at most that)."""

    title = "Toy"
    category = "multi-step"
    options = {"steps": "steps"}  # set by `odenets evaluate --steps`

    def __init__(self, *, eps: float, steps: int = 7, **kwargs):
        super().__init__(eps=eps, **kwargs)
        self.steps = int(steps)

    def settings(self) -> dict:
        return {"eps": self.eps, "steps": self.steps, "alpha": self.eps / 4, "restarts": 1}

    def perturb(self, space, z, labels, indices):
        return z


@pytest.fixture
def toy(monkeypatch):
    """Toy registered as "toy" for one test (the registry is restored afterwards)."""
    monkeypatch.setattr(base, "_ATTACKS", dict(base._ATTACKS))
    return register_attack("toy")(Toy)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from odenets.training.config import TrainConfig
    from odenets.training.fit import fit

    out = tmp_path_factory.mktemp("runs") / "resnet20-digits"
    fit(TrainConfig(model="resnet20", dataset="digits", epochs=1, train_limit=64, out=str(out)))
    return out


def _attack(name: str, accuracy: float) -> dict:
    return {"name": name, "threat_model": "pixel", "eps": 8 / 255, "eps_255": 8.0,
            "accuracy": accuracy}  # fmt: skip


def test_the_registry_describes_it(toy):
    assert "toy" in base.list_attacks(category="multi-step")
    assert base.attack_title("toy") == "Toy"
    assert base.attacks_taking("steps") == ["ifgsm", "pgd", "pgd_start_centred", "toy"]
    assert base.attack_options(["toy", "fgsm"], {"steps": 3}) == {"toy": {"steps": 3}, "fgsm": {}}
    # Its work per image for progress estimates, from its settings: 3 forward-pass
    # equivalents per step, and the forward that scores the result.
    assert base.create_attack("toy", eps=8 / 255, steps=3).cost() == 3 * 3 + 1


def test_a_class_without_a_category_is_refused(monkeypatch):
    monkeypatch.setattr(base, "_ATTACKS", dict(base._ATTACKS))

    class NoCategory(Toy):
        category = ""

    with pytest.raises(ValueError, match="category must be one of"):
        register_attack("no_category")(NoCategory)


def test_evaluate_runs_it_with_its_options(toy, run_dir, tmp_path, capsys):
    from odenets.cli import main

    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    help_text = capsys.readouterr().out
    assert "iterations of ifgsm, pgd, pgd_start_centred, toy" in help_text
    assert "pgd_start_centred, square, toy." in help_text  # the attacks --attacks takes

    out = tmp_path / "eval.json"
    flags = ["--attacks", "fgsm,toy", "--eps", "8", "--steps", "3", "--limit", "40"]
    assert main(["evaluate", str(run_dir), *flags, "--out", str(out)]) == 0
    ev = json.loads(out.read_text())
    entry = next(a for a in ev["attacks"] if a["name"] == "toy")
    assert entry["steps"] == 3 and entry["kind"] == "white-box"
    assert entry["correct"] == ev["counts"]["clean"]  # it changes nothing
    assert "| toy | pixel |" in capsys.readouterr().out


def test_the_sanity_checks_hold_it_to_fgsm(toy):
    from odenets.robustness.checks import sanity_checks

    result = {
        "clean": 0.9,
        "n": 100,
        "attacks": [_attack("fgsm", 0.2), _attack("toy", 0.9)],
        "counts": {"eps1": None, "nonfinite_grads": 0},
    }
    check = next(c for c in sanity_checks(result) if c["name"] == "multi_step_not_weaker_than_fgsm")
    assert not check["ok"] and check["detail"] == "toy pixel 8/255: 0.9000 > fgsm 0.2000"


def test_the_report_gives_it_a_column(toy, run_dir, tmp_path):
    import shutil

    from odenets.cli import main
    from odenets.experiments.report import write_report

    run = tmp_path / "results" / "run"
    shutil.copytree(run_dir, run)
    flags = ["--attacks", "fgsm,toy", "--eps", "8", "--steps", "2", "--limit", "40"]
    assert main(["evaluate", str(run), *flags, "--out", str(run / "eval.json")]) == 0
    ev = json.loads((run / "eval.json").read_text())
    write_report(tmp_path / "results", figures=False)
    lines = (tmp_path / "results" / "report.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| Run |"))
    titles = [t.strip() for t in header.strip("|").split("|")]
    assert titles[5:] == ["Acc.", "FGSM", "Toy", "Worst case", "Train acc.", "Test acc."]
    row = lines[lines.index(header) + 2]
    toy_cell = row.strip("|").split("|")[titles.index("Toy")].strip()
    assert toy_cell == f"{100 * ev['clean']:.2f}"


def test_the_figures_name_it_by_its_title(toy):
    from odenets.analysis.plots import draw_ensemble_gain, metric_label

    assert metric_label("toy") == "Toy" and metric_label("noise") == "noise (mean)"
    gains = {"resnet20": {"metrics": ["clean", "toy"], "gain": np.array([0.01, 0.02]),
                          "n_single": 2}}  # fmt: skip
    fig = draw_ensemble_gain(gains, setting="ε = 8/255")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["clean", "Toy"]
