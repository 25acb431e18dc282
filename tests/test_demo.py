"""`odenets demo --quick`: the offline demo end to end on the digits (a smoke run)."""

from __future__ import annotations

import json

from odenets.cli import main
from odenets.experiments.demo import TABLE_EPS
from odenets.experiments.grid_folder import RUNS

MODELS = ("resnet20", "in_resnet20", "lambda_in_resnet20", "naisnet10")


def test_quick_demo_writes_report_with_table_and_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed
    assert f"ε = {TABLE_EPS}/255" in printed
    report = (out / "report.md").read_text(encoding="utf-8")
    for model in MODELS:
        assert f"| {model} | 1/1 |" in report
        run = out / RUNS / f"digits-{model}-seed0"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["epochs_done"] == 2
        ev = json.loads((run / "eval.json").read_text())
        assert ev["dataset"] == "digits" and ev["n"] == 60
        assert {a["name"] for a in ev["attacks"]} == {"fgsm", "ifgsm", "pgd"}
        assert {a["eps_255"] for a in ev["attacks"]} == {TABLE_EPS}
        assert all(a["accuracy"] <= ev["clean"] for a in ev["attacks"])
        assert ev["noise"] is not None and 0.0 <= ev["noise"]["mean"] <= 1.0
    # No paper numbers exist for the digits: ours only, and the report says so.
    assert "Acc. paper" not in report and "The paper has no numbers" in report
    figures = json.loads((out / "report.json").read_text())["figures"]
    assert {p.split("/")[-1] for p in figures} >= {
        "coefficients.png",
        "robustness_curves.png",
        "depth.png",
    }
    for rel in figures:
        assert (out / rel).stat().st_size > 1000
        assert f"]({rel})" in report


def test_a_training_run_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "r1"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert main(["demo", "--quick", "--out", str(run)]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"odenets demo: error: --out {run} is a training run folder (it holds config.json); "
        "give the demo a folder of its own"
    ]
    assert captured.out == "" and [p.name for p in run.iterdir()] == ["config.json"]
