"""Training: the paper recipes, resumable run folders, divergence handling and DDP.

Example:
    >>> from odenets.training import TrainConfig, fit
    >>> info = fit(TrainConfig(model="resnet20", dataset="digits", epochs=2, out="runs/x"))
    ... # doctest: +SKIP
    >>> info.summary["status"]  # doctest: +SKIP
    'finished'
"""

from odenets.training.config import (
    TrainConfig,
    list_recipes,
    load_recipe,
    lr_at,
    resolve_config,
    resolve_milestones,
)
from odenets.training.fit import fit
from odenets.training.runs import RunInfo, load_run, read_run

__all__ = [
    "RunInfo",
    "TrainConfig",
    "fit",
    "list_recipes",
    "load_recipe",
    "load_run",
    "lr_at",
    "read_run",
    "resolve_config",
    "resolve_milestones",
]
