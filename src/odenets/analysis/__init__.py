"""odenets.analysis: the data behind the figures of both papers, and the figures.

Each function returns plain numpy arrays or dicts of them (the landscapes are
`input_landscape.input_landscape` and `weight_landscape.weight_landscape`); drawing lives
in `plots` and `plots_nais`, and `figures.FIGURE_KINDS` ties both together for
`odenets plot`.

Example:
    >>> from odenets.analysis import one_d_dynamics
    >>> out = one_d_dynamics(u=[0.5], steps=100)
    >>> bool(out["unstable"]["converged"][0]), bool(out["stable"]["converged"][0])
    (False, True)
"""

from __future__ import annotations

import importlib

# public name -> module that defines it; imported on first use so `import odenets.analysis`
# stays light (no matplotlib until a figure is drawn).
_EXPORTS = {
    "model_coefficients": "coefficients",
    "coefficient_history": "coefficients",
    "run_coefficients": "coefficients",
    "STABLE_RANGE": "coefficients",
    "attack_direction": "input_landscape",
    "random_sign_direction": "input_landscape",
    "input_landscape_1d": "input_landscape",
    "input_landscape_2d": "input_landscape",
    "noisy_images": "input_landscape",
    "filter_normalized_direction": "weight_landscape",
    "load_eval": "robustness_results",
    "paper_metrics": "robustness_results",
    "ensemble_gain": "robustness_results",
    "robustness_curves": "robustness_results",
    "measure_depth": "depth",
    "depth_summary": "depth_stats",
    "scalar_tanh_trajectory": "dynamics",
    "one_d_dynamics": "dynamics",
    "nais_state_differences": "dynamics",
    "power_iteration": "jacobian",
    "spectral_radius": "jacobian",
    "jacobian_spectral_norm": "jacobian",
    "block_jacobian_norms": "jacobian",
    "nais_spectral_radii": "jacobian",
    "nais_active_radii": "jacobian",
    "stability_per_block": "jacobian",
    "FIGURE_KINDS": "figures",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'odenets.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"odenets.analysis.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
