"""odenets.data: official CIFAR archives, image folders, the digits set, CIFAR-C noise and a
device-resident loader.

Every loader returns uint8 images (N, H, W, C) and int64 labels; `DeviceLoader` turns them
into float batches (B, C, H, W) in [0, 1] on the target device.
"""

from __future__ import annotations

import importlib

# public name -> module that defines it; imported on first use so `import odenets.data`
# stays light.
_EXPORTS = {
    "load_cifar": "archives",
    "download_cifar": "archives",
    "cifar_class_names": "archives",
    "load_image_folder": "folder",
    "load_digits": "digits",
    "Dataset": "datasets",
    "load_dataset": "datasets",
    "DATASETS": "datasets",
    "corrupt": "corruptions",
    "apply_noise": "corruptions",
    "load_cifar_c": "corruptions",
    "NOISE_CORRUPTIONS": "corruptions",
    "SEVERITY_PARAMS": "corruptions",
    "DeviceLoader": "loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'odenets.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"odenets.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
