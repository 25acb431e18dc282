"""Presets: one TOML file per paper table, describing the grid of runs that reproduces it.

A preset names the paper table it reproduces, the data sets, the number of seeds, and for
each scale (``paper``: the published recipe; ``quick``: a short schedule on smaller
networks; ``cpu``: the largest grid a 2-core CPU trains in hours, where a preset has one)
the training overrides and the evaluation settings. A scale may also narrow the grid to some
rows (``rows = [keys]``) and data sets (``datasets = [...]``). Each ``[[rows]]`` entry is one
row of the table: a model (``model`` at paper scale, ``quick_model`` / ``cpu_model`` at the
quick / cpu scales) with optional constructor overrides (``kwargs``), or ``ensemble_of``
another row.

Packaged presets live in ``odenets/experiments/presets/*.toml``; a path to a TOML file of the
same shape works wherever a preset name does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from odenets._toml import TOMLDecodeError, loads
from odenets.errors import UnknownNameError
from odenets.robustness.base import attack_options
from odenets.training.run_folder import FURTHER_EVAL_NAME

SCALES = ("quick", "cpu", "paper")


@dataclass(frozen=True)
class EvalSettings:
    """How the runs of a preset are evaluated (see `odenets evaluate`): the evaluation behind
    the table (eval.json), or a further evaluation (eval.<name>.json)."""

    attacks: tuple[str, ...] = ("fgsm", "ifgsm", "pgd")  # attack registry names
    eps: tuple[float, ...] = (8.0,)  # radii in 1/255 pixel units; the first is the table's
    noise: bool = True  # the four CIFAR-C noise corruptions, severities 1-5
    limit: int = 0  # test images to evaluate; 0 = the whole test split
    steps: int = 0  # steps of the attacks `odenets evaluate --steps` sets; 0 = their default
    apgd_steps: int = 0  # steps of those `--apgd-steps` sets (APGD); 0 = their default (100)
    # "pixel" (standard), "normalized" (authors' first code) or "pixel,normalized" (both; the
    # table's columns take the first)
    threat_model: str = "pixel"
    square_queries: int = 0  # queries of Square (`--square-queries`); 0 = its default (5,000)
    autoattack_version: str = ""  # `--autoattack-version`; "" = its default (standard)
    masking_checks: bool = True  # gather the gradient-masking evidence (`--masking-checks`)
    # Further evaluations only:
    name: str = ""  # "" = eval.json; else the file eval.<name>.json of each run it covers
    rows: tuple[str, ...] = ()  # the rows it covers; () = every training row
    # Row whose run (same data set and seed) is the surrogate of `transfer_attacks`; the
    # surrogate's own runs are evaluated without them. "" = no transfer attacks.
    transfer_from: str = ""
    transfer_attacks: tuple[str, ...] = ("pgd", "apgd_ce")  # crafted on that surrogate

    @property
    def threat_models(self) -> list[str]:
        return [t.strip() for t in self.threat_model.split(",")]


def eval_attack_options(evaluate: Mapping[str, Any]) -> dict[str, dict]:
    """Each attack's keyword arguments from a preset's evaluate settings (`EvalSettings` as
    a dict, as manifest.json keeps it): `steps` and `apgd_steps` go where `odenets evaluate
    --steps` and `--apgd-steps` would (`Perturbation.options`); 0 keeps the default."""
    settings = {key: value or None for key, value in evaluate.items()}
    return attack_options(evaluate.get("attacks", ()), settings)


@dataclass(frozen=True)
class Row:
    """One row of the table: a model trained once per seed, or an ensemble of another row."""

    key: str  # row key of the paper table, e.g. "in_resnet110" or "in_resnet110@0.20-0.25"
    model: str = ""  # registry name at paper scale
    quick_model: str = ""  # registry name at quick scale ("" = same as model)
    cpu_model: str = ""  # registry name at cpu scale ("" = same as model)
    kwargs: dict[str, Any] = field(default_factory=dict)  # create_model overrides
    ensemble_of: str = ""  # row key whose seeds form the ensemble
    label: str = ""  # name shown in reports when the paper table has none for this row
    # Training settings of this row's runs over the scale's (e.g. freeze_coefficients), so
    # rows that differ only in how they train sit in one grid; keep its key apart.
    train: dict[str, Any] = field(default_factory=dict)

    def model_for(self, scale: str) -> str:
        scaled = {"quick": self.quick_model, "cpu": self.cpu_model}.get(scale, "")
        return scaled or self.model


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    table: str  # paper table name ("" = no paper numbers)
    datasets: tuple[str, ...]  # data sets of the paper table (cifar10, cifar100)
    seeds: int
    rows: tuple[Row, ...]
    train: dict[str, dict[str, Any]]  # scale -> training overrides (e.g. epochs)
    evaluate: dict[str, EvalSettings]  # scale -> evaluation settings
    gpu_hours: dict[str, float]  # scale -> rough estimate for the whole grid
    scale_seeds: dict[str, int] = field(default_factory=dict)  # scale -> seeds, if not `seeds`
    scale_rows: dict[str, tuple[str, ...]] = field(default_factory=dict)  # scale -> row keys
    scale_datasets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # scale -> sets
    # scale -> further evaluations (each into eval.<name>.json of the runs it covers)
    further: dict[str, tuple[EvalSettings, ...]] = field(default_factory=dict)
    source: str = ""  # the file it was read from

    def rows_for(self, scale: str) -> tuple[Row, ...]:
        """The rows of the grid at `scale`: all, unless the scale names some."""
        keys = self.scale_rows.get(scale)
        return self.rows if keys is None else tuple(r for r in self.rows if r.key in keys)

    def datasets_for(self, scale: str) -> tuple[str, ...]:
        """The data sets of the grid at `scale`: the preset's, unless the scale names some."""
        return self.scale_datasets.get(scale) or self.datasets

    def further_for(self, scale: str) -> tuple[EvalSettings, ...]:
        """The further evaluations at `scale` (each writes eval.<name>.json)."""
        return self.further.get(scale, ())

    def row(self, key: str) -> Row:
        for row in self.rows:
            if row.key == key:
                return row
        raise UnknownNameError(f"preset {self.name!r} has no row {key!r}")


def _preset_dir():
    return resources.files("odenets.experiments") / "presets"


def list_presets() -> list[str]:
    """Names of the packaged presets."""
    return sorted(
        p.name[: -len(".toml")] for p in _preset_dir().iterdir() if p.name.endswith(".toml")
    )


def load_preset(name_or_path: str | Path) -> Preset:
    """A packaged preset by name, or a preset TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        entry = _preset_dir() / f"{name_or_path}.toml"
        if not entry.is_file():
            raise UnknownNameError(
                f"unknown preset {str(name_or_path)!r}; known: {', '.join(list_presets())} "
                "(or give the path of a preset .toml file)"
            )
        text, source = entry.read_text(encoding="utf-8"), f"{name_or_path}.toml"
    try:
        data = loads(text)
    except TOMLDecodeError as err:
        raise ValueError(f"preset {source} is not valid TOML: {err}") from err
    return parse_preset(data, source=source)


def parse_preset(data: dict[str, Any], *, source: str = "") -> Preset:
    """Build a `Preset` from the parsed TOML, with errors that name the bad field."""
    where = source or data.get("name", "preset")
    for key in ("name", "rows", "scale"):
        if key not in data:
            raise ValueError(f"preset {where}: missing field {key!r}")
    rows = tuple(_parse_row(r, where) for r in data["rows"])
    keys = [r.key for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError(f"preset {where}: row keys must be unique; got {keys}")
    for row in rows:
        if row.ensemble_of and row.ensemble_of not in keys:
            raise ValueError(f"preset {where}: row {row.key!r} is an ensemble of unknown row")
    train, evaluate, scale_seeds, scale_rows, scale_datasets = {}, {}, {}, {}, {}
    further = {}
    known = {"train", "evaluate", "seeds", "rows", "datasets", "further_evaluations"}
    for scale, settings in data["scale"].items():
        unknown = set(settings) - known
        if unknown:
            raise ValueError(
                f"preset {where}: [scale.{scale}] has unknown fields {sorted(unknown)}"
            )
        train[scale] = dict(settings.get("train", {}))
        if "seeds" in settings:
            scale_seeds[scale] = int(settings["seeds"])
        if "rows" in settings:
            missing = sorted(set(settings["rows"]) - set(keys))
            if missing:
                raise ValueError(f"preset {where}: [scale.{scale}] names unknown rows {missing}")
            scale_rows[scale] = tuple(settings["rows"])
        if "datasets" in settings:
            scale_datasets[scale] = tuple(settings["datasets"])
        evaluate[scale] = _parse_eval(settings.get("evaluate", {}), f"{where} [scale.{scale}]")
        if evaluate[scale].name or evaluate[scale].rows or evaluate[scale].transfer_from:
            raise ValueError(
                f"preset {where}: [scale.{scale}] evaluate: name, rows and transfer_from "
                "belong to further_evaluations"
            )
        further[scale] = _parse_further(
            settings.get("further_evaluations", []), rows, scale_rows.get(scale), where, scale
        )
    if not evaluate:
        raise ValueError(f"preset {where}: needs at least one [scale.NAME] (e.g. {SCALES})")
    seeds = int(data.get("seeds", 1))
    if seeds < 1:
        raise ValueError(f"preset {where}: seeds must be >= 1; got {seeds}")
    return Preset(
        name=str(data["name"]),
        description=str(data.get("description", "")),
        table=str(data.get("table", "")),
        datasets=tuple(data.get("datasets", ["cifar10"])),
        seeds=seeds,
        rows=rows,
        train=train,
        evaluate=evaluate,
        gpu_hours={s: float(data.get(f"gpu_hours_{s}", 0.0)) for s in SCALES},
        scale_seeds=scale_seeds,
        scale_rows=scale_rows,
        scale_datasets=scale_datasets,
        further={scale: extra for scale, extra in further.items() if extra},
        source=source,
    )


def _parse_eval(raw: dict[str, Any], where: str) -> EvalSettings:
    ev = dict(raw)
    unknown = set(ev) - set(EvalSettings.__dataclass_fields__)
    if unknown:
        raise ValueError(f"preset {where}: unknown evaluate settings {sorted(unknown)}")
    for k in ("attacks", "eps", "rows", "transfer_attacks"):
        if k in ev:
            ev[k] = tuple(ev[k])
    if isinstance(ev.get("threat_model"), list):
        ev["threat_model"] = ",".join(ev["threat_model"])
    settings = EvalSettings(**ev)
    bad = [t for t in settings.threat_models if t not in ("pixel", "normalized")]
    if bad:
        raise ValueError(
            f"preset {where}: threat_model must be pixel, normalized or both; got {bad}"
        )
    return settings


def _parse_further(
    raw: list[dict[str, Any]], rows: tuple[Row, ...], scale_rows, where: str, scale: str
) -> tuple[EvalSettings, ...]:
    """A scale's `[[scale.NAME.further_evaluations]]`: each a named evaluation of some rows."""
    training = [r.key for r in rows if not r.ensemble_of and r.key in (scale_rows or [r.key])]
    out = []
    for i, entry in enumerate(raw):
        here = f"{where} [[scale.{scale}.further_evaluations]] #{i + 1}"
        settings = _parse_eval(entry, here)
        if not FURTHER_EVAL_NAME.fullmatch(settings.name):
            raise ValueError(
                f"preset {here}: needs a name of lower case letters, digits and '_' (its "
                f"file is eval.<name>.json); got {settings.name!r}"
            )
        unknown = sorted(set(settings.rows) - set(training))
        if unknown:
            raise ValueError(
                f"preset {here}: rows {unknown} are not training rows of this scale; "
                f"choose from {training}"
            )
        if settings.transfer_from and settings.transfer_from not in training:
            raise ValueError(
                f"preset {here}: transfer_from {settings.transfer_from!r} is not a training "
                f"row of this scale; choose from {training}"
            )
        out.append(settings)
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise ValueError(
            f"preset {where} [scale.{scale}]: further evaluation names repeat: {names}"
        )
    return tuple(out)


def _parse_row(raw: dict[str, Any], where: str) -> Row:
    if "key" not in raw:
        raise ValueError(f"preset {where}: every [[rows]] entry needs a 'key'; got {raw}")
    if not raw.get("model") and not raw.get("ensemble_of"):
        raise ValueError(f"preset {where}: row {raw['key']!r} needs 'model' or 'ensemble_of'")
    unknown = set(raw) - set(Row.__dataclass_fields__)
    if unknown:
        raise ValueError(f"preset {where}: row {raw['key']!r} has unknown fields {sorted(unknown)}")
    return Row(**raw)
