"""Official CIFAR archives: tiny copies in both formats load back exactly; unsafe pickles,
truncated archives and wrong layouts fail with errors that name the file."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile

import numpy as np
import pytest

from odenets.data import cifar_class_names, load_cifar, load_dataset
from odenets.data.archives import ARCHIVES
from odenets.errors import DataError

PER_FILE = 6  # images per tiny batch file


@pytest.fixture(autouse=True)
def _tiny_archives_count_as_official(monkeypatch):
    """The tiny archives here are not the official files, so their md5 differs from the
    CIFAR page's: skip that check (test_reliability.py tests it)."""
    from odenets.data import archives

    monkeypatch.setattr(archives, "verify_archive", lambda path, spec: None)


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (BINSTRING), as in the official pickled batches."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # The official files were written with numpy 1, whose arrays name numpy.core.
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def make_split(rng, n, name):
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    fine = rng.integers(0, 10 if name == "cifar10" else 100, n)
    coarse = rng.integers(0, 20, n)
    return images, fine, coarse


def flat(images):
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # R plane, G, B


def build(tmp_path, name, fmt, *, extracted, seed=0):
    """A tiny official-layout copy; returns (root, {split: (images, fine, coarse)})."""
    spec = ARCHIVES[(name, fmt)]
    rng = np.random.default_rng(seed)
    members, truth = {}, {}
    for split, files in (("train", spec.train), ("test", spec.test)):
        parts = [make_split(rng, PER_FILE, name) for _ in files]
        truth[split] = tuple(np.concatenate(p) for p in zip(*parts, strict=True))
        for file, (images, fine, coarse) in zip(files, parts, strict=True):
            if fmt == "binary":
                labels = [fine[:, None]] if name == "cifar10" else [coarse[:, None], fine[:, None]]
                members[file] = np.hstack([*[x.astype(np.uint8) for x in labels], flat(images)])
                members[file] = members[file].tobytes()
            else:
                batch = {b"batch_label": b"tiny batch", b"data": flat(images)}
                if name == "cifar10":
                    batch[b"labels"] = [int(v) for v in fine]
                else:
                    batch[b"fine_labels"] = [int(v) for v in fine]
                    batch[b"coarse_labels"] = [int(v) for v in coarse]
                members[file] = py2_pickle(batch)
    fine_names = [f"{name}_class{i}".encode() for i in range(10 if name == "cifar10" else 100)]
    coarse_names = [f"super{i}".encode() for i in range(20)]
    if fmt == "python":
        meta = {b"label_names": fine_names} if name == "cifar10" else {
            b"fine_label_names": fine_names, b"coarse_label_names": coarse_names
        }  # fmt: skip
        members[spec.meta[0]] = py2_pickle(meta)
    else:
        members[spec.meta[0]] = b"\n".join(fine_names) + b"\n\n"
        if name == "cifar100":
            members[spec.meta[1]] = b"\n".join(coarse_names) + b"\n"
    root = tmp_path / f"{name}-{fmt}-{'dir' if extracted else 'tar'}"
    if extracted:
        (root / spec.folder).mkdir(parents=True)
        for file, raw in members.items():
            (root / spec.folder / file).write_bytes(raw)
    else:
        root.mkdir(parents=True)
        write_tar(root / spec.filename, {f"{spec.folder}/{k}": v for k, v in members.items()})
    return root, truth


def write_tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for member, raw in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


@pytest.mark.parametrize("extracted", [True, False], ids=["extracted", "tar.gz"])
@pytest.mark.parametrize("fmt", ["python", "binary"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_tiny_archive_loads_back_exactly(tmp_path, name, fmt, extracted):
    root, truth = build(tmp_path, name, fmt, extracted=extracted)
    for split in ("train", "test"):
        images, fine, coarse = truth[split]
        got_x, got_y = load_cifar(name, root, split=split)
        assert got_x.dtype == np.uint8 and got_x.shape == images.shape
        np.testing.assert_array_equal(got_x, images)
        assert got_y.dtype == np.int64
        np.testing.assert_array_equal(got_y, fine)
        if name == "cifar100":
            _, got_coarse = load_cifar(name, root, split=split, label_kind="coarse")
            np.testing.assert_array_equal(got_coarse, coarse)
    n_train = PER_FILE * len(ARCHIVES[(name, fmt)].train)
    assert len(load_cifar(name, root, split="train")[1]) == n_train


def test_pixel_layout_is_planar_rows_of_32(tmp_path):
    """Byte 32 of a record is the red value of pixel (row 1, column 0); byte 1024 is green."""
    root, truth = build(tmp_path, "cifar10", "binary", extracted=True)
    raw = (root / "cifar-10-batches-bin" / "test_batch.bin").read_bytes()
    images, _ = load_cifar("cifar10", root, split="test")
    assert images[0, 1, 0, 0] == raw[1 + 32]
    assert images[0, 0, 0, 1] == raw[1 + 1024]
    assert images[0, 0, 5, 2] == raw[1 + 2048 + 5]


@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_class_names_from_meta_and_dataset_record(tmp_path, fmt):
    root, truth = build(tmp_path, "cifar100", fmt, extracted=fmt == "binary")
    fine = cifar_class_names("cifar100", root)
    coarse = cifar_class_names("cifar100", root, label_kind="coarse")
    assert fine[:2] == ["cifar100_class0", "cifar100_class1"] and len(fine) == 100
    assert coarse[-1] == "super19" and len(coarse) == 20
    data = load_dataset("cifar100", root=root, split="test", label_kind="coarse")
    assert (data.num_classes, data.in_chans, data.name) == (20, 3, "cifar100")
    np.testing.assert_array_equal(data.labels, truth["test"][2])


def test_cifar10_names_fall_back_to_the_published_ones(tmp_path):
    assert cifar_class_names("cifar10", tmp_path)[:3] == ["airplane", "automobile", "bird"]


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    evil = py2_pickle({b"data": Payload(), b"labels": [0]})
    # The payload is live: an ordinary unpickler runs it.
    pickle.loads(evil)
    assert marker.read_text() == "ran"
    marker.unlink()

    root, _ = build(tmp_path, "cifar10", "python", extracted=True)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(evil)
    with pytest.raises(
        DataError, match=r"test_batch.*refusing to unpickle the global (__builtin__|builtins)\.exec"
    ):
        load_cifar("cifar10", root, split="test")
    assert not marker.exists()


def test_os_system_payload_inside_an_archive_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    root = tmp_path / "root"
    root.mkdir()
    spec = ARCHIVES[("cifar100", "python")]
    members = {f"{spec.folder}/{m}": pickle.dumps(Payload()) for m in ("train", "test", "meta")}
    write_tar(root / spec.filename, members)
    with pytest.raises(
        DataError, match=r"cifar-100-python\.tar\.gz:cifar-100-python/train.*system"
    ):
        load_cifar("cifar100", root, split="train")
    assert not marker.exists()


def test_truncated_archive_names_the_file(tmp_path):
    root, _ = build(tmp_path, "cifar10", "python", extracted=False)
    path = root / "cifar-10-python.tar.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz is truncated or corrupt"):
        load_cifar("cifar10", root, split="test")


def test_not_a_gzip_archive_names_the_file_and_md5(tmp_path):
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"<html>not found</html>")
    with pytest.raises(
        DataError, match=r"cifar-10-binary\.tar\.gz.*c32a1d4ab5d03f1284b67883e8d87530"
    ):
        load_cifar("cifar10", tmp_path, split="train", format="binary")


def test_missing_member_file_is_named(tmp_path):
    root, _ = build(tmp_path, "cifar10", "python", extracted=True)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"data_batch_3 is missing"):
        load_cifar("cifar10", root, split="train")


def test_wrong_top_folder_in_archive(tmp_path):
    write_tar(tmp_path / "cifar-10-python.tar.gz", {"batches/test_batch": b"x"})
    with pytest.raises(DataError, match=r"no member cifar-10-batches-py/test_batch"):
        load_cifar("cifar10", tmp_path, split="test")


def test_binary_batch_of_wrong_size(tmp_path):
    root, _ = build(tmp_path, "cifar100", "binary", extracted=True)
    path = root / "cifar-100-binary" / "test.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"test\.bin: .* not a whole number of 3074-byte"):
        load_cifar("cifar100", root, split="test")


def test_batch_with_wrong_keys(tmp_path):
    root, _ = build(tmp_path, "cifar10", "python", extracted=True)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(py2_pickle({b"pixels": b"1"}))
    with pytest.raises(DataError, match=r"test_batch: expected keys 'data' and 'labels'"):
        load_cifar("cifar10", root, split="test")


def test_nothing_there_says_what_was_expected(tmp_path):
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz.*odenets data download"):
        load_cifar("cifar100", tmp_path, split="test")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "cifar11"}, "cifar10' or 'cifar100"),
        ({"split": "val"}, "split must be"),
        ({"label_kind": "coarse"}, "CIFAR-10 has one label"),
        ({"format": "matlab"}, "unknown archive format"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    args = {"name": "cifar10", "split": "test", **kwargs}
    with pytest.raises(ValueError, match=message):
        load_cifar(args.pop("name"), tmp_path, **args)
