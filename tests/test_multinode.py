"""Many machines on one PostgreSQL database (DESIGN "Beyond one machine"),
always on a real PostgreSQL server whatever --db-backend says: two web
instances (separate gunicorn masters on their own ports, as two machines
would run them) and three `stepline worker` processes. A job started through
one instance streams through the other's WebSocket; workers and web workers
die under kill -9 mid-job; 500 jobs raced by 4 workers each run once."""

import json
import os
import signal
import threading
import time

import pytest
import requests

from stepline.engine.states import TERMINAL
from stepline.store import reads
from stepline.store.writes import Store

from .conftest import (
    WorkerProcess,
    assert_each_job_ran_once,
    marking_job,
    stepline,
    wait_for,
)
from .live_server import FrameReader, LiveServer, ws_connect

pytestmark = pytest.mark.one_backend  # always on PostgreSQL

# Long enough to kill things mid-job: `fan` runs 30 tasks x 5 lines x 100 ms,
# spread over the workers' task slots; its retry lets the job still complete after its
# worker is killed (the re-run starts the step over on another worker).
# `left` and `right` depend on nothing but `prepare`: they run at the same time.
DEFINITION = """
[params]
tasks = 30
pause = 0.2
delay_ms = 100

[step.prepare]
type = "shell"
run = "for i in 1 2 3; do echo prepare $i; sleep 0.2; done"

[step.fan]
type = "generate"
depends = ["prepare"]
tasks = "{params.tasks}"
logs_per_task = 5
log_delay_ms = "{params.delay_ms}"
concurrency = 4
retries = 1

[step.left]
type = "shell"
depends = ["prepare"]
run = "sleep {params.pause}; echo left"

[step.right]
type = "shell"
depends = ["prepare"]
run = "sleep {params.pause}; echo right"

[step.report]
type = "shell"
depends = ["fan", "left", "right"]
always_run = true
run = "echo report"
"""


class Cluster:
    """Two web instances and three workers on one database, each process
    started as an operator would on its own machine: same STEPLINE_DB URL,
    same definitions directory."""

    def __init__(self, pg_url: str, definitions: str):
        self.url = pg_url
        self.env = {"STEPLINE_DEFINITIONS": definitions}
        self.store = Store(pg_url)
        self.web = [LiveServer(pg_url, env=self.env).start(),
                    LiveServer(pg_url, env=self.env).start()]
        self.workers = [WorkerProcess(pg_url, env=self.env) for _ in range(3)]
        for worker in self.workers:
            worker.wait_started()

    def run(self, web: LiveServer, **params) -> str:
        """A job started as a person would, through one instance's API."""
        response = requests.post(f"{web.url}/api/definitions/multinode/run",
                                 json={"params": params}, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()["job_id"]

    def stop(self) -> None:
        for server in self.web:
            server.stop()
        for worker in self.workers:
            worker.stop(signal.SIGKILL)
        self.store.close()


def cluster_for(pg_url: str, tmp_path) -> Cluster:
    definitions = tmp_path / "definitions"
    definitions.mkdir()
    (definitions / "multinode.toml").write_text(DEFINITION)
    return Cluster(pg_url, str(definitions))


class Page:
    """One open job page's WebSocket (`?format=json`), read in a thread until
    the job's final message. When the connection drops it reconnects, as
    htmx's ws extension does, and starts a new segment: the server's
    snapshot, then the live messages that followed it."""

    def __init__(self, web: LiveServer, job_id: str):
        self.web, self.job_id = web, job_id
        self.segments: list[tuple[dict, list[dict]]] = []
        self.reconnects = 0
        self.drops: list[str] = []  # why each connection ended early, for the failure report
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                if self._read_one_connection():
                    return
                self.reconnects += 1
                time.sleep(0.2)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def _read_one_connection(self) -> bool:
        """True when the job's final message came; False when the
        connection dropped first."""
        try:
            sock = ws_connect(self.web.port, f"/ws?job={self.job_id}&format=json", timeout=30)
        except (OSError, AssertionError) as exc:
            self.drops.append(f"connect: {exc!r}")
            return False  # the web worker is still coming back
        frames = FrameReader(sock)
        try:
            while not self._stop.is_set():
                try:
                    frame = frames.next(timeout=1)
                except OSError as exc:  # reset by a killed web worker
                    self.drops.append(f"recv: {exc!r}")
                    return False
                if frame is None:
                    continue
                opcode, payload = frame
                if opcode == 0x8:
                    self.drops.append(f"closed: {payload!r}")
                    return False
                if opcode == 0x9:  # the server pings every 20 s: answer as a browser does
                    sock.sendall(pong(payload))
                if opcode != 0x1:
                    continue
                message = json.loads(payload)
                if message.get("snapshot"):
                    self.segments.append((message, []))
                else:
                    self.segments[-1][1].append(message)
                if message["context"] == "job" and message["status"] in TERMINAL:
                    return True
            return True
        finally:
            sock.close()

    def finish(self, timeout: float = 180) -> None:
        self.thread.join(timeout)
        self._stop.set()
        assert self.error is None, self.error
        assert not self.thread.is_alive(), f"page of {self.job_id} never saw the job end"

    def state(self) -> dict:
        """What the page shows at the end: the last snapshot with every
        later message applied in seq order."""
        snapshot, messages = self.segments[-1]
        job = {"status": snapshot["status"], "version": snapshot["version"]}
        steps = {s["step_id"]: {"status": s["status"], "log_count": s["log_count"]}
                 for s in snapshot["steps"]}
        for m in messages:
            if m["context"] == "job":
                job = {"status": m["status"], "version": m["version"]}
            else:
                steps[m["step_id"]] = {"status": m["status"], "log_count": m["log_count"]}
        return {"job": job, "steps": steps}


def pong(payload: bytes) -> bytes:
    """A client's (masked) pong frame echoing a ping's payload (< 126 bytes)."""
    mask = os.urandom(4)
    return (bytes([0x8A, 0x80 | len(payload)]) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def structure_state(web: LiveServer, job_id: str) -> dict:
    body = requests.get(f"{web.url}/api/jobs/{job_id}/structure", timeout=30).json()
    return {"job": {"status": body["status"], "version": body["version"]},
            "steps": {s["step_id"]: {"status": s["status"], "log_count": s["log_count"]}
                      for s in body["steps"]}}


def assert_no_gap(store: Store, page: Page) -> None:
    """Each segment is exactly the job's events after its snapshot's seq:
    all of them for the last one, a prefix for one cut by a dying server."""
    events = [e["seq"] for e in reads.events_after(store.db, 0, 10**6, job_id=page.job_id)]
    for index, (snapshot, messages) in enumerate(page.segments):
        seqs = [m["seq"] for m in messages]
        after = [s for s in events if s > snapshot["seq"]]
        if index == len(page.segments) - 1:
            assert seqs == after, f"page of {page.job_id} on :{page.web.port}, last segment"
        else:
            assert seqs == after[:len(seqs)], f"page of {page.job_id}, segment {index}"


def running_anywhere(store: Store) -> list:
    return store.db.execute(
        "SELECT 'job', id FROM jobs WHERE status = 'running' UNION ALL"
        " SELECT 'step', id FROM steps WHERE status = 'running' UNION ALL"
        " SELECT 'task', CAST(id AS TEXT) FROM tasks WHERE status = 'running'").fetchall()


def all_ended(store: Store, job_ids: list[str]) -> bool:
    return all(reads.get_job(store.db, j)["status"] in TERMINAL for j in job_ids)


@pytest.mark.parametrize("saturated", [False, True], ids=["idle", "cpu_saturated"])
def test_a_job_started_on_one_instance_streams_through_the_other(pg_url, tmp_path, request,
                                                                 saturated):
    if saturated:
        request.getfixturevalue("cpu_saturated")
    cluster = cluster_for(pg_url, tmp_path)
    try:
        one, other = cluster.web
        # `pause` 2: `left` and `right` sleep 2 s each (see the overlap slot below).
        job_id = cluster.run(one, tasks=300, delay_ms=10, pause=2)
        pages = [Page(other, job_id), Page(one, job_id)]
        for page in pages:
            page.finish()
        final = reads.get_job(cluster.store.db, job_id)
        assert final["status"] == "completed"
        for page in pages:
            assert page.reconnects == 0, page.drops
            assert_no_gap(cluster.store, page)
            assert page.state() == structure_state(one, job_id) == structure_state(other, job_id)
        (snap_b, live_b), (snap_a, live_a) = pages[0].segments[0], pages[1].segments[0]
        assert live_b, "no live message reached the other instance"
        since = max(snap_a["seq"], snap_b["seq"])
        assert ([m["seq"] for m in live_b if m["seq"] > since]
                == [m["seq"] for m in live_a if m["seq"] > since])
        assert live_b[-1]["status"] == "completed"

        steps = {s["name"]: s for s in reads.job_steps(cluster.store.db, job_id)}
        tasks = requests.get(f"{other.url}/api/jobs/{job_id}/steps/{steps['fan']['id']}/tasks",
                             params={"limit": 1000}, timeout=30).json()
        assert tasks["total"] == 300
        fan_workers = {t["worker"] for t in tasks["tasks"]}
        assert len(fan_workers - {None}) >= 2, fan_workers  # one step, spread over workers
        left, right = steps["left"], steps["right"]
        overlap = min(left["finished"], right["finished"]) - max(left["started"], right["started"])
        assert overlap >= 1.0, (left, right)  # two independent 2 s steps, run together
    finally:
        cluster.stop()


@pytest.mark.parametrize("saturated", [False, True], ids=["idle", "cpu_saturated"])
def test_kill_9_of_a_worker_and_a_web_worker_mid_job(pg_url, tmp_path, request, saturated):
    if saturated:
        request.getfixturevalue("cpu_saturated")
    cluster = cluster_for(pg_url, tmp_path)
    store = cluster.store
    try:
        one, other = cluster.web
        job_ids = [cluster.run(one if n % 2 else other) for n in range(6)]
        # Two open pages per job on each instance.
        pages = [Page(web, job_id) for job_id in job_ids for web in cluster.web for _ in range(2)]

        def a_worker_mid_fan_out():
            row = store.db.execute(
                "SELECT w.pid FROM steps s JOIN jobs j ON j.id = s.job_id"
                " JOIN workers w ON w.id = j.worker_id WHERE s.name = 'fan'"
                " AND s.status = 'running' AND s.tasks_completed > 0 LIMIT 1").fetchone()
            return row and row[0]

        victim_pid = wait_for(a_worker_mid_fan_out, 60, what="a fan-out step half done")
        [victim] = [w for w in cluster.workers if w.proc.pid == victim_pid]
        os.kill(victim_pid, signal.SIGKILL)
        victim.proc.wait()
        [web_victim] = other.worker_pids()  # every page on `other` loses its connection
        ended_before = {j for j in job_ids if all_ended(store, [j])}
        os.kill(web_victim, signal.SIGKILL)

        wait_for(lambda: all_ended(store, job_ids), 180, 0.2, what="every job to end")
        for page in pages:
            page.finish()
        assert running_anywhere(store) == []
        assert web_victim not in other.worker_pids()
        for page in pages:
            if page.web is other and page.job_id not in ended_before:
                assert page.reconnects >= 1, page.drops
            if page.web is one:
                assert page.reconnects == 0, page.drops
        for page in pages:
            assert_no_gap(store, page)
            assert page.state() == structure_state(one, page.job_id), page.job_id
        interrupted = store.db.execute(
            "SELECT count(*) FROM logs WHERE message LIKE 'interrupted: worker %'").fetchone()[0]
        assert interrupted >= 1  # the victim really held running work
        check = stepline(pg_url, "check")
        assert check.returncode == 0 and check.stderr.strip() == "ok", check.stdout
    finally:
        cluster.stop()


def test_500_jobs_raced_by_4_workers_each_run_once(pg_url, tmp_path):
    store = Store(pg_url)
    definition, marks = marking_job(tmp_path)
    workers = [WorkerProcess(pg_url) for _ in range(4)]
    try:
        for worker in workers:
            worker.wait_started()
        job_ids = [store.create_job(definition, {"n": n}) for n in range(500)]

        def completed() -> bool:
            counts = reads.status_counts(store.db)
            return counts["completed"] + counts["failed"] == len(job_ids)

        wait_for(completed, 300, 0.2, what="500 jobs to end")
        assert reads.status_counts(store.db)["completed"] == 500
        assert_each_job_ran_once(store, marks, 500)
        claimants = store.db.execute("SELECT count(DISTINCT worker_id) FROM jobs").fetchone()[0]
        assert claimants >= 2
        check = stepline(pg_url, "check")
        assert check.returncode == 0 and check.stderr.strip() == "ok", check.stdout
    finally:
        for worker in workers:
            worker.stop(signal.SIGKILL)
        store.close()
