"""Shared fixtures. Tests run on CPU, offline; real CIFAR-10 JPEGs are used when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _cifar10_jpeg_root() -> Path | None:
    env = os.environ.get("ODENETS_CIFAR10_JPEG")
    candidates = [Path(env)] if env else []
    # The data set is kept beside the project as ../shared/data/cifar10-jpeg.
    candidates.append(REPO.parent / "shared" / "data" / "cifar10-jpeg")
    for path in candidates:
        if (path / "train").is_dir() and (path / "test").is_dir():
            return path
    return None


@pytest.fixture(scope="session")
def cifar10_jpeg_root() -> Path:
    """Root of CIFAR-10 as JPEG image folders; the test is skipped if it is absent."""
    root = _cifar10_jpeg_root()
    if root is None:
        pytest.skip("CIFAR-10 JPEG folder not found (set ODENETS_CIFAR10_JPEG)")
    return root


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The suite runs small models on tiny batches: intra-op threads cost more in hand-offs
    # than they save, and one thread keeps CPU results independent of the core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _user_cache(tmp_path_factory, monkeypatch):
    # Decoded-folder caches go to a throw-away user cache folder, never to the tester's own.
    monkeypatch.setenv("ODENETS_CACHE", str(tmp_path_factory.mktemp("user-cache")))
    monkeypatch.delenv("ODENETS_NO_CACHE", raising=False)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
