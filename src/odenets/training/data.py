"""The data of a run: train / validation / test arrays (with the seeded subsets and split)
and the device-resident loaders that feed `train_one_epoch` and `evaluate`."""

from __future__ import annotations

from typing import Any

import numpy as np

from odenets.data.datasets import load_dataset
from odenets.data.loader import DeviceLoader
from odenets.data.splits import stratified_split, subset_indices
from odenets.training.config import TrainConfig

# Train/test subsets and the validation split are the same for every seed, so seeds differ
# only in training randomness.
SUBSET_SEED = 0


def load_data(cfg: TrainConfig) -> dict[str, Any]:
    kwargs = {"download": True} if cfg.download else {}
    if cfg.dataset in ("cifar10", "cifar100"):
        kwargs["verify"] = cfg.verify
    train = load_dataset(cfg.dataset, root=cfg.data_root, split="train", **kwargs)
    test = load_dataset(cfg.dataset, root=cfg.data_root, split="test", **kwargs)
    out: dict[str, Any] = {
        "name": cfg.dataset,
        "num_classes": train.num_classes,
        "in_chans": train.in_chans,
        "n_full_train": len(train.labels),
    }
    x, y = _subset(train.images, train.labels, cfg.train_limit)
    if cfg.val_fraction > 0:
        tr, va = stratified_split(y, cfg.val_fraction, seed=SUBSET_SEED)
        out["val"] = (x[va], y[va])
        x, y = x[tr], y[tr]
    out["train"] = (x, y)
    out["test"] = _subset(test.images, test.labels, cfg.test_limit)
    for split in ("train", "val", "test"):
        if split in out:
            out[f"n_{split}"] = len(out[split][1])
    return out


def _subset(images: np.ndarray, labels: np.ndarray, limit: int | None):
    if limit is None or limit >= len(labels):
        return images, labels

    idx = subset_indices(len(labels), limit, SUBSET_SEED)
    return images[idx], labels[idx]


def make_loaders(cfg, data, device, dist) -> dict[str, Any]:
    # Every rank draws the same global batches and trains on its shard of each.
    loaders = {
        "train": DeviceLoader(
            *data["train"],
            batch_size=cfg.batch_size,
            device=device,
            shuffle=True,
            augment=cfg.augment,
            pad=cfg.pad,
            seed=cfg.seed,
            channels_last=cfg.channels_last,
        )
    }
    for split in ("val", "test"):
        if split in data:
            x, y = data[split]
            part = dist.shard(len(y))  # evaluation: each rank a contiguous share
            loaders[split] = DeviceLoader(
                x[part],
                y[part],
                batch_size=cfg.eval_batch_size,
                device=device,
                channels_last=cfg.channels_last,
            )
    return loaders
