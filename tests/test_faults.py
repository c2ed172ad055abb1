"""The database misbehaves: locked by another process, unwritable, full.
Each case gives a clear error, corrupts nothing and recovers by itself once
the condition clears."""

import os
import resource
import subprocess
import sys
import textwrap
import time

import pytest
import requests

from stepline.store import reads
from stepline.store.check import violations

from .conftest import (
    log_messages,
    make_definition,
    stepline,
    steps_by_name,
    wait_for,
    wait_job,
)

COUNTING = """
[step.count]
type = "shell"
run = "for i in $(seq 1 {n}); do echo line $i {pad}; sleep {pause}; done"
"""


def hold_write_lock(db_path: str, seconds: float) -> subprocess.Popen:
    """Another process that takes SQLite's write lock and sits on it."""
    script = textwrap.dedent(f"""
        import sqlite3, sys, time
        conn = sqlite3.connect({db_path!r}, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        print("locked", flush=True)
        time.sleep({seconds})
        conn.execute("ROLLBACK")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def assert_intact(store, job_id: str, lines: int) -> None:
    """Completed, every line once and in order, invariants and file intact."""
    job = wait_job(store, job_id, timeout=60)
    assert job["status"] == "completed", job
    step = steps_by_name(store, job_id)["count"]
    messages = log_messages(store, step["id"])
    assert [m.split()[1] for m in messages] == [str(i) for i in range(1, lines + 1)]
    assert violations(store.db) == []
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_unwritable_database_path_is_a_clear_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    bad = str(not_a_dir / "stepline.db")
    for command in (["worker"], ["jobs"], ["serve", "--port", "1"]):
        result = stepline(bad, *command, "--db", bad, timeout=30)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.strip() == f"stepline: database {bad}: unable to open database file"


@pytest.mark.sqlite_only  # the lock and the full disk are the SQLite file's
def test_locked_database_delays_work_and_refuses_api_writes_cleanly(
        store, db_path, start_worker, live_server):
    quick = {"STEPLINE_BUSY_TIMEOUT": "0.3"}
    server = live_server(env=quick)
    worker = start_worker(env=quick)
    job_id = store.create_job(make_definition(COUNTING.format(n=150, pad="", pause=0.01)), {})
    step_id = steps_by_name(store, job_id)["count"]["id"]
    wait_for(lambda: reads.get_step(store.db, step_id)["log_count"] >= 20, what="lines")

    holder = hold_write_lock(db_path, seconds=4)
    refused = requests.post(server.url + f"/api/jobs/{job_id}/cancel", json={}, timeout=10)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"].startswith("database unavailable (database is locked)")
    # reads go on under the lock (WAL): the page and the API still answer
    assert requests.get(server.url + f"/api/jobs/{job_id}", timeout=10).ok
    assert requests.get(server.url + f"/jobs/{job_id}", timeout=10).ok
    assert holder.wait(20) == 0

    assert_intact(store, job_id, lines=150)
    assert requests.get(server.url + f"/api/jobs/{job_id}", timeout=10).json()["status"] == \
        "completed"
    assert "database is locked" in worker.stop()


@pytest.mark.sqlite_only
def test_disk_full_keeps_every_line_and_recovers(store, db_path, start_worker):
    """RLIMIT_FSIZE stands in for a full disk: every write past the limit
    fails with an I/O error, just as on a small filesystem, and needs no
    privilege to set or to lift."""
    job_id = store.create_job(
        make_definition(COUNTING.format(n=3000, pad="x" * 200, pause=0)), {})
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    used = max(os.path.getsize(db_path + suffix) for suffix in ("", "-wal", "-shm")
               if os.path.exists(db_path + suffix))
    worker = start_worker()
    limit = used + 64 * 1024
    resource.prlimit(worker.proc.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    step_id = steps_by_name(store, job_id)["count"]["id"]
    wait_for(lambda: reads.get_step(store.db, step_id)["status"] == "running", what="start")
    time.sleep(3)  # the step has printed everything by now; most of it cannot be stored
    assert reads.get_step(store.db, step_id)["log_count"] < 3000
    assert reads.get_job(store.db, job_id)["status"] == "running"

    resource.prlimit(worker.proc.pid, resource.RLIMIT_FSIZE,
                     (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert_intact(store, job_id, lines=3000)
    assert "will retry: disk I/O error" in worker.stop()
