"""The 8x8 handwritten digits that ship with scikit-learn: an offline data set for the demo.

1,797 grey images of the digits 0-9 with values 0..16, rescaled here to uint8 0..255 and
cut into a fixed, stratified 80/20 train/test split so every machine sees the same sets.
scikit-learn is an optional dependency (the `demo` extra) and is imported only when needed.
"""

from __future__ import annotations

import numpy as np

from odenets.data.splits import stratified_split

DIGITS_CLASSES = tuple(str(d) for d in range(10))
TEST_FRACTION = 0.2  # share of each class held out for the test split
SPLIT_SEED = 0  # fixed: the split is part of the data set's definition, not of a run


def load_digits(*, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load the scikit-learn digits as images.

    Args:
        split: "train" (1,438 images) or "test" (359 images).

    Returns:
        images uint8 (N, 8, 8, 1) in 0..255 and labels int64 (N,) in 0..9.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:
        raise ImportError(
            "the digits data set needs scikit-learn, an optional dependency: "
            "pip install 'odenets[demo]' (or pip install scikit-learn)"
        ) from err
    bunch = _sk_load_digits()
    # Values are integers 0..16; map 16 to 255 and round to the nearest level.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, TEST_FRACTION, seed=SPLIT_SEED)
    idx = train_idx if split == "train" else test_idx
    return np.ascontiguousarray(images[idx]), labels[idx]
