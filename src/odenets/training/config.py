"""The training configuration and the named recipes (TOML presets shipped in the package).

A field left at None takes its value from the recipe; `resolve_config` returns the concrete
configuration that is stored in `config.json` and compared on resume.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from odenets._toml import TOMLDecodeError, loads

DATASETS = ("cifar10", "cifar100", "folder", "digits")
SELECT = ("final", "best-val", "best-test")
# Recipe used when `recipe` is None: the paper recipe of the data set.
DEFAULT_RECIPE = {
    "cifar10": "paper-cifar10",
    "cifar100": "paper-cifar100",
    "folder": "paper-cifar10",
    "digits": "digits",
}
# The fields a recipe may set (each None in TrainConfig until resolved).
RECIPE_FIELDS = (
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "milestones",
    "gamma",
    "augment",
    "pad",
)

# Fields added after run folders were first written, with the value that reproduces what the
# versions before them did: a stored config.json without the key ran with that value.
ADDED_FIELDS = {"freeze_coefficients": False}


def _field(default: Any = dataclasses.MISSING, help: str = "", *, shown: str = "", **kwargs) -> Any:
    """A TrainConfig field; `help` (units, why) is its flag's text in `odenets train --help`,
    and `shown` its default in words where the value itself says little (None: decided
    later); both kept in the field's metadata."""
    metadata = {"help": help, **({"default": shown} if shown else {})}
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class TrainConfig:
    """Everything `fit` needs. CLI flags of `odenets train` map 1:1 to these fields."""

    # --- what to train -------------------------------------------------------------------
    model: str = _field("resnet20", "registry name, see `odenets models`")
    model_kwargs: dict[str, Any] = _field(
        help="create_model overrides", shown="none", default_factory=dict
    )
    dataset: str = _field("cifar10", "cifar10 | cifar100 | folder | digits")
    data_root: str | None = _field(
        None,
        "archive folder or image-folder root",
        shown="none; every data set but digits needs one",
    )
    download: bool = _field(False, "fetch the official CIFAR archive if it is missing")
    train_limit: int | None = _field(
        None, "train on a fixed seeded subset of this many images", shown="all"
    )
    test_limit: int | None = _field(
        None, "evaluate on a fixed seeded subset of this many images", shown="all"
    )
    out: str = _field("runs/run", "run folder (config.json, metrics.jsonl, checkpoints, summary)")
    resume: bool = _field(False, "continue from out/last.* instead of refusing a non-empty folder")
    restart: bool = _field(False, "start over in a folder holding a run (its weights are deleted)")
    verify: bool = _field(True, "check a CIFAR archive's official md5 (off: a known private copy)")

    # --- recipe: None below means "the recipe's value" ------------------------------------
    recipe: str | None = _field(
        None, "a named recipe: {recipes}", shown="the data set's paper recipe"
    )
    epochs: int | None = _field(None, "total epochs; fractional milestones scale with it")
    batch_size: int | None = _field(None, "global batch (split across DDP ranks), paper: 128")
    lr: float | None = _field(None, "initial learning rate, paper: 0.1")
    momentum: float | None = _field(None, "SGD momentum, paper: 0.9")
    nesterov: bool | None = _field(None, "Nesterov momentum, paper: no")
    weight_decay: float | None = _field(None, "L2 on every parameter, paper: 1e-4")
    milestones: list[float] | None = _field(
        None, "lr drops: fractions in (0, 1) of epochs, or epochs"
    )
    gamma: float | None = _field(None, "lr factor at each milestone, paper: 0.1")
    augment: bool | None = _field(None, "reflect-pad, random crop, random flip (paper: on)")
    pad: int | None = _field(None, "padding of the random crop in pixels, paper: 2")
    coefficient_weight_decay: float | None = _field(
        None,
        "weight decay of the interpolation coefficients",
        shown="--weight-decay, as every weight (the authors' choice)",
    )
    freeze_coefficients: bool = _field(
        False,
        "keep the interpolation coefficients (λ_n; a gate's W_d and b_d) at their initial "
        "values, with no gradient step and no weight decay: the damping the network starts "
        "with is the damping it keeps (learned ReLU coefficients can reach 0 and stay there; "
        "a frozen gate, W_d = 0 at initialisation, is a constant per channel)",
    )

    # --- model selection ---------------------------------------------------------------
    val_fraction: float = _field(0.0, "held-out share of the training set (stratified, seeded)")
    select: str = _field("final", "final | best-val (needs val_fraction) | best-test")
    allow_test_selection: bool = _field(
        False, "best-test selects on the test set: opt in explicitly"
    )

    # --- reproducibility -----------------------------------------------------------------
    seed: int = _field(0, "model init, data order and augmentation")
    deterministic: bool | None = _field(
        None, "deterministic kernels", shown="on for CPU, off for CUDA"
    )

    # --- speed (None: on for CUDA where safe, off for CPU) --------------------------------
    device: str = _field("auto", "auto | cpu | cuda | cuda:N")
    amp: bool | None = _field(
        None, "bf16 autocast for forward passes", shown="on for CUDA, off for CPU"
    )
    channels_last: bool | None = _field(None, "NHWC memory format for convolutions", shown="on")
    compile: bool | None = _field(
        None, "torch.compile the training forward", shown="on for CUDA, off for CPU"
    )
    cuda_graphs: bool = _field(False, "CUDA graphs (compile reduce-overhead); off until measured")
    eval_batch_size: int = _field(1000, "batch of the per-epoch test evaluation (no gradients)")
    checkpoint_steps: int | None = _field(
        None,
        "also save last.* every N steps (0: at epoch ends only)",
        shown="200 on CPU, 0 on CUDA",
    )

    # --- output ----------------------------------------------------------------------------
    progress: bool | None = _field(
        None, "a tqdm bar per epoch", shown="on when stderr is a terminal"
    )


def _load_toml(text: str, name: str) -> dict:
    try:
        return loads(text)
    except TOMLDecodeError as err:
        raise ValueError(f"recipe {name!r} is not valid TOML: {err}") from err


def _recipe_dir():
    return resources.files("odenets.training").joinpath("recipes")


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package, e.g. ``"paper-cifar10"``."""
    return sorted(
        p.name[: -len(".toml")] for p in _recipe_dir().iterdir() if p.name.endswith(".toml")
    )


def load_recipe(name: str) -> dict[str, Any]:
    """The recipe `name` as a dict of TrainConfig fields (plus its ``description``)."""
    names = list_recipes()
    if name not in names:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(names)}")
    values = _load_toml(_recipe_dir().joinpath(f"{name}.toml").read_text(encoding="utf-8"), name)
    unknown = set(values) - set(RECIPE_FIELDS) - {"description"}
    if unknown:
        raise ValueError(f"recipe {name!r} has unknown keys {sorted(unknown)}")
    return values


def resolve_milestones(milestones: list[float], epochs: int) -> list[int]:
    """Milestones as epoch numbers: a fraction f in (0, 1) becomes round(f * epochs).

    An epoch number must be a whole number >= 1. The learning rate drops after each
    milestone epoch (paper: lr 0.1 for epochs 1-80, 0.01 from epoch 81). With few epochs,
    fractions that would round onto the same epoch (or onto the last, where a drop has no
    effect) move to earlier distinct epochs, so each decay is still taken: 3 epochs of
    [0.5, 0.75] train at 0.1, 0.01, 0.001.
    """
    fractions, whole = [], []
    for m in milestones:
        m = float(m)
        if 0.0 < m < 1.0:
            fractions.append(max(1, math.floor(m * epochs + 0.5)))
        elif m >= 1.0 and m == int(m):
            whole.append(int(m))
        else:
            raise ValueError(
                f"a milestone must be a fraction in (0, 1) of the epochs or a whole epoch "
                f"number >= 1; got {m}"
            )
    fractions.sort()
    if fractions and epochs > len(fractions):
        # From the last drop back: each at most the epoch before the next (the last at most
        # epochs - 1); there is room for all since epochs > number of drops.
        upper = epochs - 1
        for i in range(len(fractions) - 1, -1, -1):
            fractions[i] = min(fractions[i], upper)
            upper = fractions[i] - 1
    return sorted(fractions + whole)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of the 1-based `epoch` under a resolved config (step schedule)."""
    drops = sum(1 for m in config.milestones if m < epoch)
    return config.lr * config.gamma**drops


def resolve_config(config: TrainConfig, *, device_type: str) -> TrainConfig:
    """A copy of `config` with the recipe applied and every automatic switch decided.

    Args:
        config: as given by the user.
        device_type: "cpu" or "cuda", which decides the speed switches left at None.

    Raises:
        ValueError: a value is out of range; the message names it and what is accepted.
    """
    if config.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {config.dataset!r}")
    recipe_name = config.recipe or DEFAULT_RECIPE[config.dataset]
    recipe = load_recipe(recipe_name)
    values = dataclasses.asdict(config)
    values["recipe"] = recipe_name
    for key in RECIPE_FIELDS:
        if values[key] is None:
            values[key] = recipe[key]
    on_cuda = device_type == "cuda"
    # channels_last is exact and pays on CPU as well (docs/benchmarks.md); bf16 changes the
    # numerics and torch.compile pays back its minute of compilation only on long runs, so
    # those two default on for CUDA only.
    if values["channels_last"] is None:
        values["channels_last"] = True
    for key in ("amp", "compile"):
        if values[key] is None:
            values[key] = on_cuda
    if values["checkpoint_steps"] is None:
        # Long CPU epochs lose little to a kill; on CUDA an epoch takes seconds.
        values["checkpoint_steps"] = 0 if on_cuda else 200
    if values["deterministic"] is None:
        values["deterministic"] = not on_cuda
    values["milestones"] = resolve_milestones(values["milestones"], values["epochs"])
    values["model_kwargs"] = dict(values["model_kwargs"] or {})
    resolved = TrainConfig(**values)
    _check(resolved)
    return resolved


def _check(c: TrainConfig) -> None:
    checks = [
        (c.epochs >= 1, f"epochs must be >= 1; got {c.epochs}"),
        (c.batch_size >= 1, f"batch_size must be >= 1; got {c.batch_size}"),
        (c.eval_batch_size >= 1, f"eval_batch_size must be >= 1; got {c.eval_batch_size}"),
        (c.lr > 0, f"lr must be > 0; got {c.lr}"),
        (0.0 <= c.momentum < 1.0, f"momentum must be in [0, 1); got {c.momentum}"),
        (c.weight_decay >= 0, f"weight_decay must be >= 0; got {c.weight_decay}"),
        (c.gamma > 0, f"gamma must be > 0; got {c.gamma}"),
        (c.pad >= 0, f"pad must be >= 0; got {c.pad}"),
        (c.checkpoint_steps >= 0, f"checkpoint_steps must be >= 0; got {c.checkpoint_steps}"),
        (0.0 <= c.val_fraction < 1.0, f"val_fraction must be in [0, 1); got {c.val_fraction}"),
        (c.select in SELECT, f"select must be one of {', '.join(SELECT)}; got {c.select!r}"),
        (
            c.select != "best-val" or c.val_fraction > 0,
            "select='best-val' needs a validation split: set val_fraction, e.g. 0.1",
        ),
        (
            c.select != "best-test" or c.allow_test_selection,
            "select='best-test' picks the epoch on the test set, which overstates accuracy; "
            "pass allow_test_selection=True (--allow-test-selection) to do it anyway",
        ),
        (
            c.coefficient_weight_decay is None or c.coefficient_weight_decay >= 0,
            f"coefficient_weight_decay must be None or >= 0; got {c.coefficient_weight_decay}",
        ),
        (
            isinstance(c.freeze_coefficients, bool),
            f"freeze_coefficients must be true or false; got {c.freeze_coefficients!r}",
        ),
        (
            not (c.freeze_coefficients and c.coefficient_weight_decay is not None),
            "coefficient_weight_decay has no effect on frozen coefficients (freeze_coefficients "
            f"holds them, decay included); got coefficient_weight_decay "
            f"{c.coefficient_weight_decay} with freeze_coefficients: give one of them",
        ),
        (
            not (c.nesterov and c.momentum == 0),
            "nesterov=True needs momentum > 0",
        ),
        (
            c.train_limit is None or c.train_limit >= 1,
            f"train_limit must be None or >= 1; got {c.train_limit}",
        ),
        (
            c.test_limit is None or c.test_limit >= 1,
            f"test_limit must be None or >= 1; got {c.test_limit}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
