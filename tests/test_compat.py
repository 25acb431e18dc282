"""Checkpoints in the In-ResNet authors' layout: a state_dict built here from their key names
and shapes, run through an independent functional re-implementation of their forward pass,
must give the same logits as our model after `load_reference`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import odenets
from odenets.compat import export_reference, load_reference
from odenets.errors import CheckpointError
from odenets.models.base import CIFAR_MEAN, CIFAR_STD
from odenets.models.resnet import PreActResNet

# --- the authors' layout, written from their key names and shapes ---------------------------


def _bn(sd, prefix, channels, g):
    sd[f"{prefix}.weight"] = 1 + 0.2 * torch.randn(channels, generator=g)
    sd[f"{prefix}.bias"] = 0.1 * torch.randn(channels, generator=g)
    sd[f"{prefix}.running_mean"] = 0.1 * torch.randn(channels, generator=g)
    sd[f"{prefix}.running_var"] = 0.5 + torch.rand(channels, generator=g)
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)


def _conv(sd, key, out_chs, in_chs, k, g):
    sd[key] = torch.randn(out_chs, in_chs, k, k, generator=g) * (2 / (k * k * out_chs)) ** 0.5


def _downsample(sd, name, in_chs, out_chs, g):
    _bn(sd, f"{name}.downsample.0", in_chs, g)
    _conv(sd, f"{name}.downsample.2.weight", out_chs, in_chs, 1, g)


def reference_state_dict(*, bottleneck, n, family, num_classes=10, seed=0):
    """What `net.state_dict()` of their `ResNet` (family "resnet") or `InResNet` holds."""
    g = torch.Generator().manual_seed(seed)
    exp = 4 if bottleneck else 1
    sd = {}
    _conv(sd, "conv1.weight", 16, 3, 3, g)
    _bn(sd, "bn1", 16, g)
    in_planes, i = 16, 0
    for planes in (16, 32, 64):
        for _ in range(n):
            p = f"blocks.{i}"
            _bn(sd, f"{p}.bn1", in_planes, g)
            if bottleneck:
                _conv(sd, f"{p}.conv1.weight", planes, in_planes, 1, g)
                _bn(sd, f"{p}.bn2", planes, g)
                _conv(sd, f"{p}.conv2.weight", planes, planes, 3, g)
                _bn(sd, f"{p}.bn3", planes, g)
                _conv(sd, f"{p}.conv3.weight", planes * 4, planes, 1, g)
            else:
                _conv(sd, f"{p}.conv1.weight", planes, in_planes, 3, g)
                _bn(sd, f"{p}.bn2", planes, g)
                _conv(sd, f"{p}.conv2.weight", planes, planes, 3, g)
            in_planes, i = planes * exp, i + 1
    _downsample(sd, "downsample1", 16, 64, g)
    _downsample(sd, "downsample21", 16 * exp, 32 * exp, g)
    _downsample(sd, "downsample31", 32 * exp, 64 * exp, g)
    if family == "resnet":
        _downsample(sd, "downsample22", 16 * exp, 32 * exp, g)
        _downsample(sd, "downsample32", 32 * exp, 64 * exp, g)
    else:
        # Raw k: In-ResNet λ = ReLU(1 - k), λ-In-ResNet λ = ReLU(k); λ in [0.1, 0.6].
        for j in range(3 * n):
            lam = 0.1 + 0.5 * torch.rand(1, generator=g)
            sd[f"ks.{j}"] = 1 - lam if family == "in_resnet" else lam
    _bn(sd, "bn", 64 * exp, g)
    sd["fc.weight"] = 0.1 * torch.randn(num_classes, 64 * exp, generator=g)
    sd["fc.bias"] = 0.1 * torch.randn(num_classes, generator=g)
    # Running statistics of a random batch, so activations keep a healthy scale and the
    # logits depend on the input (random statistics would wash it out at depth 164).
    batch = torch.randn(8, 3, 32, 32, generator=g)
    reference_forward(sd, batch, bottleneck=bottleneck, n=n, family=family, calibrate=True)
    return sd


def reference_forward(sd, x, *, bottleneck, n, family, calibrate=False):
    """Their forward pass in eval mode, on normalised input, from the key names alone.

    With `calibrate`, BatchNorm runs in training mode and sets the running statistics to
    those of the batch x (momentum 1).
    """

    def bn(prefix, h):
        w, b = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
        mean, var = sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]
        return F.batch_norm(h, mean, var, w, b, training=calibrate, momentum=1.0, eps=1e-5)

    def f(i, h, stride):
        p = f"blocks.{i}"
        if bottleneck:
            h = F.conv2d(F.relu(bn(f"{p}.bn1", h)), sd[f"{p}.conv1.weight"])
            h = F.conv2d(F.relu(bn(f"{p}.bn2", h)), sd[f"{p}.conv2.weight"], None, stride, 1)
            return F.conv2d(F.relu(bn(f"{p}.bn3", h)), sd[f"{p}.conv3.weight"])
        h = F.conv2d(F.relu(bn(f"{p}.bn1", h)), sd[f"{p}.conv1.weight"], None, stride, 1)
        return F.conv2d(F.relu(bn(f"{p}.bn2", h)), sd[f"{p}.conv2.weight"], None, 1, 1)

    def down(name, h, stride):
        h = F.relu(bn(f"{name}.downsample.0", h))
        return F.conv2d(h, sd[f"{name}.downsample.2.weight"], None, stride)

    h = F.conv2d(x, sd["conv1.weight"], None, 1, 1)
    for i in range(3 * n):
        if i == 0:
            h = f(0, h, 1) + (down("downsample1", h, 1) if bottleneck else h)
        elif i in (n, 2 * n):
            h = f(i, h, 2) + down("downsample21" if i == n else "downsample31", h, 2)
        elif family == "resnet":
            h = f(i, h, 1) + h
        elif family == "in_resnet":
            h = f(i, h, 1) + (1 - F.relu(1 - sd[f"ks.{i}"])) * h
        else:
            lam = F.relu(sd[f"ks.{i}"])
            h = (1 + lam) * f(i, h, 1) + (1 - lam) * h
    h = F.avg_pool2d(F.relu(bn("bn", h)), 8).flatten(1)
    return F.linear(h, sd["fc.weight"], sd["fc.bias"])


def _normalise(x):
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _our_model(family, *, bottleneck, n):
    block = "bottleneck" if bottleneck else "basic"
    depth = (9 if bottleneck else 6) * n + 2
    return PreActResNet(depth=depth, block=block, blocks_per_stage=n, junction=family)


def _close(ours, theirs):
    # Within 1e-5 of the logit scale (deep random networks give logits in the thousands).
    return (ours - theirs).abs().max() <= 1e-5 * max(1.0, theirs.abs().max().item())


def _pixels():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# --- loading -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["resnet", "in_resnet", "lambda_in_resnet"])
@pytest.mark.parametrize(("bottleneck", "n"), [(False, 3), (True, 2)])
def test_logits_match_the_reference_forward(family, bottleneck, n):
    sd = reference_state_dict(bottleneck=bottleneck, n=n, family=family)
    model = _our_model(family, bottleneck=bottleneck, n=n)
    load_reference(model, sd)
    x = _pixels()
    theirs = reference_forward(sd, _normalise(x), bottleneck=bottleneck, n=n, family=family)
    with torch.no_grad():
        ours = model.eval()(x)
    assert _close(ours, theirs)
    assert not torch.allclose(ours, ours.mean(0))  # a real signal, not a constant output


@pytest.mark.parametrize("name", ["in_resnet164", "lambda_in_resnet20", "resnet110"])
def test_registered_depths_match_the_reference(name):
    model = odenets.create_model(name, num_classes=100)
    bottleneck, n = model.block_type == "bottleneck", len(model.blocks) // 3
    sd = reference_state_dict(bottleneck=bottleneck, n=n, family=model.family, num_classes=100)
    load_reference(model, sd)
    assert model.coefficients().numel() == (0 if model.family == "resnet" else 3 * n - 3)
    # In float64: at depth 164 random weights give logits near 2,000, where float32
    # rounding alone (a fused multiply-add against a multiply and an add) moves them by ~0.5%.
    sd64 = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    x = _pixels().double()
    theirs = reference_forward(sd64, _normalise(x), bottleneck=bottleneck, n=n, family=model.family)
    with torch.no_grad():
        ours = model.double().eval()(x)
    assert (ours - theirs).abs().max() <= 1e-9 * theirs.abs().max()


def test_coefficients_read_from_ks():
    sd = reference_state_dict(bottleneck=False, n=3, family="in_resnet")
    model = odenets.create_model("in_resnet20")
    load_reference(model, sd)
    interpolating = [1, 2, 4, 5, 7, 8]
    expected = torch.cat([F.relu(1 - sd[f"ks.{i}"]) for i in interpolating])
    assert torch.equal(model.coefficients(), expected)


def test_unused_entries_are_optional_and_ignored():
    sd = reference_state_dict(bottleneck=False, n=3, family="in_resnet")
    model = odenets.create_model("in_resnet20").eval()
    load_reference(model, sd)
    x = _pixels()
    expected = model(x)
    changed = {k: v for k, v in sd.items() if not k.startswith(("bn1.", "downsample1."))}
    changed = {k: v.reshape(()) if k.startswith("ks.") else v for k, v in changed.items()}
    changed["ks.0"] = torch.tensor(-5.0)  # block 0 does not interpolate
    changed = {k: v for k, v in changed.items() if not k.endswith("num_batches_tracked")}
    other = odenets.create_model("in_resnet20").eval()
    load_reference(other, {f"module.{k}": v for k, v in changed.items()})
    assert torch.equal(other(x), expected)


# --- errors leave the model unchanged ------------------------------------------------------


def _broken(kind):
    sd = reference_state_dict(bottleneck=False, n=3, family="in_resnet")
    if kind == "missing":
        del sd["blocks.4.conv2.weight"], sd["ks.5"]
        return sd, ["blocks.4.conv2.weight", "ks.5", "missing"]
    if kind == "unexpected":
        sd["blocks.9.conv1.weight"] = torch.zeros(16, 16, 3, 3)
        sd["ks.9"] = torch.zeros(1)
        return sd, ["blocks.9.conv1.weight", "ks.9", "unexpected"]
    sd["fc.weight"] = torch.zeros(100, 64)
    return sd, ["fc.weight", "(100, 64)", "(10, 64)", "shape"]


@pytest.mark.parametrize("kind", ["missing", "unexpected", "shape"])
def test_mismatch_raises_and_loads_nothing(kind):
    sd, words = _broken(kind)
    model = odenets.create_model("in_resnet20")
    before = _snapshot(model)
    with pytest.raises(CheckpointError) as err:
        load_reference(model, sd)
    for word in words:
        assert word in str(err.value)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_family_mismatch_raises():
    resnet_sd = reference_state_dict(bottleneck=False, n=3, family="resnet")
    with pytest.raises(CheckpointError, match="missing keys: ks.1"):
        load_reference(odenets.create_model("in_resnet20"), resnet_sd)
    in_sd = reference_state_dict(bottleneck=False, n=3, family="in_resnet")
    with pytest.raises(CheckpointError, match="unexpected keys: ks.0"):
        load_reference(odenets.create_model("resnet20"), in_sd)
    with pytest.raises(CheckpointError, match="in_resnet_gating"):
        load_reference(odenets.create_model("in_resnet_gating20"), in_sd)


# --- export ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "bottleneck", "n"),
    [("resnet20", False, 3), ("in_resnet20", False, 3), ("lambda_in_resnet164", True, 18)],
)
def test_export_has_their_keys_and_round_trips(name, bottleneck, n):
    model = odenets.create_model(name).eval()
    exported = export_reference(model)
    layout = reference_state_dict(bottleneck=bottleneck, n=n, family=model.family)
    assert set(exported) == set(layout)
    assert all(exported[k].shape == layout[k].shape for k in layout)
    x = _pixels()
    theirs = reference_forward(
        exported, _normalise(x), bottleneck=bottleneck, n=n, family=model.family
    )
    with torch.no_grad():
        assert _close(model(x), theirs)
    other = odenets.create_model(name).eval()
    load_reference(other, exported)
    assert torch.equal(other(x), model(x))
