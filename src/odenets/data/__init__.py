"""odenets.data: official CIFAR archives, image folders, the digits set, CIFAR-C noise and a
device-resident loader.

Every loader returns uint8 images (N, H, W, C) and int64 labels; `DeviceLoader` turns them
into float batches (B, C, H, W) in [0, 1] on the target device.
"""

from odenets.data.archives import cifar_class_names, download_cifar, load_cifar
from odenets.data.corruptions import (
    NOISE_CORRUPTIONS,
    SEVERITY_PARAMS,
    apply_noise,
    corrupt,
    load_cifar_c,
)
from odenets.data.datasets import DATASETS, Dataset, load_dataset
from odenets.data.digits import load_digits
from odenets.data.folder import load_image_folder
from odenets.data.loader import DeviceLoader

__all__ = [
    "DATASETS",
    "NOISE_CORRUPTIONS",
    "SEVERITY_PARAMS",
    "Dataset",
    "DeviceLoader",
    "apply_noise",
    "cifar_class_names",
    "corrupt",
    "download_cifar",
    "load_cifar",
    "load_cifar_c",
    "load_dataset",
    "load_digits",
    "load_image_folder",
]
