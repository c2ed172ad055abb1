"""The worker registry, crash recovery and the retry policy for writes.

A worker registers with its pid and host and heartbeats; a worker whose
heartbeat stopped (or whose process on this host is gone) is dead, and what
it left running is failed -- or re-queued, where the step allows retries.
"""

import os
import socket
import sys
import time
from collections.abc import Callable, Collection
from typing import TypeVar

from stepline.engine.states import Status, may_run_again
from stepline.store import sqlite as dbmod
from stepline.store import tasks
from stepline.store.errors import unavailable
from stepline.store.writes import StepTasks, Store, new_id, now_us

RETRY_MAX_S = 2.0
# The database's clock, in epoch seconds: workers on different machines write
# heartbeats and judge them by one clock, so a machine whose clock is off
# neither looks dead nor calls the others dead.
DB_NOW = {"sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
          "postgres": "(extract(epoch FROM clock_timestamp())::double precision)"}
T = TypeVar("T")


def retry_while_unavailable(write: Callable[[], T], give_up: Callable[[], bool],
                            what: str) -> T:
    """Run a write until it lands. A worker's status changes must not be lost
    to a database that is locked, full or read-only for a while: losing one
    would leave a job `running` behind a live heartbeat. `give_up()` says when
    to stop trying (the worker is shutting down: recovery takes over)."""
    delay = 0.05
    while True:
        try:
            return write()
        except unavailable() as exc:
            if give_up():
                raise
            print(f"stepline: {what}: database write failed, will retry: {exc}",
                  file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


def register(store: Store) -> str:
    worker_id = f"{socket.gethostname()}-{os.getpid()}-{new_id()[:4]}"
    with store.write() as tx:
        tx.conn.execute(
            "INSERT INTO workers (id, pid, hostname, started, heartbeat)"
            f" VALUES (?, ?, ?, ?, {DB_NOW[store.backend.dialect]})",
            (worker_id, os.getpid(), socket.gethostname(), dbmod.now()),
        )
    return worker_id

def heartbeat(store: Store, worker_id: str) -> None:
    with store.write() as tx:
        tx.conn.execute(f"UPDATE workers SET heartbeat = {DB_NOW[store.backend.dialect]}"
                        " WHERE id = ?", (worker_id,))

def unregister(store: Store, worker_id: str) -> None:
    with store.write() as tx:
        tx.conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

def live(store: Store, stale_after_s: float) -> list[str]:
    """Registered workers whose heartbeat is fresh and, on this host, whose process runs."""
    here = socket.gethostname()
    return [row["id"] for row in store.db.query(
        "SELECT id, pid, hostname, heartbeat >= "
        f"{DB_NOW[store.backend.dialect]} - ? AS fresh FROM workers", (stale_after_s,)
    ) if row["fresh"] and not (row["hostname"] == here and not _pid_alive(row["pid"]))]


def dead(store: Store, stale_after_s: float) -> list[str]:
    """Workers whose heartbeat stopped, or whose process on this host is gone."""
    here = socket.gethostname()
    dead = []
    for row in store.db.query(
        "SELECT id, pid, hostname, heartbeat < "
        f"{DB_NOW[store.backend.dialect]} - ? AS stale FROM workers", (stale_after_s,)
    ):
        if row["stale"] or (row["hostname"] == here and not _pid_alive(row["pid"])):
            dead.append(row["id"])
    # Jobs and tasks held by a worker id that is not registered at all are orphans too.
    for row in store.db.query(
        "SELECT DISTINCT worker_id FROM jobs WHERE status = ? AND worker_id NOT IN"
        " (SELECT id FROM workers) UNION SELECT DISTINCT t.worker FROM steps s JOIN tasks t"
        " ON t.step_id = s.id AND t.status = ? WHERE s.status = ? AND t.worker NOT IN"
        " (SELECT id FROM workers)", (Status.RUNNING, Status.RUNNING, Status.RUNNING)
    ):
        dead.append(row["worker_id"])
    return dead

def recover(store: Store, dead_worker_id: str, only_job: str | None = None,
            error: str | None = None, handed_back: Collection[str] = ()) -> list[str]:
    """Fail (or re-queue, where the step allows retries) what a dead worker
    left running -- or one job of a live worker whose run crashed. The job
    goes back to pending so a live worker finishes it with the normal
    rules: dependents skipped, always_run steps run.

    `handed_back`: steps of a worker shutting down (SIGTERM) that stopped
    when asked. They go back in line without an attempt charged, whatever
    their `retries`: the operator stopped the worker, the step did nothing
    wrong. A crash (kill -9, a dead heartbeat) charges one, as does a step
    that ignored the stop: the step itself may be what kills or hangs its
    worker (memory, a segfault in its code), and re-running it for free
    would take down worker after worker. (The tasks a stopping worker hands
    back are not charged either: see Tx.transition.)"""
    error = error or f"interrupted: worker {dead_worker_id} stopped"
    note = f"worker {dead_worker_id} shutting down: the step goes back in line"
    with store.write() as tx:
        if not only_job:
            _recover_tasks(tx, dead_worker_id, error)
        job_ids = [r[0] for r in tx.conn.execute(
            "SELECT id FROM jobs WHERE worker_id = ? AND status = ? AND ? IN (id, '')",
            (dead_worker_id, Status.RUNNING, only_job or ""),
        ).fetchall()]
        for job_id in job_ids:
            for step_id, retries, attempts in tx.conn.execute(
                "SELECT id, retries, attempts FROM steps WHERE job_id = ? AND status = ?",
                (job_id, Status.RUNNING),
            ).fetchall():
                free = step_id in handed_back
                retry = free or attempts < retries
                tx.append_logs(job_id, step_id, [(now_us(), *(("warn", note) if free
                                                              else ("error", error)))])
                if not free:
                    tx.conn.execute(
                        "UPDATE steps SET attempts = attempts + 1 WHERE id = ?", (step_id,))
                if retry:  # it runs again from the start
                    tx.clear_step_for_retry(step_id)
                    tx.transition("step", step_id, Status.PENDING)
                    continue
                # its tasks end with it, also those other workers run (which
                # see the step stop) and those never claimed
                tx.transition("task", StepTasks(step_id, Status.RUNNING), Status.FAILED, error)
                tx.transition("task", StepTasks(step_id, Status.PENDING), Status.CANCELLED)
                tx.transition("step", step_id, Status.FAILED, error)
            tx.conn.execute("UPDATE jobs SET worker_id = NULL WHERE id = ?", (job_id,))
            tx.transition("job", job_id, Status.PENDING)
        if not only_job:
            tx.conn.execute("DELETE FROM workers WHERE id = ?", (dead_worker_id,))
    return job_ids


def _recover_tasks(tx, dead_worker_id: str, error: str) -> None:
    """The tasks a dead worker was running, of any job: each goes back in line
    while its step allows another attempt (attempts count starts; a step
    with `retries = N` allows N + 1), else fails. Nothing else changes: the
    step's owner carries on and finishes the step."""
    held = tasks.held_by(tx, dead_worker_id)
    again = [row for row in held if may_run_again(row[3], row[4])]
    for job_id, step_id in {(row[1], row[2]) for row in held}:
        requeued = sum(row[2] == step_id for row in again)
        failed = sum(row[2] == step_id for row in held) - requeued
        tx.append_logs(job_id, step_id, [(now_us(), "error", f"{error}: {requeued} of its"
                                          f" tasks there went back in line, {failed} failed")])
    tx.transition("task", [row[0] for row in again], Status.PENDING, error)
    tx.transition("task", [row[0] for row in held if not may_run_again(row[3], row[4])],
                  Status.FAILED, error)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
