"""Fast-path fallbacks: a feature that fails on first use gives way to a safer configuration.

The failures are real: inductor is pointed at a C++ compiler that does not exist (with its
caches off, so nothing compiled earlier hides the failure), and CUDA graphs are asked for
on a CPU. The run must finish with the weights of a run that never asked for the feature,
warn once naming the feature and the cause, and record what ran in config.json.
"""

from __future__ import annotations

import logging

import pytest
import torch

from odenets.checkpoint import load_safetensors, read_json
from odenets.training import fit
from tests.test_training import tiny_config, tiny_net_registered


@pytest.fixture(autouse=True, scope="module")
def _tiny_net():
    with tiny_net_registered():
        yield


def _weights(run) -> dict[str, torch.Tensor]:
    return load_safetensors(run.path / "final.safetensors")[0]


def _fallback_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "failed (" in r.getMessage()]


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eager")
    return fit(tiny_config(tmp, epochs=2, compile=False, amp=False))


def test_compile_with_a_broken_compiler_falls_back_to_eager(tmp_path, eager_run, caplog):
    import torch._inductor.config as inductor_config

    # inductor's own patch, which restores its settings on exit (a monkeypatch of the config
    # module left force_disable_caches deleted: every later compile in the process failed).
    broken = {"cpp.cxx": (str(tmp_path / "no-such-c++"),), "force_disable_caches": True}
    with inductor_config.patch(broken):
        with caplog.at_level(logging.WARNING, logger="odenets"):
            run = fit(tiny_config(tmp_path, epochs=2, compile=True, amp=False))
    torch._dynamo.reset()
    lines = _fallback_lines(caplog)
    assert len(lines) == 1, lines
    assert lines[0].startswith("compile failed (") and "C++ compiler" in lines[0]
    assert "continuing with float32, eager" in lines[0]
    config = read_json(run.path / "config.json")
    assert config["train"]["compile"] is True  # what was asked for
    fast = config["fast_path"]  # what ran
    assert (fast["compile"], fast["cuda_graphs"], fast["amp"]) == (False, False, False)
    assert [f["feature"] for f in fast["fallbacks"]] == ["compile"]
    assert run.summary["status"] == "finished"
    want = _weights(eager_run)
    got = _weights(run)
    assert got.keys() == want.keys()
    for name in want:  # the failed step was redone eagerly from the same state: exact
        assert torch.equal(got[name], want[name]), name


def test_cuda_graphs_off_by_default_and_dropped_without_cuda(tmp_path, eager_run, caplog):
    assert read_json(eager_run.path / "config.json")["fast_path"] == {
        "amp": False,
        "compile": False,
        "cuda_graphs": False,
        "fallbacks": [],
    }
    with caplog.at_level(logging.WARNING, logger="odenets"):
        run = fit(tiny_config(tmp_path, epochs=2, compile=False, amp=False, cuda_graphs=True))
    lines = _fallback_lines(caplog)
    assert lines == [
        "cuda_graphs failed (needs a CUDA device; got cpu); continuing with float32, eager"
    ]
    fast = read_json(run.path / "config.json")["fast_path"]
    assert fast["cuda_graphs"] is False
    assert fast["fallbacks"] == [
        {"feature": "cuda_graphs", "cause": "needs a CUDA device; got cpu"}
    ]
    for name, w in _weights(eager_run).items():
        assert torch.equal(_weights(run)[name], w), name


def test_an_error_that_is_no_fast_path_failure_propagates(tmp_path):
    from odenets.models.registry import create_model

    cls = type(create_model("tiny_net"))
    cls.calls, cls.crash_at = 0, 3
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            fit(tiny_config(tmp_path, epochs=1, compile=False, amp=False))
    finally:
        cls.crash_at = None
    assert "fallbacks" in read_json(tmp_path / "run" / "config.json")["fast_path"]
