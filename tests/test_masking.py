"""Gradient masking: a network whose gradient is masked on purpose (exact forward, zero
backward) is broken by the gradient-free Square but not by PGD, and the masking verdict
flags it and not a plain ResNet; transfer from a model to itself equals white-box; the
evidence merges over shards; robust accuracy ANDs clean correctness."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from _robustness_models import TinyNet, digits, train_tiny
from torch import nn

import odenets
from odenets.models.base import OdeNet
from odenets.robustness import evaluate, merge_shards, shard_slice
from odenets.robustness.masking import (
    diagnose_gradient,
    diagnostics,
    same_depth_resnet,
    verdict,
)

NEEDS_PACKAGE = 'pip install -e ".[autoattack]"'


def _package():
    return pytest.importorskip("pyautoattack", reason=f"needs pyautoattack: {NEEDS_PACKAGE}")


class _ZeroGradient(torch.autograd.Function):
    """Identity forward, zero backward: what a non-differentiable input stage looks like."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class MaskedGradient(nn.Module):
    """`net` with its input gradient masked: the predictions are exactly the network's."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.model_name = "masked-" + net.model_name
        self.family, self.depth = net.family, getattr(net, "depth", None)

    def forward(self, x):
        return self.net(_ZeroGradient.apply(x))


@functools.lru_cache(maxsize=1)
def _tiny():
    return train_tiny()


@functools.lru_cache(maxsize=1)
def _resnet():
    """A ResNet-20 trained for a few seconds on the digits (full-batch Adam)."""
    torch.manual_seed(0)
    model = odenets.create_model("resnet20", in_chans=1, num_classes=10)
    x, y = digits("train")
    x, y = x[:600], y[:600]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def data():
    x, y = digits("test")
    return x[:60], y[:60]


def test_masked_wrapper_is_exact_forward_and_zero_backward(data):
    x, _ = data
    masked = MaskedGradient(_tiny())
    with torch.no_grad():
        assert torch.equal(masked(x), _tiny()(x))
    z = x.clone().requires_grad_(True)
    masked(z).sum().backward()
    assert torch.count_nonzero(z.grad) == 0


def _masking_eval(model, x, y, eps=0.15, steps=10, **kw):
    _package()
    return evaluate(
        model,
        x,
        y,
        attacks=("fgsm", "pgd", "square"),
        eps_list=(eps,),
        attack_options={"pgd": {"steps": steps}, "square": {"queries": 500}},
        batch_size=60,
        **kw,
    )


def _acc(res, name):
    return next(a["accuracy"] for a in res["attacks"] if a["name"] == name)


def test_square_breaks_a_masked_gradient_that_pgd_does_not(data):
    x, y = data
    res = _masking_eval(MaskedGradient(_tiny()), x, y)
    clean, pgd, square = res["clean"], _acc(res, "pgd"), _acc(res, "square")
    assert pgd >= clean - 0.05  # PGD only moves by its random start
    assert square <= pgd - 0.3  # the gradient-free attack is not fooled
    beyond = res["masking"]["beyond_white_box"][0]
    assert beyond["white_box"] == ["fgsm", "pgd"] and beyond["black_box"] == ["square"]
    assert beyond["black_box_only"] >= round((pgd - square) * len(x))
    diags = {d["name"]: d for d in res["masking"]["diagnostics"]}
    assert diags["black_box_beats_white_box"]["flag"] is True
    assert "broke" in diags["black_box_beats_white_box"]["detail"]
    assert diags["gradient_norm"]["flag"] is True  # median exactly 0
    assert diags["accuracy_reaches_zero"]["flag"] is True  # ε = 1 cannot move either
    assert res["masking"]["verdict"]["masking_suspected"]
    assert "gradient masking suspected" in odenets.robustness.format_table(res)


@pytest.mark.parametrize("name", ["tiny", "resnet20"])
def test_verdict_does_not_flag_plain_networks(data, name):
    x, y = data
    model = _tiny() if name == "tiny" else _resnet()
    res = _masking_eval(model, x, y, eps=0.08, steps=20)
    assert res["clean"] > 0.6
    diags = {d["name"]: d for d in res["masking"]["diagnostics"]}
    assert diags["black_box_beats_white_box"]["flag"] is False, diags
    assert diags["accuracy_reaches_zero"]["flag"] is False, diags
    assert diags["pgd_converged"]["flag"] is False, diags
    assert diags["gradient_norm"]["flag"] is None  # nothing to compare it with
    assert res["masking"]["grad_norm"]["median"] > 0
    assert not res["masking"]["verdict"]["masking_suspected"]


def test_gradient_norm_is_compared_with_a_resnet_of_the_same_depth():
    resnet = {"median": 2.0, "n": 10, "families": ["resnet"], "depths": [110]}
    same = {"median": 0.01, "n": 10, "families": ["in_resnet"], "depths": [110]}
    other_depth = {**same, "depths": [20]}
    ref = same_depth_resnet(same, [("ResNet-110", resnet)])
    assert ref["label"] == "ResNet-110"
    assert same_depth_resnet(other_depth, [("ResNet-110", resnet)]) is None
    assert same_depth_resnet(resnet, [("ResNet-110", resnet)]) is None  # itself a ResNet
    # Several evaluations of the ResNet: the one on as many images (the same, nested) wins.
    wider = {**resnet, "median": 3.0, "n": 20}
    assert same_depth_resnet(same, [("all", wider), ("subset", resnet)])["label"] == "subset"
    assert (
        same_depth_resnet({**same, "n": 30}, [("all", wider), ("subset", resnet)])["label"] == "all"
    )
    flagged = diagnose_gradient(same, ref)
    assert flagged["flag"] is True and "200x" in flagged["detail"]
    close = diagnose_gradient({**same, "median": 0.5}, ref)
    assert close["flag"] is False and "4x" in close["detail"]


def test_verdict_names_what_was_not_run():
    res = {"counts": {"eps1": None}, "masking": {}}
    diags = diagnostics(res)
    assert [d["flag"] for d in diags] == [None] * 4
    text = verdict(diags)["text"]
    assert text.startswith("no sign of gradient masking in the diagnostics run (not run:")


def test_transfer_from_the_model_itself_equals_white_box(data):
    x, y = data
    model = _tiny()
    res = evaluate(
        model,
        x,
        y,
        attacks=("pgd", "apgd_ce"),
        eps_list=(0.05, 0.1),
        threat_model=["pixel", "normalized"],
        attack_options={"pgd": {"steps": 5}, "apgd_ce": {"steps": 10}},
        transfer_from=copy.deepcopy(model),
        batch_size=30,
        info={"transfer_from": ["itself"]},
    )
    by = {(a["name"], a["threat_model"], a["eps"]): a for a in res["attacks"]}
    for (name, tm, eps), entry in by.items():
        if name.startswith("transfer_"):
            white = by[(name.removeprefix("transfer_"), tm, eps)]
            assert entry["kind"] == "transfer" and entry["source"] == ["itself"]
            assert entry["correct"] == white["correct"], (name, tm, eps)
    assert len(by) == 2 * 2 * 4
    for row in res["masking"]["beyond_white_box"]:
        assert row["transfer_only"] == 0 and row["transfer"] == ["transfer_pgd", "transfer_apgd_ce"]
    # a weaker surrogate transfers worse than white-box
    weak = evaluate(
        model, x, y, attacks=("pgd",), eps_list=(0.1,), attack_options={"pgd": {"steps": 5}},
        transfer_from=TinyNet().eval(), transfer_attacks=("pgd",), batch_size=30,
    )  # fmt: skip
    pgd, transfer = (a["accuracy"] for a in weak["attacks"])
    assert transfer > pgd


def test_masking_evidence_merges_over_shards(data):
    x, y = data
    kw = dict(
        attacks=("fgsm", "pgd"),
        eps_list=(0.05, 0.1),
        attack_options={"pgd": {"steps": 4}},
        transfer_from=TinyNet().eval(),
        transfer_attacks=("fgsm",),
        batch_size=20,
    )
    whole = evaluate(_tiny(), x, y, **kw)
    shards = []
    for i in range(2):
        start, stop = shard_slice(len(x), i, 2)
        shard = {"index": i, "count": 2, "start": start, "stop": stop, "total": len(x)}
        shards.append(
            evaluate(
                _tiny(),
                x[start:stop],
                y[start:stop],
                indices=torch.arange(start, stop),
                info={"shard": shard},
                **kw,
            )  # fmt: skip
        )
    assert "values" in shards[0]["masking"]["grad_norm"]
    assert "values" not in whole["masking"]["grad_norm"]
    merged = merge_shards(shards)
    for key in ("beyond_white_box", "pgd_steps"):
        assert merged["masking"][key] == whole["masking"][key]
    grad_m, grad_w = merged["masking"]["grad_norm"], whole["masking"]["grad_norm"]
    for key in ("n", "median", "q25", "q75"):
        assert math.isclose(grad_m[key], grad_w[key], rel_tol=1e-6), key
    assert merged["masking"]["verdict"] == whole["masking"]["verdict"]


class _Sine(OdeNet):
    """logits (sin(20 m), 0) with m the mean pixel: a large FGSM step can carry a
    misclassified image across a period of the sine, into the correct class."""

    def __init__(self):
        super().__init__(in_chans=1, mean=(0.0,), std=(1.0,))
        self.model_name = "sine"

    def forward_features(self, x):
        return x.flatten(1).mean(dim=1, keepdim=True)

    def head(self, f):
        return torch.cat([torch.sin(20 * f), torch.zeros_like(f)], dim=1)


def test_robust_only_if_clean_correct_too():
    # m = (π + 0.1) / 20: sin < 0, class 1 wins, the label is 0 (wrong); FGSM at ε = 0.25
    # raises m to 0.412, where sin(20 m) > 0: the attacked image is classified correctly.
    x = torch.full((1, 1, 2, 2), (math.pi + 0.1) / 20)
    y = torch.tensor([0])
    model = _Sine().eval()
    fgsm = odenets.robustness.create_attack("fgsm", eps=0.25)
    assert model(fgsm(model, x, y)).argmax(1).item() == 0  # the attack "fixes" it
    res = evaluate(model, x, y, attacks=("fgsm",), eps_list=(0.25,), checks=False, masking=False)
    assert res["clean"] == 0.0
    assert res["attacks"][0]["correct"] == 0 and res["worst_case"][0]["correct"] == 0
