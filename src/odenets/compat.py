"""Checkpoints of the In-ResNet authors' code, loaded into our models and written back.

Their CIFAR networks (classes `ResNet` and `InResNet`) keep these state_dict keys:

    conv1.weight                                 stem (3x3, no BN after it)
    blocks.{i}.bn1/conv1/bn2/conv2(/bn3/conv3).* residual function f of block i
    downsample1.downsample.{0,2}.*               projection 16 -> 64 before the first
                                                 bottleneck block (0 = BN, 2 = 1x1 conv);
                                                 present but unused in basic networks
    downsample21.*, downsample31.*               projections into stages 2 and 3
    downsample22.*, downsample32.*               unused (baseline `ResNet` only)
    bn.*, fc.*                                   head
    bn1.*                                        unused
    ks.{i}                                       raw coefficient of block i, i = 0..B-1
                                                 (`InResNet` only; read for interpolating
                                                 blocks, the others are unused)

`ks` is stored in the raw form of the variant: In-ResNet λ = ReLU(1 - k), λ-In-ResNet
λ = ReLU(k); our junctions keep the same raw `k`, so values copy unchanged. Their networks
take normalised input; ours take pixels in [0, 1] and normalise inside with the same CIFAR
constants, so after loading `model(pixels)` equals their `net(normalise(pixels))`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from odenets.errors import CheckpointError

# Families whose checkpoints the authors' code can write.
REFERENCE_FAMILIES = ("resnet", "in_resnet", "lambda_in_resnet")
# Their projection shortcuts in network order; basic networks use only the last two.
_PROJECTION_NAMES = ("downsample1", "downsample21", "downsample31")
# Keys their classes hold but never use in forward.
_UNUSED_PREFIXES = ("bn1.", "downsample22.", "downsample32.")
_RULES = (  # (our key pattern, their key template); {name} is the projection's name
    (re.compile(r"stem\.(.+)"), "conv1.{0}"),
    (re.compile(r"norm\.(.+)"), "bn.{0}"),
    (re.compile(r"fc\.(.+)"), "fc.{0}"),
    (re.compile(r"blocks\.(\d+)\.f\.(.+)"), "blocks.{0}.{1}"),
    (re.compile(r"blocks\.(\d+)\.shortcut\.bn\.(.+)"), "{name}.downsample.0.{1}"),
    (re.compile(r"blocks\.(\d+)\.shortcut\.conv\.(.+)"), "{name}.downsample.2.{1}"),
    (re.compile(r"blocks\.(\d+)\.junction\.k"), "ks.{0}"),
)


def reference_keys(model: nn.Module) -> dict[str, str]:
    """Map the authors' key of every entry of `model.state_dict()` to ours.

    Raises:
        CheckpointError: the model's family has no counterpart in the authors' code.
    """
    family = getattr(model, "family", None)
    if family not in REFERENCE_FAMILIES:
        raise CheckpointError(
            f"the authors' checkpoint layout covers the families {REFERENCE_FAMILIES}; "
            f"got a model of family {family!r}"
        )
    projected = [str(i) for i, b in enumerate(model.blocks) if b.shortcut is not None]
    names = dict(zip(projected, _PROJECTION_NAMES[-len(projected) :], strict=True))
    mapping = {}
    for ours in model.state_dict():
        for pattern, template in _RULES:
            match = pattern.fullmatch(ours)
            if match:
                groups = match.groups()
                mapping[template.format(*groups, name=names.get(groups[0], ""))] = ours
                break
        else:
            raise CheckpointError(f"no reference key for {ours!r} (family {family!r})")
    return mapping


def _is_unused(key: str, model: nn.Module, mapping: Mapping[str, str]) -> bool:
    if key.startswith(_UNUSED_PREFIXES):
        return True
    if key.startswith("downsample1.") and model.blocks[0].shortcut is None:
        return True  # basic networks build downsample1 but never call it
    # `ks` of the blocks that do not interpolate (first block, projection blocks).
    match = re.fullmatch(r"ks\.(\d+)", key)
    has_ks = any(k.startswith("ks.") for k in mapping)
    return has_ks and match is not None and int(match.group(1)) < len(model.blocks)


def _shape_error(key: str, theirs: torch.Tensor, mine: torch.Tensor) -> str | None:
    # A raw coefficient may be stored as shape (1,) or as a scalar.
    if theirs.shape == mine.shape or theirs.numel() == mine.numel() == 1:
        return None
    return f"{key}: checkpoint {tuple(theirs.shape)} vs model {tuple(mine.shape)}"


def load_reference(model: nn.Module, state_dict: Mapping[str, torch.Tensor] | nn.Module) -> None:
    """Load a state_dict saved from the authors' code into `model`, in place.

    Every key is checked before anything is copied, so on error the model is unchanged.
    BatchNorm `num_batches_tracked` entries may be absent (older PyTorch): ours are kept.

    Args:
        model: a network of a family in `REFERENCE_FAMILIES` with the same depth and
            classes as the checkpoint, e.g. ``create_model("in_resnet110")``.
        state_dict: their `net.state_dict()` (a leading "module." from DataParallel is
            stripped), or their network itself.

    Raises:
        CheckpointError: listing missing keys, unexpected keys and shape mismatches.
    """
    if isinstance(state_dict, nn.Module):
        state_dict = state_dict.state_dict()
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    mapping = reference_keys(model)
    ours = model.state_dict()
    missing = [k for k in mapping if k not in state_dict and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in mapping and not _is_unused(k, model, mapping)]
    mismatched = [
        error
        for k, v in state_dict.items()
        if k in mapping and (error := _shape_error(k, v, ours[mapping[k]])) is not None
    ]
    if missing or unexpected or mismatched:
        problems = [
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ]
        detail = "; ".join(f"{what}: {', '.join(keys)}" for what, keys in problems if keys)
        raise CheckpointError(
            f"state_dict does not match the reference layout of {type(model).__name__} "
            f"(family {model.family!r}, depth {model.depth}): {detail}"
        )
    new = {
        mine: state_dict[theirs].reshape(ours[mine].shape) if theirs in state_dict else ours[mine]
        for theirs, mine in mapping.items()
    }
    model.load_state_dict(new, strict=True)


def export_reference(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the authors' keys, complete for their class.

    The unused entries their classes hold are filled with neutral values: `bn1` as a fresh
    BatchNorm, the unused projections as zeros, `ks` of non-interpolating blocks as the raw
    value of λ = 0. The result loads into their `ResNet` (family "resnet") or `InResNet`.
    """
    mapping = reference_keys(model)
    ours = model.state_dict()
    out = {theirs: ours[mine].detach().clone() for theirs, mine in mapping.items()}
    out.update(_batchnorm("bn1", model.stem.out_channels))
    expansion = model.num_features // 64  # their stage widths are 16, 32, 64 (x4)
    if model.blocks[0].shortcut is None:
        out.update(_projection("downsample1", 16, 64))
    if model.family == "resnet":
        out.update(_projection("downsample22", 16 * expansion, 32 * expansion))
        out.update(_projection("downsample32", 32 * expansion, 64 * expansion))
    else:
        neutral = 1.0 if model.family == "in_resnet" else 0.0  # raw k of λ = 0
        for i in range(len(model.blocks)):
            out.setdefault(f"ks.{i}", torch.full((1,), neutral))
    return out


def _batchnorm(prefix: str, channels: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in nn.BatchNorm2d(channels).state_dict().items()}


def _projection(name: str, in_chs: int, out_chs: int) -> dict[str, torch.Tensor]:
    bn = _batchnorm(f"{name}.downsample.0", in_chs)
    return {**bn, f"{name}.downsample.2.weight": torch.zeros(out_chs, in_chs, 1, 1)}
