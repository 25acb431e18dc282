"""Progress that a batch job's log can read: on a terminal the commands show tqdm bars; off
one (a log file under nohup or a scheduler) long work logs one line per step instead, with
the time so far and an estimate of the time left, and, while a grid runs, the job each line
belongs to.

- `log_label(text)`: every log line of odenets inside the `with` block starts with `text`
  (e.g. "[2/4] digits-in_resnet20-seed0:"), through `JobLabelFilter` on the handler that
  shows the lines (the command line installs it).
- `WorkLog`: one line per pass of a long computation made of passes of known relative cost
  (an evaluation: clean, each attack and radius, each noise set); each line gives the pass's
  accuracy, its seconds, the seconds so far and an ETA for the whole from the cost done and
  the time it took. A pass running longer than `HEARTBEAT_S` logs its count so far on the way.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator

HEARTBEAT_S = 60.0  # a pass running longer than this logs its count so far this often

_JOB_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("odenets_job_label", default="")


@contextlib.contextmanager
def log_label(text: str) -> Iterator[None]:
    """Start every odenets log line inside the block with `text` (shown by `JobLabelFilter`)."""
    token = _JOB_LABEL.set(text)
    try:
        yield
    finally:
        _JOB_LABEL.reset(token)


def current_job_label() -> str:
    """The label of the job running now ("" outside `log_label`)."""
    return _JOB_LABEL.get()


class JobLabelFilter(logging.Filter):
    """Sets `record.job` to "<label> " inside `log_label` ("" outside), for a handler whose
    format starts with "%(job)s"."""

    def filter(self, record: logging.LogRecord) -> bool:
        label = _JOB_LABEL.get()
        record.job = f"{label} " if label else ""
        return True


def format_duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 07 min': a duration as a log line gives it."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class WorkLog:
    """Log lines for work made of passes whose relative costs are known in advance.

    Args:
        logger: where the lines go (at INFO).
        total_cost: the cost of all passes, in any unit the passes share (an evaluation
            uses forward-pass equivalents times images); 0 when unknown (no ETA then).
        bounded_cost: the part of `total_cost` that is only an upper bound: passes that may
            end early (an attack that stops on the samples it breaks; `start_pass(...,
            at_most=True)`).
        what: the name of the whole, e.g. "evaluation".

    The ETA is an estimate: the seconds per unit of cost of the passes done so far, times
    the cost left. It holds as far as the costs given are in proportion to the time taken.
    While passes of bounded cost are left it is an upper bound ("ETA up to"); when such a
    pass ends, its cost is taken to be its seconds at the rate of the passes before it, so
    that a pass ending early neither leaves its planned cost in the total nor makes the work
    look faster than it is.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        total_cost: float = 0.0,
        bounded_cost: float = 0.0,
        what: str = "work",
    ):
        self.logger = logger
        self.total_cost = float(total_cost)
        self.bounded_cost = float(bounded_cost)
        self.what = what
        self.done_cost = 0.0
        self.passes = 0
        self.started = time.perf_counter()
        self._pass: dict | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def eta(self, extra_done: float = 0.0) -> float | None:
        """Seconds left for the whole (an estimate), or None before any cost is done."""
        done = self.done_cost + extra_done
        if self.total_cost <= 0 or done <= 0:
            return None
        left = max(0.0, self.total_cost - done)
        p = self._pass
        if p is not None and p["at_most"] and self.done_cost > 0 and p["start"] > self.started:
            # Inside a pass that may end early, the planned share done overstates the work
            # done: the rate of the passes before it, on the planned cost left.
            return (p["start"] - self.started) / self.done_cost * left
        return self.elapsed() / done * left

    def _tail(self, extra_done: float = 0.0) -> str:
        """'; evaluation 12 s so far, ETA 3 min 10 s' ('' for work of unknown total)."""
        if self.total_cost <= 0:
            return ""
        eta = self.eta(extra_done)
        tail = f"; {self.what} {format_duration(self.elapsed())} so far"
        if eta is not None and eta > 0:
            tail += f", ETA {'up to ' if self.bounded_cost > 0 else ''}{format_duration(eta)}"
        elif eta is not None:
            tail += ", done"
        return tail

    def start_pass(self, desc: str, cost: float, *, at_most: bool = False) -> None:
        """A pass begins: `desc` names it (e.g. "pgd 8/255"), `cost` is its share of
        `total_cost` (with `at_most`: of `bounded_cost` too, the most the pass can take)."""
        now = time.perf_counter()
        self._pass = {
            "desc": desc,
            "cost": float(cost),
            "start": now,
            "beat": now,
            "at_most": at_most,
        }

    def progress(self, done: int, correct: int, total: int) -> None:
        """Inside a pass: `done` of `total` items handled, `correct` of them correct; logs a
        line at most every `HEARTBEAT_S` seconds."""
        p = self._pass
        if p is None or time.perf_counter() - p["beat"] < HEARTBEAT_S or done >= total:
            return
        p["beat"] = time.perf_counter()
        share = p["cost"] * done / total if total else 0.0
        self.logger.info(
            "%s: %d/%d done, %d correct so far (%.2f%%) in %s%s",
            p["desc"],
            done,
            total,
            correct,
            100.0 * correct / done if done else 0.0,
            format_duration(time.perf_counter() - p["start"]),
            self._tail(share),
        )

    def _cost_taken(self, p: dict) -> float:
        """The cost a pass that ended is counted at: its planned cost, or for a pass of
        bounded cost its seconds at the rate of the passes before it (at most the planned
        cost; the planned cost when nothing came before it). The total shrinks by the rest."""
        cost = p["cost"]
        if not p["at_most"]:
            return cost
        self.bounded_cost = max(0.0, self.bounded_cost - cost)
        before = p["start"] - self.started
        if self.done_cost <= 0 or before <= 0:
            return cost
        taken = min(cost, (time.perf_counter() - p["start"]) * self.done_cost / before)
        self.total_cost -= cost - taken
        return taken

    def end_pass(self, correct: int | None = None, total: int | None = None) -> None:
        """The pass is over: one line with its accuracy (when it counts correct items), its
        seconds, and the time so far and ETA of the whole."""
        p = self._pass
        if p is None:
            return
        self._pass = None
        self.done_cost += self._cost_taken(p)
        self.passes += 1
        seconds = format_duration(time.perf_counter() - p["start"])
        if correct is None or total is None:
            self.logger.info("%s: done in %s%s", p["desc"], seconds, self._tail())
            return
        self.logger.info(
            "%s: %d/%d correct (%.2f%%) in %s%s",
            p["desc"],
            correct,
            total,
            100.0 * correct / total if total else 0.0,
            seconds,
            self._tail(),
        )
