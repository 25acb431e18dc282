"""Image folders (real CIFAR-10 JPEGs and small PNG folders), the decoded cache and its
invalidation, the digits set, and load_dataset."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from odenets.data import folder as folder_module
from odenets.data import load_dataset, load_digits, load_image_folder
from odenets.errors import DataError


def write_folder(root, counts, *, size=(6, 5), mode="RGB", seed=0):
    """root/<split>/<class>/<i>.png with seeded random pixels; returns {split: images}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    for split, per_class in counts.items():
        images = []
        for name, n in per_class.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(arr, mode).save(root / split / name / f"{i:03d}.png")
                images.append(arr.reshape(size[1], size[0], -1))
        out[split] = np.stack(images)
    return out


COUNTS = {"train": {"cat": 3, "ant": 2, "bee": 1}, "test": {"ant": 1, "cat": 2}}


@pytest.mark.slow
def test_cifar10_jpeg_folder(cifar10_jpeg_root, request):
    # A cache kept across test runs (pytest's cache folder), so only the first run decodes.
    cache_dir = request.config.cache.mkdir("odenets-cifar10-jpeg")
    names = sorted(os.listdir(cifar10_jpeg_root / "train"))
    for split, n in (("train", 5000), ("test", 1000)):
        images, labels, class_names = load_image_folder(
            cifar10_jpeg_root, split=split, cache_dir=cache_dir
        )
        assert class_names == names and len(class_names) == 10
        assert images.shape == (10 * n, 32, 32, 3) and images.dtype == np.uint8
        assert np.bincount(labels).tolist() == [n] * 10
        sample = images[::97].astype(np.float32)
        assert 60 < sample.mean() < 200 and sample.std() > 30  # real photos, not blank
        assert np.all(np.diff(labels) >= 0)  # ordered by class, then file name


def test_small_folder_loads_exactly_with_sorted_classes(tmp_path):
    truth = write_folder(tmp_path, COUNTS)
    images, labels, names = load_image_folder(tmp_path, split="train")
    assert names == ["ant", "bee", "cat"]
    assert labels.tolist() == [0, 0, 1, 2, 2, 2]
    # Files are written cat, ant, bee; loaded ant, bee, cat.
    np.testing.assert_array_equal(images, truth["train"][[3, 4, 5, 0, 1, 2]])
    test_images, test_labels, test_names = load_image_folder(tmp_path, split="test")
    assert test_names == names and test_labels.tolist() == [0, 2, 2]  # bee is empty in test
    np.testing.assert_array_equal(test_images, truth["test"])  # ant, then cat


def _user_cache_files(pattern):
    return list((Path(os.environ["ODENETS_CACHE"]) / "folders").glob(pattern))


def _snapshot(root):
    """Every path under root with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    } | {".": root.stat().st_mtime_ns}


def test_cache_is_used_then_invalidated_by_a_new_file(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_folder(root, COUNTS)
    first = load_image_folder(root, split="train")
    assert len(_user_cache_files("data-*/train-*.npz")) == 1

    def no_decoding(*args):
        raise AssertionError("decoded although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(folder_module, "_decode_all", no_decoding)
        again = load_image_folder(root, split="train")
    np.testing.assert_array_equal(again[0], first[0])
    assert again[2] == first[2]

    extra = write_folder(tmp_path / "new", {"train": {"bee": 1}}, seed=9)["train"][0]
    os.replace(tmp_path / "new" / "train" / "bee" / "000.png", root / "train" / "bee" / "x.png")
    images, labels, _ = load_image_folder(root, split="train")
    assert len(images) == 7 and labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(images[3], extra)
    assert len(_user_cache_files("data-*/train-*.npz")) == 1  # the stale cache was removed
    assert len(_user_cache_files("data-*/train-*-images.npy")) == 1


def test_unreadable_cache_is_ignored_with_a_warning(tmp_path):
    root = tmp_path / "data"
    write_folder(root, COUNTS)
    first = load_image_folder(root, split="test")
    (npz,) = _user_cache_files("data-*/test-*.npz")
    npz.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="ignoring unreadable cache"):
        again = load_image_folder(root, split="test")
    np.testing.assert_array_equal(again[0], first[0])


def test_writable_data_folder_is_left_unchanged(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_folder(root, COUNTS)
    before = _snapshot(root)
    monkeypatch.delenv("ODENETS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_image_folder(root, split="train")
    load_image_folder(root, split="test")
    assert _snapshot(root) == before
    assert len(list((tmp_path / "xdg" / "odenets" / "folders").glob("data-*/*.npz"))) == 2


def test_two_folders_of_one_name_get_two_caches(tmp_path):
    write_folder(tmp_path / "a" / "data", COUNTS, seed=1)
    write_folder(tmp_path / "b" / "data", COUNTS, seed=2)
    first = load_image_folder(tmp_path / "a" / "data", split="test")[0]
    second = load_image_folder(tmp_path / "b" / "data", split="test")[0]
    assert not np.array_equal(first, second)
    assert len(_user_cache_files("data-*/test-*.npz")) == 2
    np.testing.assert_array_equal(
        load_image_folder(tmp_path / "a" / "data", split="test")[0], first
    )


def test_no_cache_writes_nothing_and_explicit_cache_dir(tmp_path, monkeypatch):
    write_folder(tmp_path / "d", COUNTS)
    load_image_folder(tmp_path / "d", split="test", cache=False)
    monkeypatch.setenv("ODENETS_NO_CACHE", "1")
    load_image_folder(tmp_path / "d", split="test")
    assert _user_cache_files("*/*") == []
    load_image_folder(tmp_path / "d", split="test", cache_dir=tmp_path / "c", cache=True)
    assert len(list((tmp_path / "c").glob("test-*.npz"))) == 1


def test_grey_folder_has_one_channel(tmp_path):
    truth = write_folder(tmp_path, {"train": {"a": 2}}, mode="L")
    images, _, _ = load_image_folder(tmp_path, split="train")
    assert images.shape == (2, 5, 6, 1)
    np.testing.assert_array_equal(images, truth["train"])


def test_mixed_image_sizes_name_the_file(tmp_path):
    write_folder(tmp_path, {"train": {"a": 1}})
    write_folder(tmp_path / "x", {"train": {"a": 1}}, size=(7, 7))
    os.replace(tmp_path / "x" / "train" / "a" / "000.png", tmp_path / "train" / "a" / "001.png")
    with pytest.raises(DataError, match=r"001\.png is 7x7 .* expected every image .* 6x5"):
        load_image_folder(tmp_path, split="train")


def test_layout_errors(tmp_path):
    with pytest.raises(DataError, match=r"expected .*/train/<class>/"):
        load_image_folder(tmp_path, split="train")
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"no images"):
        load_image_folder(tmp_path, split="train")
    (tmp_path / "train" / "a" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image .*bad\.jpg"):
        load_image_folder(tmp_path, split="train", cache=False)
    with pytest.raises(ValueError, match="split must be one of"):
        load_image_folder(tmp_path, split="val")


def test_digits_split_is_fixed_and_stratified():
    pytest.importorskip("sklearn")
    train_x, train_y = load_digits(split="train")
    test_x, test_y = load_digits(split="test")
    assert train_x.shape == (1438, 8, 8, 1) and test_x.shape == (359, 8, 8, 1)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int64
    assert train_x.min() == 0 and train_x.max() == 255
    # Values are the 17 levels 0..16 scaled to 0..255.
    assert set(np.unique(train_x)) <= {round(v * 255 / 16) for v in range(17)}
    counts = np.bincount(test_y) / (np.bincount(test_y) + np.bincount(train_y))
    assert np.all(np.abs(counts - 0.2) < 0.01)
    again_x, again_y = load_digits(split="test")
    assert np.array_equal(again_x, test_x) and np.array_equal(again_y, test_y)
    # Train and test are disjoint images of the 1,797 in scikit-learn.
    from sklearn.datasets import load_digits as sk_digits

    sk = sk_digits()
    ours = np.concatenate([train_x, test_x]).reshape(len(sk.target), 64)
    theirs = np.rint(sk.images * 255 / 16).astype(np.uint8).reshape(len(sk.target), 64)
    assert sorted(map(bytes, ours)) == sorted(map(bytes, theirs))


def test_load_dataset_records(tmp_path):
    pytest.importorskip("sklearn")
    digits = load_dataset("digits", split="train")
    assert (digits.num_classes, digits.in_chans, len(digits), digits.name) == (
        10,
        1,
        1438,
        "digits",
    )
    write_folder(tmp_path, COUNTS)
    data = load_dataset("folder", root=tmp_path, split="train")
    assert (data.num_classes, data.in_chans, len(data)) == (3, 3, 6)
    assert data.class_names == ["ant", "bee", "cat"]
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        load_dataset("mnist", split="train")
    with pytest.raises(ValueError, match="needs a root"):
        load_dataset("folder", split="train")
    with pytest.raises(ValueError, match="download applies to cifar10 and cifar100 only"):
        load_dataset("folder", root=tmp_path, split="train", download=True)
    assert len(load_dataset("folder", root=tmp_path, split="test", download=False)) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dataset("digits", split="test").images.shape == (359, 8, 8, 1)


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install 'odenets\[demo\]'"):
        load_digits(split="train")
