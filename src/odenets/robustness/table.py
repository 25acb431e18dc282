"""Markdown tables (percent) of an eval.json dictionary: clean and noise accuracy, robust
accuracy per attack (and per AutoAttack sub-attack), threat model and radius with the worst
case, a caption with every attack's steps and step size, the sanity checks, and the
gradient-masking verdict with its evidence."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


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
        lines += ["", "Attacks: " + attack_settings(result["attacks"])]
    if result.get("checks"):
        lines.append("")
        marks = {True: "ok", False: "FLAG", None: "not run"}  # None: nothing to compare
        for c in result["checks"]:
            lines.append(f"- [{marks[c['ok']]}] {c['name']}: {c['detail']}")
    lines += masking_lines(result.get("masking") or {})
    return "\n".join(lines)


def masking_lines(section: Mapping) -> list[str]:
    """The verdict and the diagnostics it rests on (nothing if they were not computed)."""
    if not section.get("verdict"):
        return []
    lines = ["", f"Gradient masking: {section['verdict']['text']}."]
    marks = {True: "FLAG", False: "ok", None: "not run"}
    for d in section["diagnostics"]:
        lines.append(f"- [{marks[d['flag']]}] {d['name']}: {d['detail']}")
    return lines


def attack_settings(attacks: list[Mapping]) -> str:
    """One sentence per attack: its steps and step size α at each radius ε, its version, its
    queries or its surrogate, as the entries record them (table captions)."""
    by_name: dict[str, list[Mapping]] = {}
    for a in attacks:
        by_name.setdefault(a["name"], []).append(a)
    return "; ".join(_settings(name, entries) for name, entries in by_name.items()) + "."


def attack_setting(entries: Sequence[Mapping]) -> str:
    """One attack's steps and step size α in words, from its eval.json entries (one per
    radius), α as a multiple of ε so that one phrase serves every radius (figure legends):
    '20 steps, α = 0.125·ε, random start', '1 step, α = ε', '20 steps from α = 2ε, halved
    by its schedule'; "" when the entries do not say."""
    first = entries[0]
    if first.get("version"):
        return f"AutoAttack, version {first['version']}"
    if first.get("queries"):
        return f"{first['queries']} queries"
    if not first.get("steps"):
        return ""
    if first.get("loss"):
        return _apgd_words(first) + _restarts(first)
    ratios = {round(a["alpha"] / a["eps"], 6) for a in entries if a.get("alpha") and a.get("eps")}
    if len(ratios) != 1:
        return _steps(first)
    ratio = ratios.pop()
    return f"{_steps(first)}, α = " + ("ε" if ratio == 1 else f"{ratio:.3g}·ε") + _start(first)


def _steps(first: Mapping) -> str:
    return f"{first['steps']} step{'s' * (first['steps'] > 1)}"


def _apgd_words(first: Mapping) -> str:
    """APGD's fixed schedule: the step size starts at 2ε and is halved where progress stalls."""
    return f"{_steps(first)} from α = 2ε, halved by its schedule"


def _restarts(first: Mapping) -> str:
    return f", {first['restarts']} restarts" if (first.get("restarts") or 1) > 1 else ""


def _start(first: Mapping) -> str:
    """The random start and the restarts, in words."""
    return (", random start" if first.get("random_start") else "") + _restarts(first)


def _settings(name: str, entries: list[Mapping]) -> str:
    first = entries[0]
    if first.get("version"):
        subs = ", ".join(first.get("attacks") or [])
        queries = f", Square {first['queries']} queries" if first.get("queries") else ""
        return f"{name}: version {first['version']} ({subs}{queries}), {first.get('package', '')}"
    if first.get("queries"):
        return f"{name}: {first['queries']} queries (gradient-free)"
    words = f"{name}: "
    if first.get("base"):
        source = first.get("source") or ["a surrogate"]
        source = source if isinstance(source, list) else [source]
        # A surrogate run is named by its folder (the report travels without the paths).
        source = ", ".join(Path(s).name or s for s in source)
        words += f"{first['base']} crafted on {source}, "
    radii = ", ".join(f"ε = {e:g}/255" for e in sorted({a["eps_255"] for a in entries}))
    if first.get("loss"):
        return words + _apgd_words(first) + f", at {radii}" + _restarts(first)
    if first.get("steps") == 1 and first.get("alpha") == first.get("eps"):
        return words + f"1 step of α = ε, at {radii}"
    alphas = sorted({(a["eps_255"], a["alpha"] * 255) for a in entries if a.get("alpha")})
    steps = f"{_steps(first)}, α = " + ", ".join(
        f"{al:.3g}/255 at ε = {e:g}/255" for e, al in alphas
    )
    return words + steps + _start(first)


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
        for sub in a.get("sub_attacks", []) if len(a.get("sub_attacks", [])) > 1 else []:
            # robust accuracy after each sub-attack, as AutoAttack reports it
            key = (f"{a['name']} after {sub['name']}", a["threat_model"])
            rows.setdefault(key, {})[a["eps_255"]] = sub["accuracy"]
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
