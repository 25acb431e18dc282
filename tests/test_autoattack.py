"""The official AutoAttack and Square through odenets equal the pyautoattack package called
directly; without the package, a one-line error names the install command."""

from __future__ import annotations

import copy
import functools
import sys

import pytest
import torch
from _robustness_models import digits, train_tiny

import odenets
from odenets.errors import OdenetsError
from odenets.robustness import correct_mask, create_attack, evaluate, format_table

NEEDS_PACKAGE = 'pip install -e ".[autoattack]"'
EPS = 0.06
QUERIES = 300  # Square's queries in the tests (AutoAttack's standard: 5,000)


def _package():
    return pytest.importorskip("pyautoattack", reason=f"needs pyautoattack: {NEEDS_PACKAGE}")


@functools.lru_cache(maxsize=1)
def _tiny():
    return train_tiny()


@pytest.fixture(scope="module")
def data():
    x, y = digits("test")
    return x[:24], y[:24]


def test_autoattack_standard_equals_the_package(data):
    package = _package()
    x, y = data
    model = _tiny()
    direct = package.AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0)
    direct.square.n_queries = QUERIES
    x_adv, y_adv = direct.run_standard_evaluation(x, y, batch_size=len(x))
    robust_direct = (y_adv == y) & (model(x).argmax(1) == y)
    attack = create_attack("autoattack", eps=EPS, seed=0, queries=QUERIES)
    ours = correct_mask(model, x, y, attack=attack, batch_size=len(x))
    assert torch.equal(ours, robust_direct)
    assert 0 < int(ours.sum()) < int((model(x).argmax(1) == y).sum())  # a real test
    record = attack.record()
    assert [s["name"] for s in record["sub_attacks"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    broken = sorted(i for s in record["sub_attacks"] for i in s["broken"])
    clean = model(x).argmax(1) == y
    assert broken == torch.nonzero(clean & ~robust_direct).squeeze(1).tolist()
    assert record["sub_attacks"][-1]["correct"] == int(robust_direct.sum())


def test_autoattack_in_evaluate_records_sub_attacks_and_flags(data):
    _package()
    x, y = data
    res = evaluate(
        _tiny(),
        x,
        y,
        attacks=("apgd_ce", "autoattack"),
        eps_list=(EPS,),
        attack_options={
            "apgd_ce": {"steps": 20},
            "autoattack": {
                "version": "custom",
                "attacks": ["apgd-ce", "apgd-t", "square"],
                "queries": QUERIES,
            },
        },
        batch_size=len(x),
    )
    entry = next(a for a in res["attacks"] if a["name"] == "autoattack")
    assert entry["kind"] == "mixed" and entry["version"] == "custom"
    assert entry["package"].startswith("pyautoattack 0.")
    assert entry["clean_correct"] == res["counts"]["clean"]
    subs = entry["sub_attacks"]
    assert subs[-1]["correct"] == entry["correct"]
    assert [s["correct"] for s in subs] == sorted((s["correct"] for s in subs), reverse=True)
    assert sum(s["broke"] for s in subs) == entry["clean_correct"] - entry["correct"]
    assert isinstance(entry["flags"], list)
    assert {c["name"] for c in res["checks"]} >= {"autoattack_flags"}
    table = format_table(res)
    assert "| autoattack after apgd-ce | pixel |" in table
    assert "autoattack: version custom (apgd-ce, apgd-t, square, Square 300 queries)" in table


def test_square_alone_equals_the_package(data):
    package = _package()
    x, y = data
    model = _tiny()
    direct = package.AutoAttack(
        model, norm="Linf", eps=EPS, version="custom", attacks=["square"], seed=3
    )
    direct.square.n_queries = 100
    _, y_adv = direct.run_standard_evaluation(x, y, batch_size=len(x))
    attack = create_attack("square", eps=EPS, queries=100, seed=3)
    ours = correct_mask(model, x, y, attack=attack, batch_size=len(x))
    assert torch.equal(ours, (y_adv == y) & (model(x).argmax(1) == y))
    assert attack.settings()["queries"] == 100


def test_the_package_does_not_move_the_global_generator(data):
    _package()
    x, y = data
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    create_attack("square", eps=EPS, queries=20, seed=9)(_tiny(), x[:5], y[:5])
    assert torch.equal(torch.rand(3), expected)


def test_bad_autoattack_options_are_refused():
    _package()
    with pytest.raises(ValueError, match="need version 'custom'"):
        create_attack("autoattack", eps=EPS, attacks=["square"])
    with pytest.raises(ValueError, match="unknown AutoAttack sub-attacks"):
        create_attack("autoattack", eps=EPS, version="custom", attacks=["pgd"])
    with pytest.raises(ValueError, match="version must be one of"):
        create_attack("autoattack", eps=EPS, version="fast")


@pytest.mark.parametrize("name", ["autoattack", "square"])
def test_without_the_package_a_one_line_error_names_the_install_command(monkeypatch, name):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # import now fails
    with pytest.raises(OdenetsError) as err:
        create_attack(name, eps=EPS)
    message = str(err.value)
    assert "\n" not in message and 'pip install "odenets[autoattack]"' in message


def test_channels_last_weights_run_apgd_t_and_match_the_standard_layout():
    # channels_last weights give channels_last input gradients, which the package's APGD-T
    # `.view` refuses; our wrapper hands them back in the standard layout.
    _package()
    torch.manual_seed(0)
    standard = odenets.create_model("resnet20").eval()
    wide = copy.deepcopy(standard).to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        y = standard(x).argmax(1)  # clean-correct by construction, so APGD-T runs on both
    results = []
    for model, images in ((standard, x), (wide, x.contiguous(memory_format=torch.channels_last))):
        attack = create_attack("autoattack", eps=EPS, seed=0, version="custom", attacks=["apgd-t"])
        robust = correct_mask(model, images, y, attack=attack, batch_size=len(x))
        results.append((robust, attack.record()["sub_attacks"]))
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]
    assert results[0][1][0]["name"] == "apgd-t"
