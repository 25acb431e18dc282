"""The package version (also in pyproject.toml, CITATION.cff and CHANGELOG.md)."""

__version__ = "0.1.0"
