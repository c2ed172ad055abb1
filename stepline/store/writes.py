"""The write side of the store: the one transition function, the one event
writer, job creation, claiming, cancelling, deleting and log appends (crash
recovery, built on the same transaction, is in `stepline.store.workers`).

Every write happens inside `Store.write()`, a `Tx` bound to one database
transaction (SQLite or PostgreSQL, see `stepline.store.backends`). A status
change and its event row are therefore committed together or not at all
(transactional outbox).
"""

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from stepline.engine.states import (
    TASK_STATUSES,
    TERMINAL,
    TRANSITIONS,
    Status,
    StopReason,
    check_transition,
    sql_list,
)
from stepline.store import sqlite as dbmod
from stepline.store.backends import open_backend
from stepline.store.changes import SharedWatch
from stepline.store.errors import Conflict, NotFound
from stepline.store.logtext import encodable, storable_text

TABLES = {"job": "jobs", "step": "steps", "task": "tasks"}


@dataclass(frozen=True)
class StepTasks:
    """For `Tx.transition`: every task of one step that is in `status`."""

    step_id: str
    status: str


def new_id() -> str:
    return uuid.uuid4().hex[:12]


# A log line before it is numbered and stored: (time in integer microseconds,
# level, message). An integer, because the batch is JSON-encoded while the
# step that logs waits for the GIL, and an int encodes in half a float's time.
LogEntry = tuple[int, str, str]


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Tx:
    """One write transaction. Task changes and log appends only touch their
    step; the step's single event for this transaction is written at the end."""

    conn: Any  # sqlite3.Connection, or postgres.TxConnection: the same execute API
    dialect: str = "sqlite"
    last_seq: int | None = None  # of the last event written
    _touched: dict[str, bool] = field(default_factory=dict)  # step_id -> log_refresh

    def transition(self, kind: str, entity_id: "str | int | list[int] | StepTasks", to: str,
                   error: str | None = None, worker: str | None = None) -> int:
        """THE status writer: validate against the table, write state, write event.
        A task that starts running records the `worker` running it.

        Tasks also change in bulk (a fan-out claims and finishes hundreds at a
        time): `entity_id` a list of task ids, of which those no longer in a
        state that allows the change (cancelled by their step's owner, deleted
        by a retry) are left as they are; or `StepTasks(step_id, status)`, every
        task of a step in that status. Returns how many changed."""
        table = TABLES[kind]
        where, args, moves = self._select(kind, entity_id, to, worker)
        if not args:
            return 0
        ts = dbmod.now()
        started = ts if to == Status.RUNNING else None
        finished = ts if to in TERMINAL else None
        version = "" if kind == "task" else ", version = version + 1"
        task_starts = kind == "task" and to == Status.RUNNING
        attempts = ", attempts = attempts + 1, worker = ?" if task_starts else ""
        if kind == "task" and to == Status.PENDING and error == StopReason.SHUTDOWN:
            # handed back by a worker shutting down: as if never claimed (workers.recover)
            attempts, error = ", attempts = attempts - 1", None
        changed = self.conn.execute(
            f"UPDATE {table} SET status = ?, error = coalesce(?, error),"
            f" started = coalesce(started, ?), finished = ?{version}{attempts}"
            f" WHERE {where}",
            (to, error, started, finished, *([worker] if task_starts else []), *args),
        ).rowcount
        if isinstance(entity_id, StepTasks):  # counted by the update itself
            moves = {(entity_id.step_id, entity_id.status): changed} if changed else {}
        if kind == "task":
            for (step_id, old), count in moves.items():
                self._move_task_counters(step_id, old, to, count)
        elif kind == "step":
            # lines appended earlier in this transaction still need their refresh
            refresh = bool(self._touched.pop(str(entity_id), False))
            self._write_step_event(str(entity_id), log_refresh=refresh)
        else:
            self.write_job_event(str(entity_id))
        return changed

    def _select(self, kind: str, entity_id, to: str,
                worker: str | None = None) -> tuple[str, list, dict]:
        """What `transition` changes: (WHERE clause, its args, task counter
        moves {(step_id, old status): count}). A single entity that may not
        make the change raises; a list of tasks keeps those that may."""
        if isinstance(entity_id, StepTasks):
            check_transition(kind, entity_id.status, to)
            return "step_id = ? AND status = ?", [entity_id.step_id, entity_id.status], {}
        if isinstance(entity_id, list):
            marks = ", ".join("?" * len(entity_id))
            rows = self.conn.execute(
                f"SELECT id, status, step_id, worker FROM tasks WHERE id IN ({marks})", entity_id
            ).fetchall() if entity_id else []
            # a worker's report ends only a run it holds (recovery may have moved it on)
            report = worker and to != Status.RUNNING
            rows = [r[:3] for r in rows if to in TRANSITIONS[kind].get(r[1], ())
                    and not (report and r[1] == Status.RUNNING and r[3] != worker)]
        else:
            step = ", step_id" if kind == "task" else ", NULL"
            rows = self.conn.execute(f"SELECT id, status{step} FROM {TABLES[kind]}"
                                     " WHERE id = ?", (entity_id,)).fetchall()
            if not rows:
                raise NotFound(f"{kind} {entity_id} not found")
            check_transition(kind, rows[0][1], to)
            if kind == "job" and to in TERMINAL:
                self._check_steps_terminal(str(entity_id))
        moves: dict[tuple[str, str], int] = {}
        for _id, old, step_id in rows:
            moves[(step_id, old)] = moves.get((step_id, old), 0) + 1
        ids = [r[0] for r in rows]
        return f"id IN ({', '.join('?' * len(ids))})", ids, moves

    def _check_steps_terminal(self, job_id: str) -> None:
        open_steps = self.conn.execute(
            "SELECT count(*) FROM steps WHERE job_id = ? AND status IN (?, ?)",
            (job_id, Status.PENDING, Status.RUNNING)).fetchone()[0]
        if open_steps:
            raise Conflict(f"job {job_id} has {open_steps} steps not yet terminal")

    def _move_task_counters(self, step_id: str, old: str, new: str, count: int) -> None:
        sets = ["version = version + 1"]
        if old in TASK_STATUSES:
            sets.append(f"tasks_{old} = tasks_{old} - {int(count)}")
        if new in TASK_STATUSES:
            sets.append(f"tasks_{new} = tasks_{new} + {int(count)}")
        self.conn.execute(f"UPDATE steps SET {', '.join(sets)} WHERE id = ?", (step_id,))
        self._touch(step_id)

    def _touch(self, step_id: str, log_refresh: bool = False) -> None:
        self._touched[step_id] = self._touched.get(step_id, False) or log_refresh

    # -- the one event writer -------------------------------------------------

    def write_job_event(self, job_id: str, status: str | None = None) -> int:
        row = self.conn.execute(
            "SELECT status, version FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is not None:
            status, version = status or row[0], row[1]
        else:  # the job was deleted; `status` says so
            version = None
        return self._insert_event("job", job_id, None, status, False, None, version)

    def _write_step_event(self, step_id: str, log_refresh: bool) -> int:
        job_id, name, status, log_count, version = self.conn.execute(
            "SELECT job_id, name, status, log_count, version FROM steps WHERE id = ?",
            (step_id,),
        ).fetchone()
        return self._insert_event(
            "job_step", job_id, step_id, status, log_refresh, log_count, version, name
        )

    def _insert_event(self, context, job_id, step_id, status, log_refresh, log_count, version,
                      step_name=None):
        self.last_seq = self.conn.execute(
            "INSERT INTO events (ts, context, job_id, step_id, step_name, status, log_refresh,"
            " log_count, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (dbmod.now(), context, job_id, step_id, step_name, status, int(log_refresh),
             log_count, version),
        ).fetchone()[0]
        return self.last_seq

    def flush_events(self) -> None:
        for step_id, log_refresh in self._touched.items():
            self._write_step_event(step_id, log_refresh)
        self._touched.clear()

    # -- other writes that are not status changes -----------------------------

    def append_logs(self, job_id: str, step_id: str, entries: list[LogEntry]) -> int:
        """Number lines after the step's committed count, inside this
        transaction, so they stay 1..n with no gap even across processes.
        On SQLite the batch travels as one JSON parameter: SQLite unpacks it
        in C with the GIL released, where executemany would bind row by row
        and hand the GIL back and forth with the step that is logging. On
        PostgreSQL it is one COPY."""
        if not entries:
            return 0
        start = self.conn.execute(
            "SELECT log_count FROM steps WHERE id = ?", (step_id,)
        ).fetchone()[0]
        if self.dialect == "postgres":  # COPY (see PgTxConnection.copy_logs)
            if not self.conn.copy_logs(step_id, start + 1, job_id, entries):
                self.conn.copy_logs(step_id, start + 1, job_id, [
                    (ts, level, storable_text(message)) for ts, level, message in entries])
        else:
            batch = json.dumps(entries, ensure_ascii=False)
            if "\\u0000" in batch or not encodable(batch):
                batch = json.dumps([(ts, level, storable_text(message))
                                    for ts, level, message in entries], ensure_ascii=False)
            self.conn.execute(INSERT_LOGS, (step_id, start + 1, job_id, batch))
        self.conn.execute(
            "UPDATE steps SET log_count = ?, version = version + 1 WHERE id = ?",
            (start + len(entries), step_id),
        )
        self._touch(step_id, log_refresh=True)
        return start + len(entries)

    def set_progress(self, step_id: str, done: int, total: int) -> None:
        self.conn.execute(
            "UPDATE steps SET progress_done = ?, progress_total = ?, version = version + 1"
            " WHERE id = ?",
            (done, total, step_id),
        )
        self._touch(step_id)

    def clear_step_for_retry(self, step_id: str) -> None:
        """A step that runs again starts clean: its earlier tasks, their
        counters, progress and error go (its log keeps what happened), so it
        never ends with "10 completed, 6 pending" for 8 tasks or an old
        "interrupted" error beside a success."""
        self.conn.execute("DELETE FROM tasks WHERE step_id = ?", (step_id,))
        counters = "".join(f"tasks_{s} = 0, " for s in TASK_STATUSES)
        self.conn.execute(f"UPDATE steps SET {counters}progress_done = 0, progress_total = 0,"
                          " error = NULL, version = version + 1 WHERE id = ?", (step_id,))
        self._touch(step_id)


class Store:
    """Narrow interface to the database: claim work, apply transitions,
    append logs, read views (see `stepline.store.reads`), read events after a seq."""

    def __init__(self, path: str):
        self.path = path
        self.backend = open_backend(path)
        # commits.wake_all(): for own commits, which PostgreSQL does not report
        self.commits = SharedWatch(self.backend.commit_watch)

    @property
    def db(self):
        """For reads: this thread's SQLite connection, or a PostgreSQL
        pool's (either way sqlite_utils' execute/query API)."""
        return self.backend.db()

    @contextmanager
    def write(self) -> Iterator[Tx]:
        with self.backend.transaction() as conn:
            tx = Tx(conn, self.backend.dialect)
            yield tx
            tx.flush_events()
            self.backend.before_commit(conn, tx.last_seq)

    def close(self) -> None:
        """Let go of the PostgreSQL pool's connections now (SQLite: nothing)."""
        self.backend.close()

    def commit_watch(self):
        """For one thread: `wait(timeout)` is True as soon as another process
        commits (a new job), False at the timeout. SQLite sees every commit;
        PostgreSQL only those that wrote events (no heartbeats, no cancel
        flags: workers poll those every round). All share one watch."""
        return self.commits.waiter()

    def event_watch(self):
        """For the web's tailer: `wait(timeout)` is True when new events may
        have been committed; `db` is the connection to read them with."""
        return self.backend.event_watch()

    def secret(self, name: str, candidate: str) -> str:
        """A value chosen once and shared by every process (e.g. the session key)."""
        with self.write() as tx:
            tx.conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                            (f"secret:{name}", candidate))
            return tx.conn.execute("SELECT value FROM meta WHERE key = ?",
                                   (f"secret:{name}",)).fetchone()[0]

    # -- jobs ------------------------------------------------------------------

    def create_job(self, definition, params: dict, rerun_of: str | None = None) -> str:
        """Insert a pending job and its pending steps from a loaded Definition."""
        job_id = new_id()
        with self.write() as tx:
            tx.conn.execute(
                "INSERT INTO jobs (id, definition, params, status, created, version,"
                " cancel_requested, timeout_s, rerun_of, max_parallel)"
                " VALUES (?, ?, ?, ?, ?, 1, 0, ?, ?, ?)",
                (job_id, definition.name, json.dumps(params), Status.PENDING, dbmod.now(),
                 definition.timeout_s, rerun_of, definition.max_parallel),
            )
            tx.conn.executemany(
                "INSERT INTO steps (id, job_id, idx, name, type, spec, depends, on_error,"
                " always_run, retries, timeout_s, status) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (new_id(), job_id, idx, s.name, s.type, json.dumps(s.spec),
                     json.dumps(s.depends), s.on_error, int(s.always_run), s.retries,
                     s.timeout_s, Status.PENDING)
                    for idx, s in enumerate(definition.steps)
                ],
            )
            tx.write_job_event(job_id)
        return job_id

    def claim_next_job(self, worker_id: str) -> str | None:
        """Atomically take the oldest pending job: the IMMEDIATE transaction
        holds the write lock, so two workers can never take the same one."""
        with self.write() as tx:
            row = tx.conn.execute(
                "SELECT id FROM jobs WHERE status = ? ORDER BY created, rowid LIMIT 1",
                (Status.PENDING,),
            ).fetchone()
            if row is None:
                return None
            tx.conn.execute("UPDATE jobs SET worker_id = ? WHERE id = ?", (worker_id, row[0]))
            tx.transition("job", row[0], Status.RUNNING)
            return row[0]

    def request_cancel(self, job_id: str) -> str:
        """Pending jobs are cancelled here and now; running ones are flagged
        for their worker, which stops the running step and finishes the rest."""
        with self.write() as tx:
            row = tx.conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"job {job_id} not found")
            status = row[0]
            if status in TERMINAL:
                raise Conflict(f"job {job_id} is already {status}")
            if status == Status.PENDING:
                for (step_id,) in tx.conn.execute(
                    "SELECT id FROM steps WHERE job_id = ? AND status = ? ORDER BY idx",
                    (job_id, Status.PENDING),
                ).fetchall():
                    tx.transition("step", step_id, Status.CANCELLED, StopReason.CANCELLED)
                tx.transition("job", job_id, Status.CANCELLED, StopReason.CANCELLED)
                return Status.CANCELLED
            tx.conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return "cancelling"

    def delete_job(self, job_id: str) -> None:
        with self.write() as tx:
            row = tx.conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"job {job_id} not found")
            if row[0] not in TERMINAL:
                raise Conflict(f"job {job_id} is {row[0]}; cancel it before deleting")
            _delete_jobs(tx, [job_id])

    def prune(self, older_than_s: float) -> int:
        """Delete terminal jobs finished before the cutoff, with their rows."""
        cutoff = dbmod.now() - older_than_s
        with self.write() as tx:
            ids = [r[0] for r in tx.conn.execute(
                f"SELECT id FROM jobs WHERE finished < ? AND status IN {sql_list(TERMINAL)}",
                (cutoff,),
            ).fetchall()]
            _delete_jobs(tx, ids)
            tx.conn.execute("DELETE FROM events WHERE ts < ? AND job_id NOT IN"
                            " (SELECT id FROM jobs)", (cutoff,))
        return len(ids)


# SQLite's: the batch as one JSON parameter (see Tx.append_logs).
INSERT_LOGS = ("INSERT INTO logs (step_id, line, job_id, ts, level, message)"
               " SELECT ?, ? + key, ?, (value ->> 0) / 1e6, value ->> 1, value ->> 2"
               " FROM json_each(?)")


def _delete_jobs(tx: Tx, job_ids: Iterable[str]) -> None:
    for job_id in job_ids:
        step_ids = [r[0] for r in tx.conn.execute(
            "SELECT id FROM steps WHERE job_id = ?", (job_id,)).fetchall()]
        for step_id in step_ids:
            tx.conn.execute("DELETE FROM tasks WHERE step_id = ?", (step_id,))
            tx.conn.execute("DELETE FROM logs WHERE step_id = ?", (step_id,))
        tx.conn.execute("DELETE FROM steps WHERE job_id = ?", (job_id,))
        tx.conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        tx.write_job_event(job_id, status="deleted")
