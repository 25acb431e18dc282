"""The offline demo: small ResNet, In-ResNet, λ-In-ResNet and NAIS-Net models on the 8x8
digits that ship with scikit-learn, evaluated on clean, noisy and adversarial images, with a
report. It is an ordinary grid (`odenets.experiments.reproduce`) over a preset kept here, so
it is restart-safe like every other grid and its report is written by the same code.

Settings (chosen to keep the demo to a few minutes on two CPU cores; `DEMO_TIME` is the
measured wall time):
- Networks: the ResNet-20 layout (3 stages of 3 blocks, widths 16/32/64) for the ResNet
  family, on 8x8 grey images (the stages see 8x8, 4x4, 2x2); NAIS-Net10 with one block per
  stage, unrolled for 10 tied steps in training; the depth plot unrolls it until its state
  stops changing, which gives a processing depth per image.
- Training: the package's "digits" recipe (no augmentation: a 1-pixel shift is an eighth
  of an 8x8 digit), shortened to `epochs`.
- Attacks: FGSM, IFGSM, PGD and APGD-CE under the pixel threat model, at several radii,
  and their per-sample worst case; the table uses ε = 16/255 (digit images take only 17 grey
  levels, so 8/255 is below one level). APGD-CE takes 20 steps (its default is 100), the
  budget of PGD, which keeps it to seconds per model.
"""

from __future__ import annotations

from typing import Any

from odenets.experiments.jobs import Grid
from odenets.experiments.presets import Preset, parse_preset

TABLE_EPS = 16  # 1/255 units; the first radius of the list is the table's
DEMO_EPS = [16, 4, 8]  # IFGSM / PGD take 20 steps of α = 2.5·ε/20 (1/255 at 8/255)
DEMO_ATTACKS = ["fgsm", "ifgsm", "pgd", "apgd_ce"]
APGD_STEPS = 20  # APGD-CE iterations (its default is 100): PGD's budget
# Wall time of `odenets demo` with its defaults on a 2-core CPU, as measured there (99 s on
# an idle 2-core AMD EPYC with torch 2.13.0+cpu; about half of it is the gradient-masking
# evidence, PGD with 5x the steps and with 3 restarts); the demo prints it and the README
# repeats it.
DEMO_TIME = "about 100 seconds"


def demo_preset(*, epochs: int, quick_epochs: int = 2, limit: int = 0) -> Preset:
    """The demo's preset: scale "demo" is the full demo, "smoke" a run of seconds for tests."""

    def scale(n_epochs: int, eps: list[int], test_limit: int, **train) -> dict[str, Any]:
        return {
            "train": {"epochs": n_epochs, "recipe": "digits", **train},
            "evaluate": {
                "attacks": DEMO_ATTACKS,
                "apgd_steps": APGD_STEPS,
                "eps": eps,
                "noise": True,
                "limit": test_limit,
            },
        }

    data = {
        "name": "demo",
        "description": "offline demo on the 8x8 digits: ResNet, In-ResNet, λ-In-ResNet, NAIS-Net",
        "table": "",
        "datasets": ["digits"],
        "seeds": 1,
        "scale": {
            "demo": scale(epochs, DEMO_EPS, limit),
            # A smoke run: 300 training images, 60 test images, the table's radius only.
            "smoke": scale(quick_epochs, [TABLE_EPS], limit or 60, train_limit=300),
        },
        "rows": [
            {"key": "resnet20", "label": "ResNet-20", "model": "resnet20"},
            {"key": "in_resnet20", "label": "In-ResNet-20", "model": "in_resnet20"},
            {"key": "lambda_in_resnet20", "label": "λ-In-ResNet-20", "model": "lambda_in_resnet20"},
            # One NAIS block per stage keeps its cost near ResNet-20's (3 x 10 steps).
            {
                "key": "naisnet10",
                "label": "NAIS-Net10",
                "model": "naisnet10",
                "kwargs": {"blocks_per_stage": 1},
            },
        ],
    }
    return parse_preset(data, source="demo")


def demo_grid(*, quick: bool = False, epochs: int = 10) -> Grid:
    """The grid `odenets demo` runs: one seed of each model on the digits."""
    return Grid(preset=demo_preset(epochs=epochs), scale="smoke" if quick else "demo")
