"""One robustness evaluation: clean, noise and attack accuracy, worst case over attacks and
sanity checks, as the `eval.json` dictionary of docs/design.md.

Accuracy under an attack is the plain accuracy on the attacked images. The worst case at
one radius counts a sample as robust only if it is classified correctly clean and after
every attack. Every result also carries integer counts (`correct`, `n`, and the `counts`
section), so shards of one evaluation merge exactly (`merge_shards`).
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from odenets.models.base import channels_last_weights, model_device
from odenets.robustness.base import create_attack
from odenets.robustness.ensemble import Ensemble
from odenets.robustness.metrics import DEFAULT_BATCH_SIZE, correct_mask
from odenets.robustness.noise import CORRUPTION_OF

DEFAULT_ATTACKS = ("fgsm", "ifgsm", "pgd", "apgd_ce")
DEFAULT_EPS = (2 / 255, 4 / 255, 8 / 255)
SEVERITIES = (1, 2, 3, 4, 5)
# CIFAR-C noise corruption -> registered perturbation name
NOISE_ATTACK = {corruption: name for name, corruption in CORRUPTION_OF.items()}

# Sanity-check thresholds (accuracy fractions).
MARKEDLY_WEAKER = 0.03  # a multi-step attack this far above FGSM (and 3 samples) is flagged
MONOTONE_TOL = 0.01  # allowed rise of accuracy with ε (random starts add noise)
MASKING_GAP = 0.05  # APGD this far below PGD suggests gradient masking
EPS1_MAX_ACC = 0.05  # accuracy allowed under an unbounded (ε = 1) attack
EPS1_SAMPLES = 100  # samples of the ε = 1 check


def evaluate(
    models: nn.Module | Sequence[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    eps_list: Sequence[float] = DEFAULT_EPS,
    threat_model: str | Sequence[str] = "pixel",
    noise: str | None = None,
    noise_root: str | None = None,
    gaussian_sigmas: Sequence[float] = (),
    attack_options: Mapping[str, Mapping] | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    indices: torch.Tensor | None = None,
    checks: bool = True,
    info: Mapping | None = None,
    progress: bool = False,
    channels_last: bool = True,
) -> dict:
    """Evaluate one model, or an ensemble of several, and return the eval.json dictionary.

    Args:
        models: a network, or several (evaluated as their averaged-softmax `Ensemble`).
        images: float (N, C, H, W) in [0, 1]; labels: int64 (N,).
        attacks: registered attack names, each run at every radius and threat model.
        eps_list: radii as floats in [0, 1] (8/255, not 8), in the threat model's units.
        threat_model: "pixel", "normalized", or a list of both.
        noise: None, "generated" (seeded `odenets.data.apply_noise`) or "official"
            (CIFAR-C files under `noise_root`, indexed by `indices`).
        gaussian_sigmas: extra plain Gaussian noise levels (pixel units).
        attack_options: extra keyword arguments per attack name, e.g.
            ``{"pgd": {"restarts": 5}, "apgd_ce": {"steps": 50}}``.
        seed: seed of every random draw (random starts, generated noise).
        indices: int64 (N,) positions of the samples in the full test split (keys of the
            random draws and of the official noise files); defaults to 0..N-1.
        checks: run the sanity checks (including a small ε = 1 attack).
        info: metadata stored as is: "runs", "dataset", "split", "shard".
        channels_last: evaluate with the networks' 4-D weights in channels_last (their
            layout is restored afterwards): float32 as before, up to rounding, and 20-30%
            faster attacks.

    Returns:
        The eval.json dictionary (accuracies as fractions).
    """
    started = time.perf_counter()
    members = [models] if isinstance(models, nn.Module) else list(models)
    layout = channels_last_weights(members) if channels_last else contextlib.nullcontext()
    with layout:
        result = _evaluate(
            members,
            images,
            labels,
            attacks=attacks,
            eps_list=eps_list,
            threat_model=threat_model,
            noise=noise,
            noise_root=noise_root,
            gaussian_sigmas=gaussian_sigmas,
            attack_options=attack_options,
            seed=seed,
            batch_size=batch_size,
            indices=indices,
            checks=checks,
            info=info,
            progress=progress,
        )
    result["channels_last"] = channels_last
    result["wall_time_s"] = round(time.perf_counter() - started, 3)
    return result


def _evaluate(
    members: list[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    attacks: Sequence[str],
    eps_list: Sequence[float],
    threat_model: str | Sequence[str],
    noise: str | None,
    noise_root: str | None,
    gaussian_sigmas: Sequence[float],
    attack_options: Mapping[str, Mapping] | None,
    seed: int,
    batch_size: int,
    indices: torch.Tensor | None,
    checks: bool,
    info: Mapping | None,
    progress: bool,
) -> dict:
    """`evaluate` after the layout is set (same arguments; see there)."""
    # A single network too runs as an ensemble (of one): its output is then the network's
    # log-softmax, the same predictions and attacks, and N copies of it give the same numbers.
    model = Ensemble(members)
    threat_models = [threat_model] if isinstance(threat_model, str) else list(threat_model)
    if indices is None:
        indices = torch.arange(len(images))
    if len(images) == 0:
        raise ValueError("nothing to evaluate: 0 images")
    info = dict(info or {})
    options = {name: dict(opts) for name, opts in (attack_options or {}).items()}
    for tm in threat_models:  # fail on a bad name, radius or option before any work
        for eps in eps_list:
            for name in attacks:
                create_attack(name, eps=eps, threat_model=tm, seed=seed, **options.get(name, {}))
    run = dict(batch_size=batch_size, indices=indices, progress=progress)

    clean_mask = correct_mask(model, images, labels, desc="clean", **run)
    n = len(images)
    result = {
        "runs": list(info.get("runs", [])),
        "models": [getattr(m, "model_name", type(m).__name__) for m in members],
        "ensemble": len(members) > 1,
        "dataset": info.get("dataset"),
        "split": info.get("split", "test"),
        "n": n,
        "seed": seed,
        "channels_last": None,  # set by evaluate
        **_versions(model),
        "clean": _frac(int(clean_mask.sum()), n),
        "noise": None,
        "attacks": [],
        "worst_case": [],
        "checks": [],
        "counts": {"clean": int(clean_mask.sum()), "eps1": None, "nonfinite_grads": 0},
        "shard": info.get("shard"),
    }
    if noise is not None:
        result["noise"], result["counts"]["noise"] = _noise(
            model, images, labels, noise, noise_root, seed, run
        )
    if gaussian_sigmas:
        result["gaussian"] = [
            _entry_counts(
                {"sigma": float(s)},
                correct_mask(
                    model,
                    images,
                    labels,
                    attack=create_attack("gaussian", sigma=s, seed=seed),
                    desc=f"gaussian σ={s:g}",
                    **run,
                ),
            )
            for s in gaussian_sigmas
        ]

    for tm in threat_models:
        for eps in eps_list:
            worst = clean_mask.clone()
            for name in attacks:
                attack = create_attack(
                    name, eps=eps, threat_model=tm, seed=seed, **options.get(name, {})
                )
                t0 = time.perf_counter()
                mask = correct_mask(
                    model, images, labels, attack=attack, desc=f"{name} {eps * 255:g}/255", **run
                )
                worst &= mask
                result["counts"]["nonfinite_grads"] += attack.nonfinite_grads
                settings = attack.settings()
                entry = {
                    "name": name,
                    "threat_model": tm,
                    "eps": eps,
                    "eps_255": eps * 255,
                    "steps": settings.get("steps"),
                    "alpha": settings.get("alpha"),
                    "restarts": settings.get("restarts"),
                    "random_start": settings.get("random_start", False),
                    "time_s": round(time.perf_counter() - t0, 3),
                }
                result["attacks"].append(_entry_counts(entry, mask))
            head = {"eps": eps, "eps_255": eps * 255, "threat_model": tm, "attacks": list(attacks)}
            result["worst_case"].append(_entry_counts(head, worst))

    if checks and attacks:
        k = min(n, EPS1_SAMPLES)
        unbounded = create_attack("ifgsm", eps=1.0, alpha=0.25, steps=5, seed=seed)
        mask = correct_mask(
            model, images[:k], labels[:k], attack=unbounded, **{**run, "indices": indices[:k]}
        )
        result["counts"]["eps1"] = {"correct": int(mask.sum()), "n": k}
        result["counts"]["nonfinite_grads"] += unbounded.nonfinite_grads
    if checks:
        result["checks"] = sanity_checks(result)
    return result


def _frac(correct: int, n: int) -> float:
    return correct / n if n else float("nan")


def _entry_counts(entry: dict, mask: torch.Tensor) -> dict:
    correct, n = int(mask.sum()), len(mask)
    return {**entry, "accuracy": _frac(correct, n), "correct": correct, "n": n}


def _versions(model: nn.Module) -> dict:
    from odenets import __version__

    device = model_device(model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "odenets_version": __version__,
        "torch_version": torch.__version__,
        "device": f"{device.type}: {name or platform.machine()}",
    }


def _noise(model, images, labels, source, root, seed, run) -> tuple[dict, dict]:
    """Noise accuracy per corruption and severity; returns (eval.json section, counts)."""
    if source not in ("generated", "official"):
        raise ValueError(f"noise must be None, 'generated' or 'official'; got {source!r}")
    if source == "official" and root is None:
        raise ValueError("official CIFAR-C noise needs noise_root (the folder of the .npy files)")
    counts: dict[str, dict[str, int]] = {}
    for corruption, name in NOISE_ATTACK.items():
        counts[corruption] = {}
        for severity in SEVERITIES:
            desc = f"{corruption} noise {severity}"
            if source == "generated":
                attack = create_attack(name, severity=severity, seed=seed)
                mask = correct_mask(model, images, labels, attack=attack, desc=desc, **run)
            else:
                noisy = _official_noise(root, corruption, severity, run["indices"], labels)
                mask = correct_mask(model, noisy, labels, desc=desc, **run)
            counts[corruption][str(severity)] = int(mask.sum())
    return noise_section(counts, len(images), source), counts


def _official_noise(root, corruption, severity, indices, labels) -> torch.Tensor:
    from odenets.data import load_cifar_c
    from odenets.errors import DataError

    images, file_labels = load_cifar_c(root, corruption, severity)
    if int(indices.max()) >= len(images):
        raise DataError(
            f"CIFAR-C {corruption} has {len(images)} images per severity; evaluation index "
            f"{int(indices.max())} is out of range"
        )
    idx = indices.cpu().numpy()
    if not (torch.as_tensor(file_labels[idx]) == labels.cpu()).all():
        raise DataError(
            f"labels of CIFAR-C {corruption} (severity {severity}) under {root} differ from "
            "the test labels: the official files follow the official CIFAR test order, so "
            "evaluate them with the official archive (dataset cifar10/cifar100), not a folder"
        )
    x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return x.float() / 255


def noise_section(counts: Mapping[str, Mapping[str, int]], n: int, source: str) -> dict:
    """The eval.json "noise" dictionary from correct counts per corruption and severity."""
    per = {}
    for corruption, by_severity in counts.items():
        accs = {s: _frac(c, n) for s, c in by_severity.items()}
        per[corruption] = {**accs, "mean": sum(accs.values()) / len(accs)}
    mean = sum(p["mean"] for p in per.values()) / len(per)
    return {"source": source, "per_corruption": per, "mean": mean}


# --- sanity checks ------------------------------------------------------------------------
MULTI_STEP = ("ifgsm", "pgd", "pgd_start_centred", "apgd_ce", "apgd_dlr")


def sanity_checks(result: Mapping) -> list[dict]:
    """The checks of one evaluation, computed from its numbers (so merged shards redo them)."""
    attacks = result["attacks"]
    by_key = {(a["name"], a["threat_model"], a["eps"]): a["accuracy"] for a in attacks}
    clean = result["clean"]
    out = []

    above = [a for a in attacks if a["accuracy"] > clean]
    out.append(_check("attack_not_above_clean", not above, _list(above, clean, "clean")))

    weaker = []
    margin = max(MARKEDLY_WEAKER, 3 / result["n"]) if result.get("n") else MARKEDLY_WEAKER
    for (name, tm, eps), acc in by_key.items():
        fgsm = by_key.get(("fgsm", tm, eps))
        if name in MULTI_STEP and fgsm is not None and acc > fgsm + margin:
            weaker.append(f"{name} {tm} {eps * 255:g}/255: {acc:.4f} > fgsm {fgsm:.4f}")
    out.append(
        _check(
            "multi_step_not_weaker_than_fgsm",
            not weaker,
            "; ".join(weaker) or f"every multi-step attack within {margin:.3f} of FGSM or below",
        )
    )

    rises = []
    for name, tm in {(a["name"], a["threat_model"]) for a in attacks}:
        curve = sorted((eps, acc) for (n, t, eps), acc in by_key.items() if (n, t) == (name, tm))
        for (e0, a0), (e1, a1) in zip(curve, curve[1:], strict=False):
            if a1 > a0 + MONOTONE_TOL:
                rises.append(
                    f"{name} {tm}: {a0:.4f} at {e0 * 255:g}/255 < {a1:.4f} at {e1 * 255:g}/255"
                )
    out.append(
        _check(
            "accuracy_non_increasing_in_eps",
            not rises,
            "; ".join(sorted(rises)) or f"no rise above {MONOTONE_TOL} between radii",
        )
    )

    eps1 = result["counts"].get("eps1")
    if eps1 is None:
        out.append(_check("eps1_accuracy_near_zero", True, "not run"))
    else:
        acc = _frac(eps1["correct"], eps1["n"])
        detail = f"IFGSM 5 steps of 0.25 at eps = 1 on {eps1['n']} samples: accuracy {acc:.4f}"
        out.append(_check("eps1_accuracy_near_zero", acc <= EPS1_MAX_ACC, detail))

    bad = result["counts"].get("nonfinite_grads", 0)
    out.append(
        _check("gradients_finite", bad == 0, f"{bad} samples with non-finite input gradients")
    )

    masking = []
    for (name, tm, eps), acc in by_key.items():
        pgd = by_key.get(("pgd", tm, eps))
        if name.startswith("apgd") and pgd is not None and pgd - acc > MASKING_GAP:
            masking.append(f"{name} {tm} {eps * 255:g}/255: {acc:.4f} vs pgd {pgd:.4f}")
    out.append(
        _check(
            "apgd_close_to_pgd",
            not masking,
            ("APGD much stronger than PGD, possible gradient masking: " + "; ".join(masking))
            if masking
            else f"APGD within {MASKING_GAP} of PGD or no pair to compare",
        )
    )
    return out


def _check(name: str, ok: bool, detail: str) -> dict:
    return {"name": name, "ok": bool(ok), "detail": detail}


def _list(entries: list[dict], ref: float, what: str) -> str:
    if not entries:
        return f"every attack at or below {what} accuracy {ref:.4f}"
    return "; ".join(
        f"{a['name']} {a['threat_model']} {a['eps_255']:g}/255: {a['accuracy']:.4f} > {ref:.4f}"
        for a in entries
    )


# --- shards -------------------------------------------------------------------------------
def shard_slice(n: int, index: int, count: int) -> tuple[int, int]:
    """[start, stop) of shard `index` (0-based) of `count` contiguous, disjoint shards."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be i/n with 0 <= i < n; got {index}/{count}")
    return index * n // count, (index + 1) * n // count


_SAME_KEYS = ("runs", "models", "ensemble", "dataset", "split", "seed")
_ATTACK_KEYS = ("name", "threat_model", "eps", "steps", "alpha", "restarts")


def merge_shards(shards: Sequence[Mapping]) -> dict:
    """Sum the counts of the shards of one evaluation into the unsharded result.

    Every shard i/n of the same evaluation must be present exactly once; settings must agree.
    """
    if not shards:
        raise ValueError("no shard results to merge")
    infos = [s.get("shard") for s in shards]
    if any(i is None for i in infos):
        raise ValueError("every file to merge must come from `odenets evaluate --shard i/n`")
    count = infos[0]["count"]
    got = sorted(i["index"] for i in infos)
    if got != list(range(count)) or any(i["count"] != count for i in infos):
        raise ValueError(f"need shards 0..{count - 1} of {count} exactly once; got {got}")
    first = shards[0]
    for s in shards[1:]:
        for key in _SAME_KEYS:
            if s.get(key) != first.get(key):
                raise ValueError(
                    f"shards disagree on {key!r}: {s.get(key)!r} vs {first.get(key)!r}"
                )
        if [_attack_key(a) for a in s["attacks"]] != [_attack_key(a) for a in first["attacks"]]:
            raise ValueError("shards were evaluated with different attacks or radii")

    merged = {k: v for k, v in first.items() if k not in ("shard",)}
    n = sum(s["n"] for s in shards)
    merged["n"] = n
    clean = sum(s["counts"]["clean"] for s in shards)
    merged["clean"] = _frac(clean, n)
    counts = {"clean": clean, "eps1": None, "nonfinite_grads": 0}
    counts["nonfinite_grads"] = sum(s["counts"].get("nonfinite_grads", 0) for s in shards)
    if all(s["counts"].get("eps1") for s in shards):
        counts["eps1"] = {
            key: sum(s["counts"]["eps1"][key] for s in shards) for key in ("correct", "n")
        }
    if first.get("noise"):
        noise = {
            c: {sev: sum(s["counts"]["noise"][c][sev] for s in shards) for sev in by_sev}
            for c, by_sev in first["counts"]["noise"].items()
        }
        counts["noise"] = noise
        merged["noise"] = noise_section(noise, n, first["noise"]["source"])
    for key in ("attacks", "worst_case", "gaussian"):
        if key in first:
            merged[key] = [
                _sum_entries(group) for group in zip(*(s[key] for s in shards), strict=True)
            ]
    merged["counts"] = counts
    merged["shard"] = None
    merged["merged_shards"] = count
    merged["wall_time_s"] = sum(s.get("wall_time_s", 0.0) for s in shards)
    merged["checks"] = sanity_checks(merged) if first.get("checks") else []
    return merged


def _attack_key(entry: Mapping) -> tuple:
    return tuple(entry.get(k) for k in _ATTACK_KEYS)


def _sum_entries(group: Sequence[Mapping]) -> dict:
    correct, n = sum(e["correct"] for e in group), sum(e["n"] for e in group)
    out = {**group[0], "correct": correct, "n": n, "accuracy": _frac(correct, n)}
    if "time_s" in out:
        out["time_s"] = round(sum(e["time_s"] for e in group), 3)
    return out


# --- table --------------------------------------------------------------------------------
def format_table(result: Mapping) -> str:
    """Markdown tables (percent) of an eval.json dictionary, with the checks below them."""
    pct = lambda x: f"{100 * x:.2f}"  # noqa: E731
    lines = [
        f"models: {', '.join(result['models'])}" + (" (ensemble)" if result["ensemble"] else ""),
        f"data: {result.get('dataset')} {result.get('split')}, n = {result['n']}, "
        f"seed {result['seed']}",
        "",
        "| clean | " + " | ".join(_noise_headers(result)) + " |",
        "|---|" + "---|" * len(_noise_headers(result)),
        f"| {pct(result['clean'])} | "
        + " | ".join([pct(v) for v in _noise_values(result)] or ["not run"])
        + " |",
    ]
    if result.get("attacks"):
        radii = sorted({a["eps_255"] for a in result["attacks"]})
        lines += [
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
            cells = [pct(accs[r]) if r in accs else "" for r in radii]
            lines.append(f"| {name} | {tm} | " + " | ".join(cells) + " |")
    if result.get("checks"):
        lines.append("")
        for c in result["checks"]:
            lines.append(f"- [{'ok' if c['ok'] else 'FLAG'}] {c['name']}: {c['detail']}")
    return "\n".join(lines)


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
