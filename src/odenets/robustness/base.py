"""What every perturbation shares: the description an attack or a noise carries (its
title, category, kind and options, read by everything that lists perturbations), the
threat-model geometry (projection and clamping), the model-mode handling, per-sample
seeding, and the registry of perturbations by name.

An attack or a noise is a small object with its hyperparameters fixed in `__init__` and
`__call__(model, images, labels) -> images`: images float (N, C, H, W) in [0, 1] in, images
in [0, 1] out. `Attack` (a perturbation in an ε-ball, crafted on the model) and
`odenets.robustness.noise.Noise` (random, no ε, no model) are the two kinds of
`Perturbation`. An attack puts the model in eval mode for the attack and restores its
mode afterwards; gradients are taken with `torch.autograd.grad` with respect to the input
only, so parameters keep their `requires_grad` and no `.grad` is left on them.

The evaluation (`odenets evaluate`, a grid's evaluation), the sanity checks, the report and
the figures take every list of perturbations from the registry and the class attributes
(`list_attacks`, `attack_class`, `attack_title`, `attacks_taking`, `attack_options`), so a
new attack is one class with `@register_attack(name)`.

Random draws are keyed on (seed, stream, index of the sample in the whole evaluation set),
not on the batch, so a result does not depend on the batch size or on how the set is split
into shards.
"""

from __future__ import annotations

import contextlib
import difflib
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from odenets.errors import UnknownNameError
from odenets.models.base import takes_check_input

THREAT_MODELS = ("pixel", "normalized")
# What a perturbation does, as `Perturbation.category` says it; the sanity checks hold the
# multi-step attacks to FGSM.
CATEGORIES = ("single-step", "multi-step", "gradient-free", "mixed", "noise")

_ATTACKS: dict[str, type[Perturbation]] = {}


def register_attack(name: str) -> Callable[[type[Perturbation]], type[Perturbation]]:
    """Class decorator: make an attack or a noise available to `create_attack(name, ...)`,
    and so to `odenets evaluate`, grids, the sanity checks, the report and the figures."""

    def wrap(cls: type[Perturbation]) -> type[Perturbation]:
        if name in _ATTACKS:
            raise ValueError(f"attack {name!r} is already registered")
        if cls.category not in CATEGORIES:
            raise ValueError(
                f"attack {name!r}: category must be one of {CATEGORIES}; got {cls.category!r}"
            )
        _ATTACKS[name] = cls
        cls.name = name
        return cls

    return wrap


def list_attacks(*, category: str | None = None) -> list[str]:
    """Sorted names of the registered attacks and noise perturbations (of one `category`
    of `CATEGORIES` if given)."""
    return sorted(n for n, cls in _ATTACKS.items() if category in (None, cls.category))


def attack_class(name: str) -> type[Perturbation]:
    """The class registered under `name`; the error suggests close names."""
    if name not in _ATTACKS:
        close = difflib.get_close_matches(name, _ATTACKS, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown attack {name!r}.{hint} Available: {', '.join(list_attacks())}"
        )
    return _ATTACKS[name]


def attack_title(name: str) -> str:
    """How tables, captions and figures name an attack: its class's `title`, or `name`
    itself for a name that is not registered (e.g. "transfer_pgd")."""
    cls = _ATTACKS.get(name)
    return name if cls is None else cls.title or name


def attacks_taking(setting: str) -> list[str]:
    """Sorted names of the registered attacks that take evaluation setting `setting` (see
    `Perturbation.options`), e.g. "steps" -> ["ifgsm", "pgd", "pgd_start_centred"]."""
    return [n for n in list_attacks() if setting in _ATTACKS[n].options.values()]


def attack_options(names: Iterable[str], settings: Mapping[str, Any]) -> dict[str, dict]:
    """Each registered attack's keyword arguments from evaluation settings.

    Args:
        names: attack names; names that are not registered are left out (`create_attack`
            refuses them).
        settings: setting name -> value (`odenets evaluate`'s flags, a preset's evaluate
            table); a setting that is missing or None is left out, so the attack keeps
            its default.

    Returns:
        {name: {keyword: value}} for each registered name, through its class's `options`.
    """
    return {
        name: {
            keyword: settings[setting]
            for keyword, setting in _ATTACKS[name].options.items()
            if settings.get(setting) is not None
        }
        for name in names
        if name in _ATTACKS
    }


def create_attack(
    name: str,
    *,
    eps: float | None = None,
    alpha: float | None = None,
    steps: int | None = None,
    random_start: bool | None = None,
    threat_model: str = "pixel",
    seed: int = 0,
    **kwargs,
) -> Perturbation:
    """Build a registered attack or noise perturbation.

    Args:
        name: one of `list_attacks()`, e.g. ``"pgd"`` or ``"gaussian_noise"``.
        eps: radius of the L∞ ball, a float in [0, 1]: pixel units in the ``pixel`` threat
            model, normalised units in ``normalized`` (``8/255``, not ``8``).
        alpha: step size (same units as eps); None takes the attack's default.
        steps: number of iterations; None takes the attack's default.
        random_start: for attacks that have one; None takes the attack's default.
        threat_model: ``"pixel"`` (standard) or ``"normalized"`` (the In-ResNet authors'
            first release).
        seed: seed of every random draw of the attack.
        **kwargs: attack-specific options (``restarts``, ``severity``, ``sigma``, ...).

    Returns:
        A callable ``attack(model, images, labels) -> images`` in [0, 1].
    """
    options = {"alpha": alpha, "steps": steps, "random_start": random_start}
    kwargs.update({k: v for k, v in options.items() if v is not None})
    return attack_class(name).build(eps=eps, threat_model=threat_model, seed=seed, **kwargs)


def check_eps(eps: float, what: str = "eps") -> float:
    """Return eps as a float, refusing values outside [0, 1] with a hint about /255."""
    eps = float(eps)
    if not 0.0 <= eps <= 1.0:
        hint = f" Did you mean {eps:g}/255?" if eps > 1 else ""
        raise ValueError(f"{what} must be in [0, 1] (pixel units); got {eps:g}.{hint}")
    return eps


def sample_seed(seed: int, stream: str, index: int) -> int:
    """A 63-bit seed for one sample of one random stream (splitmix64 of the three keys)."""
    x = seed * 0x9E3779B97F4A7C15 + zlib.crc32(stream.encode()) * 0xBF58476D1CE4E5B9 + index
    x &= 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF


def per_sample_uniform(
    shape: Sequence[int], indices: torch.Tensor, *, seed: int, stream: str, low: float, high: float
) -> torch.Tensor:
    """U(low, high) of shape (len(indices), *shape), each row drawn from its own seed.

    Drawn on the CPU (one generator per sample), so the values are the same on every device.
    """
    out = torch.empty((len(indices), *shape), dtype=torch.float32)
    gen = torch.Generator()
    for row, index in enumerate(indices.tolist()):
        gen.manual_seed(sample_seed(seed, stream, index))
        out[row].uniform_(low, high, generator=gen)
    return out


class Space:
    """The coordinates an attack works in, fixed by the threat model.

    ``pixel``: z = x, the network is `model(z)`, z is clamped to [0, 1].
    ``normalized`` (the authors' first release): z = (x - mean) / std is the tensor the
    network's first layer sees (`model.forward_normalized(z)`), ε and the step act on z,
    and z is clamped to [0, 1] *in normalised space*, as their code did; the attacked z is
    mapped back to pixels, x' = z' · std + mean, which lies in [mean, mean + std] ⊂ [0, 1].
    Evaluating `model(x')` re-normalises x', which gives z' back up to float rounding
    (about 1e-7). Note the clamp also moves clean pixels whose normalised value is outside
    [0, 1], so ε = 0 is not the identity in this threat model.
    """

    def __init__(self, model: nn.Module, threat_model: str):
        if threat_model not in THREAT_MODELS:
            raise ValueError(f"threat_model must be one of {THREAT_MODELS}; got {threat_model!r}")
        self.model = model
        self.threat_model = threat_model
        # The attack checked its images once (`_check_batch`) and keeps every iterate in
        # [0, 1]: the model's own range check, per iterate, would only cost time.
        self._unchecked = {"check_input": False} if takes_check_input(model) else {}
        if threat_model == "normalized":
            norm = getattr(model, "normalize", None)
            if norm is None or not hasattr(model, "forward_normalized"):
                raise ValueError(
                    "the normalized threat model needs a model with `normalize` (mean/std "
                    "buffers) and `forward_normalized` (an Ensemble has them only when its "
                    "members normalise their input the same way); got "
                    f"{type(model).__name__}"
                )
            self.mean, self.std = norm.mean, norm.std

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.threat_model == "pixel":
            return images
        return (images - self.mean) / self.std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.threat_model == "pixel":
            return z.clamp(0.0, 1.0)
        return (z * self.std + self.mean).clamp(0.0, 1.0)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        if self.threat_model == "pixel":
            return self.model(z, **self._unchecked)
        return self.model.forward_normalized(z)

    @staticmethod
    def clamp(z: torch.Tensor) -> torch.Tensor:
        """The valid range: [0, 1] in both threat models (normalised space for the second)."""
        return z.clamp(0.0, 1.0)

    def project(self, z: torch.Tensor, centre: torch.Tensor, eps: float) -> torch.Tensor:
        """Nearest point of the ε-ball around `centre`, then clamped to the valid range."""
        return self.clamp(torch.min(torch.max(z, centre - eps), centre + eps))


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (N,)."""
    return F.cross_entropy(logits, labels, reduction="none")


class Perturbation:
    """What an attack and a noise share: the description of the kind of perturbation
    (class attributes) and the call ``perturbation(model, images, labels, *, indices)``.

    The class attributes are what every list of perturbations is derived from:

    - `title`: how tables, captions and figures name it.
    - `category`: one of `CATEGORIES`: "single-step", "multi-step" (the sanity checks
      flag one markedly weaker than FGSM), "gradient-free", "mixed" (several kinds in
      one, as AutoAttack) or "noise".
    - `kind`: how it sees the network, recorded in eval.json: "white-box" (follows the
      target's gradient), "black-box" (queries the target's output only), "transfer"
      (crafted on another network), "mixed" (AutoAttack: both kinds in one) or "noise"
      (no model). The gradient-masking diagnostics compare the kinds.
    - `options`: keyword argument -> the evaluation setting that sets it, named as the
      flag of `odenets evaluate` (its argparse dest: "steps" for ``--steps``) and, where
      a preset's evaluate table has it, as that key (`attack_options`).
    """

    name: str = "perturbation"  # the registry name, set by `register_attack`
    title: str = ""  # empty: the registry name
    category: str = ""  # required: `register_attack` refuses a class without one
    kind: str = "white-box"
    options: ClassVar[Mapping[str, str]] = {}
    threat_model: str = "pixel"
    # True for a kind that stops working on a sample once it breaks it (APGD, Square,
    # AutoAttack): its `cost()` is then the most it can take, and an ETA an upper bound.
    stops_early: bool = False

    def __init__(self, *, seed: int = 0, dtype: torch.dtype = torch.float32):
        self.seed = int(seed)
        self.dtype = dtype
        self.nonfinite_grads = 0

    @classmethod
    def build(cls, *, eps: float | None, threat_model: str, seed: int, **kwargs) -> Perturbation:
        """The perturbation `create_attack` asks for (each kind says what it takes)."""
        raise NotImplementedError

    @property
    def nonfinite_grads(self) -> int:
        """Samples whose input gradient was NaN or infinite, over every call so far."""
        return int(self._nonfinite)

    @nonfinite_grads.setter
    def nonfinite_grads(self, value: int) -> None:
        self._nonfinite = value

    def settings(self) -> dict:
        """Settings recorded in eval.json; subclasses give theirs."""
        return {}

    def cost(self) -> float:
        """Rough work per image in forward-pass equivalents, for progress estimates (an
        ETA): a forward and a backward (about two forwards) per step and restart of
        `settings()`, a forward per query, and the forward that scores the result. A kind
        whose work is not counted so (a noise, AutoAttack's sub-attacks) gives its own."""
        s = self.settings()
        steps = (s.get("steps") or 1) * (s.get("restarts") or 1)
        return 3.0 * steps + float(s.get("queries") or 0) + 1.0

    def record(self) -> dict:
        """What eval.json keeps about this attack beyond its settings and accuracy, over
        every call so far (e.g. AutoAttack's sub-attacks); empty for most attacks."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"{type(self).__name__}({opts}, threat_model={self.threat_model!r})"

    def __call__(
        self,
        model: nn.Module | None,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError


class Attack(Perturbation):
    """Base class of the attacks in an ε-ball: eval mode, threat-model geometry, input
    checks and gradient bookkeeping.

    Subclasses implement `perturb(space, z, labels, indices) -> z_adv` in the coordinates of
    the threat model. `nonfinite_grads` counts samples whose input gradient was NaN or
    infinite (NaN entries are replaced by 0 so the attack goes on).
    """

    def __init__(
        self,
        *,
        eps: float,
        threat_model: str = "pixel",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        if threat_model not in THREAT_MODELS:
            raise ValueError(f"threat_model must be one of {THREAT_MODELS}; got {threat_model!r}")
        super().__init__(seed=seed, dtype=dtype)
        self.eps = check_eps(eps)
        self.threat_model = threat_model

    @classmethod
    def build(cls, *, eps: float | None, threat_model: str, seed: int, **kwargs) -> Attack:
        if eps is None:
            raise ValueError(f"attack {cls.name!r} needs eps (a float in [0, 1], e.g. 8/255)")
        return cls(eps=eps, threat_model=threat_model, seed=seed, **kwargs)

    def settings(self) -> dict:
        return {"eps": self.eps, "steps": 1, "alpha": self.eps, "restarts": 1}

    def for_transfer(self) -> Attack:
        """The attack a transfer attack runs on its surrogate: this one, unless a kind
        crafts differently for transfer (APGD returns its deepest misclassified point)."""
        return self

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Perturb a batch.

        Args:
            model: takes images (N, C, H, W) in [0, 1], returns logits (N, K).
            images: float (N, C, H, W) in [0, 1].
            labels: int64 (N,) true classes.
            indices: int64 (N,) positions of the samples in the whole evaluation set, which
                key the random draws; defaults to 0..N-1.

        Returns:
            Perturbed images (N, C, H, W) in [0, 1], detached, in `self.dtype`.
        """
        _check_batch(images, labels)
        if indices is None:
            indices = torch.arange(len(images))
        images = images.detach().to(self.dtype)
        with inference_state(model, images.device.type), torch.enable_grad():
            space = Space(model, self.threat_model)
            z_adv = self.perturb(space, space.encode(images), labels, indices.cpu())
            return space.decode(z_adv.detach())

    def perturb(
        self, space: Space, z: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    # --- helpers for subclasses ---------------------------------------------------------
    def loss_and_grad(
        self,
        space: Space,
        z: torch.Tensor,
        labels: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy_loss,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample loss (N,), its gradient with respect to z (N, C, H, W), and logits.

        The loss is summed over the batch before differentiating, so each sample's gradient
        is its own (no 1/N factor) and does not depend on the batch.
        """
        z = z.detach().requires_grad_(True)
        logits = space.logits(z)
        loss = loss_fn(logits, labels)
        (grad,) = torch.autograd.grad(loss.sum(), z)
        bad = ~torch.isfinite(grad).flatten(1).all(dim=1)
        # Counted on the device and read once by `nonfinite_grads`: no host sync per step.
        self._nonfinite = self._nonfinite + bad.sum()
        grad = torch.nan_to_num(grad, nan=0.0)
        return loss.detach(), grad.detach(), logits.detach()

    def random_uniform(
        self, like: torch.Tensor, indices: torch.Tensor, stream: str, low: float, high: float
    ) -> torch.Tensor:
        """Seeded U(low, high) noise shaped like `like`, keyed on sample indices."""
        noise = per_sample_uniform(
            like.shape[1:], indices, seed=self.seed, stream=stream, low=low, high=high
        )
        return noise.to(device=like.device, dtype=like.dtype)


@contextlib.contextmanager
def inference_state(model: nn.Module, device_type: str) -> Iterator[None]:
    """`model` in eval mode and IEEE float32 inside the block: autocast is off (attacks and
    accuracy stay float32 inside a caller's bf16 autocast) and so is TF32 on CUDA (cuDNN
    uses it for float32 convolutions by default). On exit every submodule gets back its own
    train/eval flag (a network left partly in eval mode, e.g. frozen BatchNorm, stays so)
    and the TF32 settings are restored.
    """
    modes = [(module, module.training) for module in model.modules()]
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    tf32 = (cudnn.allow_tf32, matmul.allow_tf32)
    model.eval()
    cudnn.allow_tf32, matmul.allow_tf32 = False, False
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = tf32
        for module, training in modes:
            module.training = training


def _check_batch(images: torch.Tensor, labels: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or not torch.is_floating_point(images):
        raise TypeError("images must be a float tensor (N, C, H, W) in [0, 1]")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W); got {tuple(images.shape)}")
    if images.numel():
        low, high = torch.aminmax(images.detach())
        if not (0 <= low and high <= 1):  # NaN fails too; one host sync per batch
            raise ValueError(
                f"images must be pixels in [0, 1] (attacks clip to that range); got values in "
                f"[{float(low):g}, {float(high):g}]. Divide uint8 pixels by 255."
            )
    if labels.shape != (images.shape[0],):
        raise ValueError(
            f"labels must have shape ({images.shape[0]},) to match images; got "
            f"{tuple(labels.shape)}"
        )


def worse(
    loss_new: torch.Tensor,
    wrong_new: torch.Tensor,
    loss_old: torch.Tensor,
    wrong_old: torch.Tensor,
) -> torch.Tensor:
    """Which samples the new candidate attacks better: misclassified first, then higher loss."""
    return (wrong_new & ~wrong_old) | ((wrong_new == wrong_old) & (loss_new > loss_old))


def keep_worst(
    best: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    cand: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge two restarts per sample: (images (N, C, H, W), loss (N,), wrong (N,)), keeping
    for each sample the candidate that attacks better (see `worse`)."""
    (best_z, best_loss, best_wrong), (z, loss, wrong) = best, cand
    take = worse(loss, wrong, best_loss, best_wrong)
    return (
        torch.where(take.view(-1, 1, 1, 1), z, best_z),
        torch.where(take, loss, best_loss),
        best_wrong | wrong,
    )
