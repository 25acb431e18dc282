"""CIFAR-C noise: statistics match the formulas at every severity, seeds fix the bytes, and
generated sets round-trip through the official layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from odenets import cli
from odenets.data import (
    NOISE_CORRUPTIONS,
    SEVERITY_PARAMS,
    apply_noise,
    corrupt,
    load_cifar_c,
)
from odenets.data.corruptions import corruption_seed, write_cifar_c
from odenets.errors import DataError

GREY = np.full((100, 32, 32, 3), 128, dtype=np.uint8)  # mid-grey, 307,200 values
X = 128 / 255
SEVERITY = [1, 2, 3, 4, 5]


def noise_std(name, severity, images=GREY):
    return (corrupt(images, name, severity, seed=severity).astype(np.float64) / 255).std()


@pytest.mark.parametrize("severity", SEVERITY)
def test_gaussian_std_is_c(severity):
    c = SEVERITY_PARAMS["gaussian"][severity - 1]
    assert noise_std("gaussian", severity) == pytest.approx(c, rel=0.05)


@pytest.mark.parametrize("severity", SEVERITY)
def test_speckle_std_is_c_times_x(severity):
    c = SEVERITY_PARAMS["speckle"][severity - 1]
    assert noise_std("speckle", severity) == pytest.approx(c * X, rel=0.05)


@pytest.mark.parametrize("severity", SEVERITY)
def test_shot_variance_is_x_over_c(severity):
    c = SEVERITY_PARAMS["shot"][severity - 1]
    assert noise_std("shot", severity) ** 2 == pytest.approx(X / c, rel=0.05)
    # Poisson(x c) / c is unbiased: the mean stays at x (up to the truncation to uint8).
    y = apply_noise(torch.full((100, 3, 32, 32), X), "shot", severity, generator=_gen(1))
    assert y.mean().item() == pytest.approx(X, abs=2e-3)


@pytest.mark.parametrize("severity", SEVERITY)
def test_impulse_sets_a_share_c_of_values_to_black_or_white(severity):
    c = SEVERITY_PARAMS["impulse"][severity - 1]
    y = corrupt(GREY, "impulse", severity, seed=0)
    changed = y != 128
    assert changed.mean() == pytest.approx(c, rel=0.05)
    assert set(np.unique(y[changed])) == {0, 255}
    assert (y[changed] == 255).mean() == pytest.approx(0.5, abs=0.05)


def test_untouched_values_survive_the_uint8_round_trip():
    # Impulse leaves most values alone: each of 0..255 must come back unchanged.
    levels = np.tile(np.arange(256, dtype=np.uint8), 40).reshape(10, 32, 32, 1)
    y = corrupt(levels, "impulse", 1, seed=0)
    kept = (y != 0) & (y != 255)
    np.testing.assert_array_equal(y[kept], levels[kept])


@pytest.mark.parametrize("name", NOISE_CORRUPTIONS)
def test_seed_fixes_the_bytes(name):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    before = images.copy()
    a, b = corrupt(images, name, 3, seed=11), corrupt(images, name, 3, seed=11)
    assert a.dtype == np.uint8 and a.shape == images.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, corrupt(images, name, 3, seed=12))
    assert not np.array_equal(a, images)
    np.testing.assert_array_equal(images, before)  # the input is not modified


@pytest.mark.parametrize("name", NOISE_CORRUPTIONS)
def test_apply_noise_stays_in_range_and_follows_the_generator(name):
    x = torch.rand(4, 3, 8, 8, generator=_gen(0))
    x[0] = 0.0
    x[1] = 1.0
    y = apply_noise(x, name, 5, generator=_gen(3))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert torch.equal(y, apply_noise(x, name, 5, generator=_gen(3)))
    assert not torch.equal(y, apply_noise(x, name, 5, generator=_gen(4)))


def test_noise_grows_with_severity():
    stds = {
        n: [noise_std(n, s, GREY[:10]) for s in SEVERITY] for n in ("gaussian", "shot", "speckle")
    }
    for name, values in stds.items():
        assert values == sorted(values), name


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: corrupt(GREY, "fog", 1, seed=0), "unknown noise corruption 'fog'"),
        (lambda: corrupt(GREY, "shot", 6, seed=0), "severity must be an integer in 1..5"),
        (lambda: corrupt(GREY.astype(float), "shot", 1, seed=0), "uint8"),
        (
            lambda: apply_noise(torch.zeros(1, dtype=torch.uint8), "shot", 1, generator=_gen(0)),
            "float",
        ),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_generated_set_round_trips_through_the_official_layout(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(6) % 3
    write_cifar_c(images, labels, tmp_path, names=["gaussian", "impulse"], seed=4)
    stack = np.load(tmp_path / "gaussian.npy")
    assert stack.shape == (30, 32, 32, 3) and stack.dtype == np.uint8
    assert np.load(tmp_path / "labels.npy").tolist() == labels.tolist() * 5
    for s in SEVERITY:
        x, y = load_cifar_c(tmp_path, "gaussian", s)
        np.testing.assert_array_equal(
            x, corrupt(images, "gaussian", s, seed=corruption_seed(4, "gaussian", s))
        )
        np.testing.assert_array_equal(y, labels)
    # Severity 1 first: the stack's spread grows along its five blocks.
    spread = [np.abs(b.astype(int) - images).mean() for b in np.split(stack, 5)]
    assert spread == sorted(spread)


def test_official_file_names_and_errors(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "gaussian_noise.npy", images)
    np.save(tmp_path / "labels.npy", np.arange(10) % 10)
    x, y = load_cifar_c(tmp_path, "gaussian", 5)
    np.testing.assert_array_equal(x, images[8:])
    assert y.tolist() == [8, 9] and y.dtype == np.int64
    with pytest.raises(DataError, match=r"no shot\.npy .*files found: gaussian_noise"):
        load_cifar_c(tmp_path, "shot", 1)
    np.save(tmp_path / "speckle.npy", images[:7])
    with pytest.raises(DataError, match=r"speckle\.npy holds uint8 \(7, 32, 32, 3\); expected"):
        load_cifar_c(tmp_path, "speckle", 1)
    np.save(tmp_path / "labels.npy", np.arange(3))
    with pytest.raises(
        DataError, match=r"labels\.npy holds shape \(3,\); expected \(10,\) or \(2,\)"
    ):
        load_cifar_c(tmp_path, "gaussian", 1)
    (tmp_path / "labels.npy").unlink()
    with pytest.raises(DataError, match=r"labels\.npy is missing"):
        load_cifar_c(tmp_path, "gaussian", 1)


def test_cli_corrupt_writes_the_official_layout(tmp_path, capsys):
    from PIL import Image

    for i, name in enumerate(["b", "a"]):
        (tmp_path / "data" / "test" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (40 * i, 100, 200)).save(
            tmp_path / "data" / "test" / name / "0.png"
        )
    argv = ["data", "corrupt", "--root", str(tmp_path / "data"), "--dataset", "folder"]
    argv += ["--out", str(tmp_path / "c"), "--seed", "3", "--corruptions", "shot", "speckle"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "wrote 2 corruption(s) x 5 severities" in captured.out
    # Off a terminal (a batch job's log): a line as each noise set starts and ends.
    steps = [x for x in captured.err.splitlines() if x.startswith(("building", "built"))]
    assert [x.split(" in ")[0] for x in steps] == [
        "building noise set shot (1/2): 5 severities of 2 images",
        f"built {tmp_path / 'c' / 'shot.npy'}",
        "building noise set speckle (2/2): 5 severities of 2 images",
        f"built {tmp_path / 'c' / 'speckle.npy'}",
    ]
    assert ", ETA " in steps[1] and steps[3].endswith(", done")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "labels.npy",
        "shot.npy",
        "speckle.npy",
    ]
    assert np.load(tmp_path / "c" / "shot.npy").shape == (10, 8, 8, 3)
    assert np.load(tmp_path / "c" / "labels.npy").tolist() == [0, 1] * 5
    assert cli.main([*argv[:-2], "fog"]) == 1
    assert "unknown noise corruption 'fog'; choose one of gaussian (gaussian_noise)" in (
        capsys.readouterr().err
    )
    # The official file names are accepted too, and write the same sets.
    argv[-6] = str(tmp_path / "official")
    assert cli.main([*argv[:-2], "shot_noise", "speckle_noise"]) == 0
    for name in ("shot", "speckle"):
        np.testing.assert_array_equal(
            np.load(tmp_path / "official" / f"{name}.npy"), np.load(tmp_path / "c" / f"{name}.npy")
        )


@pytest.mark.parametrize("name", NOISE_CORRUPTIONS)
def test_official_cifar_c_names_are_accepted_everywhere(name, tmp_path):
    official = f"{name}_noise"
    x = torch.rand(2, 3, 4, 4, generator=_gen(0))
    torch.testing.assert_close(
        apply_noise(x, official, 2, generator=_gen(1)), apply_noise(x, name, 2, generator=_gen(1))
    )
    images = (x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(
        corrupt(images, official, 4, seed=2), corrupt(images, name, 4, seed=2)
    )
    assert corruption_seed(0, official, 3) == corruption_seed(0, name, 3)
    write_cifar_c(images, np.arange(2), tmp_path, names=[official], seed=1)
    short = load_cifar_c(tmp_path, name, 5)
    np.testing.assert_array_equal(load_cifar_c(tmp_path, official, 5)[0], short[0])


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.gpu
@pytest.mark.parametrize("name", NOISE_CORRUPTIONS)
def test_cpu_generator_gives_the_same_noise_on_cuda(name):
    x = torch.rand(4, 3, 8, 8, generator=_gen(0), dtype=torch.float64)
    cpu = apply_noise(x, name, 3, generator=_gen(5))
    gpu = apply_noise(x.cuda(), name, 3, generator=_gen(5))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)
