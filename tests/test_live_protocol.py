"""The live protocol against a real `gunicorn -k gevent` and a real worker."""

import json
import os
import signal
import time

import requests
from simple_websocket import Client

from stepline.store import reads

from .conftest import make_definition, wait_job
from .live_server import FrameReader, read_frames, socket_count, ws_connect

PIPELINE = """
[step.build]
type = "shell"
run = "for i in 1 2 3; do echo build $i; sleep 0.1; done"
[step.broken]
type = "shell"
run = "echo about to fail; exit 4"
depends = ["build"]
[step.after_broken]
type = "shell"
run = "echo never"
depends = ["broken"]
[step.fan]
type = "generate"
tasks = 6
logs_per_task = 3
depends = ["build"]
[step.report]
type = "shell"
run = "echo report"
depends = ["fan"]
"""


def collect(ws: Client, until, timeout: float = 30) -> list[dict]:
    messages = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = ws.receive(timeout=0.5)
        if raw is None:
            continue
        messages.append(json.loads(raw))
        if until(messages[-1]):
            return messages
    raise AssertionError(f"no final message; got {len(messages)} messages")


def job_done(job_id):
    return lambda m: (m["context"] == "job" and m["job_id"] == job_id and not m.get("snapshot")
                      and m["status"] in ("completed", "failed", "cancelled"))


def test_ws_snapshot_then_one_message_per_event_in_order(store, live_server, start_worker):
    server = live_server()
    job_id = store.create_job(make_definition(PIPELINE), {})
    ws = Client.connect(server.url.replace("http", "ws") + f"/ws?job={job_id}&format=json")
    snapshot = json.loads(ws.receive(timeout=30))
    assert snapshot["snapshot"] is True and snapshot["status"] == "pending"
    assert [s["status"] for s in snapshot["steps"]] == ["pending"] * 5
    assert "content" not in snapshot
    start_worker()
    messages = collect(ws, job_done(job_id))
    ws.close()

    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    expected = [e["seq"] for e in reads.events_after(store.db, snapshot["seq"], 10**6,
                                                       job_id=job_id)]
    assert seqs == expected  # every event of this job, none missing, none repeated
    names = {s["id"]: s["name"] for s in reads.job_steps(store.db, job_id)}
    assert [(s["step_id"], s["name"]) for s in snapshot["steps"]] == list(names.items())
    for m in messages:
        assert set(m) == {"seq", "context", "job_id", "step_id", "step_name", "status",
                          "log_refresh", "log_count", "version"}
        assert m["step_name"] == (names[m["step_id"]] if m["context"] == "job_step" else None)

    history: dict[str, list[str]] = {}
    for m in messages:
        key = names.get(m["step_id"], "job")
        if not history.get(key) or history[key][-1] != m["status"]:
            history.setdefault(key, []).append(m["status"])
    assert history["job"] == ["running", "failed"]
    assert history["build"] == ["running", "completed"]
    assert history["broken"] == ["running", "failed"]
    assert history["after_broken"] == ["skipped"]
    assert history["fan"] == ["running", "completed"]
    assert history["report"] == ["running", "completed"]
    build_logs = [m for m in messages if names.get(m["step_id"]) == "build" and m["log_refresh"]]
    assert build_logs and build_logs[-1]["log_count"] == 3


def test_ws_html_content_and_cancel_message(store, live_server, start_worker):
    server = live_server()
    job_id = store.create_job(make_definition('[step.wait]\ntype = "shell"\nrun = "sleep 30"\n'),
                              {})
    ws = Client.connect(server.url.replace("http", "ws") + f"/ws?job={job_id}")
    snapshot = json.loads(ws.receive(timeout=30))
    assert f'id="job-{job_id}"' in snapshot["content"]
    assert 'data-status="pending"' in snapshot["content"]
    start_worker()
    running = collect(ws, lambda m: m["context"] == "job_step" and m["status"] == "running")
    row = running[-1]["content"]
    assert row.startswith(f'<tr id="step-{running[-1]["step_id"]}"')
    assert 'hx-swap-oob="outerMorph"' in row and 'data-status="running"' in row
    assert requests.post(server.url + f"/api/jobs/{job_id}/cancel", json={}).json() == {
        "job_id": job_id, "status": "cancelling"}
    final = collect(ws, job_done(job_id))
    statuses = [(m["context"], m["status"]) for m in final]
    assert ("job_step", "cancelled") in statuses and statuses[-1] == ("job", "cancelled")
    assert 'data-status="cancelled"' in final[-1]["content"]


def test_ws_jobs_view_sees_new_jobs(store, live_server):
    server = live_server()
    ws = Client.connect(server.url.replace("http", "ws") + "/ws?view=jobs")
    snapshot = json.loads(ws.receive(timeout=30))
    assert snapshot["snapshot"] and snapshot["jobs"] == []
    job_id = requests.post(server.url + "/api/definitions/load_demo/run",
                           json={"params": {"tasks": 2}}).json()["job_id"]
    message = collect(ws, lambda m: any(j["job_id"] == job_id for j in m["jobs"]))[-1]
    assert message["context"] == "job" and message["job_id"] is None
    assert [j["status"] for j in message["jobs"]] == ["pending"]
    assert f'id="job-{job_id}"' in message["content"] and 'id="metrics"' in message["content"]


def test_ws_jobs_view_coalesces_every_event_into_few_messages(store, live_server):
    """The jobs list gets one message per 100 ms on average, covering every
    event since the last (#9: one per event drowned the page at 10 jobs/s)."""
    server = live_server()
    ws = Client.connect(server.url.replace("http", "ws") + "/ws?view=jobs&format=json")
    snapshot = json.loads(ws.receive(timeout=30))
    definition = make_definition('[step.only]\ntype = "shell"\nrun = "true"\n')
    for _ in range(200):
        store.create_job(definition, {})
    last = reads.last_seq(store.db)
    messages = collect(ws, lambda m: m["seq"] == last)
    ws.close()
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(set(seqs))
    assert sum(m["events"] for m in messages) == last - snapshot["seq"] == 200
    assert len(messages) < 50  # 200 events, coalesced
    for m in messages:
        assert set(m) == {"seq", "context", "job_id", "step_id", "step_name", "status",
                          "log_refresh", "log_count", "version", "events", "list", "jobs"}
    shown = reads.list_jobs(store.db, limit=25)[0]
    assert messages[-1]["jobs"][0]["job_id"] == shown[0]["id"]  # the newest job, on top


def test_ws_unknown_job_is_refused_with_an_error(live_server):
    server = live_server()
    # raw frames: simple-websocket's client can lose frames that arrive with
    # the handshake response, as these two do on a busy machine
    sock = ws_connect(server.port, "/ws?job=nope")
    (text_op, text), (close_op, close) = read_frames(sock)
    sock.close()
    assert text_op == 0x1 and json.loads(text) == {"error": "job nope not found"}
    assert close_op == 0x8 and int.from_bytes(close[:2], "big") == 1008


def read_sse(response, stop, limit_s: float = 30) -> list[tuple[int, str]]:
    """(id, data) pairs of a text/event-stream until stop(pairs) is true."""
    pairs, current_id, data = [], None, []
    deadline = time.monotonic() + limit_s
    for line in response.iter_lines(decode_unicode=True):
        if time.monotonic() > deadline:
            raise AssertionError("SSE read timed out")
        if line.startswith("id: "):
            current_id = int(line[4:])
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and current_id is not None:
            pairs.append((current_id, "\n".join(data)))
            current_id, data = None, []
            if stop(pairs):
                break
    return pairs


def test_sse_resumes_from_last_event_id_without_gap_or_repeat(store, live_server,
                                                               start_worker):
    server = live_server()
    job_id = store.create_job(make_definition(PIPELINE), {})
    url = server.url + f"/events?job={job_id}"
    first = requests.get(url, stream=True, timeout=30)
    assert first.headers["Content-Type"].startswith("text/event-stream")
    assert first.headers["X-Accel-Buffering"] == "no"
    start_worker()
    part1 = read_sse(first, lambda p: len(p) >= 6)
    first.close()
    snapshot_seq, snapshot_html = part1[0]
    assert f'id="job-{job_id}"' in snapshot_html
    last_id = part1[-1][0]
    wait_job(store, job_id)
    second = requests.get(url, stream=True, timeout=30, headers={"Last-Event-ID": str(last_id)})
    final_seq = reads.events_after(store.db, 0, 10**6, job_id=job_id)[-1]["seq"]
    part2 = read_sse(second, lambda p: p[-1][0] >= final_seq)
    second.close()
    got = [seq for seq, _ in part1[1:] + part2]
    expected = [e["seq"] for e in reads.events_after(store.db, snapshot_seq, 10**6,
                                                       job_id=job_id)]
    assert got == expected


class RawWebSocket:
    """A WebSocket read frame by frame from its socket: simple-websocket's
    Client drops frames that arrive with the handshake response, which made
    the test below fail under load with no snapshot."""

    def __init__(self, port: int, path: str):
        self.sock = ws_connect(port, path, timeout=30)
        self.frames = FrameReader(self.sock)

    def receive(self, timeout: float) -> str | None:
        frame = self.frames.next(timeout)
        return frame[1].decode() if frame and frame[0] == 0x1 else None

    def close(self) -> None:
        self.sock.close()


def test_two_gunicorn_workers_both_stream_a_job_run_by_the_worker(store, live_server,
                                                                 start_worker):
    server = live_server(workers=2)
    pids = server.worker_pids()
    assert len(pids) == 2
    job_id = store.create_job(make_definition(PIPELINE), {})
    clients = []
    for serving in pids:  # pause the other worker, so this one accepts the connections
        others = [p for p in pids if p != serving]
        before = socket_count(serving)
        for pid in others:
            os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(4):
                ws = RawWebSocket(server.port, f"/ws?job={job_id}&format=json")
                clients.append((ws, json.loads(ws.receive(timeout=30))))
        finally:
            for pid in others:
                os.kill(pid, signal.SIGCONT)
        assert socket_count(serving) >= before + 4
    start_worker()
    final = wait_job(store, job_id)
    expected = [e["seq"] for e in reads.events_after(store.db, 0, 10**6, job_id=job_id)]
    for ws, snapshot in clients:
        messages = collect(ws, job_done(job_id))
        assert [m["seq"] for m in messages] == [s for s in expected if s > snapshot["seq"]]
        assert messages[-1]["status"] == final["status"]
        ws.close()


def test_a_snapshot_bigger_than_the_send_buffer_arrives_whole(store, live_server):
    """simple-websocket writes a frame with one send(); a 400-step snapshot
    (~250 KB) does not fit the 64 KB send buffer, so only sending frames
    whole keeps the stream intact (tested before and after live messages)."""
    server = live_server()
    steps = "\n".join(f'[step.s{i}]\ntype = "shell"\nrun = "true"\n' for i in range(400))
    job_id = store.create_job(make_definition(steps), {})
    ws = Client.connect(server.url.replace("http", "ws") + f"/ws?job={job_id}")
    snapshot = json.loads(ws.receive(timeout=10))
    assert len(snapshot["content"]) > 200_000
    assert snapshot["content"].count('class="step-row') == 400
    first = reads.job_steps(store.db, job_id)[0]["id"]
    with store.write() as tx:
        tx.transition("step", first, "running")
    message = json.loads(ws.receive(timeout=10))
    assert (message["step_id"], message["status"]) == (first, "running")
    ws.close()
