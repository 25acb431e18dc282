"""Atomic JSON / safetensors helpers: round trips, atomicity, corrupt files, no unpickling."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from odenets.checkpoint import (
    append_jsonl,
    load_safetensors,
    read_json,
    read_jsonl,
    save_safetensors_atomic,
    sha256_file,
    write_json_atomic,
)
from odenets.errors import CheckpointError


class _Marker:
    """Unpickling this creates a file: proof that a loader ran pickle code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_write_json_atomic_round_trip_and_no_leftovers(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json_atomic(path, {"acc": 0.5, "name": "λ", "xs": [1, 2]})
    assert read_json(path) == {"acc": 0.5, "name": "λ", "xs": [1, 2]}
    assert sorted(os.listdir(path.parent)) == ["a.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_json_write_keeps_old_file(tmp_path):
    path = tmp_path / "a.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"v": float("nan")})  # NaN is not JSON
    with pytest.raises(TypeError):
        write_json_atomic(path, {"v": object()})
    assert read_json(path) == {"v": 1}
    assert os.listdir(tmp_path) == ["a.json"]


def test_append_jsonl(tmp_path):
    path = tmp_path / "m.jsonl"
    for e in range(1, 4):
        append_jsonl(path, {"epoch": e, "acc": e / 10})
    assert [r["epoch"] for r in read_jsonl(path)] == [1, 2, 3]
    assert path.read_text().count("\n") == 3
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_corrupt_json_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"epoch": 3, "lr"')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_json(path)


def test_safetensors_round_trip_with_shared_storage(tmp_path):
    base = torch.arange(12, dtype=torch.float32)
    tensors = {"a": base, "view": base.view(3, 4)[:, 1], "i": torch.tensor([7], dtype=torch.int64)}
    path = tmp_path / "w.safetensors"
    sha = save_safetensors_atomic(path, tensors, metadata={"epoch": "4"})
    assert sha == sha256_file(path)
    loaded, meta = load_safetensors(path)
    assert meta == {"epoch": "4"}
    assert torch.equal(loaded["view"], torch.tensor([1.0, 5.0, 9.0]))
    assert torch.equal(loaded["a"], base) and loaded["i"].item() == 7


def test_truncated_safetensors_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors_atomic(path, {"w": torch.randn(100, 100)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_safetensors(path)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_safetensors(path)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl"])
def test_pickle_files_are_never_loaded(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(CheckpointError, match="pickle"):
        load_safetensors(path)
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_safetensors(tmp_path / "nope.safetensors")


def test_json_helpers_write_utf8(tmp_path):
    path = tmp_path / "a.json"
    write_json_atomic(path, {"λ": 1})
    assert json.loads(path.read_bytes().decode("utf-8")) == {"λ": 1}
