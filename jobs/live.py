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
from .events import Message
from .http import ApiError, page_arg, status_arg

bp = Blueprint("live", __name__)
REPLAY_LIMIT = 2000
SEND_BUFFER_BYTES = 64 * 1024
KEEPALIVE_S = 15.0


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
    """simple-websocket 1.1.0 writes each frame with one sock.send() and
    ignores a partial write (its issue #45), which cuts the frame and breaks
    the stream whenever the send buffer is fuller than the frame is long (a
    big snapshot, a slow network). This socket sends every frame whole, one
    frame at a time: its reader greenlet's pongs and pings go through it too."""

    def __init__(self, sock):
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def snapshot_message(view) -> Message:
    fields, content = view.snapshot(_stepline().store.db)
    return Message(fields["seq"], fields, content)


def follow(view, sub, sent: int, timeout: float) -> Iterator[Message | None]:
    """The messages a connection sends after seq `sent`, for WS and SSE alike:
    each newer one once, in seq order; a fresh snapshot when the subscriber
    fell behind and lost its backlog; None after `timeout` of silence."""
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


def websocket(ws) -> None:
    """`WS /ws?job=<id>` or `?view=jobs`: a snapshot, then one message per event."""
    try:
        view = view_from_args(request.args)
        first = snapshot_message(view)
    except ApiError as exc:
        ws.send(json.dumps({"error": exc.message}))
        ws.close(reason=1008, message=exc.message)
        return
    with_content = request.args.get("format") != "json"
    # A small kernel send buffer: a client that stops reading blocks our
    # sends soon, its bounded queue overflows, and it resyncs from a snapshot
    # instead of the kernel holding megabytes of stale frames for it.
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    ws.sock = WholeFrames(ws.sock)
    hub = _stepline().hub
    sub = hub.subscribe(view, "ws")
    try:
        ws.sock.send(first.frame(with_content))
        for message in follow(view, sub, first.seq, timeout=1.0):
            if not ws.connected:
                break
            if message is not None:
                ws.sock.send(message.frame(with_content))  # framed once for all
    except (ConnectionClosed, OSError):
        pass
    finally:
        hub.unsubscribe(sub)


@bp.get("/events")
def server_sent_events():
    """SSE fallback: the same fragments as unnamed messages, `id:` = seq.
    A reconnect with Last-Event-ID replays what it missed, no gap, no repeat."""
    view = view_from_args(request.args)
    store, hub = _stepline().store, _stepline().hub
    last_id = request.headers.get("Last-Event-ID", "")
    sub = hub.subscribe(view, "sse")  # before reading: nothing falls between

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

