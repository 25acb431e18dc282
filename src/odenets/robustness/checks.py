"""Sanity checks of one evaluation (attacks not above clean, multi-step not weaker than FGSM,
accuracy non-increasing in ε, ε = 1 near zero, finite gradients, no sign of gradient
masking), computed from the eval.json numbers alone so that merged shards redo them.

Each check is {"name", "ok", "detail"}: "ok" is True (passed), False (flagged) or None (not
run: the evaluation holds nothing it could compare, e.g. one radius only), so a check that
had nothing to look at never reads as passed."""

from __future__ import annotations

from collections.abc import Mapping

from odenets.robustness.base import list_attacks
from odenets.robustness.counts import frac

# Sanity-check thresholds (accuracy fractions).
MARKEDLY_WEAKER = 0.03  # a multi-step attack this far above FGSM (and 3 samples) is flagged
MONOTONE_TOL = 0.01  # allowed rise of accuracy with ε (random starts add noise)
MASKING_GAP = 0.05  # APGD this far below PGD suggests gradient masking
EPS1_MAX_ACC = 0.05  # accuracy allowed under an unbounded (ε = 1) attack
EPS1_SAMPLES = 100  # samples of the ε = 1 check


def sanity_checks(result: Mapping) -> list[dict]:
    """The checks of one evaluation, computed from its numbers (so merged shards redo them)."""
    # (attack name, threat model, ε) -> accuracy
    by_key = {(a["name"], a["threat_model"], a["eps"]): a["accuracy"] for a in result["attacks"]}
    checks = [
        _not_above_clean(result),
        _not_weaker_than_fgsm(by_key, result.get("n")),
        _non_increasing_in_eps(by_key, result["attacks"]),
        _eps1_near_zero(result["counts"].get("eps1")),
        _gradients_finite(result["counts"].get("nonfinite_grads", 0), result),
        _apgd_close_to_pgd(by_key),
    ]
    if any("flags" in a for a in result["attacks"]):
        checks.append(_package_flags(result["attacks"]))
    return checks


def _check(name: str, ok: bool, detail: str) -> dict:
    return {"name": name, "ok": bool(ok), "detail": detail}


def _not_run(name: str, why: str) -> dict:
    """A check with nothing to compare: neither passed nor flagged."""
    return {"name": name, "ok": None, "detail": f"not run: {why}"}


def _not_above_clean(result: Mapping) -> dict:
    if not result["attacks"]:
        return _not_run("attack_not_above_clean", "no attack in this evaluation")
    clean = result["clean"]
    above = [a for a in result["attacks"] if a["accuracy"] > clean]
    return _check("attack_not_above_clean", not above, _list(above, clean, "clean"))


def _list(entries: list[dict], ref: float, what: str) -> str:
    if not entries:
        return f"every attack at or below {what} accuracy {ref:.4f}"
    return "; ".join(
        f"{a['name']} {a['threat_model']} {a['eps_255']:g}/255: {a['accuracy']:.4f} > {ref:.4f}"
        for a in entries
    )


def _not_weaker_than_fgsm(by_key: Mapping[tuple, float], n: int | None) -> dict:
    weaker, pairs = [], 0
    margin = max(MARKEDLY_WEAKER, 3 / n) if n else MARKEDLY_WEAKER
    multi_step = list_attacks(category="multi-step")
    for (name, tm, eps), acc in by_key.items():
        fgsm = by_key.get(("fgsm", tm, eps))
        if name not in multi_step or fgsm is None:
            continue
        pairs += 1
        if acc > fgsm + margin:
            weaker.append(f"{name} {tm} {eps * 255:g}/255: {acc:.4f} > fgsm {fgsm:.4f}")
    if not pairs:
        return _not_run(
            "multi_step_not_weaker_than_fgsm",
            "needs FGSM and a multi-step attack at the same radius",
        )
    return _check(
        "multi_step_not_weaker_than_fgsm",
        not weaker,
        "; ".join(weaker) or f"every multi-step attack within {margin:.3f} of FGSM or below",
    )


def _non_increasing_in_eps(by_key: Mapping[tuple, float], attacks: list[Mapping]) -> dict:
    rises, curves = [], 0
    for name, tm in {(a["name"], a["threat_model"]) for a in attacks}:
        curve = sorted((eps, acc) for (n, t, eps), acc in by_key.items() if (n, t) == (name, tm))
        curves += len(curve) > 1
        for (e0, a0), (e1, a1) in zip(curve, curve[1:], strict=False):
            if a1 > a0 + MONOTONE_TOL:
                rises.append(
                    f"{name} {tm}: {a0:.4f} at {e0 * 255:g}/255 < {a1:.4f} at {e1 * 255:g}/255"
                )
    if not curves:
        return _not_run("accuracy_non_increasing_in_eps", "needs an attack at two radii or more")
    return _check(
        "accuracy_non_increasing_in_eps",
        not rises,
        "; ".join(sorted(rises)) or f"no rise above {MONOTONE_TOL} between radii",
    )


def _eps1_near_zero(eps1: Mapping | None) -> dict:
    if eps1 is None:
        return _not_run("eps1_accuracy_near_zero", "no attack in this evaluation")
    if eps1["n"] == 0:
        return _not_run("eps1_accuracy_near_zero", "no sample of this shard is checked")
    acc = frac(eps1["correct"], eps1["n"])
    detail = f"IFGSM 5 steps of 0.25 at eps = 1 on {eps1['n']} samples: accuracy {acc:.4f}"
    return _check("eps1_accuracy_near_zero", acc <= EPS1_MAX_ACC, detail)


def _gradients_finite(bad: int, result: Mapping) -> dict:
    if not result["attacks"] and not result["counts"].get("eps1"):
        return _not_run("gradients_finite", "no gradient was taken (no attack)")
    return _check("gradients_finite", bad == 0, f"{bad} samples with non-finite input gradients")


def _apgd_close_to_pgd(by_key: Mapping[tuple, float]) -> dict:
    masking, pairs = [], 0
    for (name, tm, eps), acc in by_key.items():
        pgd = by_key.get(("pgd", tm, eps))
        if not name.startswith("apgd") or pgd is None:
            continue
        pairs += 1
        if pgd - acc > MASKING_GAP:
            masking.append(f"{name} {tm} {eps * 255:g}/255: {acc:.4f} vs pgd {pgd:.4f}")
    if not pairs:
        return _not_run("apgd_close_to_pgd", "needs PGD and APGD at the same radius")
    return _check(
        "apgd_close_to_pgd",
        not masking,
        ("APGD much stronger than PGD, possible gradient masking: " + "; ".join(masking))
        if masking
        else f"APGD within {MASKING_GAP} of PGD",
    )


def _package_flags(attacks: list[Mapping]) -> dict:
    """The sanity flags pyautoattack raised while it ran (autoattack, square)."""
    flags = [
        f"{a['name']} {a['threat_model']} {a['eps_255']:g}/255: {flag}"
        for a in attacks
        for flag in a.get("flags", [])
    ]
    return _check(
        "autoattack_flags",
        not flags,
        "; ".join(flags) or "pyautoattack raised no sanity flag",
    )
