"""Drawing the NAIS-Net figures (depth, dynamics) and the per-block stability figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from odenets.analysis.plots import subplot_grid

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def draw_depth(summary: Mapping[str, np.ndarray], class_names: Sequence[str], *, label: str):
    """Histogram of per-image depth and mean depth per class (± std).

    Args:
        summary: the output of `odenets.analysis.depth_stats.depth_summary`.
    """
    fig, axes = subplot_grid(2, ncols=2, title=f"{label}: pattern-dependent depth per test image")
    from matplotlib.ticker import MaxNLocator

    n = int(summary["counts"].sum())
    axes[0].bar(summary["values"], summary["counts"], width=0.9, color="tab:blue")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_xlabel("depth (unrolled steps summed over NAIS blocks)")
    axes[0].set_ylabel("images")
    axes[0].set_title(f"histogram over {n} images (mean {summary['depth'].mean():.1f})")
    k = len(summary["class_mean"])
    names = list(class_names)[:k] if len(class_names) >= k else [str(i) for i in range(k)]
    axes[1].errorbar(range(k), summary["class_mean"], yerr=summary["class_std"], fmt="o", capsize=3)
    axes[1].axhline(summary["depth"].mean(), color="grey", ls="--", lw=0.8, label="all images")
    axes[1].legend(fontsize="small")
    axes[1].set_xticks(range(k), names, rotation=45, ha="right")
    axes[1].set_xlabel("class")
    axes[1].set_ylabel("mean depth (steps) ± std")
    axes[1].set_title("depth per class")
    return fig


def draw_depth_extremes(
    images: np.ndarray,
    summary: Mapping[str, np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    label: str,
) -> Figure:
    """Two rows of test images: the lowest-depth ones, then the highest-depth ones.

    Args:
        images: uint8 (N, H, W, C) in the order the depths were measured.
    """
    from matplotlib.figure import Figure  # with the figure, as in `subplot_grid`

    cols = len(summary["lowest"])
    fig = Figure(figsize=(1.5 * cols, 3.8))
    axes = fig.subplots(2, cols, squeeze=False)
    fig.suptitle(f"{label}: test images with the lowest (top) and highest (bottom) depth")
    for row, key in enumerate(("lowest", "highest")):
        for ax, i in zip(axes[row], summary[key], strict=True):
            img = images[i]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            name = class_names[labels[i]] if labels[i] < len(class_names) else str(labels[i])
            ax.set_title(f"{name}\ndepth {summary['depth'][i]}", fontsize="small")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.set_layout_engine("constrained")
    return fig


def draw_dynamics(one_d: Mapping[str, Mapping], trained: Mapping[str, np.ndarray] | None = None):
    """1-D tanh block trajectories (unstable beside projected), and optionally the state
    change ‖x(k+1) - x(k)‖ of a trained NAIS block per image.

    Args:
        one_d: the output of `odenets.analysis.dynamics.one_d_dynamics`.
        trained: label -> (N, steps) state-difference norms (`nais_state_differences`).
    """
    fig, axes = subplot_grid(
        2 + (trained is not None),
        ncols=3,
        title="NAIS-Net block x(k+1) = x(k) + h·tanh(a·x(k) + b·u + c): unstable vs stable",
    )
    for ax, key in zip(axes, ("unstable", "stable"), strict=False):
        d = one_d[key]
        k = np.arange(d["x"].shape[1])
        for j, u in enumerate(d["u"]):
            (line,) = ax.plot(k, d["x"][j], lw=1.2, label=f"u = {u:g}")
            ax.axhline(d["equilibrium"][j], color=line.get_color(), ls=":", lw=0.8)
        state = "converges" if d["converged"].all() else "does not converge"
        ax.set_title(f"{key}: a = {d['a']:g}, b = {d['b']:g}, h = {d['h']:g} ({state})")
        ax.set_xlabel("step k")
        ax.set_ylabel("state x(k) (dotted: equilibrium −(b·u + c)/a)")
        ax.legend(fontsize="x-small", ncol=2)
    if trained is not None:
        ax = axes[2]
        for i, (label, diffs) in enumerate(trained.items()):
            k = np.arange(1, diffs.shape[1] + 1)
            # Exact zeros (a converged float state) are drawn at the 1e-12 floor.
            lines = ax.semilogy(k, np.maximum(diffs.T, 1e-12), lw=0.8, alpha=0.7, color=f"C{i}")
            lines[0].set_label(label)
        ax.set_xlabel("step k")
        ax.set_ylabel("‖x(k) − x(k−1)‖ (L2, log scale; floor 1e-12)")
        ax.set_title("trained block: state change per step (one line per image)")
        ax.legend(fontsize="x-small")
    return fig


QUANTITY_LABELS = {
    "spectral_radius": "spectral radius ρ of the stage Jacobian\n∂x(k+1)/∂x(k) at the final state",
    "jacobian_norm": "spectral norm of the block Jacobian\n‖∂x_{n+1}/∂x_n‖₂ at the block input",
}


def draw_stability(results: Mapping[str, Mapping]) -> Figure:
    """Per-block stability over a batch of images: median and 10-90% band per model.

    Args:
        results: label -> output of `odenets.analysis.jacobian.stability_per_block`.
    """
    quantities = sorted({r["quantity"] for r in results.values()})
    fig, axes = subplot_grid(
        len(quantities), ncols=2, size=(6, 4), title="Stability per block over test images"
    )
    for ax, q in zip(axes, quantities, strict=True):
        for label, r in results.items():
            if r["quantity"] != q:
                continue
            v = r["values"]  # (N, blocks)
            n = np.arange(1, v.shape[1] + 1)
            lo, med, hi = np.percentile(v, [10, 50, 90], axis=0)
            (line,) = ax.plot(n, med, marker="o", ms=3, label=f"{label} ({len(v)} images)")
            ax.fill_between(n, lo, hi, color=line.get_color(), alpha=0.2)
            if "active_radius" in r:
                ax.plot(
                    n, r["active_radius"], ls=":", marker="x", color=line.get_color(),
                    label=f"{label}: ρ(I + hA), all units active",
                )  # fmt: skip
        ax.axhline(1.0, color="k", ls="--", lw=0.8, label="1 (contraction bound)")
        ax.set_xlabel("block (input → output)")
        ax.set_ylabel(QUANTITY_LABELS[q])
        if q == "spectral_radius":
            ax.text(
                0.02, 0.02, "ReLU: an inactive unit (σ' = 0) gives ρ = 1 exactly",
                transform=ax.transAxes, fontsize="x-small", color="grey",
            )  # fmt: skip
        what = "NAIS blocks" if q == "spectral_radius" else "residual blocks"
        ax.set_title(f"{what}: median over images, 10-90% band")
        ax.legend(fontsize="x-small")
    return fig
