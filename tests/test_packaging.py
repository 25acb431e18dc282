"""What the package ships besides code: license, citation, changelog, type-hint marker."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import odenets

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_license_file_is_the_declared_mit_license():
    assert PYPROJECT["project"]["license"] == {"text": "MIT"}
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in text


def test_citation_names_both_papers_and_the_version():
    cff = (REPO / "CITATION.cff").read_text(encoding="utf-8")
    assert f"version: {odenets.__version__}\n" in cff
    assert "Interpolation between Residual and Non-Residual Networks" in cff
    assert "NAIS-Net: Stable Deep Networks from Non-Autonomous Differential Equations" in cff
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    bib = re.search(r"```bibtex\n(.*?)```", readme, re.S).group(1)
    keys = re.findall(r"^@\w+\{([\w-]+),", bib, re.M)
    assert keys == ["odenets", "yang2020interpolation", "ciccone2018naisnet"]
    assert bib.count("{") == bib.count("}")


def test_changelog_has_the_current_version_and_unreleased():
    headings = re.findall(r"^## (.+)$", (REPO / "CHANGELOG.md").read_text("utf-8"), re.M)
    assert headings[:2] == ["Unreleased", odenets.__version__]


def test_type_hint_marker_is_shipped():
    assert (Path(odenets.__file__).parent / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["odenets"]


def test_tested_torch_version_is_stated():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Tested with", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"torch \d+\.\d+\.\d+ \(the CPU wheel\)", section)
    assert "Tested with torch" in (REPO / "pyproject.toml").read_text(encoding="utf-8")


def test_every_shipped_toml_file_is_declared_package_data():
    import fnmatch

    package = Path(odenets.__file__).parent
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["odenets"]
    shipped = sorted(str(p.relative_to(package)) for p in package.rglob("*.toml"))
    assert shipped and all(any(fnmatch.fnmatch(p, g) for g in globs) for p in shipped)
    assert any(p.startswith("training/recipes/") for p in shipped)  # read by load_recipe
    assert any(p.startswith("experiments/presets/") for p in shipped)  # read by load_preset
