"""Progress a batch job's log can read: the ETA of an evaluation from the cost of its
passes, the ETA of a grid from its jobs, and the job label on every log line of a job."""

from __future__ import annotations

import logging

import pytest

import odenets.progress as progress
from odenets.experiments.grid_progress import GridProgress, job_label
from odenets.experiments.jobs import Job


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", fake)
    return fake


def test_the_eta_follows_the_cost_done_and_the_time_it_took(clock, caplog):
    """Passes of cost 10, 30 and 60: after the first (10 of 100 in 2 s) 18 s are left; after
    the second (40 in 10 s) 15 s; the last says done."""
    log = progress.WorkLog(logging.getLogger("odenets.test"), total_cost=100, what="evaluation")
    with caplog.at_level(logging.INFO, logger="odenets"):
        for desc, cost, seconds, correct in (
            ("clean", 10, 2, 9),
            ("pgd", 30, 8, 3),
            ("x", 60, 5, 1),
        ):
            log.start_pass(desc, cost)
            clock.now += seconds
            log.end_pass(correct, 10)
    assert [r.getMessage() for r in caplog.records] == [
        "clean: 9/10 correct (90.00%) in 2.0 s; evaluation 2.0 s so far, ETA 18 s",
        "pgd: 3/10 correct (30.00%) in 8.0 s; evaluation 10 s so far, ETA 15 s",
        "x: 1/10 correct (10.00%) in 5.0 s; evaluation 15 s so far, done",
    ]


def test_a_pass_that_stops_early_is_counted_at_its_seconds_and_the_eta_is_a_bound(clock, caplog):
    """Clean (cost 10 in 10 s: 1 unit a second), then an attack that may stop early planned
    at 100 that took 20 s, then PGD of 30. While the attack is planned the ETA is an upper
    bound ("up to"); once it ends it counts 20 units, not 100: the total becomes 60 and the
    ETA 30 s (at the same rate) where counting its plan would have said 30 x 30/110 = 8 s."""
    log = progress.WorkLog(
        logging.getLogger("odenets.test"), total_cost=140, bounded_cost=100, what="evaluation"
    )
    with caplog.at_level(logging.INFO, logger="odenets"):
        for desc, cost, seconds, bound in (("clean", 10, 10, False), ("apgd", 100, 20, True)):
            log.start_pass(desc, cost, at_most=bound)
            clock.now += seconds
            log.end_pass(1, 2)
        assert (log.total_cost, log.done_cost, log.bounded_cost) == (60, 30, 0)
        log.start_pass("pgd", 30)
        clock.now += 30
        log.end_pass(1, 2)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].endswith("evaluation 10 s so far, ETA up to 2 min 10 s")  # 130 units
    assert lines[1].endswith("evaluation 30 s so far, ETA 30 s")
    assert lines[2].endswith("evaluation 1 min 00 s so far, done")
    # Inside a pass that may end early, a heartbeat line takes the rate of the passes before
    # it (1 unit a second) on the planned cost left: at half of a pass of 100 after 10 units,
    # 140 - 10 - 50 = 80 units, 80 s, where the planned share done would have said 23 s.
    beat = progress.WorkLog(logging.getLogger("odenets.test"), total_cost=140, bounded_cost=100)
    beat.start_pass("clean", 10)
    clock.now += 10
    beat.end_pass()
    beat.start_pass("apgd", 100, at_most=True)
    clock.now += 5
    assert beat.eta(extra_done=50) == pytest.approx(80.0)
    # The first pass of all has no rate before it: it keeps its planned cost.
    first = progress.WorkLog(logging.getLogger("odenets.test"), total_cost=50, bounded_cost=50)
    first.start_pass("square", 50, at_most=True)
    clock.now += 5
    first.end_pass()
    assert (first.total_cost, first.done_cost) == (50, 50)


def test_work_of_unknown_total_gives_no_eta(clock, caplog):
    log = progress.WorkLog(logging.getLogger("odenets.test"))
    with caplog.at_level(logging.INFO, logger="odenets"):
        log.start_pass("fgsm 8/255", 5)
        clock.now += 70
        log.end_pass(4, 20)
    assert caplog.records[0].getMessage() == "fgsm 8/255: 4/20 correct (20.00%) in 1 min 10 s"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "0.0 s"), (9.96, "10.0 s"), (42.4, "42 s"), (185, "3 min 05 s"), (7620, "2 h 07 min")],
)
def test_durations_read_as_a_log_gives_them(seconds, text):
    assert progress.format_duration(seconds) == text


def _jobs(n: int) -> list[Job]:
    return [Job(i, f"digits-m{i}-seed0", f"m{i}", "digits", "", 0, f"m{i}") for i in range(n)]


def test_the_grid_eta_is_the_mean_job_time_times_the_jobs_left():
    jobs = _jobs(4)
    grid = GridProgress(jobs, 4)
    assert grid.event_line(jobs[0], "skipped (finished)", 0.0) == (
        "[1/4] digits-m0-seed0: skipped (finished); 1/4 jobs done"
    )
    assert grid.event_line(jobs[1], "finished", 40.0) == (
        "[2/4] digits-m1-seed0: finished in 40 s; 2/4 jobs done, ETA 1 min 20 s"
    )
    assert grid.event_line(jobs[2], "finished", 80.0).endswith("3/4 jobs done, ETA 1 min 00 s")
    assert grid.event_line(jobs[3], "diverged", 10.0).endswith("4/4 jobs done")
    # Two jobs at a time: the jobs left take half as long.
    pooled = GridProgress(jobs, 4, parallel=2)
    pooled.event_line(jobs[0], "finished", 60.0)
    assert pooled.eta() == pytest.approx(60.0 * 3 / 2)
    # A shard of the grid: its jobs are counted, their numbers are the grid's.
    shard = GridProgress(jobs[2:3], 4)
    assert shard.event_line(jobs[2], "finished", 5.0) == (
        "[3/4] digits-m2-seed0: finished in 5.0 s; 1/1 jobs done"
    )
    assert job_label(jobs[2], 4) == "[3/4] digits-m2-seed0:"


def test_log_lines_inside_a_job_carry_its_label(capsys):
    """The command line's handler starts every odenets line inside `log_label` with the
    label, and no line outside it; warnings too."""
    import warnings

    from odenets.cli import _log_to_stderr, _warnings_as_lines

    log = logging.getLogger("odenets.experiments.test")
    with _log_to_stderr(), _warnings_as_lines("reproduce"):
        log.info("before")
        with progress.log_label("[2/4] digits-m1-seed0:"):
            log.info("epoch 1/2")
            warnings.warn("careful", stacklevel=1)
        log.info("after")
    assert capsys.readouterr().err.splitlines() == [
        "before",
        "[2/4] digits-m1-seed0: epoch 1/2",
        "[2/4] digits-m1-seed0: odenets reproduce: warning: careful",
        "after",
    ]
