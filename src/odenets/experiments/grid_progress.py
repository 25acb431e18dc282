"""How far a run of a grid has come: each job's label in log lines ("[2/4] name:", its place
in the grid's job list) and an estimate of the time the remaining jobs take."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from odenets.experiments.jobs import Job
from odenets.progress import format_duration

# The states of a job that ran here to an end: their wall times feed the ETA ("locked":
# another process has it; "waiting": an ensemble whose members are not done).
TIMED_STATES = ("finished", "diverged", "failed", "trained")


def job_label(job: Job, total: int) -> str:
    """'[2/4] digits-in_resnet20-seed0:': the job's number in the grid (1-based; `--job`
    takes it less one), the grid's number of jobs, and the job's name."""
    return f"[{job.index + 1}/{total}] {job.name}:"


class GridProgress:
    """The jobs of one run of a grid (all of it, a shard, or one job), counted as they end.

    Args:
        jobs: the jobs this run handles.
        total: the number of jobs in the grid (for the labels).
        parallel: jobs running at once (`--jobs-per-device` times the devices).

    The ETA is an estimate: the mean wall time of the jobs run so far (jobs skipped as done
    do not count) times the jobs left, divided by `parallel`. Jobs of one grid differ
    (networks, ensembles that only evaluate), so it firms up as jobs end.
    """

    def __init__(self, jobs: Sequence[Job], total: int, *, parallel: int = 1):
        self.left = {job.name for job in jobs}
        self.n = len(self.left)
        self.total = total
        self.parallel = max(1, parallel)
        self.times: list[float] = []

    def eta(self) -> float | None:
        """Seconds until the last job ends (an estimate), or None before a job has run."""
        if not self.times or not self.left:
            return None
        return statistics.fmean(self.times) * len(self.left) / self.parallel

    def event_line(self, job: Job, state: str, seconds: float) -> str:
        """Count `job` as ended in `state` after `seconds` (0: skipped) and say so:
        '[2/4] digits-in_resnet20-seed0: finished in 41 s; 2/4 jobs done, ETA 1 min 22 s'."""
        self.left.discard(job.name)
        if seconds > 0 and state in TIMED_STATES:
            self.times.append(seconds)
        line = f"{job_label(job, self.total)} {state}"
        if seconds > 0:
            line += f" in {format_duration(seconds)}"
        line += f"; {self.n - len(self.left)}/{self.n} jobs done"
        eta = self.eta()
        if eta is not None:
            line += f", ETA {format_duration(eta)}"
        return line
