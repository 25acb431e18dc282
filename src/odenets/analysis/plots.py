"""Drawing the In-ResNet figures from the arrays of the analysis functions.

Every function takes the plain data (dicts of numpy arrays) and returns a matplotlib
`Figure` built without pyplot (no global state, Agg canvas); `save_figure` writes it as
PNG and PDF atomically. Accuracies arrive as fractions and are shown in percent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from odenets.analysis.coefficients import STABLE_RANGE
from odenets.checkpoint import atomic_open
from odenets.robustness.base import attack_title

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def save_figure(
    fig: Figure, out_dir: str | Path, stem: str, *, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Write `fig` as ``out_dir/stem.<format>`` for each format, atomically.

    Returns:
        The written paths, in `formats` order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format=fmt, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


def data_limits(
    values, *, pad: float = 0.08, min_span: float, bounds: tuple[float, float] | None = None
) -> tuple[float, float]:
    """Axis limits that fit the finite `values` with a margin of `pad` of their span (at
    least `min_span` wide, centred on the data), inside `bounds` when given, so a figure
    zooms to its data instead of showing a fixed range."""
    finite = np.asarray(values, dtype=float).ravel()
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return bounds if bounds is not None else (0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    margin = pad * (hi - lo)
    lo, hi = lo - margin, hi + margin
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return lo, hi


def subplot_grid(n: int, *, ncols: int = 3, size=(4.6, 3.6), title: str | None = None):
    """A figure of `n` panels, `ncols` per row, each `size` inches; returns (figure, axes)."""
    # matplotlib is imported when a figure is drawn, not with the module: `odenets plot
    # --help` and the other commands start without it.
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows + (0.5 if title else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.set_layout_engine("constrained")
    return fig, axes[:n]


def draw_coefficients(groups: Mapping[str, Mapping]) -> Figure:
    """Final λ_n per interpolating block (mean ± std over seeds, min-max bars), and λ_n over
    epochs for each model; the stable range [0, 2] of forward Euler is shaded. Each y-axis
    fits its data (λ_n may sit in a narrow band); the legend sits below the panels, off
    the points.

    Args:
        groups: the output of `odenets.analysis.coefficients.run_coefficients`.
    """
    fig, axes = subplot_grid(
        1 + len(groups),
        ncols=min(3, 1 + len(groups)),
        title="Learned interpolation coefficients λ_n (shaded: stable range 0 ≤ λ ≤ 2)",
    )
    ax = axes[0]
    _shade_stable(ax)
    offsets = np.linspace(-0.2, 0.2, len(groups)) if len(groups) > 1 else [0.0]
    for (name, g), dx in zip(groups.items(), offsets, strict=True):
        n = np.arange(1, len(g["mean"]) + 1)
        runs = len(g["values"])
        ax.errorbar(
            n + dx, g["mean"], yerr=g["std"], fmt="o", ms=4, capsize=3,
            label=f"{name} (mean ± std, {runs} run{'s' * (runs > 1)})",
        )  # fmt: skip
        if runs > 1:
            ax.vlines(n + dx, g["min"], g["max"], alpha=0.3, lw=4)
    ax.set_xlabel("interpolating block n (input → output)")
    ax.set_ylabel("λ_n (dimensionless)")
    ax.set_title("final λ_n per block")
    spread = [
        np.concatenate([g["mean"] - g["std"], g["mean"] + g["std"], g["min"], g["max"]])
        for g in groups.values()
    ]
    ax.set_ylim(*data_limits(np.concatenate(spread), min_span=LAMBDA_MIN_SPAN))
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(2, len(names)))
    for ax, (name, g) in zip(axes[1:], groups.items(), strict=True):
        _draw_history(ax, name, g["history"])
    return fig


LAMBDA_MIN_SPAN = 0.05  # narrowest λ range a coefficient panel shows (dimensionless)


def _shade_stable(ax) -> None:
    lo, hi = STABLE_RANGE
    ax.axhspan(lo, hi, color="tab:green", alpha=0.08, lw=0)
    for y in (lo, hi):
        ax.axhline(y, color="tab:green", lw=0.8, ls="--")


def _draw_history(ax, name: str, histories: Sequence[Mapping]) -> None:
    import matplotlib as mpl

    _shade_stable(ax)
    n_blocks = max((h["lambda"].shape[1] for h in histories if h["lambda"].size), default=0)
    cmap = mpl.colormaps["viridis"]
    for h in histories:
        for j in range(h["lambda"].shape[1] if h["lambda"].size else 0):
            color = cmap(j / max(1, n_blocks - 1))
            ax.plot(h["epoch"], h["lambda"][:, j], color=color, lw=1, alpha=0.8)
    if n_blocks:
        norm = mpl.colors.Normalize(1, max(n_blocks, 2))
        sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
        ax.figure.colorbar(sm, ax=ax, label="block n")
    else:
        ax.text(0.5, 0.5, "no per-epoch coefficients", ha="center", transform=ax.transAxes)
    values = [h["lambda"] for h in histories if h["lambda"].size]
    if values:
        ax.set_ylim(
            *data_limits(np.concatenate([v.ravel() for v in values]), min_span=LAMBDA_MIN_SPAN)
        )
    ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("λ_n (dimensionless)")
    ax.set_title(f"{name}: λ_n during training ({len(histories)} run(s))")


def draw_input_landscape(results: Mapping[str, Mapping], *, noise: str) -> Figure:
    """Mean loss along the attack direction and a shared random sign direction, per model.

    Args:
        results: label -> output of `odenets.analysis.input_landscape.input_landscape`.
        noise: what the inputs are (e.g. "gaussian noise, severity 3"), for the title.
    """
    fig, axes = subplot_grid(2, ncols=2, title=f"Loss in input space around {noise} images")
    for key, ax, what in (
        ("attack", axes[0], "attack direction sign(∇ₓ loss) (per model)"),
        ("random", axes[1], "random sign direction (same for all models)"),
    ):
        for label, r in results.items():
            ax.plot(r["t"] * 255, r[key], marker=".", label=label)
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_xlabel("t (L∞ distance from the image, /255 pixel units)")
        ax.set_ylabel("mean cross-entropy (nats)")
        ax.set_title(what)
        ax.legend(fontsize="small")
    return fig


def draw_surfaces(
    surfaces: Mapping[str, Mapping],
    *,
    x: str,
    y: str,
    z: str,
    xlabel: str,
    ylabel: str,
    title: str,
    scale: float = 1.0,
) -> Figure:
    """Filled contour plots of 2-D loss surfaces, one panel per model, shared colour scale.

    Args:
        surfaces: label -> dict holding the axes `x` (A,), `y` (B,) and values `z` (A, B).
        scale: multiplies the axis values (255 shows pixel steps in /255 units).
    """
    import matplotlib as mpl

    fig, axes = subplot_grid(len(surfaces), ncols=3, title=title)
    finite = [np.asarray(s[z])[np.isfinite(s[z])] for s in surfaces.values()]
    lo = min(f.min() for f in finite)
    hi = max(f.max() for f in finite)
    hi = hi if hi > lo else lo + 1e-6
    # Loss surfaces span decades away from a minimum: log-spaced levels keep the basin visible.
    log = lo > 0 and hi / lo > 20
    levels = np.geomspace(lo, hi, 15) if log else np.linspace(lo, hi, 15)
    norm = mpl.colors.LogNorm(lo, hi) if log else None
    for ax, (label, s) in zip(axes, surfaces.items(), strict=True):
        xx, yy = np.meshgrid(s[x] * scale, s[y] * scale, indexing="ij")
        values = np.clip(s[z], lo, hi)
        cs = ax.contourf(xx, yy, values, levels=levels, cmap="viridis", norm=norm)
        ax.contour(xx, yy, values, levels=levels, colors="k", linewidths=0.3)
        ax.plot([0], [0], "r+", ms=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(label)
    bar = fig.colorbar(cs, ax=list(axes), format="%.3g")
    bar.set_label("mean cross-entropy (nats" + (", log scale)" if log else ")"))
    return fig


def draw_weight_landscape(results: Mapping[str, Mapping], *, title_extra: str = "") -> Figure:
    """Loss and accuracy along a filter-normalised random weight direction, per model."""
    fig, axes = subplot_grid(
        2,
        ncols=2,
        title="Loss in weight space along a filter-normalised random direction "
        f"(Li et al. 2018){title_extra}",
    )
    for label, r in results.items():
        axes[0].plot(r["alpha"], r["loss"], marker=".", label=label)
        axes[1].plot(r["alpha"], 100 * r["accuracy"], marker=".", label=label)
    for ax, ylabel in zip(axes, ("mean cross-entropy (nats)", "accuracy (%)"), strict=True):
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_xlabel("α (step in units of each filter's norm)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize="small")
    axes[0].set_title("loss, eval mode")
    axes[1].set_title("accuracy, eval mode")
    return fig


# Axis labels of the metrics that are not attacks (an attack's is its class's title).
METRIC_LABELS = {"clean": "clean", "noise": "noise (mean)"}


def metric_label(metric: str) -> str:
    """The axis label of a metric: "noise (mean)", "FGSM", ..."""
    return METRIC_LABELS.get(metric) or attack_title(metric)


def draw_ensemble_gain(gains: Mapping[str, Mapping], *, setting: str) -> Figure:
    """Grouped bars: ensemble minus mean single-model accuracy (percentage points).

    Args:
        gains: the output of `odenets.analysis.robustness_results.ensemble_gain`.
        setting: attack radius and threat model, for the title.
    """
    fig, (ax,) = subplot_grid(1, size=(7.5, 4.2))
    metrics = next(iter(gains.values()))["metrics"]
    width = 0.8 / len(gains)
    x = np.arange(len(metrics))
    for i, (name, g) in enumerate(gains.items()):
        pos = x - 0.4 + width * (i + 0.5)
        bars = ax.bar(pos, 100 * g["gain"], width, label=f"{name} ({g['n_single']} single runs)")
        ax.bar_label(bars, fmt="%+.1f", fontsize="x-small", padding=2)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, [metric_label(m) for m in metrics])
    ax.set_ylabel("ensemble − single accuracy (percentage points)")
    ax.set_title(f"Robustness gain of the ensemble over single models ({setting})")
    ax.legend(fontsize="small")
    return fig


def draw_robustness_curves(curves: Mapping[str, Mapping]) -> Figure:
    """Accuracy against ε per attack and against severity per noise; one line per model.
    Each panel's y-axis zooms to the accuracies it shows (within 0-100%)."""
    attacks = sorted({a for c in curves.values() for a in c["attacks"]})
    noises = sorted({n for c in curves.values() for n in c["noise"]})
    panels = [("attack", a) for a in attacks] + [("noise", n) for n in noises]
    if not panels:
        raise ValueError("the evaluations hold no attack or noise results to plot")
    fig, axes = subplot_grid(
        len(panels), ncols=4, title="Accuracy under attack and noise, per model"
    )
    styles = _curve_styles(curves)
    for ax, (kind, name) in zip(axes, panels, strict=True):
        shown, setting = [], ""
        for label, c in curves.items():
            d = c["attacks" if kind == "attack" else "noise"].get(name)
            if d is not None:
                x = d["eps_255"] if kind == "attack" else d["severity"]
                ax.plot(x, 100 * d["accuracy"], marker="o", ms=3, label=label, **styles[label])
                shown.append(100 * np.asarray(d["accuracy"], dtype=float))
                setting = setting or d.get("setting", "")
        if kind == "attack":
            ax.set_xlabel("ε (L∞ radius, /255)")
            # The caption of an attack's panel: its steps and step size α (ε is the x-axis).
            ax.set_title(f"{name}: accuracy vs ε" + (f"\n{setting}" if setting else ""))
        else:
            ax.set_xlabel("severity (CIFAR-C level)")
            ax.set_xticks(range(1, 6))
            ax.set_title(f"{name} noise: accuracy vs severity")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(*data_limits(np.concatenate(shown), min_span=2.0, bounds=(-1.0, 101.0)))
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(4, len(names)))
    return fig


def _curve_styles(curves: Mapping[str, Mapping]) -> dict[str, dict]:
    """One colour per model name; ensembles solid and thick, single runs dashed and thin."""
    families = list(dict.fromkeys(label.split(" ")[0] for label in curves))
    colours = {f: f"C{i % 10}" for i, f in enumerate(families)}
    styles = {}
    for label in curves:
        ensemble = " ensemble" in label
        styles[label] = {
            "color": colours[label.split(" ")[0]],
            "ls": "-" if ensemble else "--",
            "lw": 2.0 if ensemble else 1.0,
        }
    return styles
