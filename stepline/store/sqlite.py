"""Opening the SQLite file and keeping its schema current.

All SQL lives in the store package; nothing above it knows which backend
it runs on (`SqliteBackend` here, `stepline.store.postgres` the other).
"""

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlite_utils
from sqlite_utils.db import COLUMN_TYPE_MAPPING

from stepline.store.changes import CommitWatch, DataVersionPoll

# How long a write waits for another process's write lock before it fails
# with "database is locked" (which workers retry and the web answers 503).
BUSY_TIMEOUT_S = float(os.environ.get("STEPLINE_BUSY_TIMEOUT", "30"))
MMAP_BYTES = 256 * 1024 * 1024

# table -> (columns, primary key, defaults)
SCHEMA: dict[str, tuple[dict[str, type], str | tuple[str, ...], dict[str, object]]] = {
    "jobs": (
        {
            "id": str, "definition": str, "params": str, "status": str, "error": str,
            "created": float, "started": float, "finished": float, "version": int,
            "worker_id": str, "cancel_requested": int, "timeout_s": float,
            "rerun_of": str, "max_parallel": int,
        },
        "id",
        {"version": 1, "cancel_requested": 0},
    ),
    "steps": (
        {
            "id": str, "job_id": str, "idx": int, "name": str, "type": str, "spec": str,
            "depends": str, "on_error": str, "always_run": int, "retries": int,
            "timeout_s": float, "status": str, "error": str, "started": float,
            "finished": float, "log_count": int, "tasks_pending": int,
            "tasks_running": int, "tasks_completed": int, "tasks_failed": int,
            "tasks_cancelled": int, "progress_done": int, "progress_total": int,
            "attempts": int, "version": int,
            "task_cap": int,  # its tasks running at once on all workers; NULL: no cap
        },
        "id",
        {
            "log_count": 0, "tasks_pending": 0, "tasks_running": 0, "tasks_completed": 0,
            "tasks_failed": 0, "tasks_cancelled": 0, "progress_done": 0, "progress_total": 0,
            "attempts": 0, "version": 1, "always_run": 0, "retries": 0,
        },
    ),
    "tasks": (
        {
            "id": int, "step_id": str, "idx": int, "status": str, "attempts": int,
            "error": str, "started": float, "finished": float,
            "worker": str,  # the worker that ran (or last ran) it
        },
        "id",
        {"attempts": 0},
    ),
    "meta": ({"key": str, "value": str}, "key", {}),
    "workers": (
        {"id": str, "pid": int, "hostname": str, "started": float, "heartbeat": float},
        "id",
        {},
    ),
}


def autoincrement_ddl(name: str) -> str:
    """CREATE TABLE for a SCHEMA table whose integer key is never reused
    (AUTOINCREMENT, as the events' seq): the tasks. A step that runs again
    deletes its tasks (Tx.clear_step_for_retry), and without it the new ones
    got the same ids: a worker still holding a task of the earlier attempt
    then reported its result onto a new task. The columns are SCHEMA's
    (PostgreSQL creates the table from it, with an identity id that is never
    reused), typed as sqlite-utils types them: it makes every other table,
    but has no AUTOINCREMENT."""
    columns, pk, defaults = SCHEMA[name]
    cols = [f"{pk} INTEGER PRIMARY KEY AUTOINCREMENT"] + [
        f"{column} {COLUMN_TYPE_MAPPING[kind]}"
        + (f" DEFAULT {defaults[column]!r}" if column in defaults else "")
        for column, kind in columns.items() if column != pk]
    return f"CREATE TABLE {name} ({', '.join(cols)})"


# Log lines live in one B-tree keyed by (step_id, line): WITHOUT ROWID makes
# appends ~1.6x faster than a rowid table plus its primary-key index, and a
# step's tail is a short backwards walk however long the log. (sqlite-utils
# cannot declare WITHOUT ROWID, hence plain SQL for this one table.) There is
# no level index: it would cost 40% of ingest speed, and a level filter walks
# the step's own range instead.
LOGS_DDL = """
CREATE TABLE IF NOT EXISTS logs (
    step_id TEXT NOT NULL, line INTEGER NOT NULL, job_id TEXT NOT NULL,
    ts REAL NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL,
    PRIMARY KEY (step_id, line)
) WITHOUT ROWID
"""

# A failed step opens at its first error line. Error lines are few, so an
# index of them alone costs ingest next to nothing, and finds the first one at
# once instead of walking the step's lines (a full walk of 1,000,000 lines
# with the error at the end: 0.23 s; through the index 0.1 ms; 1,000,000
# inserts took 4.4 s with it, 5.0 s without: no cost seen). Its query names
# it (reads.first_error_line).
LOGS_ERRORS_DDL = """
CREATE INDEX IF NOT EXISTS logs_errors ON logs (step_id, line) WHERE level = 'error'
"""

# The events outbox. AUTOINCREMENT: a seq is never handed out twice, also
# after prune or delete removed the highest ones; without it SQLite reuses
# max(seq) + 1, and tailers that already passed that number skip the new
# events for good. (sqlite-utils cannot declare AUTOINCREMENT: plain SQL.)
EVENTS_COLUMNS = ("seq", "ts", "context", "job_id", "step_id", "step_name", "status",
                  "log_refresh", "log_count", "version")
EVENTS_DDL = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL, context TEXT, job_id TEXT,
    step_id TEXT, step_name TEXT, status TEXT, log_refresh INTEGER DEFAULT 0,
    log_count INTEGER, version INTEGER
)
"""
# Tables whose keys are never reused: (name, DDL, columns, key). Tasks: a
# worker's report on a task id must never land on a later task.
AUTOINCREMENT_TABLES = [
    ("events", EVENTS_DDL, EVENTS_COLUMNS, "seq"),
    ("tasks", autoincrement_ddl("tasks"), tuple(SCHEMA["tasks"][0]), "id"),
]

# A column added to a table that already has rows, and how those rows get
# their value (both backends, in the schema's transaction): a counter starting
# at 0 beside tasks that were cancelled before it existed would fail
# `stepline check` on every upgraded database.
BACKFILL = {
    ("steps", "tasks_cancelled"):
        "UPDATE steps SET tasks_cancelled = (SELECT count(*) FROM tasks"
        " WHERE tasks.step_id = steps.id AND tasks.status = 'cancelled')",
}

# One index per query the UI and the worker make.
INDEXES: dict[str, list[tuple[str, ...]]] = {
    "jobs": [("status", "created"), ("created",), ("worker_id",), ("definition", "created")],
    "steps": [("job_id", "idx"), ("status",)],
    "tasks": [("step_id", "idx"), ("step_id", "status")],
    "events": [("job_id", "seq")],
}


class Database(sqlite_utils.Database):
    """sqlite_utils' Database, saying which SQL dialect it speaks (the few
    statements that differ are chosen by `db.dialect`)."""

    dialect = "sqlite"


class SqliteBackend:
    """The store's view of one SQLite file (see PostgresBackend for the other)."""

    dialect = "sqlite"

    def __init__(self, path: str):
        self.path = path
        self._conns = ConnectionPerThread(path)
        self.schema_changes = ensure_schema(self.db())

    def db(self) -> "Database":
        return self._conns.get()

    def transaction(self):
        return transaction(self.db())

    def before_commit(self, conn, last_seq: int | None) -> None:
        """Nothing to announce: other processes notice the commit itself."""

    def commit_watch(self) -> CommitWatch:
        """For one thread: wakes on any other connection's commit."""
        return CommitWatch(self.path, self.db)

    def event_watch(self) -> DataVersionPoll:
        """For the hub's tailer, with its own connection."""
        return DataVersionPoll(connect(self.path))

    def close(self) -> None:
        pass


def connect(path: str) -> Database:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    # WAL survives kill -9 of any process; NORMAL sync is enough for that.
    conn.execute("PRAGMA synchronous = NORMAL")
    # Reads map the file instead of copying pages: each web request has its
    # own connection, and a long log scan then runs from the OS page cache.
    conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
    return Database(conn)


def ensure_schema(db: sqlite_utils.Database) -> list[str]:
    """Create missing tables, columns and indexes; safe to run on every start.
    Returns what it changed, for `stepline migrate` to say: ["created the
    schema"] on a new file, [] on a current one."""
    enable_wal(db)
    with transaction(db):
        created = not db.table("jobs").exists()
        before = schema_objects(db)
        changes = [f"rebuilt {table} so its {key}s are never reused"
                   for table, ddl, columns, key in AUTOINCREMENT_TABLES
                   if ensure_autoincrement(db, table, ddl, columns, key)]
        for name, (columns, pk, defaults) in SCHEMA.items():
            table = db.table(name)
            if not table.exists():
                table.create(columns, pk=pk, defaults=defaults)
            else:
                for column, kind in columns.items():
                    if column not in table.columns_dict:
                        table.add_column(column, kind, not_null_default=defaults.get(column))
                        changes.append(f"added {name}.{column}")
                        if (name, column) in BACKFILL:
                            db.execute(BACKFILL[name, column])
        for name, indexes in INDEXES.items():
            for cols in indexes:
                db.table(name).create_index(cols, if_not_exists=True)
        db.execute(LOGS_DDL)
        db.execute(LOGS_ERRORS_DDL)
        changes += [f"created {made}" for made in sorted(schema_objects(db) - before)]
    return ["created the schema"] if created else changes


def schema_objects(db: sqlite_utils.Database) -> set[str]:
    """"table NAME" and "index NAME" for each one the file has."""
    return {f"{kind} {name}" for kind, name in db.execute(
        "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'index')"
        " AND name NOT LIKE 'sqlite_%'")}


def enable_wal(db: sqlite_utils.Database) -> None:
    """Switch a new file to WAL. Processes starting together on a new file
    (`stepline worker` beside `stepline run`) each ask for the exclusive lock
    the switch needs while holding a shared one; SQLite then fails one of them
    at once with "database is locked" instead of calling the busy handler (to
    avoid a deadlock). 4 processes at once failed 9 starts in 30. So: retry."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if db.journal_mode == "wal":
                return
            db.enable_wal()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def ensure_autoincrement(db: sqlite_utils.Database, table: str, ddl: str,
                         columns: tuple[str, ...], key: str) -> bool:
    """Create `table` from `ddl`, or rebuild one from before AUTOINCREMENT
    (and before some of `columns`): rows keep their `key`, and SQLite sets
    sqlite_sequence to the highest one copied, so new rows continue past it.
    Runs inside ensure_schema's write transaction: of several processes
    starting at once, the first rebuilds and the others see the new table.
    The old table's indexes go with it; ensure_schema makes them again.
    True when it rebuilt one."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                     (table,)).fetchone()
    if row is None:
        db.execute(ddl)
        return False
    if "AUTOINCREMENT" in row[0].upper():
        return False
    kept = ", ".join(c for c in columns if c in db.table(table).columns_dict)
    db.execute(f"ALTER TABLE {table} RENAME TO {table}_before_autoincrement")
    db.execute(ddl)
    db.execute(f"INSERT INTO {table} ({kept}) SELECT {kept} FROM {table}_before_autoincrement"
               f" ORDER BY {key}")
    db.execute(f"DROP TABLE {table}_before_autoincrement")
    return True


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so two
    writers serialise instead of failing halfway with SQLITE_BUSY."""
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


class ConnectionPerThread:
    """sqlite3 connections must not be shared across threads while in use;
    this hands each OS thread its own. Under gevent that means one connection
    for all of a web worker's greenlets, not one per request: greenlets only
    switch at I/O, and a SQLite call never yields, so no two of them can be
    inside the connection at once; while a connection per greenlet would cost
    three file descriptors and a page cache for every open WebSocket."""

    def __init__(self, path: str):
        self.path = path
        self._local = os_thread_local()

    def get(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect(self.path)
        return db


def os_thread_local():
    try:
        from gevent import monkey
    except ImportError:  # gevent is a dependency, but the engine does not need it
        return threading.local()
    if monkey.is_module_patched("threading"):
        return monkey.get_original("threading", "local")()
    return threading.local()


def now() -> float:
    return time.time()
