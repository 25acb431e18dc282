"""TOML reading on every supported Python: `tomllib` from 3.11, the `tomli` package on 3.10
(a dependency there, see pyproject.toml). Recipes and presets are TOML files."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - depends on the interpreter
    import tomli as tomllib

loads = tomllib.loads
TOMLDecodeError = tomllib.TOMLDecodeError
