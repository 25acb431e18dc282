"""odenets.experiments: the grids that reproduce the papers' tables, and their report.

A preset (``presets/*.toml``) names a paper table, its rows and, per scale, the training
and evaluation settings; `load_grid` expands it into jobs, `run_grid` trains and evaluates
them in a results folder (restart-safe), and `write_report` writes report.md, report.csv
and report.json beside the papers' numbers (`get_table`).

Example:
    >>> from odenets.experiments import list_presets
    >>> "inresnet-table1" in list_presets()
    True
"""

from odenets.experiments.aggregate import Report, build_report
from odenets.experiments.jobs import Grid, Job, expand_jobs, load_grid
from odenets.experiments.paper import get_table, list_tables
from odenets.experiments.presets import list_presets, load_preset
from odenets.experiments.report import write_report
from odenets.experiments.reproduce import run_grid

__all__ = [
    "Grid",
    "Job",
    "Report",
    "build_report",
    "expand_jobs",
    "get_table",
    "list_presets",
    "list_tables",
    "load_grid",
    "load_preset",
    "run_grid",
    "write_report",
]
