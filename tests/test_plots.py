"""Every `odenets plot` kind on the runs of a tiny digits training, and the figures' data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from odenets.analysis.figures import FIGURE_KINDS
from odenets.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """Two seeds of resnet20 and in_resnet20 and one naisnet10, 2 epochs on digits."""
    from odenets.training import TrainConfig, fit

    root = tmp_path_factory.mktemp("runs")
    runs = {}
    jobs = [("resnet20", 0), ("resnet20", 1), ("in_resnet20", 0), ("in_resnet20", 1)]
    for model, seed in [*jobs, ("naisnet10", 0)]:
        out = root / f"{model}_s{seed}"
        config = TrainConfig(
            model=model,
            dataset="digits",
            epochs=2,
            batch_size=64,
            train_limit=256,
            test_limit=64,
            seed=seed,
            out=str(out),
            progress=False,
        )
        assert fit(config).summary["status"] == "finished"
        runs.setdefault(model, []).append(out)
    return runs


@pytest.fixture(scope="session")
def eval_files(tiny_runs, tmp_path_factory):
    """eval.json of every single run and of each model's 2-seed ensemble (64 test images)."""
    from odenets.data import load_dataset
    from odenets.robustness import evaluate
    from odenets.training import load_run

    data = load_dataset("digits", split="test")
    images = torch.from_numpy(data.images[:64]).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(data.labels[:64])
    root = tmp_path_factory.mktemp("evals")
    paths = []
    for model in ("resnet20", "in_resnet20"):
        members = [load_run(r) for r in tiny_runs[model]]
        for i, m in enumerate([*members, members]):
            result = evaluate(
                m,
                images,
                labels,
                attacks=("fgsm", "ifgsm", "pgd"),
                eps_list=(2 / 255, 8 / 255),
                noise="generated",
                attack_options={"ifgsm": {"steps": 3}, "pgd": {"steps": 3}},
                checks=False,
            )
            path = root / f"{model}_{i}.json"
            path.write_text(json.dumps(result))
            paths.append(path)
    return paths


def _check_pngs(out_dir, stems):
    for stem in stems:
        png = out_dir / f"{stem}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        with Image.open(png) as img:
            assert img.width > 300 and img.height > 200
            # A drawn figure, not a blank page: many distinct colours.
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 50
        assert (out_dir / f"{stem}.pdf").stat().st_size > 1000


def test_plot_coefficients(tiny_runs, tmp_path, capsys):
    runs = [str(p) for p in tiny_runs["in_resnet20"]]
    assert main(["plot", "coefficients", *runs, "--out", str(tmp_path)]) == 0
    _check_pngs(tmp_path, ["coefficients"])
    assert "coefficients.png" in capsys.readouterr().out


def test_plot_coefficients_refuses_a_plain_resnet(tiny_runs, tmp_path, capsys):
    run = str(tiny_runs["resnet20"][0])
    assert main(["plot", "coefficients", run, "--out", str(tmp_path)]) == 1
    assert "no interpolation coefficients" in capsys.readouterr().err


def test_plot_input_landscape(tiny_runs, tmp_path):
    runs = [str(tiny_runs["resnet20"][0]), str(tiny_runs["in_resnet20"][0])]
    argv = ["plot", "input-landscape", *runs, "--out", str(tmp_path), "--limit", "32"]
    assert main([*argv, "--points", "7", "--points-2d", "5", "--radius", "32"]) == 0
    _check_pngs(tmp_path, ["input_landscape", "input_landscape_2d"])


def test_plot_weight_landscape(tiny_runs, tmp_path):
    runs = [str(tiny_runs["resnet20"][0]), str(tiny_runs["in_resnet20"][0])]
    argv = ["plot", "weight-landscape", *runs, "--out", str(tmp_path), "--limit", "32"]
    assert main([*argv, "--points", "7", "--points-2d", "5"]) == 0
    _check_pngs(tmp_path, ["weight_landscape", "weight_landscape_2d"])


def test_plot_ensemble_gain_and_curves(eval_files, tmp_path):
    files = [str(p) for p in eval_files]
    assert main(["plot", "ensemble-gain", *files, "--out", str(tmp_path)]) == 0
    assert main(["plot", "robustness-curves", *files, "--out", str(tmp_path)]) == 0
    _check_pngs(tmp_path, ["ensemble_gain", "robustness_curves"])


def test_ensemble_gain_of_real_evaluations(eval_files):
    from odenets.analysis.robustness_results import ensemble_gain, load_eval

    evals = [load_eval(p) for p in eval_files]
    gains = ensemble_gain(evals)
    assert set(gains) == {"resnet20", "in_resnet20"}
    for name, g in gains.items():
        singles = [e for e in evals if e["models"] == [name]]
        ensemble = next(e for e in evals if e["ensemble"] and e["models"][0] == name)
        expected = ensemble["clean"] - np.mean([e["clean"] for e in singles])
        assert g["gain"][0] == pytest.approx(expected)
        assert g["n_single"] == 2


def test_plot_depth(tiny_runs, tmp_path):
    run = str(tiny_runs["naisnet10"][0])
    argv = ["plot", "depth", run, "--out", str(tmp_path), "--limit", "40", "--max-steps", "20"]
    assert main(argv) == 0
    _check_pngs(tmp_path, ["depth", "depth_images"])


def test_depth_counts_equal_the_number_of_images(tiny_runs):
    from odenets.analysis.depth import measure_depth
    from odenets.analysis.depth_stats import depth_summary
    from odenets.analysis.figures import load_test_images
    from odenets.training import load_run

    run = tiny_runs["naisnet10"][0]
    data = load_test_images([run], limit=40)
    model = load_run(run)
    steps = measure_depth(model, data.images, tol=1e-3, max_steps=20)
    summary = depth_summary(steps, data.labels, num_classes=10)
    assert summary["counts"].sum() == 40
    assert summary["depth"].min() >= len(model.nais_blocks())
    assert summary["depth"].max() <= 20 * len(model.nais_blocks())


def test_plot_dynamics_with_and_without_a_run(tiny_runs, tmp_path):
    assert main(["plot", "dynamics", "--out", str(tmp_path / "alone")]) == 0
    _check_pngs(tmp_path / "alone", ["dynamics"])
    run = str(tiny_runs["naisnet10"][0])
    assert main(["plot", "dynamics", run, "--out", str(tmp_path), "--limit", "4"]) == 0
    _check_pngs(tmp_path, ["dynamics"])


def test_plot_stability(tiny_runs, tmp_path):
    runs = [str(tiny_runs["in_resnet20"][0]), str(tiny_runs["naisnet10"][0])]
    argv = ["plot", "stability", *runs, "--out", str(tmp_path), "--limit", "4"]
    assert main([*argv, "--iters", "10"]) == 0
    _check_pngs(tmp_path, ["stability"])


def test_projected_nais_blocks_have_radius_below_one(tiny_runs):
    from odenets.analysis.figures import load_test_images
    from odenets.analysis.jacobian import stability_per_block
    from odenets.training import load_run

    run = tiny_runs["naisnet10"][0]
    data = load_test_images([run], limit=4)
    out = stability_per_block(load_run(run), data.images)
    assert out["quantity"] == "spectral_radius"
    assert out["values"].shape == (4, 9)
    # ReLU blocks: inactive units give eigenvalue 1 exactly; the projection keeps ρ ≤ 1.
    assert np.all(out["values"] <= 1.0 + 1e-5)
    assert np.all(out["values"] > 0.0)
    # Where every unit is active, the projected stage Jacobian I + hA contracts.
    assert out["active_radius"].shape == (9,)
    assert np.all(out["active_radius"] < 1.0)


def test_one_call_helpers_used_by_the_report(tiny_runs, eval_files, tmp_path):
    from odenets.analysis import figures
    from odenets.analysis.robustness_results import load_eval

    written = [
        figures.plot_coefficients(tiny_runs["in_resnet20"], tmp_path / "coefficients.png"),
        figures.plot_robustness_curves([load_eval(p) for p in eval_files], tmp_path / "rc.png"),
        figures.plot_depth(tiny_runs["naisnet10"], tmp_path / "depth.png", limit=16),
    ]
    assert [p.name for p in written] == ["coefficients.png", "rc.png", "depth.png"]
    _check_pngs(tmp_path, ["coefficients", "rc", "depth", "depth_images"])


@pytest.mark.parametrize("name", sorted(FIGURE_KINDS))
def test_each_figure_gets_only_the_options_it_takes(name):
    import inspect

    from odenets.cli import build_parser
    from odenets.commands.plot import _options

    kind = FIGURE_KINDS[name]
    params = inspect.signature(kind.draw).parameters
    # No **kwargs to swallow a misspelt option; every option it declares is a keyword of
    # the function and a flag of `odenets plot`.
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())
    keywords = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    flags = _options(build_parser().parse_args(["plot", name, "run"]))
    assert set(kind.options) <= keywords and set(kind.options) <= set(flags)
    assert keywords & set(flags) <= set(kind.options)  # no flag it could take is left out


def test_a_misspelt_figure_option_is_an_error(tmp_path):
    runs = [tmp_path / "run"]  # refused before any run is read
    with pytest.raises(TypeError, match="unexpected keyword argument 'radius255'"):
        FIGURE_KINDS["input-landscape"].draw(runs, tmp_path, radius255=16.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'alpha'"):
        FIGURE_KINDS["coefficients"].draw(runs, tmp_path, alpha=1.0)
    assert not any(tmp_path.iterdir())


def _coefficient_groups(rng, bases: dict[str, np.ndarray], epochs: int = 6) -> dict:
    """`run_coefficients`-shaped data: two seeds per model, λ_n drifting from 0.5 to `base`."""
    groups = {}
    for name, base in bases.items():
        values = np.stack([base + 0.01 * rng.standard_normal(len(base)) for _ in range(2)])
        history = [
            {
                "epoch": np.arange(1, epochs + 1),
                "lambda": np.linspace(np.full_like(base, 0.5), base, epochs),  # (epochs, blocks)
            }
            for _ in range(2)
        ]
        groups[name] = {
            "values": values,
            "mean": values.mean(0),
            "std": values.std(0),
            "min": values.min(0),
            "max": values.max(0),
            "history": history,
        }
    return groups


def test_coefficient_axes_fit_the_data_and_the_legend_is_off_the_points():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from odenets.analysis import plots

    rng = np.random.default_rng(0)
    bases = {"in_resnet20": np.linspace(0.45, 0.6, 9), "lambda_in_resnet20": np.full(9, 0.52)}
    groups = _coefficient_groups(rng, bases)
    fig = plots.draw_coefficients(groups)
    FigureCanvasAgg(fig).draw()
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][:3]
    finals = [
        np.r_[g["min"], g["max"], g["mean"] + g["std"], g["mean"] - g["std"]]
        for g in groups.values()
    ]
    per_axis = [np.concatenate(finals)] + [
        np.concatenate([h["lambda"].ravel() for h in g["history"]]) for g in groups.values()
    ]
    for ax, data in zip(axes, per_axis, strict=True):
        lo, hi = ax.get_ylim()
        # The data fill the axis (a band of width ~0.17), not the stable range 0..2.
        assert lo <= data.min() and data.max() <= hi and hi - lo < 0.3, (lo, hi)
    # The legend sits outside every panel, so it covers no point.
    assert axes[0].get_legend() is None and len(fig.legends) == 1
    legend = fig.legends[0].get_window_extent()
    for ax in axes:
        assert not legend.overlaps(ax.get_window_extent())


def test_robustness_curves_zoom_to_the_accuracies_shown():
    from odenets.analysis import plots

    eps = np.array([0.0, 4.0, 8.0, 16.0])
    curves = {
        name: {
            "clean": 0.95,
            "attacks": {
                "pgd (pixel)": {"eps_255": eps, "accuracy": top - np.array([0, 0.1, 0.2, 0.3])}
            },
            "noise": {"gaussian": {"severity": np.arange(1, 6), "accuracy": np.full(5, top)}},
        }
        for name, top in (("resnet20", 0.95), ("in_resnet20", 0.9))
    }
    fig = plots.draw_robustness_curves(curves)
    attack, noise = fig.axes[:2]
    lo, hi = attack.get_ylim()
    assert 50 < lo <= 60 and 95 <= hi < 100  # 60-95 % shown, not 0-100 %
    lo, hi = noise.get_ylim()
    assert 85 < lo <= 90 and 95 <= hi < 100
