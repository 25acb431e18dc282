"""Markdown tables (percent) of an eval.json dictionary: clean and noise accuracy, accuracy
per attack, threat model and radius with the worst case, and the sanity checks below."""

from __future__ import annotations

from collections.abc import Mapping


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def format_table(result: Mapping) -> str:
    """Markdown tables (percent) of an eval.json dictionary, with the checks below them."""
    lines = [
        f"models: {', '.join(result['models'])}" + (" (ensemble)" if result["ensemble"] else ""),
        f"data: {result.get('dataset')} {result.get('split')}, n = {result['n']}, "
        f"seed {result['seed']}",
        "",
        "| clean | " + " | ".join(_noise_headers(result)) + " |",
        "|---|" + "---|" * len(_noise_headers(result)),
        f"| {_pct(result['clean'])} | "
        + " | ".join([_pct(v) for v in _noise_values(result)] or ["not run"])
        + " |",
    ]
    if result.get("attacks"):
        lines += _attack_table(result)
    if result.get("checks"):
        lines.append("")
        for c in result["checks"]:
            lines.append(f"- [{'ok' if c['ok'] else 'FLAG'}] {c['name']}: {c['detail']}")
    return "\n".join(lines)


def _attack_table(result: Mapping) -> list[str]:
    """Lines of the table of accuracy per attack and threat model (rows) and radius."""
    radii = sorted({a["eps_255"] for a in result["attacks"]})
    lines = [
        "",
        "| attack | threat model | " + " | ".join(f"ε={r:g}/255" for r in radii) + " |",
        "|---|---|" + "---|" * len(radii),
    ]
    rows: dict[tuple, dict] = {}
    for a in result["attacks"]:
        rows.setdefault((a["name"], a["threat_model"]), {})[a["eps_255"]] = a["accuracy"]
    for w in result.get("worst_case", []):
        rows.setdefault(("worst case", w["threat_model"]), {})[w["eps_255"]] = w["accuracy"]
    for (name, tm), accs in rows.items():
        cells = [_pct(accs[r]) if r in accs else "" for r in radii]
        lines.append(f"| {name} | {tm} | " + " | ".join(cells) + " |")
    return lines


def _noise_headers(result: Mapping) -> list[str]:
    noise = result.get("noise")
    if not noise:
        return ["noise"]
    return ["noise (mean)", *(f"{c}" for c in noise["per_corruption"])]


def _noise_values(result: Mapping) -> list[float]:
    noise = result.get("noise")
    if not noise:
        return []
    return [noise["mean"], *(p["mean"] for p in noise["per_corruption"].values())]
