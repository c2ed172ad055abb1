"""PostgreSQL-only behaviour of the store, on a real server (tests/pg.py):
the schema, `stepline migrate`, LISTEN/NOTIFY wake-ups, and event order when
transactions commit out of seq order."""

import os
import sqlite3
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from stepline.store import reads, workers
from stepline.store.sqlite import SCHEMA
from stepline.store.writes import Store, now_us

from .conftest import ROOT, make_definition, stepline, wait_for

pytestmark = pytest.mark.one_backend  # picks its backends itself


def test_each_test_gets_its_own_empty_database(pg_url, pg_server):
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                              ).fetchone()[0]
    assert tables == 0
    assert pg_url != pg_server.url()


def columns(url: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    with psycopg.connect(url) as conn:
        for table, column in conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'public'"):
            found.setdefault(table, set()).add(column)
    return found


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_migrate_creates_the_schema_and_a_second_run_changes_nothing(backend, tmp_path,
                                                                     request):
    db = str(tmp_path / "new.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    first = stepline(db, "migrate")
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"{db}: created the schema\n"
    again = stepline(db, "migrate")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{db}: the schema is current\n"
    store = Store(db)
    store.db.execute("DROP INDEX logs_errors")  # as a database from before it
    made = stepline(db, "migrate")
    assert made.stdout == f"{db}: created index logs_errors\n", made.stderr
    assert reads.status_counts(store.db)["pending"] == 0
    assert stepline(db, "check").returncode == 0


def test_postgres_tables_have_the_sqlite_schema_columns_and_missing_ones_come_back(pg_url):
    Store(pg_url)
    found = columns(pg_url)
    for table, (cols, _pk, _defaults) in SCHEMA.items():
        assert set(cols) <= found[table], table
    assert {"seq", "job_id", "step_name", "log_refresh"} <= found["events"]
    with psycopg.connect(pg_url) as conn:  # a database from before a column existed
        conn.execute("ALTER TABLE tasks DROP COLUMN worker")
    Store(pg_url)
    assert "worker" in columns(pg_url)["tasks"]


def test_a_commit_wakes_the_watches_through_notify_carrying_the_seq(pg_url):
    store = Store(pg_url)
    events, commits = store.event_watch(), store.commit_watch()
    assert events.wait(0) and commits.wait(0)  # connected: may have missed some
    other = Store(pg_url)  # as another process
    worker_id = workers.register(other)
    workers.heartbeat(other, worker_id)  # commits without events wake nobody:
    assert not commits.wait(0.3), "another worker's heartbeat woke this worker"
    assert not events.wait(0.3), "a commit without events woke the tailer"

    with other.write() as tx:
        tx.write_job_event("new-job")
    assert commits.wait(10)
    assert events.wait(10)

    with store.write() as tx:  # the tailer's own process: its API writes too
        seq = tx.write_job_event("some-job", status="deleted")
    assert not commits.wait(0.3), "its own commit woke this store's commit watch"
    assert events.wait(10)
    # What the hub's tailer then reads, over the watch's own connection.
    assert [e["seq"] for e in reads.events_after(events.db, seq - 1)] == [seq]
    events.close()
    commits.close()  # the last waiter: the process's shared watch thread ends


def test_no_event_is_skipped_when_the_lower_seq_commits_last(pg_url, cpu_saturated):
    """Writer A inserts an event and holds its transaction open while writer B
    writes one and tries to commit; a tailer reading `seq > last` on every
    NOTIFY, as the web's hub does, must still deliver both. (Without the
    advisory lock B takes seq N+1 and commits first, the tailer moves past
    N+1, and A's N, committed later, is never delivered.)"""
    store = Store(pg_url)
    watch = store.event_watch()
    watch.wait(0)
    last = reads.last_seq(store.db)
    a_inserted, b_starting, done = threading.Event(), threading.Event(), threading.Event()
    delivered: list[dict] = []

    def tail():
        nonlocal last
        while not done.is_set():
            if watch.wait(0.05):
                for event in reads.events_after(watch.db, last):
                    last = event["seq"]
                    delivered.append(event)

    def writer_a():
        with store.write() as tx:
            tx.write_job_event("job-a", status="deleted")
            a_inserted.set()
            b_starting.wait(10)
            # B now tries to commit: give it, and the tailer, time to act
            # before A commits (without the lock B's commit lands first).
            time.sleep(1.0)

    def writer_b():
        a_inserted.wait(10)
        b_starting.set()
        with store.write() as tx:
            tx.write_job_event("job-b", status="deleted")

    threads = [threading.Thread(target=f) for f in (tail, writer_a, writer_b)]
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join(30)
    try:  # both are committed now: give the tailer time to catch up
        wait_for(lambda: len(delivered) >= 2, timeout=10, what="both events delivered")
    except AssertionError:
        pass  # the assertions below say what was missed
    done.set()
    threads[0].join(10)

    committed = reads.events_after(store.db, 0)
    assert sorted(e["job_id"] for e in committed) == ["job-a", "job-b"]
    assert [e["job_id"] for e in delivered] == [e["job_id"] for e in committed]
    assert [e["seq"] for e in delivered] == sorted(e["seq"] for e in delivered)


def test_a_write_held_up_past_the_busy_timeout_is_a_clear_unavailable_error(pg_url):
    """As with a locked SQLite file: the CLI says the database is unavailable
    and exits 2; nothing hangs behind another process's write."""
    from stepline.store.postgres import WRITE_LOCK

    Store(pg_url)
    with psycopg.connect(pg_url) as holder:  # a write transaction that does not end
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        result = subprocess.run(
            [sys.executable, "-m", "stepline.cli", "cancel", "nosuchjob"], cwd=ROOT,
            env={**os.environ, "STEPLINE_DB": pg_url, "PYTHONPATH": str(ROOT),
                 "STEPLINE_BUSY_TIMEOUT": "1"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "lock timeout" in result.stderr and result.stderr.count("\n") == 1


def test_writes_queued_behind_the_write_lock_leave_reads_and_the_tailer_free(pg_url):
    """Another process holds WRITE_LOCK; six writes of one store queue behind
    it. Reads -- a page's, and the hub tailer's event read -- must still
    answer while every write is still waiting (they used to queue for the
    same four pooled connections the waiting writes held)."""
    from stepline.store.postgres import WRITE_LOCK

    store = Store(pg_url)
    watch = store.event_watch()
    watch.wait(0)
    outcomes: list[object] = []

    def write(i: int) -> None:
        try:
            with store.write() as tx:
                tx.write_job_event(f"job-{i}", status="deleted")
            outcomes.append("written")
        except Exception as exc:  # noqa: BLE001 -- the assertion below shows it
            outcomes.append(exc)

    answered: list[object] = []

    def read() -> None:
        answered.append(reads.status_counts(store.db))
        answered.append(reads.events_after(watch.db, 0))

    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        writers = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(6)]
        for thread in writers:
            thread.start()
        wait_for(lambda: holder.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()[0] >= 1, timeout=20, what="a write waiting for the lock")
        time.sleep(0.5)  # let the other five writes queue too
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(15)  # under lock_timeout (30 s): the writes are still waiting
        still_waiting = not outcomes
        holder.execute("COMMIT")
    assert len(answered) == 2, "a read waited behind the queued writes"
    assert answered[1] == []  # nothing committed yet
    assert still_waiting
    for thread in writers:
        thread.join(60)
    assert outcomes == ["written"] * 6
    assert len(reads.events_after(store.db, 0)) == 6


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_restarted_tailer_closes_the_stopped_tailers_watch(backend, tmp_path, request):
    """The hub opens a new watch when its tailer thread has died; the old
    one's connections (LISTEN and reads, or SQLite's) must be closed, not
    leaked, each time."""
    from stepline.web.hub import Hub
    from stepline.web.subscriptions import QueueSubscription

    db = str(tmp_path / "t.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    store = Store(db)
    opened: list = []
    done = threading.Event()

    def event_watch():
        watch = store.event_watch()
        opened.append(watch)
        first, wait = len(opened) == 1, watch.wait

        def stopping(timeout):  # ends the tailer, as a killed greenlet's would end
            if first or done.is_set():
                raise SystemExit
            return wait(timeout)
        watch.wait = stopping
        return watch

    hub = Hub(event_watch, lambda method, *args: method(*args))

    class View:
        key = "all"

        def wants(self, event):
            return True

    hub.subscribe(QueueSubscription(View(), "sse"))
    wait_for(lambda: not hub._thread.is_alive(), timeout=10, what="the first tailer stopped")
    hub.subscribe(QueueSubscription(View(), "sse"))  # restarts it
    assert len(opened) == 2
    first, second = opened
    if backend == "sqlite":
        with pytest.raises(sqlite3.ProgrammingError):  # closed
            first.db.execute("SELECT 1")
    else:
        assert first._conn is None and first.db._conn is None
        wait_for(lambda: second._conn is not None, timeout=10, what="the new tailer listening")
    done.set()  # the second tailer stops too: nothing runs on after the test
    wait_for(lambda: not hub._thread.is_alive(), timeout=10, what="the second tailer stopped")
    assert reads.last_seq(second.db) == 0  # still open: it was the running tailer's
    second.close()
    store.close()


@pytest.mark.parametrize("url, shown", [
    ("postgresql://ann:s3cret@db:5432/jobs", "postgresql://ann:***@db:5432/jobs"),
    # Typed unencoded: a password holding '/', '@' or '?' is still hidden whole.
    ("postgresql://ann:s3/c@r?et@db/jobs", "postgresql://ann:***@db/jobs"),
    ("postgresql://ann@db/jobs?sslmode=require&password=s3cret",
     "postgresql://ann@db/jobs?sslmode=require&password=***"),
    ("postgres://db/jobs?password=s3cret&sslmode=require",
     "postgres://db/jobs?password=***&sslmode=require"),
    ("postgresql://ann@db/jobs", "postgresql://ann@db/jobs"),
    ("/srv/stepline/a:b@c.db", "/srv/stepline/a:b@c.db"),  # a file path is no URL
])
def test_a_printed_database_url_hides_the_password(url, shown):
    from stepline.store.backends import redacted

    assert redacted(url) == shown


def test_a_database_that_cannot_be_reached_is_named_without_its_password():
    from .pg import _free_port

    url = f"postgresql://ann:s3/c@r@127.0.0.1:{_free_port()}/jobs?password=t0p&sslmode=disable"
    result = stepline(url, "jobs")
    assert result.returncode == 2
    assert "s3/c" not in result.stderr and "t0p" not in result.stderr
    assert "ann:***@127.0.0.1:" in result.stderr and "password=***" in result.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_search_ignores_the_case_of_ascii_letters_only_on_both_backends(backend, tmp_path,
                                                                       pg_server):
    """"error" finds "ERROR"; "été" does not find "ÉTÉ" (SQLite's LIKE folds
    ASCII only), and the highlight marks exactly what was found. PostgreSQL
    runs on a UTF-8 locale that folds every letter (as most servers'
    default), where a plain ILIKE found "ÉTÉ" too and the highlight missed it."""
    from stepline.web.app import create_app

    if backend == "sqlite":
        db = str(tmp_path / "search.db")
    else:
        if pg_server is None:
            pytest.skip("no PostgreSQL server binaries here")
        name = f"search_{os.getpid()}"
        pg_server.admin(f"CREATE DATABASE {name} LOCALE 'C.utf8' TEMPLATE template0")
        db = pg_server.url(name)
    try:
        store = Store(db)
        job_id = store.create_job(make_definition('[step.a]\ntype = "shell"\nrun = "true"'), {})
        step_id = reads.job_steps(store.db, job_id)[0]["id"]
        with store.write() as tx:
            tx.append_logs(job_id, step_id, [(0, "info", "ÉTÉ chaud"), (0, "info", "été frais"),
                                             (0, "error", "ERROR: disk full")])
        client = create_app(db, token="").test_client()

        def found(q: str) -> list[str]:
            page = client.get(f"/api/jobs/{job_id}/steps/{step_id}/logs", query_string={"q": q})
            return [line["message"] for line in page.get_json()["lines"]]

        assert found("été") == ["été frais"]
        assert found("ÉTÉ") == ["ÉTÉ chaud"]
        assert found("error") == found("ERROR") == ["ERROR: disk full"]
        assert found("Été") == []
        shown = client.get(f"/jobs/{job_id}/steps/{step_id}/lines",
                           query_string={"tail": 1, "q": "été"}).text
        assert shown.count("<mark>") == 1 and "<mark>été</mark>" in shown
        shown = client.get(f"/jobs/{job_id}/steps/{step_id}/lines",
                           query_string={"tail": 1, "q": "disk FULL"}).text
        assert "<mark>disk full</mark>" in shown
        store.close()
    finally:
        if backend == "postgres":
            pg_server.drop_database(db)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_heartbeats_and_staleness_use_the_databases_clock(backend, tmp_path, request,
                                                           monkeypatch):
    """Workers on machines whose clocks disagree: a heartbeat written by a
    machine an hour behind is fresh to a machine with the right time, and a
    checker an hour ahead does not call a fresh heartbeat dead."""
    from stepline.store import sqlite as dbmod

    db = str(tmp_path / "w.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    store = Store(db)
    right_now = dbmod.now
    monkeypatch.setattr(dbmod, "now", lambda: right_now() - 3600)  # this clock is behind
    worker_id = workers.register(store)
    with store.write() as tx:  # on another machine: its pid means nothing here
        tx.conn.execute("UPDATE workers SET hostname = 'elsewhere' WHERE id = ?", (worker_id,))
    workers.heartbeat(store, worker_id)
    monkeypatch.setattr(dbmod, "now", right_now)
    assert worker_id not in workers.dead(store, stale_after_s=30)
    monkeypatch.setattr(dbmod, "now", lambda: right_now() + 3600)  # this one is ahead
    assert worker_id not in workers.dead(store, stale_after_s=30)
    with store.write() as tx:  # a heartbeat that did stop is still seen
        tx.conn.execute("UPDATE workers SET heartbeat = heartbeat - 60 WHERE id = ?",
                        (worker_id,))
    assert worker_id in workers.dead(store, stale_after_s=30)
    store.close()


def test_log_lines_go_in_through_copy_exactly_as_logged(pg_url):
    """COPY's text format gives a backslash, tab, newline and `\\N` meanings of
    their own: each line reads back as logged, numbered on from the last
    flush, with one log_refresh event per flush."""
    store = Store(pg_url)
    job_id = store.create_job(make_definition('[step.s]\ntype = "shell"\nrun = "true"'), {})
    step_id = reads.job_steps(store.db, job_id)[0]["id"]
    first = ["tab\there", "new\nline", "back\\slash \\N \\t", "cr\r", "\\.", "ü日本 😀", ""]
    second = ["nul \x00 inside", "lone \udcff surrogate", "last"]
    for flush in (first, second):
        with store.write() as tx:
            tx.append_logs(job_id, step_id, [(now_us(), "warn", m) for m in flush])
    rows = reads.log_lines(store.db, step_id, limit=100)
    assert [r["line"] for r in rows] == list(range(1, 11))
    assert [r["message"] for r in rows] == [*first, "nul \ufffd inside",
                                            "lone \ufffd surrogate", "last"]
    assert {r["level"] for r in rows} == {"warn"}
    refreshes = [e for e in reads.events_after(store.db, 0, 100, job_id=job_id)
                 if e["log_refresh"]]
    assert [e["log_count"] for e in refreshes] == [7, 10]
    assert reads.get_step(store.db, step_id)["log_count"] == 10


def test_text_postgresql_cannot_hold_is_cleaned_below_the_web_too(pg_url):
    """pgsql.StorableStrDumper, for callers that do not clean (the CLI, the
    engine): a NUL or a lone surrogate in a parameter is U+FFFD, as in stored
    lines, where psycopg used to raise."""
    store = Store(pg_url)
    job_id = store.create_job(make_definition('[step.a]\ntype = "shell"\nrun = "true"'), {})
    step_id = reads.job_steps(store.db, job_id)[0]["id"]
    with store.write() as tx:
        tx.append_logs(job_id, step_id, [(0, "info", "nul\x00here"), (0, "info", "plain")])
    for odd in ("\x00", f"{job_id}\x00", "\ud800"):
        assert reads.get_job(store.db, odd) is None
    for odd in ("\x00", "\ud800"):  # both are U+FFFD, as the stored line's NUL is
        assert [row["message"] for row in reads.log_lines(store.db, step_id, q=odd)] == [
            "nul\ufffdhere"]
