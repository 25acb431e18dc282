"""One robustness evaluation: clean, noise and attack accuracy, worst case over attacks and
sanity checks, as the `eval.json` dictionary of docs/design.md.

Robust accuracy under an attack counts a sample only if it is classified correctly both
clean and after the attack (as AutoAttack counts it: an attack that turns a misclassified
image into a correct one does not make it robust). The worst case at one radius counts a
sample as robust only if it is classified correctly clean and after every attack. Every
result also carries integer counts (`correct`, `n`, and the `counts` section), so shards of
one evaluation merge exactly (`merge_shards`).

Beside the attacks given by name, `transfer_from` scores examples crafted on a surrogate
network (`odenets.robustness.transfer`), and `masking` gathers the evidence of the
gradient-masking diagnostics (`odenets.robustness.masking`): the samples only black-box or
transfer attacks broke, PGD with more steps and restarts, and the input-gradient norms.

The pieces live beside this module: `noise_accuracy` (the noise section), `checks` (the
sanity checks), `shards` (shard slices and their merge), `table` (markdown tables) and
`counts` (accuracies with their counts); `runs.evaluate_runs` evaluates run folders.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from odenets._version import __version__
from odenets.models.base import channels_last_weights, model_device
from odenets.progress import WorkLog
from odenets.robustness import masking as masking_evidence
from odenets.robustness.base import Attack, create_attack
from odenets.robustness.checks import EPS1_SAMPLES, sanity_checks
from odenets.robustness.counts import entry_counts, frac, sample_bits
from odenets.robustness.ensemble import Ensemble
from odenets.robustness.metrics import DEFAULT_BATCH_SIZE, correct_mask
from odenets.robustness.noise_accuracy import NOISE_ATTACK, SEVERITIES, noise_accuracy
from odenets.robustness.transfer import Transfer

DEFAULT_ATTACKS = ("fgsm", "ifgsm", "pgd", "apgd_ce")
DEFAULT_EPS = (2 / 255, 4 / 255, 8 / 255)
DEFAULT_TRANSFER = ("pgd", "apgd_ce")  # attacks crafted on the surrogate

logger = logging.getLogger(__name__)


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
    transfer_from: nn.Module | Sequence[nn.Module] | None = None,
    transfer_attacks: Sequence[str] = DEFAULT_TRANSFER,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    indices: torch.Tensor | None = None,
    checks: bool = True,
    masking: bool = True,
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
        transfer_from: a surrogate network (or several, as their ensemble): each of
            `transfer_attacks` is crafted on it, with the options of `attack_options`, and
            scored on `models` ("transfer_<name>" entries), at every radius and threat model.
        transfer_attacks: registered attack names crafted on the surrogate.
        seed: seed of every random draw (random starts, generated noise).
        indices: int64 (N,) positions of the samples in the full test split (keys of the
            random draws and of the official noise files); defaults to 0..N-1.
        checks: run the sanity checks (including a small ε = 1 attack).
        masking: gather the evidence of the gradient-masking diagnostics (input-gradient
            norms; PGD with 5x the steps and with 3 restarts at the smallest radius of the
            first threat model, when pgd is among the attacks) and, with `checks`, give
            the diagnostics and a verdict.
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
    surrogates = (
        []
        if transfer_from is None
        else [transfer_from]
        if isinstance(transfer_from, nn.Module)
        else list(transfer_from)
    )
    networks = members + surrogates
    layout = channels_last_weights(networks) if channels_last else contextlib.nullcontext()
    with layout:
        result = _evaluate(
            members,
            surrogates,
            images,
            labels,
            attacks=attacks,
            eps_list=eps_list,
            threat_model=threat_model,
            noise=noise,
            noise_root=noise_root,
            gaussian_sigmas=gaussian_sigmas,
            attack_options=attack_options,
            transfer_attacks=transfer_attacks,
            seed=seed,
            batch_size=batch_size,
            indices=indices,
            checks=checks,
            masking=masking,
            info=info,
            progress=progress,
        )
    result["channels_last"] = channels_last
    result["wall_time_s"] = round(time.perf_counter() - started, 3)
    return result


def _evaluate(
    members: list[nn.Module],
    surrogates: list[nn.Module],
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
    transfer_attacks: Sequence[str],
    seed: int,
    batch_size: int,
    indices: torch.Tensor | None,
    checks: bool,
    masking: bool,
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
    surrogate = Ensemble(surrogates) if surrogates else None
    transfer = list(transfer_attacks) if surrogate is not None else []
    _check_attacks([*attacks, *transfer], eps_list, threat_models, options, seed)
    # Off a terminal, one line per pass with the ETA of the whole evaluation.
    log = None
    if not progress:
        plan = dict(noise=noise, sigmas=gaussian_sigmas, masking=masking, checks=checks)
        total, bound = _planned_cost(
            len(images), attacks, eps_list, threat_models, options, seed, transfer=transfer,
            offset=(info.get("shard") or {}).get("start", 0), pgd="pgd" in attacks, **plan,
        )  # fmt: skip
        log = WorkLog(logger, total_cost=total, bounded_cost=bound, what="evaluation")
    run = dict(batch_size=batch_size, indices=indices, progress=progress, log=log)
    masks = functools.partial(correct_mask, model, images, labels, **run)  # bool (N,) correct

    clean_mask = masks(desc="clean")
    result = _skeleton(model, members, clean_mask, seed, info, surrogates)
    result["samples"] = {
        "indices": indices.tolist(),
        "clean": sample_bits(clean_mask),
        "noise": None,
    }
    if noise is not None:
        result["noise"], result["counts"]["noise"], per_sample = noise_accuracy(
            model, images, labels, noise, noise_root, seed, run
        )
        result["samples"]["noise"] = per_sample
    if gaussian_sigmas:
        result["gaussian"] = _gaussian(masks, gaussian_sigmas, seed)
    source = info.get("transfer_from")
    for tm in threat_models:
        for eps in eps_list:

            def build(name, tm=tm, eps=eps):
                return create_attack(
                    name, eps=eps, threat_model=tm, seed=seed, **options.get(name, {})
                )

            batch = [build(name) for name in attacks]
            batch += [Transfer(build(name), surrogate, source=source) for name in transfer]
            entries, worst, bad, beyond = _attack_radius(masks, clean_mask, batch, tm, eps, indices)
            result["attacks"] += entries
            result["worst_case"].append(worst)
            result["counts"]["nonfinite_grads"] += bad
            if beyond is not None:
                result["masking"]["beyond_white_box"].append(beyond)
    if masking and "pgd" in attacks and eps_list:
        # One radius of the first threat model: the check costs 8 PGD runs' worth.
        tm, eps = threat_models[0], min(eps_list)
        result["masking"]["pgd_steps"] = [
            _pgd_steps(masks, clean_mask, result["attacks"], tm, eps, options, seed)
        ]
    if masking:
        if log is not None:
            log.start_pass("input-gradient norms", GRAD_NORM_COST * len(images))
        norms = masking_evidence.input_gradient_norms(
            model, images, labels, batch_size=batch_size, progress=progress
        )
        if log is not None:
            log.end_pass()
        keep = info.get("shard") is not None  # shards keep the values: the merge's median
        result["masking"]["grad_norm"] = masking_evidence.grad_norm_section(
            norms, members, keep=keep
        )
    if checks and attacks:
        offset = (info.get("shard") or {}).get("start", 0)
        result["counts"]["eps1"], bad = _eps1(model, images, labels, seed, run, offset)
        result["counts"]["nonfinite_grads"] += bad
    if checks:
        result["checks"] = sanity_checks(result)
    if checks and masking:
        masking_verdict(result)
    return result


GRAD_NORM_COST = 3.0  # a forward and a backward per image, in forward-pass equivalents


def _planned_cost(
    n: int,
    attacks: Sequence[str],
    eps_list: Sequence[float],
    threat_models: Sequence[str],
    options: Mapping[str, Mapping],
    seed: int,
    *,
    transfer: Sequence[str] = (),
    noise: str | None,
    sigmas: Sequence[float],
    masking: bool,
    checks: bool,
    pgd: bool,
    offset: int,
) -> tuple[float, float]:
    """The cost of every pass `_evaluate` makes, in forward-pass equivalents times images
    (`Perturbation.cost`): the whole that an ETA is measured against; and the part of it
    that is an upper bound (attacks that stop early on the samples they break)."""
    total = float(n) * (1 + len(sigmas))  # clean, plain Gaussian noise
    bound = 0.0
    if noise is not None:
        total += float(n) * len(NOISE_ATTACK) * len(SEVERITIES)
    for tm in threat_models:
        for eps in eps_list:
            for name, transferred in [(a, False) for a in attacks] + [(a, True) for a in transfer]:
                attack = create_attack(
                    name, eps=eps, threat_model=tm, seed=seed, **options.get(name, {})
                )
                if transferred:
                    attack = attack.for_transfer()  # as `Transfer` crafts it
                total += attack.cost() * n
                bound += attack.cost() * n if attack.stops_early else 0.0
    if masking and pgd and eps_list:
        base = create_attack("pgd", eps=min(eps_list), threat_model=threat_models[0], seed=seed,
                             **options.get("pgd", {}))  # fmt: skip
        for v in _pgd_variants(base):
            total += create_attack("pgd", eps=base.eps, seed=seed, **v).cost() * n
    if masking:
        total += GRAD_NORM_COST * n
    if checks and attacks:
        total += _eps1_attack(seed).cost() * max(0, min(n, EPS1_SAMPLES - offset))
    return total, bound


def masking_verdict(result: dict, *, reference: Mapping | None = None) -> dict:
    """Fill in result["masking"]["diagnostics"] and ["verdict"] from its numbers (see
    `odenets.robustness.masking`); `reference`: a same-depth ResNet's "grad_norm" section."""
    section = result["masking"]
    section["diagnostics"] = masking_evidence.diagnostics(result, reference=reference)
    section["verdict"] = masking_evidence.verdict(section["diagnostics"])
    return section


def _check_attacks(attacks, eps_list, threat_models, options, seed) -> None:
    """Fail on a bad attack name, radius or option (or a missing package) before any work."""
    for tm in threat_models:
        for eps in eps_list:
            for name in attacks:
                create_attack(name, eps=eps, threat_model=tm, seed=seed, **options.get(name, {}))


def _skeleton(
    model: nn.Module,
    members: list[nn.Module],
    clean_mask: torch.Tensor,
    seed: int,
    info: dict,
    surrogates: list[nn.Module],
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
        "masking": {"beyond_white_box": [], "pgd_steps": [], "grad_norm": None},
        "transfer_from": info.get("transfer_from"),
        # The surrogates' weights, as "weights": transfer results go stale with them.
        "transfer_weights": [getattr(s, "run_weights", None) for s in surrogates] or None,
        "shard": info.get("shard"),
    }


def _versions(model: nn.Module) -> dict:
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
    attacks: Sequence[Attack],
    tm: str,
    eps: float,
    indices: torch.Tensor,
) -> tuple[list[dict], dict, int, dict | None]:
    """Every attack at one radius and threat model.

    Returns:
        (eval.json "attacks" entries, the "worst_case" entry, samples with non-finite
        input gradients, the masking evidence of samples only black-box or transfer
        attacks broke (None when there is nothing to compare)).
    """
    worst = clean_mask.clone()
    entries, scored, bad = [], [], 0
    for attack in attacks:
        t0 = time.perf_counter()
        # Robust only if also correct clean (an attack may "fix" a misclassified image).
        mask = masks(attack=attack, desc=f"{attack.name} {eps * 255:g}/255", within=clean_mask)
        worst &= mask
        bad += attack.nonfinite_grads
        entry = entry_counts(
            {**_attack_entry(attack, tm, eps, t0), **attack.record()}, mask, samples=True
        )
        entries.append(entry)
        scored.append((entry, mask))
    names = [a.name for a in attacks]
    head = {"eps": eps, "eps_255": eps * 255, "threat_model": tm}
    beyond = masking_evidence.beyond_white_box(scored, clean_mask, indices, head)
    worst_entry = entry_counts({**head, "attacks": names}, worst, samples=True)
    return entries, worst_entry, bad, beyond


def _attack_entry(attack: Attack, tm: str, eps: float, t0: float) -> dict:
    """The settings of one eval.json "attacks" entry, timed from `t0` (perf_counter)."""
    settings = attack.settings()
    entry = {
        "name": attack.name,
        "kind": attack.kind,
        "threat_model": tm,
        "eps": eps,
        "eps_255": eps * 255,
        "steps": settings.get("steps"),
        "alpha": settings.get("alpha"),
        "restarts": settings.get("restarts"),
        "random_start": settings.get("random_start", False),
    }
    entry.update({k: v for k, v in settings.items() if k not in entry})
    entry["time_s"] = round(time.perf_counter() - t0, 3)
    return entry


def _pgd_steps(
    masks: Callable,
    clean_mask: torch.Tensor,
    entries: Sequence[Mapping],
    tm: str,
    eps: float,
    options: Mapping[str, Mapping],
    seed: int,
) -> dict:
    """Masking evidence (c) at one radius: the evaluation's PGD, then PGD with
    `STEPS_FACTOR` times the steps (α divided as much) and with `RESTARTS` restarts."""
    base = create_attack("pgd", eps=eps, threat_model=tm, seed=seed, **options.get("pgd", {}))
    ours = next(
        e for e in entries if e["name"] == "pgd" and e["threat_model"] == tm and e["eps"] == eps
    )
    runs = [{k: ours[k] for k in ("steps", "alpha", "restarts", "correct", "n", "accuracy")}]
    for v in _pgd_variants(base):
        attack = create_attack(
            "pgd", eps=eps, threat_model=tm, seed=seed, random_start=base.random_start, **v
        )
        desc = f"pgd {v['steps']} steps x {v['restarts']}"
        mask = masks(attack=attack, desc=desc, within=clean_mask)
        runs.append(entry_counts(dict(v), mask))
    return {"threat_model": tm, "eps": eps, "eps_255": eps * 255, "runs": runs}


def _pgd_variants(base) -> list[dict]:
    """PGD with `STEPS_FACTOR` times the steps (α divided as much), and with `RESTARTS`
    times the restarts, of the evaluation's PGD `base`."""
    factor, restarts = masking_evidence.STEPS_FACTOR, masking_evidence.RESTARTS
    return [
        {"steps": base.steps * factor, "alpha": base.alpha / factor, "restarts": base.restarts},
        {"steps": base.steps, "alpha": base.alpha, "restarts": base.restarts * restarts},
    ]


def _eps1_attack(seed: int) -> Attack:
    """The unbounded attack of the ε = 1 check."""
    return create_attack("ifgsm", eps=1.0, alpha=0.25, steps=5, seed=seed)


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
    unbounded = _eps1_attack(seed)
    mask = correct_mask(
        model,
        images[:k],
        labels[:k],
        attack=unbounded,
        desc="ε = 1 check",
        **{**run, "indices": run["indices"][:k]},
    )
    return {"correct": int(mask.sum()), "n": k}, unbounded.nonfinite_grads
