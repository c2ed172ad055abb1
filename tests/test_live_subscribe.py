"""Invariant 5 under pressure: many WebSocket and SSE connections open while
a job emits events fast, and each must get its snapshot and then every event
of the job after the snapshot's seq, none missing, none repeated, in order.
Real gunicorn (gevent), a real worker, raw sockets."""

import json
import threading
import time

import pytest
import requests

from stepline.store import reads

from .conftest import make_definition
from .live_server import FrameReader, ws_connect

ONE_STEP = '[step.busy]\ntype = "shell"\nrun = "true"\n'
BURSTS = 10
CONNECTIONS_PER_BURST = 5  # of each kind
WATCH_S = 60  # a connection that missed the last event gives up after this


def watch_ws(port: int, job_id: str, final: list, out: list) -> None:
    """(seq, is_snapshot) of each message until the job's last event, or
    until the deadline."""
    sock = ws_connect(port, f"/ws?job={job_id}&format=json")
    reader, got = FrameReader(sock), []
    deadline = time.monotonic() + WATCH_S
    try:
        while time.monotonic() < deadline and not (final and got and got[-1][0] >= final[0]):
            frame = reader.next(timeout=1)  # a partial frame stays in the reader
            if frame is None or frame[0] != 0x1:  # nothing yet, or a ping
                continue
            message = json.loads(frame[1])
            got.append((message["seq"], bool(message.get("snapshot"))))
    finally:
        sock.close()
    out.append(("ws", got))


def watch_sse(url: str, job_id: str, final: list, out: list) -> None:
    """The same over SSE (a keepalive every 15 s lets it see the deadline).
    A snapshot is the one message holding both the job header and steps."""
    response = requests.get(f"{url}/events?job={job_id}", stream=True, timeout=60)
    got, seq, data = [], None, ""
    deadline = time.monotonic() + WATCH_S
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("id: "):
            seq = int(line[4:])
        elif line.startswith("data: "):
            data += line
        elif line == "" and seq is not None:
            got.append((seq, 'id="job-' in data and 'id="step-' in data))
            seq, data = None, ""
        if time.monotonic() > deadline or (final and got and got[-1][0] >= final[0]):
            break
    response.close()
    out.append(("sse", got))


def first_gap(got: list[tuple[int, bool]], events: list[int]) -> int | None:
    """The first event a connection missed, or None: it must start with a
    snapshot, then have each event after it in order; a later snapshot (a
    stream that fell behind resyncs) moves the position forward."""
    if not got or not got[0][1]:
        return -1
    position = 0
    for seq, is_snapshot in got:
        if is_snapshot:
            position = max(position, seq)
            continue
        following = [e for e in events if e > position]
        if not following or seq != following[0]:
            return following[0] if following else seq
        position = seq
    return None if position >= events[-1] else next(e for e in events if e > position)


def emit_events(store, job_id: str, stop: threading.Event) -> None:
    """The job's step logs one line per transaction, as fast as SQLite
    commits (one log_refresh event each), until told to stop."""
    step_id = reads.job_steps(store.db, job_id)[0]["id"]
    with store.write() as tx:
        tx.transition("job", job_id, "running")
        tx.transition("step", step_id, "running")
    while not stop.is_set():
        with store.write() as tx:
            tx.append_logs(job_id, step_id, [(time.time_ns() // 1000, "info", "tick")])
        time.sleep(0.001)
    with store.write() as tx:
        tx.transition("step", step_id, "completed")
    with store.write() as tx:
        tx.transition("job", job_id, "completed")


def run_connections_during_a_busy_job(store, server) -> None:
    """Bursts of connections (a WS and an SSE each, at once) while events
    stream in; then every connection's seqs are checked against the table."""
    job_id = store.create_job(make_definition(ONE_STEP), {})
    results: list = []
    stop = threading.Event()
    emitter = threading.Thread(target=emit_events, args=(store, job_id, stop), daemon=True)
    emitter.start()
    watchers = []
    final: list[int] = []  # the job's last seq, once it is written
    for _ in range(BURSTS):
        for _ in range(CONNECTIONS_PER_BURST):
            for target, args in ((watch_ws, (server.port, job_id, final, results)),
                                 (watch_sse, (server.url, job_id, final, results))):
                watchers.append(threading.Thread(target=target, args=args, daemon=True))
                watchers[-1].start()
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    emitter.join(30)
    final.append(reads.last_seq(store.db))
    for thread in watchers:
        thread.join(WATCH_S + 20)
    events = [e["seq"] for e in reads.events_after(store.db, 0, 10**6, job_id=job_id)]
    assert len(results) == len(watchers)
    missed = [(kind, got[0], gap) for kind, got in results
              if (gap := first_gap(got, events)) is not None]
    assert not missed, f"{len(missed)} of {len(results)} connections missed events: {missed}"


def test_no_event_is_missed_between_snapshot_and_subscription(store, live_server):
    run_connections_during_a_busy_job(store, live_server())


@pytest.mark.usefixtures("cpu_saturated")
def test_no_event_is_missed_with_the_cpu_saturated(store, live_server):
    run_connections_during_a_busy_job(store, live_server())
