"""Statuses, the one table of allowed transitions, stop reasons and log levels.

Jobs, steps and tasks share one vocabulary. Everything that changes a status
asks `check_transition` first (through `Tx.transition` in
`stepline.store.writes`), so this table is the single place that decides what
may happen.
"""

from enum import StrEnum


class Status(StrEnum):
    """The value is what the database and the JSON API hold."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.SKIPPED})
# What a job can be: a job is never skipped (the metrics and the filter list).
JOB_STATUSES = tuple(s for s in Status if s is not Status.SKIPPED)
# The task counters each step keeps (steps.tasks_<status>). Cancelled too:
# a stopped fan-out's open tasks end cancelled, and a step row that counted
# them nowhere showed an empty bar for them.
TASK_STATUSES = (Status.PENDING, Status.RUNNING, Status.COMPLETED, Status.FAILED,
                 Status.CANCELLED)

# kind -> {from_status: allowed to_statuses}
# `running -> pending` is the crash-recovery path: a dead worker's job is
# re-queued so a live worker can resume it, and a retryable step or task goes
# back in line.
TRANSITIONS: dict[str, dict[Status, frozenset[Status]]] = {
    "job": {
        Status.PENDING: frozenset({Status.RUNNING, Status.CANCELLED}),
        Status.RUNNING: frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED,
                                   Status.PENDING}),
    },
    "step": {
        Status.PENDING: frozenset({Status.RUNNING, Status.SKIPPED, Status.CANCELLED}),
        Status.RUNNING: frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED,
                                   Status.PENDING}),
    },
    "task": {
        Status.PENDING: frozenset({Status.RUNNING, Status.CANCELLED}),
        Status.RUNNING: frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED,
                                   Status.PENDING}),
    },
}


class InvalidTransition(ValueError):
    """Raised for a status change the table does not allow."""


def check_transition(kind: str, current: str, new: str) -> None:
    allowed = TRANSITIONS[kind].get(current, frozenset())
    if new not in allowed:
        raise InvalidTransition(f"{kind} cannot go from {current} to {new}")


def is_terminal(status: str) -> bool:
    return status in TERMINAL


def failures_past(status: str, steps_failed: int | None) -> int:
    """How many failed steps a job completed past (on_error = continue): the
    jobs list, the job header and the run history mark such a run; 0 when
    there is nothing to mark (a failed job's failure is its status)."""
    return (steps_failed or 0) if status == Status.COMPLETED else 0


def may_run_again(attempts: int, retries: int) -> bool:
    """Whether a task that failed (or lost its worker) after `attempts` runs
    goes back in line: a step with `retries = N` allows N + 1 runs."""
    return attempts <= retries


def earlier_failure(status: str, attempts: int) -> int | None:
    """The attempt a task's stored error came from when the task did not end
    failed (it was retried): the task table and `stepline tasks` show that
    error as history, not as the task's failure. None for a failed task (the
    error is its own). Attempts count up when one starts, so it is the one
    before the current; a pending task's retry has not started yet."""
    if status == Status.FAILED:
        return None
    return attempts if status == Status.PENDING else attempts - 1


def sql_list(statuses) -> str:
    """`('completed', 'failed')` for an IN clause: the values are this module's
    constants, never user input."""
    return "(" + ", ".join(f"'{Status(s)}'" for s in sorted(statuses)) + ")"


class StopReason(StrEnum):
    """Why a running job or step was told to stop. The value is the error it
    records (timeouts add how long: `error`)."""

    CANCELLED = "cancelled by user"
    SHUTDOWN = "worker shutting down"
    JOB_TIMEOUT = "job timed out"
    STEP_TIMEOUT = "step timed out"

    def error(self, timeout_s: float | None) -> str:
        """The error a stopped job or step records; a timeout says how long it was."""
        if self in (StopReason.JOB_TIMEOUT, StopReason.STEP_TIMEOUT) and timeout_s:
            return f"{self} after {timeout_s:g}s"
        return str(self)


def blocks_dependents(dep: dict) -> bool:
    """A dependency stops its dependents unless it completed, or failed with
    on_error = continue."""
    if dep["status"] == Status.COMPLETED:
        return False
    return not (dep["status"] == Status.FAILED and dep["on_error"] == "continue")


# Log levels, least to most severe (logs.level holds these values).
LOG_LEVELS = ("debug", "info", "warn", "error")


def levels_from(level: str) -> tuple[str, ...]:
    """What a level filter shows: that level and every more severe one
    ("warn" shows warnings and errors, as `journalctl -p` does)."""
    return LOG_LEVELS[LOG_LEVELS.index(level):]
