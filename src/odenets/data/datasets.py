"""`load_dataset(name, ...)`: one entry point for every data source, returning a `Dataset`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from odenets.data.archives import cifar_class_names, load_cifar
from odenets.data.digits import DIGITS_CLASSES, load_digits
from odenets.data.folder import load_image_folder

DATASETS = ("cifar10", "cifar100", "folder", "digits")


@dataclass
class Dataset:
    """One split of a data set held in memory.

    Attributes:
        images: uint8 (N, H, W, C).
        labels: int64 (N,).
        class_names: one name per class, in label order.
        name: "cifar10", "cifar100", "folder" or "digits".
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return len(self.labels)


def load_dataset(
    name: str, *, root: str | os.PathLike | None = None, split: str, **kwargs
) -> Dataset:
    """Load one split of a named data set.

    Args:
        name: "cifar10" / "cifar100" (official archives under `root`; kwargs `download`,
            `label_kind`), "folder" (image folders under `root`; kwargs of
            `load_image_folder`) or "digits" (scikit-learn's 8x8 digits; no root).
        root: data folder (not used by "digits").
        split: "train" or "test".

    Returns:
        a `Dataset` with uint8 (N, H, W, C) images.
    """
    loader = _LOADERS.get(name)
    if loader is None:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if name != "digits" and root is None:
        raise ValueError(f"data set {name!r} needs a root folder (root=...)")
    if name in ("folder", "digits") and kwargs.pop("download", False):
        raise ValueError(f"download applies to cifar10 and cifar100 only; got data set {name!r}")
    return loader(name, root, split, **kwargs)


def _cifar(name: str, root, split: str, **kwargs) -> Dataset:
    images, labels = load_cifar(name, root, split=split, **kwargs)
    label_kind = kwargs.get("label_kind", "fine")
    return Dataset(images, labels, cifar_class_names(name, root, label_kind=label_kind), name)


def _folder(name: str, root, split: str, **kwargs) -> Dataset:
    images, labels, class_names = load_image_folder(root, split=split, **kwargs)
    return Dataset(images, labels, class_names, name)


def _digits(name: str, root, split: str, **kwargs) -> Dataset:
    if kwargs:
        raise TypeError(f"digits takes no options; got {sorted(kwargs)}")
    images, labels = load_digits(split=split)
    return Dataset(images, labels, list(DIGITS_CLASSES), name)


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "cifar10": _cifar,
    "cifar100": _cifar,
    "folder": _folder,
    "digits": _digits,
}
