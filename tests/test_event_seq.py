"""Event seqs are never reused (AUTOINCREMENT, migrated from older files),
and an SSE resume the table cannot serve gets a snapshot."""

import json
import sqlite3

import pytest
import requests
from simple_websocket import Client

from stepline.store import reads
from stepline.store.writes import Store

from .conftest import make_definition
from .test_live_protocol import collect, read_sse

OLD_EVENTS = """CREATE TABLE events (seq INTEGER PRIMARY KEY, ts REAL, context TEXT,
    job_id TEXT, step_id TEXT, status TEXT, log_refresh INTEGER DEFAULT 0,
    log_count INTEGER, version INTEGER)"""
ONE_STEP = '[step.only]\ntype = "shell"\nrun = "echo hi"\n'


@pytest.mark.sqlite_only
def test_an_old_events_table_is_migrated_keeping_its_seqs(db_path):
    conn = sqlite3.connect(db_path)
    conn.execute(OLD_EVENTS)
    conn.executemany("INSERT INTO events (seq, ts, context, job_id, status) VALUES (?, 0, 'job',"
                     " 'old', 'completed')", [(5,), (9,), (40,)])
    conn.commit()
    conn.close()
    store = Store(db_path)
    assert [e["seq"] for e in reads.events_after(store.db, 0)] == [5, 9, 40]
    schema = store.db.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()
    assert "AUTOINCREMENT" in schema[0] and "step_name" in schema[0]
    store.db.execute("DELETE FROM events WHERE seq = 40")  # the newest, as prune can
    job_id = store.create_job(make_definition(ONE_STEP), {})
    assert reads.events_after(store.db, 9, job_id=job_id)[0]["seq"] == 41
    Store(db_path)  # opening again leaves it alone
    assert reads.last_seq(store.db) == 41


def test_after_prune_removes_the_newest_events_live_clients_still_get_new_ones(
        store, live_server, start_worker):
    server = live_server()
    ws = Client.connect(server.url.replace("http", "ws") + "/ws?view=jobs&format=json")
    assert json.loads(ws.receive(timeout=10))["snapshot"]
    start_worker()
    first = store.create_job(make_definition(ONE_STEP), {})
    collect(ws, listed_as_done(first), timeout=60)
    store.delete_job(first)
    old_max = reads.last_seq(store.db)
    store.prune(-60)  # every event of a deleted job goes, the newest included
    assert reads.last_seq(store.db) < old_max
    second = store.create_job(make_definition(ONE_STEP), {})
    messages = collect(ws, listed_as_done(second), timeout=60)
    ws.close()
    assert all(m["seq"] > old_max for m in messages
               if any(j["job_id"] == second for j in m.get("jobs", [])))


def listed_as_done(job_id: str):
    """A jobs-list message (coalesced) that shows the job finished."""
    return lambda m: not m.get("snapshot") and any(
        j["job_id"] == job_id and j["status"] in ("completed", "failed", "cancelled")
        for j in m.get("jobs", []))


def test_sse_resume_ahead_of_or_behind_the_table_gets_a_snapshot(store, live_server):
    server = live_server()
    job_id = store.create_job(make_definition(ONE_STEP), {})
    for _ in range(3):
        store.create_job(make_definition(ONE_STEP), {})
    newest = reads.last_seq(store.db)
    store.db.execute("DELETE FROM events WHERE seq = 1")  # pruned: seq 1 is gone
    for last_id in (newest + 100, 0):  # a restored database; events lost to prune
        response = requests.get(server.url + f"/events?job={job_id}", stream=True, timeout=30,
                                headers={"Last-Event-ID": str(last_id)})
        (seq, html), = read_sse(response, lambda pairs: True)
        response.close()
        assert seq == newest and f'id="job-{job_id}"' in html and 'id="step-' in html
