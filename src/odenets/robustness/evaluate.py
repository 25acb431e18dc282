"""One robustness evaluation: clean, noise and attack accuracy, worst case over attacks and
sanity checks, as the `eval.json` dictionary of docs/design.md.

Accuracy under an attack is the plain accuracy on the attacked images. The worst case at
one radius counts a sample as robust only if it is classified correctly clean and after
every attack. Every result also carries integer counts (`correct`, `n`, and the `counts`
section), so shards of one evaluation merge exactly (`merge_shards`).

The pieces live beside this module: `noise_accuracy` (the noise section), `checks` (the
sanity checks), `shards` (shard slices and their merge), `table` (markdown tables) and
`counts` (accuracies with their counts); their public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from odenets.models.base import channels_last_weights, model_device
from odenets.robustness.base import Attack, create_attack
from odenets.robustness.checks import (
    EPS1_MAX_ACC,
    EPS1_SAMPLES,
    MARKEDLY_WEAKER,
    MASKING_GAP,
    MONOTONE_TOL,
    MULTI_STEP,
    sanity_checks,
)
from odenets.robustness.counts import entry_counts, frac
from odenets.robustness.ensemble import Ensemble
from odenets.robustness.metrics import DEFAULT_BATCH_SIZE, correct_mask
from odenets.robustness.noise_accuracy import (
    NOISE_ATTACK,
    SEVERITIES,
    noise_accuracy,
    noise_section,
)
from odenets.robustness.shards import merge_shards, shard_slice
from odenets.robustness.table import format_table

__all__ = [
    "DEFAULT_ATTACKS",
    "DEFAULT_EPS",
    "EPS1_MAX_ACC",
    "EPS1_SAMPLES",
    "MARKEDLY_WEAKER",
    "MASKING_GAP",
    "MONOTONE_TOL",
    "MULTI_STEP",
    "NOISE_ATTACK",
    "SEVERITIES",
    "evaluate",
    "format_table",
    "merge_shards",
    "noise_section",
    "sanity_checks",
    "shard_slice",
]

DEFAULT_ATTACKS = ("fgsm", "ifgsm", "pgd", "apgd_ce")
DEFAULT_EPS = (2 / 255, 4 / 255, 8 / 255)


def check_labels(labels: torch.Tensor, images: torch.Tensor) -> None:
    """Refuse labels that would score silently wrong: float, or of another length than the
    images (labels outside the model's classes are refused by `correct_mask`).

    Raises:
        ValueError: naming the bad value and what is accepted.
    """
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        kind = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor (int64 class indices); got {kind}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"labels must have shape ({images.shape[0]},), one per image; got {tuple(labels.shape)}"
        )


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
            layout is restored afterwards): float32 as before, up to rounding, and faster
            attacks (docs/benchmarks.md).

    Every forward pass runs in eval mode and float32: autocast is off and, on CUDA, TF32 is
    off for convolutions and matrix products. The models come back in the train/eval mode,
    layout and precision settings they had.

    Returns:
        The eval.json dictionary (accuracies as fractions).
    """
    started = time.perf_counter()
    members = [models] if isinstance(models, nn.Module) else list(models)
    check_labels(labels, images)
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
    _check_attacks(attacks, eps_list, threat_models, options, seed)
    run = dict(batch_size=batch_size, indices=indices, progress=progress)
    masks = functools.partial(correct_mask, model, images, labels, **run)  # bool (N,) correct

    clean_mask = masks(desc="clean")
    result = _skeleton(model, members, clean_mask, seed, info)
    if noise is not None:
        result["noise"], result["counts"]["noise"] = noise_accuracy(
            model, images, labels, noise, noise_root, seed, run
        )
    if gaussian_sigmas:
        result["gaussian"] = _gaussian(masks, gaussian_sigmas, seed)
    for tm in threat_models:
        for eps in eps_list:
            entries, worst, bad = _attack_radius(masks, clean_mask, attacks, tm, eps, options, seed)
            result["attacks"] += entries
            result["worst_case"].append(worst)
            result["counts"]["nonfinite_grads"] += bad
    if checks and attacks:
        offset = (info.get("shard") or {}).get("start", 0)
        result["counts"]["eps1"], bad = _eps1(model, images, labels, seed, run, offset)
        result["counts"]["nonfinite_grads"] += bad
    if checks:
        result["checks"] = sanity_checks(result)
    return result


def _check_attacks(attacks, eps_list, threat_models, options, seed) -> None:
    """Fail on a bad attack name, radius or option before any work."""
    for tm in threat_models:
        for eps in eps_list:
            for name in attacks:
                create_attack(name, eps=eps, threat_model=tm, seed=seed, **options.get(name, {}))


def _skeleton(
    model: nn.Module, members: list[nn.Module], clean_mask: torch.Tensor, seed: int, info: dict
) -> dict:
    """The eval.json dictionary with its keys in order: metadata and clean accuracy filled
    in, the other sections empty."""
    n = len(clean_mask)
    return {
        "runs": list(info.get("runs", [])),
        # Which weights were scored (per member): `odenets.training.load_run` notes them.
        "weights": [getattr(m, "run_weights", None) for m in members],
        "models": [getattr(m, "model_name", type(m).__name__) for m in members],
        "ensemble": len(members) > 1,
        "dataset": info.get("dataset"),
        "split": info.get("split", "test"),
        "n": n,
        "seed": seed,
        "channels_last": None,  # set by evaluate
        **_versions(model),
        "clean": frac(int(clean_mask.sum()), n),
        "noise": None,
        "attacks": [],
        "worst_case": [],
        "checks": [],
        "counts": {"clean": int(clean_mask.sum()), "eps1": None, "nonfinite_grads": 0},
        "shard": info.get("shard"),
    }


def _versions(model: nn.Module) -> dict:
    from odenets import __version__

    device = model_device(model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "odenets_version": __version__,
        "torch_version": torch.__version__,
        "device": f"{device.type}: {name or platform.machine()}",
    }


def _gaussian(masks: Callable, sigmas: Sequence[float], seed: int) -> list[dict]:
    """The eval.json "gaussian" entries: accuracy under plain Gaussian noise per σ."""
    return [
        entry_counts(
            {"sigma": float(s)},
            masks(attack=create_attack("gaussian", sigma=s, seed=seed), desc=f"gaussian σ={s:g}"),
        )
        for s in sigmas
    ]


def _attack_radius(
    masks: Callable,
    clean_mask: torch.Tensor,
    attacks: Sequence[str],
    tm: str,
    eps: float,
    options: Mapping[str, Mapping],
    seed: int,
) -> tuple[list[dict], dict, int]:
    """Every attack at one radius and threat model.

    Returns:
        (eval.json "attacks" entries, the "worst_case" entry, samples with non-finite
        input gradients).
    """
    worst = clean_mask.clone()
    entries, bad = [], 0
    for name in attacks:
        attack = create_attack(name, eps=eps, threat_model=tm, seed=seed, **options.get(name, {}))
        t0 = time.perf_counter()
        mask = masks(attack=attack, desc=f"{name} {eps * 255:g}/255")
        worst &= mask
        bad += attack.nonfinite_grads
        entries.append(entry_counts(_attack_entry(attack, name, tm, eps, t0), mask))
    head = {"eps": eps, "eps_255": eps * 255, "threat_model": tm, "attacks": list(attacks)}
    return entries, entry_counts(head, worst), bad


def _attack_entry(attack: Attack, name: str, tm: str, eps: float, t0: float) -> dict:
    """The settings of one eval.json "attacks" entry, timed from `t0` (perf_counter)."""
    settings = attack.settings()
    return {
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


def _eps1(model, images, labels, seed, run, offset: int = 0) -> tuple[dict, int]:
    """The ε = 1 check: an unbounded IFGSM on the first `EPS1_SAMPLES` samples of the
    evaluation set. `offset` is the position of `images[0]` in that set (a shard's start),
    so the shards of an evaluation together attack exactly the unsharded samples.

    Returns:
        ({"correct", "n"} of the "counts" section, samples with non-finite input gradients).
    """
    k = max(0, min(len(images), EPS1_SAMPLES - offset))
    if k == 0:
        return {"correct": 0, "n": 0}, 0
    unbounded = create_attack("ifgsm", eps=1.0, alpha=0.25, steps=5, seed=seed)
    mask = correct_mask(
        model, images[:k], labels[:k], attack=unbounded, **{**run, "indices": run["indices"][:k]}
    )
    return {"correct": int(mask.sum()), "n": k}, unbounded.nonfinite_grads
