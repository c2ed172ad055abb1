"""Statuses and the one table of allowed transitions.

Jobs, steps and tasks share one vocabulary. Everything that changes a status
asks `check_transition` first (through `Store.transition`), so this table is
the single place that decides what may happen.
"""

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
SKIPPED = "skipped"

STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, SKIPPED)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, SKIPPED})

# kind -> {from_status: allowed to_statuses}
# `running -> pending` is the crash-recovery path: a dead worker's job is
# re-queued so a live worker can resume it, and a retryable step or task goes
# back in line.
TRANSITIONS: dict[str, dict[str, frozenset[str]]] = {
    "job": {
        PENDING: frozenset({RUNNING, CANCELLED}),
        RUNNING: frozenset({COMPLETED, FAILED, CANCELLED, PENDING}),
    },
    "step": {
        PENDING: frozenset({RUNNING, SKIPPED, CANCELLED}),
        RUNNING: frozenset({COMPLETED, FAILED, CANCELLED, PENDING}),
    },
    "task": {
        PENDING: frozenset({RUNNING, CANCELLED}),
        RUNNING: frozenset({COMPLETED, FAILED, CANCELLED, PENDING}),
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
