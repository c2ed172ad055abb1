"""Live views over WebSocket (`/ws`) and SSE (`/events`).

A view is what one page shows (one job, or a page of the jobs list). It
decides which events concern it and renders the fragment for each; the Hub
in `jobs.events` calls that once per event and shares the result.
"""

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, request, stream_with_context
from simple_websocket import ConnectionClosed

from . import queries, render
from .events import Message, QueueSubscription
from .http import ApiError, page_arg, status_arg

bp = Blueprint("live", __name__)
REPLAY_LIMIT = 2000
SEND_BUFFER_BYTES = 64 * 1024
KEEPALIVE_S = 15.0
SNAPSHOT_CACHE_SIZE = 64


@dataclass(frozen=True)
class JobsFilters:
    status: str | None = None
    q: str | None = None
    page: int = 1

    def query(self, **changes) -> str:
        values = {"status": self.status, "q": self.q, "page": self.page, **changes}
        return urlencode({k: v for k, v in values.items() if v and not (k == "page" and v == 1)})


@dataclass(frozen=True)
class JobsView:
    filters: JobsFilters

    @property
    def key(self):
        return ("jobs", self.filters)

    def wants(self, event: dict) -> bool:
        return True

    def page_of_jobs(self, db) -> tuple[list[dict], int]:
        f = self.filters
        return queries.list_jobs(db, status=f.status, q=f.q, limit=render.PAGE_SIZE,
                                 offset=(f.page - 1) * render.PAGE_SIZE)

    def metrics_and_list(self, db) -> tuple[str, list[dict]]:
        jobs, total = self.page_of_jobs(db)
        html = render.render_metrics(queries.status_counts(db), oob=True)
        return html + render.render_job_list(jobs, total, self.filters, oob=True), jobs

    def render_event(self, db, event: dict) -> str:
        if event["context"] == "job":  # membership or order may change: the whole page
            return self.metrics_and_list(db)[0]
        job = queries.get_job(db, event["job_id"])
        return render.render_job_row(job, oob=True) if job else ""

    def snapshot(self, db) -> tuple[dict, str]:
        seq = queries.last_seq(db)
        content, jobs = self.metrics_and_list(db)
        fields = {"seq": seq, "context": "job", "job_id": None, "step_id": None,
                  "snapshot": True,
                  "jobs": [{"job_id": j["id"], "status": j["status"], "version": j["version"]}
                           for j in jobs]}
        return fields, content


@dataclass(frozen=True)
class JobView:
    job_id: str

    @property
    def key(self):
        return ("job", self.job_id)

    def wants(self, event: dict) -> bool:
        return event["job_id"] == self.job_id

    def render_event(self, db, event: dict) -> str:
        if event["context"] == "job":
            job = queries.get_job(db, self.job_id)
            return render.render_job_header(job, oob=True) if job else render.render_job_deleted(
                self.job_id)
        step = queries.get_step(db, event["step_id"])
        if step is None:
            return ""
        html = render.render_step_row(step, oob=True)
        if event["log_refresh"]:
            html += render.render_log_trigger(step)
        return html

    def snapshot(self, db) -> tuple[dict, str]:
        seq = queries.last_seq(db)
        job = queries.get_job(db, self.job_id)
        if job is None:
            raise ApiError(404, f"job {self.job_id} not found")
        steps = queries.job_steps(db, self.job_id)
        # Rows first: a <template> parses <tr> only at the start (table mode);
        # anything after them still parses, anything before would drop them.
        content = "".join(render.render_step_row(s, oob=True) for s in steps) + (
            render.render_job_header(job, oob=True))
        fields = {"seq": seq, "context": "job", "job_id": job["id"], "step_id": None,
                  "status": job["status"], "version": job["version"], "snapshot": True,
                  "steps": [{"step_id": s["id"], "status": s["status"],
                             "log_count": s["log_count"], "version": s["version"]}
                            for s in steps]}
        return fields, content


def view_from_args(args) -> JobsView | JobView:
    if args.get("job"):
        return JobView(args["job"])
    if args.get("view", "jobs") == "jobs":
        return JobsView(JobsFilters(status_arg(args), args.get("q") or None, page_arg(args)))
    raise ApiError(400, "pass ?job=<id> or ?view=jobs")


def render_for_hub(app, store):
    """The Hub's render callable: runs outside any request, inside the app."""

    def render_view_event(view, event: dict) -> str:
        with app.app_context():
            return view.render_event(store.db, event)

    return render_view_event


def _stepline():
    return current_app.extensions["stepline"]


class WholeFrames:
    """The WebSocket's socket, written one whole frame at a time.

    simple-websocket 1.1.0 writes each frame with one sock.send() and ignores
    a partial write (its issue #45), which cuts the frame whenever the send
    buffer is fuller than the frame is long. Every write here goes through
    one lock and finishes what an earlier write began, so frames from the
    tailer, the connection's greenlet and simple-websocket's reader (pongs,
    pings, the close frame) never interleave."""

    def __init__(self, sock):
        self._sock = sock
        self._lock = threading.Lock()
        self._rest = b""  # the unsent tail of a frame already begun
        if type(sock).__module__.startswith("gevent"):
            self._send_now = lambda data: sock.send(data, 0, timeout=0.0)
        else:
            self._send_now = lambda data: sock.send(data, socket.MSG_DONTWAIT)

    def send(self, data: bytes) -> int:
        """Blocking (cooperatively, under gevent): the rest of any frame begun,
        then `data`."""
        with self._lock:
            if self._rest:
                self._sock.sendall(self._rest)
                self._rest = b""
            self._sock.sendall(data)
        return len(data)

    def try_send(self, frame: bytes) -> bool:
        """Without waiting: True when the frame is taken -- written whole, or
        begun with its tail kept for `send` to finish first. False when
        nothing was written (socket full, or another write in progress)."""
        if self._rest or not self._lock.acquire(blocking=False):
            return False
        try:
            self._rest = frame[self._send_now(frame):]
            return True
        except BlockingIOError:
            return False
        finally:
            self._lock.release()

    @property
    def unfinished(self) -> bool:
        return bool(self._rest)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class SocketSubscription:
    """A WebSocket watcher. After each poll the tailer writes the frames it
    collected for this socket in one non-blocking send; only when the socket
    is full do they wait in a short list for this connection's own greenlet
    to write, and past MAX_WAITING writes they are dropped for one fresh
    snapshot. A healthy connection costs no greenlet switch and no queue."""

    MAX_WAITING = 200  # parked writes (each one poll's frames)

    def __init__(self, view, sock: WholeFrames, with_content: bool, first: Message):
        self.view = view
        self.transport = "ws"
        self.sock = sock
        self.with_content = with_content
        self.sent = first.seq  # highest seq handed to the socket
        self.batch: list[bytes] = []  # this poll's frames, not yet written
        self.waiting: list[bytes] = [first.frame(with_content)]
        self.behind = False  # frames were dropped: a snapshot is due
        self.closed = False
        self.wake = threading.Event()
        self.wake.set()

    def put(self, message: Message) -> None:
        """Called by the tailer for each event: collect its frame."""
        if message.seq <= self.sent or self.closed:
            return
        self.sent = message.seq
        if not self.behind:  # when behind, the coming snapshot includes it
            self.batch.append(message.frame(self.with_content))

    def flush(self) -> None:
        """Called by the tailer after each poll: write the frames collected,
        in one send, without blocking; park them if the socket is full."""
        if not self.batch:
            return
        data = self.batch[0] if len(self.batch) == 1 else b"".join(self.batch)
        self.batch = []
        try:
            if not self.waiting and self.sock.try_send(data):
                if self.sock.unfinished:
                    self.wake.set()
                return
        except OSError:  # reset by the peer: the connection's greenlet cleans up
            self.closed = True
        if len(self.waiting) >= self.MAX_WAITING:
            self.waiting.clear()
            self.behind = True
        else:
            self.waiting.append(data)
        self.wake.set()

    def write_waiting(self) -> None:
        """Run by the connection's greenlet: finish a begun frame, write what
        waits, and resync with a snapshot where frames were dropped."""
        self.sock.send(b"")
        while self.waiting or self.behind:
            if self.waiting:
                self.sock.send(self.waiting.pop(0))
                continue
            snapshot = snapshot_message(self.view)
            # Nothing yields between the read and here: no event slips through.
            self.sent = max(self.sent, snapshot.seq)
            self.behind = False
            self.sock.send(snapshot.frame(self.with_content))


def snapshot_message(view) -> Message:
    """Built once per view and seq: a thousand pages opening one job at the
    same moment share one snapshot (and its encoded frame) instead of a
    thousand copies of a 500 KB string."""
    db, cache = _stepline().store.db, _stepline().snapshots
    cached = cache.get(view.key)
    if cached is not None and cached.seq == queries.last_seq(db):
        return cached
    fields, content = view.snapshot(db)
    if len(cache) >= SNAPSHOT_CACHE_SIZE:
        cache.clear()
    message = cache[view.key] = Message(fields["seq"], fields, content)
    return message


def websocket(ws) -> None:
    """`WS /ws?job=<id>` or `?view=jobs`: a snapshot, then one message per event."""
    try:
        view = view_from_args(request.args)
        first = snapshot_message(view)
    except ApiError as exc:
        ws.send(json.dumps({"error": exc.message}))
        ws.close(reason=1008, message=exc.message)
        return
    # A small kernel send buffer: a client that stops reading fills it soon,
    # and resyncs from a snapshot instead of the kernel holding megabytes of
    # stale frames for it.
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    ws.sock = WholeFrames(ws.sock)
    hub = _stepline().hub
    sub = hub.subscribe(SocketSubscription(view, ws.sock, request.args.get("format") != "json",
                                           first))
    try:
        while ws.connected and not sub.closed:
            if sub.wake.wait(timeout=1.0):
                sub.wake.clear()
                sub.write_waiting()
    except (ConnectionClosed, OSError):
        pass
    except ApiError as exc:  # the job was deleted while this client was behind
        ws.close(reason=1008, message=exc.message)
    finally:
        sub.closed = True
        hub.unsubscribe(sub)


def follow(view, sub: QueueSubscription, sent: int, timeout: float
           ) -> Iterator[Message | None]:
    """The messages an SSE stream sends after seq `sent`: each newer one once,
    in seq order; a fresh snapshot when it fell behind and lost its backlog;
    None after `timeout` of silence (time for a keepalive)."""
    while True:
        message = sub.get(timeout=timeout)
        if sub.lagging:
            sub.lagging = False
            message = snapshot_message(view)
        elif message is None:
            yield None
            continue
        elif message.seq <= sent:
            continue
        sent = message.seq
        yield message


@bp.get("/events")
def server_sent_events():
    """SSE fallback: the same fragments as unnamed messages, `id:` = seq.
    A reconnect with Last-Event-ID replays what it missed, no gap, no repeat."""
    view = view_from_args(request.args)
    store, hub = _stepline().store, _stepline().hub
    last_id = request.headers.get("Last-Event-ID", "")
    sub = hub.subscribe(QueueSubscription(view, "sse"))  # before reading: nothing falls between

    def stream():
        try:
            sent = None
            if last_id.isdigit():
                job_id = view.job_id if isinstance(view, JobView) else None
                missed = queries.events_after(store.db, int(last_id), REPLAY_LIMIT, job_id)
                if len(missed) < REPLAY_LIMIT:
                    sent = int(last_id)
                    for event in missed:
                        yield sse_message(event["seq"], view.render_event(store.db, event))
                        sent = event["seq"]
            if sent is None:
                first = snapshot_message(view)
                yield sse_message(first.seq, first.content)
                sent = first.seq
            for message in follow(view, sub, sent, timeout=KEEPALIVE_S):
                if message is None:
                    yield ": keepalive\n\n"
                else:
                    yield sse_message(message.seq, message.content)
        finally:
            hub.unsubscribe(sub)

    return Response(stream_with_context(stream()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def sse_message(seq: int, html: str) -> str:
    data = "\n".join(f"data: {line}" for line in (html or "").splitlines() or [""])
    return f"id: {seq}\n{data}\n\n"

