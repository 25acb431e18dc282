"""Gradient-masking diagnostics: is a robustness gain real, or do the gradient attacks only
fail to find the adversarial examples? After the checklist of Carlini et al. 2019 ("On
Evaluating Adversarial Robustness") and AutoAttack's own flags.

Four diagnostics, each with the numbers it rests on:

- (a) ``black_box_beats_white_box``: a black-box (Square) or transfer attack breaks samples
  that no white-box attack broke at the same radius (AutoAttack's gradient sub-attacks
  count as white-box, its Square as black-box).
- (b) ``accuracy_reaches_zero``: an unbounded attack (ε = 1) must drive accuracy to ~0.
- (c) ``pgd_converged``: PGD with 5x the steps, or with restarts, must not change the
  accuracy markedly (more steps raising it is pathological; lowering it means PGD had not
  converged and its numbers overstate robustness).
- (d) ``gradient_norm``: the median loss-gradient norm at clean inputs; zero, or orders of
  magnitude below a ResNet's of the same depth, means the gradient carries no signal.

`evaluate` collects the evidence into eval.json's "masking" section (integer counts, so
shards sum exactly); `diagnostics(result, reference=...)` and `verdict(...)` are computed
from those numbers alone, so a merged or a report-side evaluation redoes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from odenets.models.base import model_device
from odenets.robustness.base import inference_state
from odenets.robustness.checks import EPS1_MAX_ACC
from odenets.robustness.counts import frac

BEYOND_FRACTION = 0.01  # (a): black-box-only breaks above this share of n (and 3 samples)
BEYOND_MIN = 3
STEPS_FACTOR = 5  # (c): PGD with this many times the steps ...
RESTARTS = 3  # ... and with this many random restarts ...
PGD_MARGIN, PGD_MIN = 0.05, 5  # ... may move the accuracy by this fraction (and samples)
GRAD_RATIO = 100.0  # (d): this many times below the ResNet's median is "orders of magnitude"
WHITE_BOX, BLACK_BOX, TRANSFER = "white-box", "black-box", "transfer"


# --- evidence, gathered by `evaluate` -----------------------------------------------------
def broken_masks(
    entries: Sequence[tuple[Mapping, torch.Tensor]],
    clean: torch.Tensor,
    indices: torch.Tensor,
) -> dict[str, tuple[list[str], torch.Tensor]]:
    """Per kind (white-box, black-box, transfer): the attacks of that kind and the samples
    any of them broke, bool (N,). `entries` are (eval.json entry, correct mask) of one radius;
    an AutoAttack entry adds each sub-attack's broken samples to the sub-attack's kind."""
    out = {k: ([], torch.zeros_like(clean)) for k in (WHITE_BOX, BLACK_BOX, TRANSFER)}
    for entry, mask in entries:
        kind = entry.get("kind", WHITE_BOX)
        if kind in out:
            out[kind][0].append(entry["name"])
            out[kind][1].logical_or_(clean & ~mask)
        for sub in entry.get("sub_attacks", []) if kind == "mixed" else []:
            names, broke = out[sub["kind"]]
            names.append(f"{entry['name']}:{sub['name']}")
            broke.logical_or_(
                torch.isin(indices, torch.as_tensor(sub["broken"], dtype=indices.dtype))
            )
    return out


def beyond_white_box(
    entries: Sequence[tuple[Mapping, torch.Tensor]],
    clean: torch.Tensor,
    indices: torch.Tensor,
    head: Mapping,
) -> dict | None:
    """Evidence for (a) at one radius: the samples a black-box or a transfer attack broke and
    no white-box attack did (None without a white-box attack, or without the others)."""
    masks = broken_masks(entries, clean, indices)
    white_names, white = masks[WHITE_BOX]
    if not white_names or not (masks[BLACK_BOX][0] or masks[TRANSFER][0]):
        return None
    out = {**head, "white_box": white_names, "n": len(clean)}
    for kind, key in ((BLACK_BOX, "black_box"), (TRANSFER, "transfer")):
        names, broke = masks[kind]
        only = broke & ~white
        out[key] = names
        out[f"{key}_only"] = int(only.sum())
        out[f"{key}_only_indices"] = indices[only].tolist()
    return out


def input_gradient_norms(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    progress: bool = False,
) -> torch.Tensor:
    """‖∇_x CE(model(x), y)‖₂ per sample at the clean images (pixel units), float64 (N,)."""
    device = model_device(model)
    out = torch.empty(len(images), dtype=torch.float64)
    starts = range(0, len(images), batch_size)
    with inference_state(model, device.type), torch.enable_grad():
        for start in tqdm(starts, desc="gradient norm", disable=not progress, leave=False):
            stop = start + batch_size
            x = images[start:stop].to(device=device, dtype=torch.float32).requires_grad_(True)
            y = labels[start:stop].to(device)
            loss = F.cross_entropy(model(x), y, reduction="sum")  # each sample its own gradient
            (grad,) = torch.autograd.grad(loss, x)
            out[start:stop] = grad.flatten(1).double().norm(dim=1).cpu()
    return out


def grad_norm_section(norms: torch.Tensor, members: Sequence[nn.Module], *, keep: bool) -> dict:
    """eval.json's "grad_norm": quartiles of the per-sample norms, the networks' family and
    depth (to find a ResNet of the same depth), and the values themselves when `keep` (a
    shard keeps them, so that the merge computes the exact median)."""
    section = {
        "norm": "l2",
        "loss": "cross-entropy",
        "space": "pixel",
        "families": [getattr(m, "family", None) for m in members],
        "depths": [getattr(m, "depth", None) for m in members],
        **norm_stats(norms.tolist()),
    }
    if keep:
        section["values"] = norms.tolist()
    return section


def norm_stats(values: Sequence[float]) -> dict:
    """n, median and quartiles of per-sample gradient norms."""
    if not values:
        return {"n": 0, "median": None, "q25": None, "q75": None}
    q = torch.quantile(
        torch.tensor(values, dtype=torch.float64),
        torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64),
    )
    return {"n": len(values), "median": q[1].item(), "q25": q[0].item(), "q75": q[2].item()}


# --- diagnostics and verdict, from eval.json numbers --------------------------------------
def _diag(name: str, flag: bool | None, detail: str) -> dict:
    """flag: True (sign of masking), False (none), None (not run: nothing to compare)."""
    return {"name": name, "flag": flag, "detail": detail}


def _radius(entry: Mapping) -> str:
    return f"{entry['threat_model']} {entry['eps_255']:g}/255"


def diagnose_black_box(masking: Mapping) -> dict:
    """(a) from the per-radius counts of samples only black-box or transfer attacks broke."""
    rows = masking.get("beyond_white_box") or []
    if not rows:
        return _diag(
            "black_box_beats_white_box",
            None,
            "not run: needs a white-box attack and a black-box (square, autoattack) or "
            "transfer (--transfer-from) attack at the same radius",
        )
    parts, flagged = [], False
    for row in rows:
        n = row["n"]
        limit = max(BEYOND_MIN, math.ceil(BEYOND_FRACTION * n))
        for key, what in (("black_box", "black-box"), ("transfer", "transfer")):
            if not row[key]:
                continue
            k = row[f"{key}_only"]
            over = k >= limit
            flagged |= over
            parts.append(
                f"{_radius(row)}: {what} ({', '.join(row[key])}) broke {k} of {n} samples "
                f"that no white-box attack broke" + (f" (>= {limit}: flagged)" if over else "")
            )
    white = sorted({w for row in rows for w in row["white_box"]})
    return _diag(
        "black_box_beats_white_box",
        flagged,
        "; ".join(parts) + f". White-box attacks compared: {', '.join(white)}",
    )


def diagnose_unbounded(counts: Mapping) -> dict:
    """(b) from the ε = 1 check's counts."""
    eps1 = counts.get("eps1")
    if not eps1 or eps1["n"] == 0:
        return _diag("accuracy_reaches_zero", None, "not run: no ε = 1 check in this evaluation")
    acc = frac(eps1["correct"], eps1["n"])
    return _diag(
        "accuracy_reaches_zero",
        acc > EPS1_MAX_ACC,
        f"IFGSM 5 steps of 0.25 at ε = 1 on {eps1['n']} samples: accuracy {100 * acc:.2f}% "
        f"(must be <= {100 * EPS1_MAX_ACC:g}%)",
    )


def diagnose_pgd_steps(masking: Mapping) -> dict:
    """(c) from PGD run with the evaluation's steps, 5x the steps and restarts."""
    rows = masking.get("pgd_steps") or []
    if not rows:
        return _diag("pgd_converged", None, "not run: needs pgd among the attacks")
    parts, flagged = [], False
    for row in rows:
        base, *more = row["runs"]
        n = base["n"]
        margin = max(PGD_MARGIN, PGD_MIN / n) if n else PGD_MARGIN
        acc0 = frac(base["correct"], n)
        cells = [f"{_run_words(base)} {100 * acc0:.2f}%"]
        for run in more:
            acc = frac(run["correct"], run["n"])
            cells.append(f"{_run_words(run)} {100 * acc:.2f}%")
            if acc > acc0 + margin:
                flagged = True
                cells[-1] += " (raises accuracy: flagged)"
            elif acc < acc0 - margin:
                flagged = True
                cells[-1] += " (PGD had not converged: flagged)"
        parts.append(f"{_radius(row)}: " + ", ".join(cells))
    return _diag("pgd_converged", flagged, "; ".join(parts) + f" (margin {100 * margin:.1f}%)")


def _run_words(run: Mapping) -> str:
    words = f"{run['steps']} steps of {run['alpha'] * 255:.3g}/255"
    return words + (f" x {run['restarts']} restarts" if run["restarts"] > 1 else "")


def diagnose_gradient(grad: Mapping | None, reference: Mapping | None = None) -> dict:
    """(d) from the median gradient norms of this evaluation and of a ResNet's, if given."""
    if not grad or grad.get("median") is None:
        return _diag("gradient_norm", None, "not run: no gradient norms in this evaluation")
    median = grad["median"]
    detail = f"median ‖∇x loss‖₂ at clean inputs {median:.3g} (n = {grad['n']})"
    if median == 0:
        return _diag("gradient_norm", True, detail + ": the gradient vanishes (flagged)")
    if not reference or not reference.get("median"):
        return _diag(
            "gradient_norm", None, detail + "; no ResNet of the same depth to compare with"
        )
    ratio = reference["median"] / median
    flagged = ratio >= GRAD_RATIO
    detail += (
        f"; {reference.get('label', 'ResNet')} of the same depth: {reference['median']:.3g} "
        f"({ratio:.3g}x this model's" + (f", >= {GRAD_RATIO:g}x: flagged)" if flagged else ")")
    )
    return _diag("gradient_norm", flagged, detail)


def diagnostics(result: Mapping, *, reference: Mapping | None = None) -> list[dict]:
    """The four diagnostics of one evaluation (eval.json dictionary). `reference`: the
    "grad_norm" section of a ResNet of the same depth (with a "label"), when one is known."""
    masking = result.get("masking") or {}
    return [
        diagnose_black_box(masking),
        diagnose_unbounded(result.get("counts") or {}),
        diagnose_pgd_steps(masking),
        diagnose_gradient(masking.get("grad_norm"), reference),
    ]


def verdict(diags: Sequence[Mapping]) -> dict:
    """One verdict from the diagnostics: "suspected" if any flags, else "no sign" (all run)
    or "no sign in the diagnostics run" (some had nothing to compare)."""
    flagged = [d["name"] for d in diags if d["flag"]]
    missing = [d["name"] for d in diags if d["flag"] is None]
    if flagged:
        text = "gradient masking suspected: " + ", ".join(flagged)
    elif missing:
        text = "no sign of gradient masking in the diagnostics run (not run: " + (
            ", ".join(missing) + ")"
        )
    else:
        text = "no sign of gradient masking"
    return {"masking_suspected": bool(flagged), "flagged": flagged, "not_run": missing,
            "text": text}  # fmt: skip


def same_depth_resnet(
    grad: Mapping | None, candidates: Sequence[tuple[str, Mapping]]
) -> dict | None:
    """The "grad_norm" section (with a "label") of a plain ResNet of the same depth as the
    networks of `grad`, among (label, grad_norm section) candidates; None if there is none
    (or if `grad` is itself a ResNet's). Of several, the first measured as `grad` was (the
    same number of images, which nested subsets make the same images, and the same loss,
    norm and space), else the first."""
    if not grad or set(grad.get("families") or []) == {"resnet"}:
        return None
    depths = set(grad.get("depths") or [])
    found = [
        (label, other)
        for label, other in candidates
        if other
        and set(other.get("families") or []) == {"resnet"}
        and set(other.get("depths") or []) == depths
        and other.get("median")
    ]
    if not found:
        return None
    keys = ("n", "loss", "norm", "space")
    label, other = min(found, key=lambda c: sum(c[1].get(k) != grad.get(k) for k in keys))
    return {**other, "label": label}
