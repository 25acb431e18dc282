"""One function per figure kind: load runs or eval.json files, compute, draw, save.

`FIGURE_KINDS` maps each kind of `odenets plot KIND` to its function, to what its inputs
are ("runs": run folders; "evals": eval.json files or folders holding one) and to the
options it takes; `odenets plot` passes a figure those and no others, and a function takes
no `**kwargs`, so a misspelt option is an error. Every function returns the paths it wrote
(PNG and PDF of each figure).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from odenets.analysis import plots, plots_nais
from odenets.analysis.coefficients import run_coefficients
from odenets.analysis.depth import measure_depth
from odenets.analysis.depth_stats import depth_summary
from odenets.analysis.dynamics import nais_state_differences, one_d_dynamics
from odenets.analysis.input_landscape import input_landscape, noisy_images
from odenets.analysis.jacobian import stability_per_block
from odenets.analysis.robustness_results import ensemble_gain, load_eval, robustness_curves
from odenets.analysis.weight_landscape import weight_landscape
from odenets.data.datasets import load_dataset
from odenets.data.splits import subset_indices
from odenets.device import resolve_device
from odenets.models.base import model_device
from odenets.training.runs import load_run, read_run


@dataclass
class ImageSubset:
    """A fixed, seeded subset of a run's test split."""

    images: torch.Tensor  # float (N, C, H, W) in [0, 1]
    labels: torch.Tensor  # int64 (N,)
    raw: np.ndarray  # uint8 (N, H, W, C), the same images
    class_names: list[str]
    dataset: str


def load_test_images(
    run_dirs: Sequence[str | Path],
    *,
    data_root: str | None = None,
    limit: int | None = 256,
    seed: int = 0,
) -> ImageSubset:
    """The test images of the runs' data set (all runs must share it), a seeded subset.

    Args:
        data_root: overrides the root recorded in the first run's config.json.
        limit: number of images (None: all); the subset depends only on `seed`.
    """
    datasets = [read_run(r).config["dataset"] for r in run_dirs]
    names = {d["name"] for d in datasets}
    if len(names) != 1:
        raise ValueError(f"runs were trained on different data sets {sorted(names)}; give one")
    ds = datasets[0]
    data = load_dataset(ds["name"], root=data_root or ds.get("root"), split="test")
    index = subset_indices(len(data), limit, seed)
    raw = data.images[index]
    images = torch.from_numpy(raw).permute(0, 3, 1, 2).float().div(255)  # (N, C, H, W)
    labels = torch.from_numpy(data.labels[index]).long()
    return ImageSubset(images, labels, raw, list(data.class_names), ds["name"])


def _load(run: str | Path, device: str) -> torch.nn.Module:
    return load_run(run, device=resolve_device(device))


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Model names, with the seed or folder name added where a model name repeats."""
    configs = [read_run(r).config for r in run_dirs]
    names = [c["model"] for c in configs]
    labels = []
    for path, c in zip(run_dirs, configs, strict=True):
        if names.count(c["model"]) == 1:
            labels.append(c["model"])
        else:
            labels.append(f"{c['model']} (seed {c.get('seed', '?')}, {Path(path).name})")
    return labels


def coefficients_figure(run_dirs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """λ_n per block (mean and spread over seeds) and over epochs."""
    fig = plots.draw_coefficients(run_coefficients(run_dirs))
    return plots.save_figure(fig, out_dir, "coefficients")


def input_landscape_figure(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    data_root: str | None = None,
    limit: int | None = 256,
    seed: int = 0,
    noise: str | None = "gaussian",
    severity: int = 3,
    radius_255: float = 16.0,
    points: int = 21,
    points_2d: int = 11,
    device: str = "auto",
) -> list[Path]:
    """Input-space loss curves (and surfaces) of several models on the same noisy images."""
    data = load_test_images(run_dirs, data_root=data_root, limit=limit, seed=seed)
    images = noisy_images(data.images, noise, severity, seed=seed)
    results = {}
    for label, run in zip(run_labels(run_dirs), run_dirs, strict=True):
        results[label] = input_landscape(
            _load(run, device),
            images,
            data.labels,
            radius=radius_255 / 255,
            points=points,
            points_2d=points_2d,
            seed=seed,
        )
    what = f"{noise} noise (severity {severity})" if noise else "clean"
    what = f"{len(images)} {what} {data.dataset}"
    paths = plots.save_figure(
        plots.draw_input_landscape(results, noise=what), out_dir, "input_landscape"
    )
    if points_2d:
        fig = plots.draw_surfaces(
            results,
            x="t1",
            y="t2",
            z="surface",
            scale=255,
            xlabel="t along attack direction (/255)",
            ylabel="t along random direction (/255)",
            title=f"Mean loss over the input plane around {what} images",
        )
        paths += plots.save_figure(fig, out_dir, "input_landscape_2d")
    return paths


def weight_landscape_figure(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    data_root: str | None = None,
    limit: int | None = 256,
    seed: int = 0,
    alpha: float = 1.0,
    points: int = 21,
    points_2d: int = 11,
    device: str = "auto",
) -> list[Path]:
    """Weight-space loss along filter-normalised directions, 1-D and 2-D, per model."""
    data = load_test_images(run_dirs, data_root=data_root, limit=limit, seed=seed)
    labels = run_labels(run_dirs)
    curves, surfaces = {}, {}
    for label, run in zip(labels, run_dirs, strict=True):
        model = _load(run, device)
        grid = np.linspace(-alpha, alpha, points)
        curves[label] = weight_landscape(model, data.images, data.labels, alphas=grid, seed=seed)
        if points_2d:
            grid2 = np.linspace(-alpha, alpha, points_2d)
            surfaces[label] = weight_landscape(
                model, data.images, data.labels, alphas=grid2, alphas2=grid2, seed=seed
            )
    extra = f", {len(data.images)} {data.dataset} test images, seed {seed}"
    paths = plots.save_figure(
        plots.draw_weight_landscape(curves, title_extra=extra), out_dir, "weight_landscape"
    )
    if points_2d:
        fig = plots.draw_surfaces(
            surfaces,
            x="alpha",
            y="alpha2",
            z="loss",
            xlabel="α along direction 1 (filter-norm units)",
            ylabel="β along direction 2 (filter-norm units)",
            title=f"Loss over a filter-normalised weight plane{extra}",
        )
        paths += plots.save_figure(fig, out_dir, "weight_landscape_2d")
    return paths


def ensemble_gain_figure(
    eval_paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    eps_255: float = 8.0,
    threat_model: str = "pixel",
) -> list[Path]:
    """Ensemble minus single-model accuracy per metric and model family (paper's Fig. 2)."""
    gains = ensemble_gain(
        [load_eval(p) for p in eval_paths], eps_255=eps_255, threat_model=threat_model
    )
    setting = f"attacks at ε = {eps_255:g}/255, {threat_model} threat model"
    return plots.save_figure(
        plots.draw_ensemble_gain(gains, setting=setting), out_dir, "ensemble_gain"
    )


def robustness_curves_figure(eval_paths: Sequence[str | Path], out_dir: str | Path):
    """Accuracy against ε per attack and against severity per noise, per evaluation."""
    curves = robustness_curves([load_eval(p) for p in eval_paths])
    return plots.save_figure(plots.draw_robustness_curves(curves), out_dir, "robustness_curves")


def depth_figure(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    data_root: str | None = None,
    limit: int | None = 256,
    seed: int = 0,
    tol: float = 1e-3,
    max_steps: int = 50,
    extremes: int = 8,
    device: str = "auto",
) -> list[Path]:
    """Per-image depth of each NAIS run: histogram, per class, extreme images."""
    data = load_test_images(run_dirs, data_root=data_root, limit=limit, seed=seed)
    paths = []
    labels = run_labels(run_dirs)
    for label, run in zip(labels, run_dirs, strict=True):
        model = _load(run, device)
        images = data.images.to(model_device(model))
        steps = measure_depth(model, images, tol=tol, max_steps=max_steps)
        summary = depth_summary(
            steps, data.labels, num_classes=len(data.class_names), extremes=extremes
        )
        title = f"{label}, tol {tol:g}, at most {max_steps} steps per block"
        stem = "depth" if len(run_dirs) == 1 else f"depth_{Path(run).name}"
        paths += plots.save_figure(
            plots_nais.draw_depth(summary, data.class_names, label=title), out_dir, stem
        )
        fig = plots_nais.draw_depth_extremes(
            data.raw, summary, data.labels.numpy(), data.class_names, label=label
        )
        paths += plots.save_figure(fig, out_dir, f"{stem}_images")
    return paths


def dynamics_figure(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    data_root: str | None = None,
    limit: int | None = 8,
    seed: int = 0,
    steps: int = 30,
    block: int = 0,
    device: str = "auto",
) -> list[Path]:
    """The poster's 1-D tanh block, and (given NAIS runs) a trained block's state changes."""
    trained = None
    if run_dirs:
        data = load_test_images(run_dirs, data_root=data_root, limit=limit, seed=seed)
        trained = {}
        for label, run in zip(run_labels(run_dirs), run_dirs, strict=True):
            model = _load(run, device)
            diffs = nais_state_differences(model, data.images, block_index=block, steps=steps)
            act = model.nais_blocks()[block].act
            trained[f"{label}, block {block + 1} ({act}), {len(data.images)} images"] = diffs
    fig = plots_nais.draw_dynamics(one_d_dynamics(steps=steps), trained)
    return plots.save_figure(fig, out_dir, "dynamics")


def stability_figure(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    data_root: str | None = None,
    limit: int | None = 32,
    seed: int = 0,
    iters: int = 30,
    device: str = "auto",
) -> list[Path]:
    """Per-block stage-Jacobian spectral radius (NAIS) or block-Jacobian norm (ResNets)."""
    data = load_test_images(run_dirs, data_root=data_root, limit=limit, seed=seed)
    results = {
        label: stability_per_block(_load(run, device), data.images, iters=iters, seed=seed)
        for label, run in zip(run_labels(run_dirs), run_dirs, strict=True)
    }
    return plots.save_figure(plots_nais.draw_stability(results), out_dir, "stability")


# --- one-call helpers (compute, draw, save) ------------------------------------------------
def plot_coefficients(run_dirs: Sequence[str | Path], path: str | Path) -> Path:
    """Draw the coefficient figure of run folders to `path` (PNG; a PDF beside it)."""
    return _save_as(plots.draw_coefficients(run_coefficients(run_dirs)), path)


def plot_robustness_curves(evals: Sequence[Mapping], path: str | Path) -> Path:
    """Draw the robustness curves of eval.json dictionaries to `path` (PNG; a PDF beside it)."""
    return _save_as(plots.draw_robustness_curves(robustness_curves(evals)), path)


def plot_depth(run_dirs: Sequence[str | Path], path: str | Path, **options) -> Path:
    """Draw the depth figures of NAIS run folders next to `path`; returns the first PNG."""
    path = Path(path)
    written = depth_figure(run_dirs, path.parent, **options)
    return next(p for p in written if p.suffix == ".png")


def _save_as(fig, path: str | Path) -> Path:
    path = Path(path)
    return plots.save_figure(fig, path.parent, path.stem)[0]


@dataclass(frozen=True)
class FigureKind:
    draw: Callable[..., list[Path]]
    inputs: str  # "runs" (run folders), "evals" (eval.json files) or "optional-runs"
    help: str
    options: tuple[str, ...] = ()  # the keywords of `draw` that `odenets plot` passes


_IMAGES = ("data_root", "limit", "seed")  # options of every figure that loads test images

FIGURE_KINDS: dict[str, FigureKind] = {
    "coefficients": FigureKind(coefficients_figure, "runs", "learned λ_n per block and epoch"),
    "input-landscape": FigureKind(
        input_landscape_figure,
        "runs",
        "loss along attack/random input directions, noisy inputs",
        (*_IMAGES, "noise", "severity", "radius_255", "points", "points_2d", "device"),
    ),
    "weight-landscape": FigureKind(
        weight_landscape_figure,
        "runs",
        "loss along filter-normalised weight directions",
        (*_IMAGES, "alpha", "points", "points_2d", "device"),
    ),
    "ensemble-gain": FigureKind(
        ensemble_gain_figure,
        "evals",
        "ensemble minus single-model accuracy per metric",
        ("eps_255", "threat_model"),
    ),
    "robustness-curves": FigureKind(
        robustness_curves_figure, "evals", "accuracy vs ε per attack, vs severity per noise"
    ),
    "depth": FigureKind(
        depth_figure,
        "runs",
        "NAIS-Net per-image depth",
        (*_IMAGES, "tol", "max_steps", "device"),
    ),
    "dynamics": FigureKind(
        dynamics_figure,
        "optional-runs",
        "1-D tanh block; trained NAIS block state changes",
        (*_IMAGES, "steps", "block", "device"),
    ),
    "stability": FigureKind(
        stability_figure,
        "runs",
        "per-block Jacobian spectral radius / spectral norm",
        (*_IMAGES, "iters", "device"),
    ),
}
