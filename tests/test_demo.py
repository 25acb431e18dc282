"""`odenets demo --quick`: the offline demo end to end on the digits (a smoke run)."""

from __future__ import annotations

import json
import re

from odenets.cli import main
from odenets.experiments.aggregate import build_report
from odenets.experiments.comparison import compare_rows
from odenets.experiments.demo import APGD_STEPS, DEMO_TIME, TABLE_EPS
from odenets.experiments.grid_folder import RUNS

METRICS = ("noise", "fgsm", "ifgsm", "pgd", "apgd_ce", "worst_case")

MODELS = ("resnet20", "in_resnet20", "lambda_in_resnet20", "naisnet10")


def test_quick_demo_writes_report_with_table_and_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    lines = printed.splitlines()
    assert f"report: {out / 'report.md'}" in printed
    assert lines[0].endswith(f"(the default demo takes {DEMO_TIME} on two CPU cores)")
    # A line per job as it ends: its number, name, time, the jobs done and the ETA.
    for k, model in enumerate(MODELS, start=1):
        assert re.search(rf"^\[{k}/4\] digits-{model}-seed0: finished in "
                         rf"(\d+ min )?[\d.]+ s; {k}/4 jobs done(, ETA .+ s)?$",
                         lines[k]), lines[k]  # fmt: skip
    assert ", ETA " in lines[1] and ", ETA " not in lines[4]
    # Every line the jobs log names its job.
    logged = [x for x in captured.err.splitlines() if "  epoch " in x or " correct (" in x]
    assert logged and all(re.match(r"\[[1-4]/4\] digits-\S+-seed0: ", x) for x in logged)
    # The table: APGD-CE and the worst case over the attacks; the caption gives ε, α, steps.
    assert "| Acc. | Noise | FGSM | IFGSM | PGD | APGD-CE | Worst case |" in printed
    assert f"ε = {TABLE_EPS}/255" in printed and f"apgd_ce: {APGD_STEPS} steps" in printed
    assert "pgd: 20 steps, α = 2/255 at ε = 16/255, random start" in printed
    report = (out / "report.md").read_text(encoding="utf-8")
    for model in MODELS:
        assert f"| {model} | 1/1 |" in report
        run = out / RUNS / f"digits-{model}-seed0"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["epochs_done"] == 2
        ev = json.loads((run / "eval.json").read_text())
        assert ev["dataset"] == "digits" and ev["n"] == 60
        assert {a["name"] for a in ev["attacks"]} == {"fgsm", "ifgsm", "pgd", "apgd_ce"}
        assert {a["eps_255"] for a in ev["attacks"]} == {TABLE_EPS}
        assert all(a["accuracy"] <= ev["clean"] for a in ev["attacks"])
        assert ev["worst_case"][0]["accuracy"] <= min(a["accuracy"] for a in ev["attacks"])
        apgd = next(a for a in ev["attacks"] if a["name"] == "apgd_ce")
        assert apgd["steps"] == APGD_STEPS
        assert ev["noise"] is not None and 0.0 <= ev["noise"]["mean"] <= 1.0
        # No check that had nothing to compare reads as passed.
        checks = {c["name"]: c["ok"] for c in ev["checks"]}
        assert checks["accuracy_non_increasing_in_eps"] is None  # one radius
    # In words, from the numbers: In-ResNet against ResNet, by the stated rule.
    rows = {r.key: r for r in build_report(out).rows}
    head = {c.metric: c for c in compare_rows(rows["in_resnet20"], rows["resnet20"], METRICS)}
    verdict = head["worst_case"].verdict
    for text in (printed, report):
        assert "Is In-ResNet more robust than ResNet on this data?" in text
        assert "In-ResNet-20 vs ResNet-20: " in text and "Rule: a difference counts" in text
    said = "no clear difference" if verdict == "no clear difference" else f"{verdict} than"
    assert f"In-ResNet-20 vs ResNet-20: {said}" in printed
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
