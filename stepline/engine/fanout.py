"""Fan-out steps whose tasks any worker runs.

A step type registers here a function that runs ONE of its tasks from
nothing but the step's spec (params filled in) and the task's index:
`@remote_tasks("generate")`. That is what lets a task travel: any worker, on
any machine, that has a free task slot claims it (`stepline.engine.taskslots`).
A python step's `ctx.spawn(items, fn)` cannot be one: its `fn` is a closure
over the step's own objects, which no other process has, so its tasks run in
the step's own worker (StepContext.spawn).

The worker running the job (the step's owner) only creates the tasks, in
batches, and waits until every one is terminal, reading the step's task
counters when another process commits (the process's one commit watch,
shared with its watchdog and other steps) -- or at the latest every WAIT_S,
as its own process's commits do not wake it on PostgreSQL. It never holds a
task list in memory.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stepline.engine.context import StepContext
from stepline.engine.logwriter import StepLog
from stepline.engine.states import Status, StopReason
from stepline.store import reads, tasks
from stepline.store.workers import retry_while_unavailable
from stepline.store.writes import StepTasks

# Tasks made per write transaction: 5,000 took ~15 ms on SQLite and ~25 ms on
# PostgreSQL (set-based insert), short enough for every other writer.
BATCH = 5_000
# New batches only while fewer than this many wait unclaimed: the table holds
# what workers can take soon, not 10,000,000 rows up front, and a cancel has
# at most this many to cancel.
WINDOW = 20_000
WAIT_S = 0.5
PROGRESS_S = 0.5


@dataclass
class TaskRun:
    """What a task's function gets: its step's spec (params filled in), its
    index and attempt (1, 2, ...), the step's log, and a stop signal."""

    spec: dict[str, Any]
    index: int
    attempt: int
    log: StepLog
    stopped: threading.Event  # set when the step stops or the worker shuts down

    def wait(self, seconds: float) -> bool:
        """Sleep that wakes early on stop; returns True if stopped."""
        return self.stopped.wait(seconds)


REMOTE_TASKS: dict[str, Callable[[TaskRun], None]] = {}

def remote_tasks(step_type: str):
    """Register `fn(task: TaskRun)` as the way any worker runs one task of a
    `step_type` step; raising fails (or retries) the task."""
    def register(fn: Callable[[TaskRun], None]) -> Callable[[TaskRun], None]:
        REMOTE_TASKS[step_type] = fn
        return fn
    return register


def run_fanout(ctx: StepContext, total: int, cap: int | None = None) -> None:
    """The owner's part of a step of `total` remote tasks: create them in
    batches while workers run them, at most `cap` at once (None: no cap);
    return when all are terminal, or when the step must stop (then cancel
    what is left, in one write)."""
    created, shown, last_shown = 0, -1, 0.0
    _write(ctx, lambda tx: tasks.set_cap(tx, ctx.step_id, cap))  # before any task exists
    ctx.progress(0, total)
    watch = ctx.store.commit_watch()
    all_done = False
    try:
        while not ctx.cancelled:
            counts = reads.task_counts(ctx.store.db, ctx.step_id)
            if created < total and counts[Status.PENDING] < WINDOW:
                count = min(BATCH, total - created)
                _write(ctx, lambda tx, first=created, n=count:
                       tasks.add_range(tx, ctx.step_id, first, n))
                created += count
                # Wakes this process's task slots (through its watchdog): other
                # processes hear the commit, but on PostgreSQL a process does
                # not hear its own, and its slots looked only at their next 1 s
                # recheck (a 200-task step on one worker: 0.5-1.5 s before).
                ctx.store.commits.wake_all()
                continue
            done = created - counts[Status.PENDING] - counts[Status.RUNNING]
            if done != shown and time.monotonic() - last_shown >= PROGRESS_S:
                ctx.progress(done, total)
                shown, last_shown = done, time.monotonic()
            if created == total and done == total:
                ctx.progress(done, total)
                all_done = True
                return
            watch.wait(WAIT_S)
    finally:
        watch.close()
        if not all_done:  # stopped, or broken: no task of it may wait on for ever
            _write(ctx, _cancel_open(ctx.step_id), lambda: ctx.stop_reason is
                   StopReason.SHUTDOWN)


def _cancel_open(step_id: str):
    """Tasks not yet run are cancelled; running ones too (their workers see
    the step stop and end them; what they report then is dropped)."""
    def cancel(tx) -> None:
        tx.transition("task", StepTasks(step_id, Status.PENDING), Status.CANCELLED)
        tx.transition("task", StepTasks(step_id, Status.RUNNING), Status.CANCELLED)
    return cancel


def _write(ctx: StepContext, change, give_up=None) -> None:
    def write():
        with ctx.store.write() as tx:
            change(tx)

    retry_while_unavailable(write, give_up or (lambda: ctx.cancelled),
                            f"step {ctx.step_id}")
