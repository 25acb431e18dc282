"""The official AutoAttack (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks") and its gradient-free member,
Square (Andriushchenko et al., ECCV 2020), run by the PyPI package ``pyautoattack`` (the
packaged fra31/auto-attack code) behind the odenets attack interface. Optional extra:
``pip install "odenets[autoattack]"``.

- ``autoattack``: version ``standard`` (APGD-CE, APGD-T, FAB-T, Square; L∞), ``plus``,
  ``rand`` (APGD-CE and APGD-DLR averaged over 20 draws, for randomised defences) or
  ``custom`` with the sub-attacks given (`SUB_ATTACKS`).
- ``square``: Square alone, with AutoAttack's settings (p_init 0.8, one restart, margin
  loss) and a configurable number of queries (5,000 by default).

How it runs: each sub-attack is run by the package on the samples that every earlier one
failed to break, in the package's order, as `AutoAttack.run_standard_evaluation` runs them;
one call of the package per sub-attack lets odenets record which samples each one broke.
With the whole batch in one call (the package's `batch_size` is the batch's size) the robust
set is the package's own for that batch. The package seeds torch's global generator at each
sub-attack; odenets restores the generator afterwards. Its draws are keyed on its seed and
the batch, not on each sample, so unlike odenets' own attacks its result depends on the
batch size (and on shards). Its sanity flags (warnings on its "auto-attack" logger, and its
check that Square did not beat the gradient attacks) are kept with the result.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch

from odenets.errors import OdenetsError
from odenets.robustness.base import Attack, Space, register_attack

INSTALL = 'pip install "odenets[autoattack]" (or pip install "pyautoattack>=0.2,<0.3")'
VERSIONS = ("standard", "plus", "rand", "custom")
SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
BLACK_BOX_SUB_ATTACKS = ("square",)  # the others follow the gradient
DEFAULT_QUERIES = 5000  # Square's queries in AutoAttack's standard version
PACKAGE_LOGGER = "auto-attack"


def load_package():
    """The `pyautoattack` module, or an error that names the install command."""
    try:
        import pyautoattack
    except ImportError as err:
        raise OdenetsError(
            f"the autoattack and square attacks need the optional package pyautoattack: {INSTALL}"
        ) from err
    return pyautoattack


class _PackageAttack(Attack):
    """An attack run by pyautoattack; records, over every batch it attacks, the clean-correct
    samples, those each sub-attack broke (indices in the evaluation set) and the package's
    sanity flags (`record()`)."""

    stops_early = True  # each attack of the package goes on only with the samples not broken

    def __init__(self, *, eps: float, threat_model: str = "pixel", seed: int = 0, dtype=None):
        super().__init__(
            eps=eps, threat_model=threat_model, seed=seed, dtype=dtype or torch.float32
        )
        self.package = load_package()
        self.seen = 0
        self.clean_correct = 0
        self.broken: dict[str, list[int]] = {name: [] for name in self.sub_attacks}
        self.flags: list[str] = []

    sub_attacks: tuple[str, ...] = ()

    def adversary(self, space: Space, device: torch.device):
        """The package's `AutoAttack` object for the network in the threat model's space."""
        raise NotImplementedError

    @staticmethod
    def forward(space: Space):
        """z -> logits as the package calls it; input gradients come back in the standard
        layout (channels_last weights would otherwise give channels_last gradients, which
        the package's `.view` calls refuse)."""
        return lambda z: space.logits(_StandardLayoutGrad.apply(z))

    def perturb(self, space: Space, z, labels, indices):
        adversary = self.adversary(space, z.device)
        devices = [z.device] if z.device.type == "cuda" else []
        with (
            _package_flags(self.flags),
            torch.random.fork_rng(devices=devices),
            _frozen(space.model),
        ):
            with torch.no_grad():
                robust = space.logits(z).argmax(1) == labels  # (N,) clean-correct
            accuracy = {"clean": robust.float().mean().item()}
            self.seen += len(z)
            self.clean_correct += int(robust.sum())
            adv = z.clone()
            for name in self.sub_attacks:
                todo = robust.nonzero().squeeze(1)
                if len(todo) == 0:
                    break
                adversary.attacks_to_run = [name]
                # Standard-layout inputs too: the package sums gradients into `zeros_like`
                # of the images, so channels_last images give channels_last gradient buffers,
                # which its `.view` calls refuse.
                x_adv, y_adv = adversary.run_standard_evaluation(
                    z[todo].contiguous(), labels[todo], batch_size=len(z)
                )
                broke = y_adv != labels[todo]
                hit = todo[broke]
                adv[hit] = x_adv[broke].to(adv.dtype)
                robust[hit] = False
                self.broken[name] += indices[hit.cpu()].tolist()
                accuracy[name] = robust.float().mean().item()
            # The package checks Square against the other sub-attacks after a joint run.
            self.package.checks.check_square_sr(accuracy, logger=adversary.logger)
        return adv

    def record(self) -> dict:
        """What eval.json keeps beside the accuracy: per sub-attack (in order) the samples it
        broke and the robust count after it, the clean-correct count, the package's flags."""
        subs, correct = [], self.clean_correct
        for name in self.sub_attacks:
            correct -= len(self.broken[name])
            subs.append(
                {
                    "name": name,
                    "kind": "black-box" if name in BLACK_BOX_SUB_ATTACKS else "white-box",
                    "broke": len(self.broken[name]),
                    "broken": sorted(self.broken[name]),
                    "correct": correct,
                    "n": self.seen,
                    "accuracy": correct / self.seen if self.seen else float("nan"),
                }
            )
        return {
            "package": f"pyautoattack {self.package.__version__}",
            "clean_correct": self.clean_correct,
            "sub_attacks": subs,
            "flags": list(dict.fromkeys(self.flags)),
        }


@register_attack("autoattack")
class AutoAttack(_PackageAttack):
    """The official AutoAttack, L∞ (see the module docstring).

    Args:
        eps: radius (threat-model units, in [0, 1]).
        version: "standard" (APGD-CE, APGD-T, FAB-T, Square), "plus", "rand" or "custom".
        attacks: the sub-attacks of the "custom" version, in order (`SUB_ATTACKS`).
        queries: Square's queries (None: the version's, 5,000).
    """

    title = "AutoAttack"
    category = "mixed"
    kind = "mixed"
    options = {"version": "autoattack_version", "attacks": "autoattack_attacks"}

    def __init__(
        self,
        *,
        eps: float,
        version: str = "standard",
        attacks: Sequence[str] | None = None,
        queries: int | None = None,
        threat_model: str = "pixel",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        if version not in VERSIONS:
            raise ValueError(f"AutoAttack version must be one of {VERSIONS}; got {version!r}")
        if version == "custom":
            if not attacks:
                raise ValueError(
                    f"AutoAttack version 'custom' needs its sub-attacks, some of {SUB_ATTACKS}"
                )
            unknown = [a for a in attacks if a not in SUB_ATTACKS]
            if unknown:
                raise ValueError(
                    f"unknown AutoAttack sub-attacks {unknown}; accepted: {', '.join(SUB_ATTACKS)}"
                )
        elif attacks:
            raise ValueError(
                f"AutoAttack sub-attacks ({', '.join(attacks)}) need version 'custom'; "
                f"version {version!r} fixes its own"
            )
        if queries is not None and queries < 1:
            raise ValueError(f"queries must be >= 1; got {queries}")
        self.version = version
        self.queries = queries
        package = load_package()
        probe = package.AutoAttack(lambda x: x, norm="Linf", eps=eps, version=version,
                                   attacks=list(attacks) if attacks else None)  # fmt: skip
        self.sub_attacks = tuple(probe.attacks_to_run)
        self._queries = probe.square.n_queries if queries is None else int(queries)
        super().__init__(eps=eps, threat_model=threat_model, seed=seed, dtype=dtype)

    def settings(self) -> dict:
        return {
            "eps": self.eps,
            "steps": None,
            "alpha": None,
            "restarts": None,
            "version": self.version,
            "attacks": list(self.sub_attacks),
            "queries": self._queries if "square" in self.sub_attacks else None,
        }

    def cost(self) -> float:
        """Forward-pass equivalents per image if every sub-attack ran on it (the package
        runs each only on the images still robust): 100 steps of APGD, 9 targets of the
        targeted attacks, Square's queries."""
        steps = {"apgd-ce": 100, "apgd-dlr": 100, "apgd-t": 900, "fab": 100, "fab-t": 900}
        grads = sum(steps.get(a, 0) for a in self.sub_attacks)
        return 3.0 * grads + float(self._queries if "square" in self.sub_attacks else 0) + 1.0

    def adversary(self, space: Space, device: torch.device):
        attacks = list(self.sub_attacks) if self.version == "custom" else None
        adversary = self.package.AutoAttack(
            self.forward(space),
            norm="Linf",
            eps=self.eps,
            version=self.version,
            attacks=attacks,
            seed=self.seed,
            device=device,
        )
        adversary.square.n_queries = self._queries
        return adversary


@register_attack("square")
class Square(_PackageAttack):
    """Square (gradient-free, random square-shaped updates of the L∞ perturbation), as
    AutoAttack runs it (margin loss, p_init 0.8, one restart).

    Args:
        eps: radius (threat-model units, in [0, 1]).
        queries: model queries per sample (5,000, as in AutoAttack's standard version).
    """

    title = "Square"
    category = "gradient-free"
    kind = "black-box"
    options = {"queries": "square_queries"}
    sub_attacks = ("square",)

    def __init__(
        self,
        *,
        eps: float,
        queries: int = DEFAULT_QUERIES,
        threat_model: str = "pixel",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        if queries < 1:
            raise ValueError(f"queries must be >= 1; got {queries}")
        self.queries = int(queries)
        super().__init__(eps=eps, threat_model=threat_model, seed=seed, dtype=dtype)

    def settings(self) -> dict:
        return {"eps": self.eps, "steps": None, "alpha": None, "restarts": 1,
                "queries": self.queries}  # fmt: skip

    def adversary(self, space: Space, device: torch.device):
        adversary = self.package.AutoAttack(
            self.forward(space),
            norm="Linf",
            eps=self.eps,
            version="custom",
            attacks=["square"],
            seed=self.seed,
            device=device,
        )
        adversary.square.n_queries = self.queries
        return adversary


class _StandardLayoutGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous (standard layout)."""

    @staticmethod
    def forward(ctx, z):
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


@contextlib.contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """Parameters without gradients while the package runs: some of its attacks call
    `backward()`, which would otherwise fill (and leave) `.grad` on every parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class _ListHandler(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(level=logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


@contextlib.contextmanager
def _package_flags(into: list[str]) -> Iterator[None]:
    """Collect the package's warnings (its sanity flags) into `into` while the block runs."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    handler = _ListHandler(into)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
