"""Evaluating run folders: `evaluate_runs` loads one run (or several, as an ensemble), takes
the test split of the data set it was trained on (the whole split, a seeded subset, one
shard of it) and returns `evaluate`'s eval.json dictionary.

`odenets evaluate` and the grid runner of `odenets reproduce` both call it, so a grid's
eval.json and the command's agree sample for sample.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from odenets.data.datasets import load_dataset
from odenets.data.splits import subset_indices
from odenets.device import resolve_device
from odenets.robustness.evaluate import evaluate
from odenets.robustness.shards import shard_slice
from odenets.training.run_folder import FINAL_WEIGHTS
from odenets.training.runs import RunInfo, load_run, read_run


def evaluate_runs(
    run_dirs: Sequence[str | Path],
    *,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    seed: int = 0,
    data_root: str | None = None,
    device: str = "auto",
    verify: bool = True,
    transfer_from: str | Path | None = None,
    progress: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate one run folder, or several as their averaged-softmax ensemble.

    A run that has not finished is evaluated at its last checkpoint, with a warning; the
    result records the weights scored.

    Args:
        run_dirs: run folders, all trained on one data set.
        limit: evaluate the seeded subset of `limit` test images (`subset_indices`; None:
            the whole test split).
        shard: (index, count), 0-based: evaluate the contiguous share `index` of `count`
            of the (limited) test set (`shard_slice`); None: all of it.
        seed: seed of the subset and of every random draw of `evaluate`.
        data_root: data folder; None takes the root recorded in the first run's config.json.
        device: "auto", "cpu" or "cuda[:N]".
        verify: check a CIFAR archive's official md5 (also skipped for a run trained
            without it).
        transfer_from: run folder of a surrogate network (trained on the same data set):
            `transfer_attacks` crafted on it are scored on the runs.
        progress: progress bars on stderr.
        **options: the other keyword arguments of `odenets.robustness.evaluate.evaluate`
            (attacks, eps_list, threat_model, noise, attack_options, ...).

    Returns:
        The eval.json dictionary.
    """
    surrogate_dirs = [transfer_from] if transfer_from is not None else []
    infos = [read_run(p) for p in [*run_dirs, *surrogate_dirs]]
    check_one_dataset(infos)
    dataset = infos[0].config["dataset"]
    torch_device = resolve_device(device)
    models = [load_run(p, device=torch_device) for p in run_dirs]
    surrogates = [load_run(p, device=torch_device) for p in surrogate_dirs]
    for model in [*models, *surrogates]:
        _warn_unfinished(model.run_weights)

    verify = verify and infos[0].config["train"].get("verify", True)
    test = _test_split(dataset, data_root, verify=verify)
    order, shard_record = eval_indices(len(test.labels), limit=limit, seed=seed, shard=shard)
    images = torch.from_numpy(test.images[order]).permute(0, 3, 1, 2).float() / 255  # (N,C,H,W)
    labels = torch.from_numpy(test.labels[order])
    info = {
        "runs": [str(p) for p in run_dirs],
        "dataset": dataset["name"],
        "split": "test",
        "shard": shard_record,
        "transfer_from": [str(p) for p in surrogate_dirs] or None,
    }
    return evaluate(
        models,
        images,
        labels,
        transfer_from=surrogates or None,
        seed=seed,
        indices=torch.from_numpy(order),
        info=info,
        progress=progress,
        **options,
    )


def eval_indices(
    n: int, *, limit: int | None, seed: int, shard: tuple[int, int] | None = None
) -> tuple[np.ndarray, dict[str, int] | None]:
    """Indices of the test images to evaluate and the shard's record for eval.json.

    Args:
        n: size of the test split.
        limit: the seeded subset of `limit` images (None: all), sorted.
        seed: the subset's seed.
        shard: (index, count), 0-based: the contiguous share of the subset; None: all.

    Returns:
        (int64 indices into the test split (M,), increasing; {"index", "count", "start",
        "stop", "total"} of the shard, or None without one).
    """
    order = subset_indices(n, limit, seed)
    if shard is None:
        return order, None
    index, count = shard
    start, stop = shard_slice(len(order), index, count)
    record = {"index": index, "count": count, "start": start, "stop": stop, "total": len(order)}
    return order[start:stop], record


def check_one_dataset(infos: Sequence[RunInfo]) -> None:
    """The runs of an ensemble (and a surrogate) were all trained on the first's data set."""
    dataset = infos[0].config["dataset"]
    for info in infos[1:]:
        if info.config["dataset"]["name"] != dataset["name"]:
            raise ValueError(
                "runs of an ensemble or a surrogate must share a data set; "
                f"{info.path} was trained on {info.config['dataset']['name']!r}, "
                f"{infos[0].path} on {dataset['name']!r}"
            )


def _warn_unfinished(weights: dict[str, Any]) -> None:
    """Say so when a run has no final weights yet: its last checkpoint is evaluated."""
    if weights["file"] != FINAL_WEIGHTS:
        warnings.warn(
            f"{weights['run']} has not finished training; evaluating {weights['file']} "
            f"(epoch {weights['epoch']} of {weights['epochs']})",
            stacklevel=3,
        )


def count_test_images(run_dir: str | Path, data_root: str | None = None) -> int:
    """How many test images the data set of a run (trained on it) has: what `evaluate_runs`
    evaluates without a `limit`."""
    config = read_run(run_dir).config
    verify = config["train"].get("verify", True)
    return len(_test_split(config["dataset"], data_root, verify=verify).labels)


def _test_split(dataset: dict[str, Any], data_root: str | None, *, verify: bool):
    """The test split of a run's data set (config.json "dataset"), under `data_root` when
    given, else under the root the run was trained with."""
    root = data_root if data_root is not None else dataset.get("root")
    kwargs = {"verify": verify} if dataset["name"] in ("cifar10", "cifar100") else {}
    return load_dataset(dataset["name"], root=root, split="test", **kwargs)
