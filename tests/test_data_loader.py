"""DeviceLoader: batches, on-device augmentation checked against hand-computed crops, and
epochs that depend only on (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from odenets.data import DeviceLoader
from odenets.data.loader import shift_crop_flip

IMG = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)  # pixel (r, c) = 4 r + c


def crop(dy, dx, flip, *, pad=2, mode="reflect"):
    out = shift_crop_flip(
        torch.from_numpy(IMG),
        torch.tensor([0]),
        torch.tensor([dy]),
        torch.tensor([dx]),
        torch.tensor([flip]),
        pad=pad,
        mode=mode,
    )
    return out[0, :, :, 0].numpy()


def test_reflect_crop_by_hand():
    # Offsets (0, 4): rows -2..1 reflect to 2, 1, 0, 1; columns 2..5 reflect to 2, 3, 2, 1.
    expected = np.array([[10, 11, 10, 9], [6, 7, 6, 5], [2, 3, 2, 1], [6, 7, 6, 5]])
    np.testing.assert_array_equal(crop(0, 4, False), expected)
    np.testing.assert_array_equal(crop(0, 4, True), expected[:, ::-1])
    padded = np.pad(IMG[0, :, :, 0], 2, mode="reflect")
    np.testing.assert_array_equal(crop(0, 4, False), padded[0:4, 4:8])
    # The centre offset is the identity; (2, 3) is a one-pixel shift left.
    np.testing.assert_array_equal(crop(2, 2, False), IMG[0, :, :, 0])
    np.testing.assert_array_equal(
        crop(2, 3, False), [[1, 2, 3, 2], [5, 6, 7, 6], [9, 10, 11, 10], [13, 14, 15, 14]]
    )


def test_zero_padding_crop_by_hand():
    expected = np.array([[0, 0, 0, 0], [1, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0]])
    np.testing.assert_array_equal(crop(1, 3, False, mode="zeros"), expected)
    padded = np.pad(IMG[0, :, :, 0], 4)
    np.testing.assert_array_equal(crop(0, 8, False, pad=4, mode="zeros"), padded[0:4, 8:12])


def images_and_labels(n=40, size=32, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8), np.arange(n)


def test_every_augmented_image_is_a_crop_of_its_reflect_padded_source():
    images, labels = images_and_labels()
    loader = DeviceLoader(images, labels, batch_size=16, shuffle=True, augment=True, seed=5)
    offsets = set()
    for x, y in loader.epoch(0):
        for img, label in zip(x, y, strict=True):
            got = np.rint(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            padded = np.pad(images[label], ((2, 2), (2, 2), (0, 0)), mode="reflect")
            matches = [
                (dy, dx, f)
                for dy in range(5)
                for dx in range(5)
                for f in (False, True)
                if np.array_equal(got, padded[dy : dy + 32, dx : dx + 32][:, :: -1 if f else 1])
            ]
            assert len(matches) == 1  # random images: exactly one crop fits
            offsets.add(matches[0])
    # A real shift: most samples are not the identity, and both flips occur.
    assert len(offsets) > 10 and {f for _, _, f in offsets} == {False, True}


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_shapes_range_and_labels(augment, channels_last):
    images, labels = images_and_labels(n=37)
    # Constant images whose value encodes the label: any crop or flip keeps the value.
    images[:] = (labels * 5)[:, None, None, None].astype(np.uint8)
    loader = DeviceLoader(
        images, labels, batch_size=10, shuffle=True, augment=augment, seed=1,
        channels_last=channels_last,
    )  # fmt: skip
    assert len(loader) == 4
    seen = []
    for x, y in loader.epoch(2):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (3, 32, 32) and 0.0 <= x.min() and x.max() <= 1.0
        assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
        np.testing.assert_allclose(x.amax(dim=(1, 2, 3)), y * 5 / 255, rtol=1e-6)
        np.testing.assert_allclose(x.amin(dim=(1, 2, 3)), y * 5 / 255, rtol=1e-6)
        seen.append(y)
    assert sorted(torch.cat(seen).tolist()) == list(range(37))


def test_no_shuffle_no_augment_is_exact_and_ordered():
    images, labels = images_and_labels(n=10, size=8, channels=1)
    loader = DeviceLoader(images, labels, batch_size=4)
    x = torch.cat([b for b, _ in loader])
    np.testing.assert_array_equal(x.permute(0, 2, 3, 1).mul(255).round().byte().numpy(), images)


def test_epochs_are_reproducible_and_independent_of_history():
    images, labels = images_and_labels()

    def epoch(loader, e):
        return torch.cat([x for x, _ in loader.epoch(e)]), torch.cat(
            [y for _, y in loader.epoch(e)]
        )

    a = DeviceLoader(images, labels, batch_size=8, shuffle=True, augment=True, seed=7)
    b = DeviceLoader(images, labels, batch_size=8, shuffle=True, augment=True, seed=7)
    x3, y3 = epoch(a, 3)
    for e in range(3):  # b plays epochs 0-2 first; epoch 3 must not care
        epoch(b, e)
    x3b, y3b = epoch(b, 3)
    assert torch.equal(x3, x3b) and torch.equal(y3, y3b)
    x4, y4 = epoch(a, 4)
    assert not torch.equal(y3, y4) and not torch.equal(x3, x4)
    a.set_epoch(4)
    assert torch.equal(torch.cat([x for x, _ in a]), x4)
    other = DeviceLoader(images, labels, batch_size=8, shuffle=True, augment=True, seed=8)
    assert not torch.equal(epoch(other, 3)[1], y3)


def test_drop_last_and_data_parallel_shards():
    images, labels = images_and_labels(n=23, size=4)
    assert len(DeviceLoader(images, labels, batch_size=5, drop_last=True)) == 4
    shards = [
        DeviceLoader(images, labels, batch_size=4, shuffle=True, seed=3, rank=r, world_size=3)
        for r in range(3)
    ]
    seen = [torch.cat([y for _, y in s.epoch(1)]) for s in shards]
    assert [len(s) for s in seen] == [8, 8, 8]
    assert set(torch.cat(seen).tolist()) == set(range(23))


def test_data_parallel_ranks_together_are_the_single_process_batches():
    # 11 samples over 2 ranks: 6 each, the 12th position wraps to the epoch's first sample.
    images, labels = images_and_labels(n=11, size=6)
    kwargs = dict(shuffle=True, augment=True, pad=2, seed=5)
    one = DeviceLoader(images, labels, batch_size=4, **kwargs)
    ranks = [
        DeviceLoader(images, labels, batch_size=2, rank=r, world_size=2, **kwargs) for r in (0, 1)
    ]
    x1, y1 = (torch.cat(t) for t in zip(*one.epoch(2), strict=True))
    pairs = zip(ranks[0].epoch(2), ranks[1].epoch(2), strict=True)
    for k, ((x0, y0), (xr, yr)) in enumerate(pairs):
        # Rank r's j-th sample is position 2 j + r of the global batch.
        x = torch.stack([x0, xr], 1).flatten(0, 1)  # (4, C, H, W)
        y = torch.stack([y0, yr], 1).flatten()
        n = min(4, len(y1) - 4 * k)
        assert torch.equal(x[:n], x1[4 * k : 4 * k + n])
        assert torch.equal(y[:n], y1[4 * k : 4 * k + n])
    assert torch.equal(x[n:], x1[:1]) and torch.equal(y[n:], y1[:1])


def test_validation_split_is_seeded_stratified_and_disjoint():
    images = np.arange(200, dtype=np.uint8).reshape(200, 1, 1, 1)
    labels = np.repeat(np.arange(4), 50)
    (tx, ty), (vx, vy) = DeviceLoader.split(images, labels, val_fraction=0.1, seed=3)
    assert np.bincount(vy).tolist() == [5, 5, 5, 5] and len(ty) == 180
    assert set(tx.ravel()) | set(vx.ravel()) == set(range(200))
    assert not set(tx.ravel()) & set(vx.ravel())
    (_, _), (vx2, _) = DeviceLoader.split(images, labels, val_fraction=0.1, seed=3)
    (_, _), (vx3, _) = DeviceLoader.split(images, labels, val_fraction=0.1, seed=4)
    assert np.array_equal(vx, vx2) and not np.array_equal(vx, vx3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"images": np.zeros((2, 4, 4, 3), np.float32)}, "uint8"),
        ({"labels": np.zeros(3)}, "labels must have shape"),
        ({"pad": 4}, r"pad must be in \[0, 3\]"),
        ({"pad_mode": "edge"}, "pad_mode must be one of"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.zeros(2), "batch_size": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        DeviceLoader(args.pop("images"), args.pop("labels"), augment=True, **args)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    images, labels = images_and_labels()
    kw = {"batch_size": 16, "shuffle": True, "augment": True, "seed": 2}
    cpu = torch.cat([x for x, _ in DeviceLoader(images, labels, **kw).epoch(1)])
    gpu = torch.cat([x for x, _ in DeviceLoader(images, labels, device="cuda", **kw).epoch(1)])
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
