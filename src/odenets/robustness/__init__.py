"""odenets.robustness: attacks and noise behind one interface, accuracy, ensembles, and the
evaluation that writes eval.json.

Example:
    >>> from odenets.robustness import create_attack, list_attacks
    >>> "apgd_ce" in list_attacks()
    True
    >>> create_attack("pgd", eps=8 / 255).steps
    20
"""

from odenets.robustness.apgd import APGD, APGDCE, APGDDLR, dlr_loss
from odenets.robustness.attacks import FGSM, IFGSM, PGD, PGDStartCentred
from odenets.robustness.autoattack import AutoAttack, Square
from odenets.robustness.base import (
    THREAT_MODELS,
    Attack,
    Perturbation,
    attack_class,
    check_eps,
    create_attack,
    list_attacks,
    register_attack,
)
from odenets.robustness.ensemble import Ensemble
from odenets.robustness.evaluate import evaluate
from odenets.robustness.metrics import accuracy, correct_mask
from odenets.robustness.noise import (
    Corruption,
    Gaussian,
    GaussianNoise,
    ImpulseNoise,
    Noise,
    ShotNoise,
    SpeckleNoise,
)
from odenets.robustness.runs import evaluate_runs
from odenets.robustness.shards import merge_shards, shard_slice
from odenets.robustness.table import format_table
from odenets.robustness.transfer import Transfer

__all__ = [
    "APGD",
    "APGDCE",
    "APGDDLR",
    "FGSM",
    "IFGSM",
    "PGD",
    "THREAT_MODELS",
    "Attack",
    "AutoAttack",
    "Corruption",
    "Ensemble",
    "Gaussian",
    "GaussianNoise",
    "ImpulseNoise",
    "Noise",
    "Perturbation",
    "PGDStartCentred",
    "ShotNoise",
    "SpeckleNoise",
    "Square",
    "Transfer",
    "accuracy",
    "attack_class",
    "check_eps",
    "correct_mask",
    "create_attack",
    "dlr_loss",
    "evaluate",
    "evaluate_runs",
    "format_table",
    "list_attacks",
    "merge_shards",
    "register_attack",
    "shard_slice",
]
