"""odenets.analysis: the data behind the figures of both papers, and the figures.

Each function returns plain numpy arrays or dicts of them (the landscapes are
`input_landscape.input_landscape` and `weight_landscape.weight_landscape`); drawing lives
in `plots` and `plots_nais` (matplotlib is imported when a figure is drawn), and
`figures.FIGURE_KINDS` ties both together for `odenets plot`.

Example:
    >>> from odenets.analysis import one_d_dynamics
    >>> out = one_d_dynamics(u=[0.5], steps=100)
    >>> bool(out["unstable"]["converged"][0]), bool(out["stable"]["converged"][0])
    (False, True)
"""

from odenets.analysis.coefficients import (
    STABLE_RANGE,
    coefficient_history,
    model_coefficients,
    run_coefficients,
)
from odenets.analysis.depth import measure_depth
from odenets.analysis.depth_stats import depth_summary
from odenets.analysis.dynamics import (
    nais_state_differences,
    one_d_dynamics,
    scalar_tanh_trajectory,
)
from odenets.analysis.figures import FIGURE_KINDS
from odenets.analysis.input_landscape import (
    attack_direction,
    input_landscape_1d,
    input_landscape_2d,
    noisy_images,
    random_sign_direction,
)
from odenets.analysis.jacobian import (
    block_jacobian_norms,
    jacobian_spectral_norm,
    nais_active_radii,
    nais_spectral_radii,
    power_iteration,
    stability_per_block,
)
from odenets.analysis.robustness_results import (
    ensemble_gain,
    load_eval,
    paper_metrics,
    robustness_curves,
)
from odenets.analysis.weight_landscape import filter_normalized_direction
from odenets.stability import spectral_radius

__all__ = [
    "FIGURE_KINDS",
    "STABLE_RANGE",
    "attack_direction",
    "block_jacobian_norms",
    "coefficient_history",
    "depth_summary",
    "ensemble_gain",
    "filter_normalized_direction",
    "input_landscape_1d",
    "input_landscape_2d",
    "jacobian_spectral_norm",
    "load_eval",
    "measure_depth",
    "model_coefficients",
    "nais_active_radii",
    "nais_spectral_radii",
    "nais_state_differences",
    "noisy_images",
    "one_d_dynamics",
    "paper_metrics",
    "power_iteration",
    "random_sign_direction",
    "robustness_curves",
    "run_coefficients",
    "scalar_tanh_trajectory",
    "spectral_radius",
    "stability_per_block",
]
