"""The fast path computes what the eager float32 path computes.

torch.compile, channels_last and bf16 autocast only change how the network is evaluated,
so outputs and gradients must agree with eager (up to float reassociation, or within bf16
rounding), and a short training run on the fast path must reach the same accuracy as the
eager run.

The exact comparisons run in float64. In float32 a ReLU input within rounding of 0 can take
the other branch when the summation order changes, which flips a few entries of the
gradient (about 1% of its norm at batch 4): a property of ReLU, not of the fast path. In
float64 rounding is 1e-16, no branch flips, and the paths must agree to near machine
precision, which checks every fused kernel and layout change tightly.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import odenets
from odenets.models.base import to_channels_last
from odenets.models.registry import is_model, register_model
from odenets.models.resnet import PreActResNet
from odenets.training import TrainConfig, fit

MODELS = [
    "in_resnet20",
    "lambda_in_resnet20",
    "in_resnet_gating20",
    "in_resnet_gating_sig20",
    "naisnet1",
]
SMALL = "fastpath_in_resnet14"  # not registered: built here, registered only for `fit`


def _small_in_resnet(**kwargs) -> PreActResNet:
    """The In-ResNet layout with 2 blocks per stage (depth 14; 3 of its 6 blocks
    interpolate): every kind of block of in_resnet20 at two thirds of its compile time."""
    return PreActResNet(depth=14, blocks_per_stage=2, junction="in_resnet", **kwargs)


def fastpath_in_resnet14(**kwargs) -> PreActResNet:
    return _small_in_resnet(**kwargs)


def _model_and_batch(name: str, batch: int = 4, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    if name == SMALL:
        model = _small_in_resnet(num_classes=10)
    elif name == "naisnet1_small":
        model = odenets.create_model("naisnet1", num_classes=10, blocks_per_stage=1)
    else:
        model = odenets.create_model(name, num_classes=10)
    model = model.train().to(dtype)
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 3, 32, 32, generator=gen, dtype=dtype)
    labels = torch.randint(0, 10, (batch,), generator=gen)
    return model, images, labels


def _outputs_and_grads(net, model, images, labels, *, amp: bool = False):
    """Logits and the gradient of every parameter of `model` for one cross-entropy step."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        logits = net(images)
    F.cross_entropy(logits.float(), labels).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return logits.detach().float(), grads


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _assert_grads_close(got: dict, want: dict, rel: float) -> None:
    assert got.keys() == want.keys()
    # Per-tensor relative error; tensors whose reference gradient is tiny compare absolutely
    # against the largest gradient, where float reassociation noise dominates.
    scale = max(float(g.norm()) for g in want.values())
    for name, g in want.items():
        err = float((got[name] - g).norm())
        assert err <= rel * max(float(g.norm()), 1e-3 * scale), (name, err, float(g.norm()))


@pytest.mark.slow
@pytest.mark.parametrize("name", [SMALL, "naisnet1_small"])
def test_compiled_matches_eager(name):
    model, images, labels = _model_and_batch(name, dtype=torch.float64)
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, dynamic=False)
    want_logits, want_grads = _outputs_and_grads(model, model, images, labels)
    got_logits, got_grads = _outputs_and_grads(compiled, twin, images, labels)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-10, atol=1e-10)
    _assert_grads_close(got_grads, want_grads, rel=1e-8)
    # The BatchNorm running statistics are updated identically, too.
    for (n, a), (_, b) in zip(twin.named_buffers(), model.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=n)


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_matches_contiguous(name):
    model, images, labels = _model_and_batch(name, dtype=torch.float64)
    twin = to_channels_last(copy.deepcopy(model))
    want_logits, want_grads = _outputs_and_grads(model, model, images, labels)
    x_cl = images.contiguous(memory_format=torch.channels_last)
    got_logits, got_grads = _outputs_and_grads(twin, twin, x_cl, labels)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-10, atol=1e-10)
    _assert_grads_close(got_grads, want_grads, rel=1e-8)


@pytest.mark.parametrize("name", ["in_resnet20", "naisnet1"])
def test_channels_last_float32_outputs_match(name):
    model, images, labels = _model_and_batch(name)
    twin = to_channels_last(copy.deepcopy(model))
    want_logits, _ = _outputs_and_grads(model, model, images, labels)
    x_cl = images.contiguous(memory_format=torch.channels_last)
    got_logits, _ = _outputs_and_grads(twin, twin, x_cl, labels)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_close_to_float32(name):
    model, images, labels = _model_and_batch(name, batch=8)
    want_logits, want_grads = _outputs_and_grads(model, model, images, labels)
    got_logits, got_grads = _outputs_and_grads(model, model, images, labels, amp=True)
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per operation); over a
    # 20-layer network the logits stay within a few percent.
    assert _rel_err(got_logits, want_logits) < 0.05
    # The whole gradient points the same way as in float32 (single scalars such as one
    # block's λ gradient may be within bf16 noise of 0, so only the whole is compared).
    flat = [torch.cat([g[n].flatten() for n in want_grads]) for g in (got_grads, want_grads)]
    assert F.cosine_similarity(flat[0], flat[1], dim=0) > 0.9
    # Weights, BatchNorm parameters and running statistics stay float32 under autocast.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(b.dtype in (torch.float32, torch.int64) for b in model.buffers())


def test_autocast_runs_convolutions_in_bf16_and_batchnorm_statistics_in_float32():
    model, images, _ = _model_and_batch("in_resnet20")
    seen: dict[str, torch.dtype] = {}

    def record(kind):
        def hook(module, inputs, output):
            seen.setdefault(kind, output.dtype)

        return hook

    model.stem.register_forward_hook(record("conv"))
    model.norm.register_forward_hook(record("bn"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(images)
    assert seen["conv"] == torch.bfloat16
    assert model.norm.running_mean.dtype == torch.float32
    assert model.norm.running_var.dtype == torch.float32
    assert torch.isfinite(model.norm.running_var).all()


@pytest.fixture
def small_registered():
    """The small In-ResNet in the registry (for `fit`) only while a test uses it, so tests
    that walk the whole registry never meet it."""
    from odenets.models import registry

    if not is_model(SMALL):
        register_model(fastpath_in_resnet14)
    yield SMALL
    registry._MODELS.pop(SMALL, None)


@pytest.mark.slow
def test_fast_path_training_reaches_eager_accuracy(tmp_path, small_registered):
    """channels_last + bf16 autocast train to the eager float32 accuracy on digits."""
    common = dict(model=SMALL, dataset="digits", epochs=3, seed=0, progress=False)
    eager = fit(TrainConfig(**common, out=str(tmp_path / "eager"), amp=False, channels_last=False))
    fast = fit(TrainConfig(**common, out=str(tmp_path / "fast"), amp=True, channels_last=True))
    acc_eager = eager.summary["final_test_acc"]
    acc_fast = fast.summary["final_test_acc"]
    assert eager.config["train"]["channels_last"] is False
    assert fast.config["train"]["channels_last"] is True and fast.config["train"]["amp"] is True
    # Ten classes: chance is 0.1. Both runs learn, and they end within run-to-run noise
    # (360 test images: one standard error of an accuracy near 0.9 is about 0.016).
    assert acc_eager > 0.8 and acc_fast > 0.8
    assert abs(acc_fast - acc_eager) < 0.05


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_compiled_step_matches_eager(mode):
    """On CUDA, torch.compile (with CUDA graphs under "reduce-overhead") matches eager."""
    model, images, labels = _model_and_batch("in_resnet20", batch=8)
    model = model.cuda()
    images, labels = images.cuda(), labels.cuda()
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, mode=mode, dynamic=False)
    want_logits, want_grads = _outputs_and_grads(model, model, images, labels)
    for _ in range(3):  # the CUDA graph is recorded on a later call, then replayed
        torch.compiler.cudagraph_mark_step_begin()
        got_logits, got_grads = _outputs_and_grads(compiled, twin, images, labels)
    # TF32 convolutions (the CUDA default) may pick different algorithms in the two paths.
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-2, atol=1e-2)
    _assert_grads_close(got_grads, want_grads, rel=2e-2)
