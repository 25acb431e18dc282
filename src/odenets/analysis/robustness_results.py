"""Numbers for the robustness figures, read from ``eval.json`` dictionaries (docs/design.md).

Accuracies stay fractions in [0, 1] here; the drawing functions show percent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from odenets.checkpoint import read_json
from odenets.robustness.table import attack_setting
from odenets.training.run_folder import EVAL

# The columns of the In-ResNet paper's tables, in order: clean accuracy, mean noise accuracy
# and three attacks, by their registry names.
PAPER_METRICS = ("clean", "noise", "fgsm", "ifgsm", "pgd")


def load_eval(path: str | Path) -> dict:
    """Read an ``eval.json`` file, or the ``eval.json`` inside a folder."""
    path = Path(path)
    if path.is_dir():
        path = path / EVAL
    if not path.is_file():
        raise FileNotFoundError(f"no {EVAL} at {path}; run `odenets evaluate` first")
    data = read_json(path)
    if not isinstance(data, dict) or "clean" not in data or "models" not in data:
        raise ValueError(f"{path} is not an odenets eval.json (needs 'clean' and 'models')")
    data.setdefault("path", str(path))
    return data


def eval_label(ev: Mapping) -> str:
    """'in_resnet110 (run folder)' for a single model (the folder when recorded),
    'in_resnet110 ensemble (5)' for an ensemble."""
    label = "+".join(sorted(set(ev["models"])))
    if ev.get("ensemble"):
        return f"{label} ensemble ({len(ev['models'])})"
    runs = ev.get("runs") or []
    return f"{label} ({Path(runs[0]).name})" if len(runs) == 1 else label


def attack_accuracy(
    ev: Mapping, name: str, *, eps_255: float = 8.0, threat_model: str = "pixel"
) -> float:
    """Accuracy of one attack at one radius (ε·255) under one threat model."""
    matches = [
        a
        for a in ev.get("attacks", [])
        if a["name"] == name
        and a.get("threat_model", "pixel") == threat_model
        and math.isclose(float(a["eps_255"]), eps_255, abs_tol=1e-6)
    ]
    if not matches:
        have = sorted(
            {(a["name"], a.get("threat_model", "pixel"), a["eps_255"]) for a in ev["attacks"]}
        )
        raise ValueError(
            f"{ev.get('path', 'eval')} has no {name} at eps {eps_255}/255 ({threat_model}); "
            f"it has (name, threat model, eps·255): {have}"
        )
    return float(matches[0]["accuracy"])


def paper_metrics(
    ev: Mapping,
    metrics: Sequence[str] = PAPER_METRICS,
    *,
    eps_255: float = 8.0,
    threat_model: str = "pixel",
) -> np.ndarray:
    """The paper's columns for one evaluation: clean, noise mean, and attack accuracies.

    Returns:
        (len(metrics),) float array of accuracies in [0, 1].
    """
    values = []
    for metric in metrics:
        if metric == "clean":
            values.append(float(ev["clean"]))
        elif metric == "noise":
            if not ev.get("noise"):
                raise ValueError(
                    f"{ev.get('path', 'eval')} has no noise results; evaluate with --noise"
                )
            values.append(float(ev["noise"]["mean"]))
        else:
            values.append(attack_accuracy(ev, metric, eps_255=eps_255, threat_model=threat_model))
    return np.array(values, dtype=np.float64)


def available_metrics(
    evals: Sequence[Mapping], *, eps_255: float = 8.0, threat_model: str = "pixel"
) -> list[str]:
    """The paper's columns present in every evaluation (clean always; noise if evaluated;
    each attack if run at `eps_255` under `threat_model`)."""
    present = []
    for metric in PAPER_METRICS:
        if metric == "clean":
            ok = True
        elif metric == "noise":
            ok = all(ev.get("noise") for ev in evals)
        else:
            ok = all(
                any(
                    a["name"] == metric
                    and a.get("threat_model", "pixel") == threat_model
                    and math.isclose(float(a["eps_255"]), eps_255, abs_tol=1e-6)
                    for a in ev.get("attacks", [])
                )
                for ev in evals
            )
        if ok:
            present.append(metric)
    return present


def ensemble_gain(
    evals: Sequence[Mapping],
    metrics: Sequence[str] | None = None,
    *,
    eps_255: float = 8.0,
    threat_model: str = "pixel",
) -> dict[str, dict]:
    """Ensemble accuracy minus mean single-model accuracy, per model family and metric.

    Evaluations are grouped by model name; each group needs at least one single-model and
    one ensemble evaluation (the paper's Figure 2 uses 5 seeds). `metrics` defaults to the
    paper's columns that every evaluation holds (`available_metrics`).

    Returns:
        ``{model_name: {"metrics": list, "single_mean": (M,), "single_std": (M,),
        "ensemble": (M,), "gain": (M,), "n_single": int}}``, accuracies as fractions.
    """
    if metrics is None:
        metrics = available_metrics(evals, eps_255=eps_255, threat_model=threat_model)
    groups: dict[str, dict[str, list]] = {}
    for ev in evals:
        name = "+".join(sorted(set(ev["models"])))
        kind = "ensemble" if ev.get("ensemble") else "single"
        row = paper_metrics(ev, metrics, eps_255=eps_255, threat_model=threat_model)
        groups.setdefault(name, {"single": [], "ensemble": []})[kind].append(row)
    result = {}
    for name, group in groups.items():
        if not group["single"] or not group["ensemble"]:
            missing = "single-model" if not group["single"] else "ensemble"
            raise ValueError(f"model {name!r} has no {missing} evaluation; both are needed")
        single = np.stack(group["single"])  # (runs, M)
        ensemble = np.stack(group["ensemble"]).mean(axis=0)
        result[name] = {
            "metrics": list(metrics),
            "single_mean": single.mean(axis=0),
            "single_std": single.std(axis=0),
            "ensemble": ensemble,
            "gain": ensemble - single.mean(axis=0),
            "n_single": len(single),
        }
    return result


def robustness_curves(evals: Sequence[Mapping]) -> dict[str, dict]:
    """Accuracy against ε for every attack and against severity for every noise.

    Returns:
        ``{label: {"clean": float, "attacks": {"fgsm (pixel)": {"eps_255": (E,),
        "accuracy": (E,)}, ...}, "noise": {"gaussian": {"severity": (5,),
        "accuracy": (5,)}, ...}}}`` with one label per evaluation (see `eval_label`;
        repeated labels get " #2", " #3"), ε sorted increasingly, ε = 0 prepended with the
        clean accuracy; the worst case over attacks appears as "worst case (pixel)". Each
        attack curve also has "setting": its steps and step size α in words (see
        `attack_setting`).
    """
    result: dict[str, dict] = {}
    for ev in evals:
        label = eval_label(ev)
        if label in result:
            k = 2
            while f"{label} #{k}" in result:
                k += 1
            label = f"{label} #{k}"
        clean = float(ev["clean"])
        attacks: dict[str, dict[str, list]] = {}
        for a in ev.get("attacks", []):
            key = f"{a['name']} ({a.get('threat_model', 'pixel')})"
            curve = attacks.setdefault(key, {"eps_255": [0.0], "accuracy": [clean]})
            curve["eps_255"].append(float(a["eps_255"]))
            curve["accuracy"].append(float(a["accuracy"]))
            curve.setdefault("entries", []).append(a)
        for w in ev.get("worst_case") or []:
            key = f"worst case ({w.get('threat_model', 'pixel')})"
            curve = attacks.setdefault(key, {"eps_255": [0.0], "accuracy": [clean]})
            curve["eps_255"].append(float(w["eps_255"]))
            curve["accuracy"].append(float(w["accuracy"]))
            curve["setting"] = "per sample over the attacks"
        for curve in attacks.values():
            if "entries" in curve:
                curve["setting"] = attack_setting(curve.pop("entries"))
        for curve in attacks.values():
            order = np.argsort(curve["eps_255"], kind="stable")
            curve["eps_255"] = np.asarray(curve["eps_255"])[order]
            curve["accuracy"] = np.asarray(curve["accuracy"])[order]
        noise = {}
        for corruption, per_severity in ((ev.get("noise") or {}).get("per_corruption", {})).items():
            severities = sorted(int(s) for s in per_severity if s != "mean")
            noise[corruption] = {
                "severity": np.array(severities),
                "accuracy": np.array([float(per_severity[str(s)]) for s in severities]),
            }
        result[label] = {"clean": clean, "attacks": attacks, "noise": noise}
    return result
