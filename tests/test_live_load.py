"""Invariant 5 under load: a live connection never misses an event.

Three `stepline worker` processes run two dozen short jobs (shell steps, a
fan-out, failures with skipped dependents, cancels) against a real gunicorn
(gevent, four web workers) and a real SQLite file, while every core runs a
busy loop. Meanwhile 120 WebSocket and SSE connections open: two dozen at
once while the first jobs run (every page reconnecting to a restarted
server), the rest in small bursts at random moments, most of them on a job
that is busy right then. Each connection applies its snapshot and then every
message in seq order. At the end:

- what it holds equals `GET /api/jobs/<id>/structure` (job and every step),
- the events it got are exactly the table's events after its snapshot,
  in strictly increasing seq (a resync snapshot may stand in for some),
- if its job ended while it watched, it saw the job end.

The plan (job kinds, when each connection opens, which job it watches) comes
from a seed, printed and given in the failure message; STEPLINE_LOAD_SEED=<n>
replays it (the timing is the machine's).
"""

import json
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field

import pytest
import requests

from stepline.engine.states import TERMINAL
from stepline.store import reads

from .conftest import make_definition, wait_for
from .live_server import FrameReader, SseReader, sse_connect, ws_connect

# Every kind has a chatty step (a log flush, so an event, every 50 ms) and a
# fan-out (an event per task start and end): a job's events come a few ms
# apart while it runs, as in the report.
CHATTY = """
[step.chatty]
type = "shell"
run = "for i in $(seq 1 25); do echo chatty $i; sleep 0.1; done"
"""

PASSING = CHATTY + """
[step.build]
type = "shell"
run = "for i in 1 2 3 4; do echo build $i; sleep 0.05; done"
[step.lint]
type = "shell"
run = "echo lint; echo 'a warning' >&2"
depends = ["build"]
[step.fan]
type = "generate"
depends = ["build"]
tasks = 12
concurrency = 4
logs_per_task = 6
log_delay_ms = 60
[step.flaky]
type = "generate"
depends = ["build"]
tasks = 3
logs_per_task = 2
failure_rate = 0.5
seed = 1
on_error = "continue"
[step.report]
type = "shell"
run = "echo report"
depends = ["fan", "lint", "chatty"]
"""

FAILING = CHATTY + """
[step.build]
type = "shell"
run = "for i in 1 2 3; do echo build $i; sleep 0.05; done"
[step.fan]
type = "generate"
depends = ["build"]
tasks = 12
concurrency = 4
logs_per_task = 6
log_delay_ms = 60
[step.broken]
type = "shell"
run = "echo about to fail; sleep 0.3; exit 3"
depends = ["build"]
[step.after_broken]
type = "shell"
run = "echo never"
depends = ["broken"]
[step.also_skipped]
type = "shell"
run = "echo never"
depends = ["after_broken", "fan"]
[step.cleanup]
type = "shell"
run = "echo cleanup"
depends = ["broken"]
always_run = true
"""

CANCELLED = CHATTY + """
[step.build]
type = "shell"
run = "echo build; sleep 0.1"
[step.wait]
type = "shell"
run = "for i in $(seq 1 20); do echo waiting $i; sleep 0.25; done"
depends = ["build"]
[step.after]
type = "shell"
run = "echo never"
depends = ["wait"]
"""

KINDS = ["passing", "failing", "passing", "failing", "passing", "cancelled"]
DEFINITIONS = {"passing": PASSING, "failing": FAILING, "cancelled": CANCELLED}
JOBS = 24
CREATE_EVERY_S = 0.25
CANCEL_AFTER_S = 1.0
WEB_WORKERS = 4  # gunicorn processes, each with its own tailer
# how many connections of each kind: WS with ?format=json, WS with the HTML
# content, SSE (HTML only), and WS on the jobs list
CONNECTIONS = {"ws": 60, "ws-html": 15, "sse": 35, "jobs": 10}
# The web processes' first connections arrive together while jobs run, as
# when every open page reconnects to a restarted server; a web process starts
# its tailer on its first subscription. Later ones open in bursts of 1 to
# BURST_MAX at random moments.
OPENING_AT, OPENING_BURST = 2.0, 24
OPEN_WINDOW_S = (OPENING_AT + 0.1, JOBS * CREATE_EVERY_S + 0.5)
BURST_MAX = 4
BUSY_JOB_CHANCE = 0.85  # a connection picks one of the 3 newest jobs
CONNECT_S = 30.0  # a handshake can wait seconds on a saturated machine
READ_S = 0.5  # every socket read waits at most this long
CATCH_UP_S = 10.0  # after every job ended, how long a connection may lag behind

STEP_ROW = re.compile(r'<tr id="step-([^"]+)" class="[^"]*" data-status="(\w+)"'
                      r' data-version="(\d+)"')
JOB_HEADER = re.compile(r'<section id="job-([^"]+)" class="[^"]*" data-status="(\w+)"'
                        r' data-version="(\d+)"')


@dataclass
class Watch:
    """One live connection and what it was told, applied in seq order."""

    name: str
    kind: str  # a key of CONNECTIONS
    opens_at: float  # seconds after the start
    pick: float  # which job it watches, decided when it opens
    job_id: str | None = None  # None on the jobs list
    connected_at: float | None = None  # seconds after the start
    stream: list[tuple[str, int]] = field(default_factory=list)  # ("snapshot"|"event", seq)
    job: tuple[str, int] | None = None  # (status, version)
    steps: dict[str, tuple[str, int]] = field(default_factory=dict)
    jobs: dict[str, tuple[str, int]] = field(default_factory=dict)  # the jobs list's
    ended: dict[str, str] = field(default_factory=dict)  # job -> terminal status seen
    batched: int = 0  # the jobs list: events its coalesced messages say they cover
    problems: list[str] = field(default_factory=list)

    @property
    def snapshot_seq(self) -> int | None:
        return self.stream[0][1] if self.stream else None

    @property
    def last_seq(self) -> int:
        return self.stream[-1][1] if self.stream else -1

    def apply(self, m: dict) -> None:
        """One message in the shape of a `format=json` WS message."""
        seq, snapshot = m["seq"], bool(m.get("snapshot"))
        if not self.stream and not snapshot:
            self.problems.append(f"first message is not a snapshot: {m}")
        if self.stream and (seq < self.last_seq or seq == self.last_seq and not snapshot):
            self.problems.append(f"seq went from {self.last_seq} to {seq}")
        if self.job_id is None:  # the jobs list: jobs' statuses only, coalesced
            # Each message after the snapshot covers every event since the
            # one before (`events` of them) and carries the rows that changed.
            self.stream.append(("snapshot" if snapshot else "batch", seq))
            self.batched += 0 if snapshot else m["events"]
            for j in m.get("jobs", []):
                self.jobs[j["job_id"]] = (j["status"], j["version"])
                if j["status"] in TERMINAL and len(self.stream) > 1:
                    self.ended[j["job_id"]] = j["status"]
            return
        self.stream.append(("snapshot" if snapshot else "event", seq))
        if snapshot:
            self.steps = {s["step_id"]: (s["status"], s["version"]) for s in m["steps"]}
        if m["context"] == "job" and m.get("status"):
            self.job = (m["status"], m["version"])
            if m["status"] in TERMINAL and len(self.stream) > 1:
                self.ended[self.job_id] = m["status"]
        elif m["context"] == "job_step":
            self.steps[m["step_id"]] = (m["status"], m["version"])

    def apply_html(self, seq: int, html: str) -> None:
        """An SSE message: the state is in the rows' and header's data-*."""
        rows, header = STEP_ROW.findall(html), JOB_HEADER.findall(html)
        if not self.stream or (rows and header):  # the first, or a resync snapshot
            self.apply({"seq": seq, "snapshot": True, "context": "job",
                        "status": header[0][1] if header else None,
                        "version": int(header[0][2]) if header else None,
                        "steps": [{"step_id": s, "status": st, "version": int(v)}
                                  for s, st, v in rows]})
        elif header:
            self.apply({"seq": seq, "context": "job", "status": header[0][1],
                        "version": int(header[0][2])})
        else:
            for step_id, status, version in rows or [(None, None, None)]:
                self.apply({"seq": seq, "context": "job_step", "step_id": step_id,
                            "status": status, "version": int(version or 0)})


def plan(rng: random.Random) -> list[Watch]:
    """The connections: the opening burst (WebSockets, each on a job of its
    own choice), then bursts of 1 to BURST_MAX opening at one moment on one
    job, which keep the server busy with handshakes and snapshots just when
    each of them subscribes."""
    kinds = [(kind, i) for kind, count in CONNECTIONS.items() for i in range(count)]
    rng.shuffle(kinds)
    opening = [k for k in kinds if k[0] != "sse"][:OPENING_BURST]
    kinds = [k for k in kinds if k not in opening]
    watches = [Watch(f"{kind}#{i}", kind, OPENING_AT, rng.random()) for kind, i in opening]
    while kinds:
        size = rng.randint(1, BURST_MAX)
        burst, kinds = kinds[:size], kinds[size:]
        opens_at, pick = rng.uniform(*OPEN_WINDOW_S), rng.random()
        watches += [Watch(f"{kind}#{i}", kind, opens_at, pick) for kind, i in burst]
    return sorted(watches, key=lambda w: w.opens_at)


def choose_job(created: list[str], pick: float) -> str:
    """Mostly one of the newest jobs (busy right now), else any."""
    if pick < BUSY_JOB_CHANCE:
        newest = created[-3:]
        return newest[int(pick / BUSY_JOB_CHANCE * len(newest))]
    return created[int((pick - BUSY_JOB_CHANCE) / (1 - BUSY_JOB_CHANCE) * len(created))]


class Finish:
    """When a connection may stop: once it has caught up with the last event
    of what it watches, or at the deadline."""

    def __init__(self):
        self.targets: dict[str | None, int] | None = None  # job (None: all) -> last seq
        self.deadline = float("inf")

    def reached(self, watch: Watch) -> bool:
        if time.monotonic() > self.deadline:
            return True
        return self.targets is not None and watch.last_seq >= self.targets[watch.job_id]


def follow(watch: Watch, port: int, started: float, created: list[str],
           finish: Finish) -> None:
    """Open at the planned moment, then read and apply until told to finish."""
    time.sleep(max(0.0, started + watch.opens_at - time.monotonic()))
    if watch.kind != "jobs":
        watch.job_id = choose_job(created, watch.pick)
    try:
        if watch.kind == "sse":
            reader = SseReader(sse_connect(port, f"/events?job={watch.job_id}",
                                           timeout=CONNECT_S))
        else:
            query = "view=jobs" if watch.job_id is None else f"job={watch.job_id}"
            fmt = "" if watch.kind == "ws-html" else "&format=json"
            reader = FrameReader(ws_connect(port, f"/ws?{query}{fmt}", timeout=CONNECT_S))
        watch.connected_at = time.monotonic() - started
        try:
            while not finish.reached(watch):
                message = reader.next(timeout=READ_S)
                if message is None:
                    continue
                if watch.kind == "sse":
                    watch.apply_html(*message)
                    continue
                opcode, payload = message
                if opcode == 0x8:
                    watch.problems.append("the server closed the WebSocket")
                    return
                if opcode == 0x1:
                    watch.apply(json.loads(payload))
        finally:
            reader.sock.close()
    except Exception as exc:  # reported with the others, not lost in a thread
        watch.problems.append(f"{type(exc).__name__}: {exc}")


def verdict(watch: Watch, structures: dict[str, dict], events: list[dict],
            targets: dict[str | None, int]) -> list[str]:
    """Everything wrong with one connection, in words."""
    problems = list(watch.problems)
    if watch.snapshot_seq is None:
        return problems or ["no snapshot"]
    target = targets[watch.job_id]
    if watch.job_id is not None:
        events = [e for e in events if e["job_id"] == watch.job_id]
    received = {seq for what, seq in watch.stream[1:] if what == "event"}
    covered = []  # a resync snapshot, or a coalesced batch, stands in for the events since
    for i, (what, seq) in enumerate(watch.stream[1:], 1):
        if what in ("snapshot", "batch"):
            covered.append((watch.stream[i - 1][1], seq))
    if watch.job_id is None and all(what == "batch" for what, _ in watch.stream[1:]):
        # a batch is the view's, shared: its first may count events older than
        # this connection's snapshot, never fewer than the table has after it
        between = sum(watch.snapshot_seq < e["seq"] <= watch.last_seq for e in events)
        if watch.batched < between:
            problems.append(f"its messages cover {watch.batched} events, the table has "
                            f"{between} between seq {watch.snapshot_seq} and {watch.last_seq}")
    expected = {e["seq"] for e in events if watch.snapshot_seq < e["seq"] <= target}
    missed = sorted(s for s in expected - received
                    if not any(low < s <= high for low, high in covered))
    if missed:
        problems.append(f"missed {len(missed)} events after its snapshot at seq "
                        f"{watch.snapshot_seq}: {missed[:8]}{' ...' if len(missed) > 8 else ''}")
    if stray := sorted(received - {e["seq"] for e in events}):
        problems.append(f"got events of other jobs: {stray[:8]}")
    job_ends = {e["job_id"]: e["seq"] for e in events
                if e["context"] == "job" and e["status"] in TERMINAL}
    if watch.job_id is None:  # the jobs list
        for job_id, (status, _version) in watch.jobs.items():
            if job_id in structures and status != structures[job_id]["status"]:
                problems.append(f"job {job_id} shows {status}, structure says "
                                f"{structures[job_id]['status']}")
    else:
        final = structures[watch.job_id]
        if watch.job != (final["status"], final["version"]):
            problems.append(f"job shows {watch.job}, structure says "
                            f"{(final['status'], final['version'])}")
        for step in final["steps"]:
            held = watch.steps.get(step["step_id"])
            if held != (step["status"], step["version"]):
                problems.append(f"step {step['name']} shows {held}, structure says "
                                f"{(step['status'], step['version'])}")
    for job_id, end_seq in job_ends.items():
        if end_seq > watch.snapshot_seq and job_id in structures:
            if watch.ended.get(job_id) != structures[job_id]["status"]:
                problems.append(f"job {job_id} ended ({structures[job_id]['status']} at seq "
                                f"{end_seq}) but the connection never saw it end")
    return problems


@pytest.fixture
def server(live_server):
    """Started before the CPU is saturated: each web process imports Flask,
    Jinja and gevent first."""
    return live_server(workers=WEB_WORKERS)


def test_no_connection_misses_an_event_under_load(store, server, start_worker, cpu_saturated):
    seed = int(os.environ.get("STEPLINE_LOAD_SEED") or random.randrange(10**6))
    print(f"seed {seed} (STEPLINE_LOAD_SEED={seed} replays the plan)")
    rng = random.Random(seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(JOBS)]
    rng.shuffle(kinds)
    watches = plan(rng)
    definitions = {kind: make_definition(text, kind) for kind, text in DEFINITIONS.items()}
    for _ in range(3):
        start_worker("--concurrency", "8")
    wait_for(lambda: store.db.execute("SELECT count(*) FROM workers").fetchone()[0] == 3,
             what="3 workers")

    created: list[str] = []
    finish = Finish()
    started = time.monotonic()
    created.append(store.create_job(definitions[kinds[0]], {}))
    threads = [threading.Thread(target=follow, args=(w, server.port, started, created, finish),
                                name=w.name, daemon=True) for w in watches]
    for thread in threads:
        thread.start()

    # Jobs start a quarter second apart; the cancel kind is cancelled a
    # second later, while its long step runs (or before it started).
    timeline = [(i * CREATE_EVERY_S, "create", i) for i in range(1, JOBS)]
    timeline += [(i * CREATE_EVERY_S + CANCEL_AFTER_S, "cancel", i)
                 for i in range(JOBS) if kinds[i] == "cancelled"]
    for at, action, i in sorted(timeline):
        time.sleep(max(0.0, started + at - time.monotonic()))
        if action == "create":
            created.append(store.create_job(definitions[kinds[i]], {}))
        else:
            reply = requests.post(server.url + f"/api/jobs/{created[i]}/cancel", json={},
                                  timeout=30)
            assert reply.status_code in (200, 409), reply.text  # 409: it already ended
    wait_for(lambda: all(reads.get_job(store.db, job_id)["status"] in TERMINAL
                         for job_id in created), timeout=60, what="every job to end")

    events = reads.events_after(store.db, 0, 10**7)
    targets: dict[str | None, int] = {None: events[-1]["seq"]}
    for event in events:
        targets[event["job_id"]] = event["seq"]
    finish.targets, finish.deadline = targets, time.monotonic() + CATCH_UP_S
    join_by = finish.deadline + CONNECT_S + 2 * READ_S  # a handshake may still be under way
    for thread in threads:
        thread.join(timeout=max(0.0, join_by - time.monotonic()))
    elapsed = time.monotonic() - started
    structures = {job_id: requests.get(server.url + f"/api/jobs/{job_id}/structure",
                                       timeout=30).json() for job_id in created}

    statuses = sorted(s["status"] for s in structures.values())
    handshakes = [w.connected_at - w.opens_at for w in watches if w.connected_at]
    live = sum(any(what == "event" for what, _ in w.stream) for w in watches)
    print(f"{len(watches)} connections ({live} got live events, slowest handshake"
          f" {max(handshakes, default=0):.2f}s), {len(events)} events, {len(created)} jobs"
          f" {statuses}, {elapsed:.1f}s")
    assert {"completed", "failed", "cancelled"} <= set(statuses), statuses
    assert any(step["status"] == "skipped" for s in structures.values() for step in s["steps"])
    failing = []
    for watch, thread in zip(watches, threads, strict=True):
        problems = verdict(watch, structures, events, targets)
        if thread.is_alive():
            problems.append("still reading after the deadline")
        if problems:
            failing.append((watch, problems))
    by_kind = {kind: sum(w.kind == kind for w, _ in failing) for kind in CONNECTIONS}
    report = "\n".join(
        f"  {w.name} on {w.job_id or 'the jobs list'} (opening at {w.opens_at:.2f}s, "
        f"connected at {w.connected_at or 0:.2f}s): "
        + "; ".join(problems) for w, problems in failing[:25])
    assert not failing, (
        f"{len(failing)} of {len(watches)} connections missed events or ended wrong "
        f"({', '.join(f'{k} {n}/{CONNECTIONS[k]}' for k, n in by_kind.items())}; "
        f"seed {seed}; {len(events)} events, {len(created)} jobs {statuses}, "
        f"{elapsed:.0f}s):\n{report}")
