"""The live endpoints: WebSocket (`/ws`) and SSE (`/events`).

Each connection watches one view (`stepline.web.views`); the hub
(`stepline.web.hub`) tails the events table and hands it the messages.
"""

import json
import socket
from collections.abc import Iterator

from flask import Blueprint, Response, request, stream_with_context
from simple_websocket import ConnectionClosed

from stepline.store import reads
from stepline.web.frames import Message, WholeFrames
from stepline.web.http import ApiError, app_state
from stepline.web.subscriptions import QueueSubscription, SocketSubscription
from stepline.web.views import JobView, view_from_args

bp = Blueprint("live", __name__)
REPLAY_LIMIT = 2000
SEND_BUFFER_BYTES = 64 * 1024
KEEPALIVE_S = 15.0
SNAPSHOT_CACHE_SIZE = 64


def render_for_hub(app):
    """The Hub's `call`: runs a view's render method on the tailer's
    database connection, outside any request, inside the app (templates
    build links with `render.path_builder`, which needs no request)."""

    def call_view(method, db, *args):
        with app.app_context():
            return method(db, *args)

    return call_view


def snapshot_message(view) -> Message:
    """Built once per view and seq: a thousand pages opening one job at the
    same moment share one snapshot (and its encoded frame) instead of a
    thousand copies of a 500 KB string."""
    db, cache = app_state().store.db, app_state().snapshots
    cached = cache.get(view.key)
    if cached is not None and cached.seq == reads.last_seq(db):
        return cached
    fields, content = view.snapshot(db)
    if len(cache) >= SNAPSHOT_CACHE_SIZE:
        cache.clear()
    message = cache[view.key] = Message(fields["seq"], fields, content)
    return message


def websocket(ws) -> None:
    """`WS /ws?job=<id>` or `?view=jobs`: a snapshot, then one message per event.
    Subscribed before the snapshot is read (see SocketSubscription): the
    first write_waiting sends it, then whatever the tailer held meanwhile."""
    try:
        view = view_from_args(request.args)
    except ApiError as exc:
        refuse(ws, exc)
        return
    # A small kernel send buffer: a client that stops reading fills it soon,
    # and resyncs from a snapshot instead of the kernel holding megabytes of
    # stale frames for it.
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    ws.sock = WholeFrames(ws.sock)
    hub = app_state().hub
    sub = hub.subscribe(SocketSubscription(view, ws.sock, request.args.get("format") != "json",
                                           snapshot_message))
    try:
        while ws.connected and not sub.closed:
            if sub.wake.wait(timeout=1.0):
                sub.wake.clear()
                sub.write_waiting()
        if ws.connected:  # closed by Hub.close_all: the server is stopping
            # 1012 Service Restart: htmx's ws extension reconnects on it, and
            # not on flask-sock's default 1000 Normal Closure.
            ws.close(reason=1012, message="server restarting")
    except (ConnectionClosed, OSError):
        pass
    except ApiError as exc:  # an unknown job, or one deleted while this client was behind
        refuse(ws, exc)
    finally:
        sub.closed = True
        hub.unsubscribe(sub)


def refuse(ws, exc: ApiError) -> None:
    ws.send(json.dumps({"error": exc.message}))
    ws.close(reason=1008, message=exc.message)


def follow(view, sub: QueueSubscription, sent: int, timeout: float
           ) -> Iterator[Message | None]:
    """The messages an SSE stream sends after seq `sent`: each newer one once,
    in seq order; a fresh snapshot when it fell behind and lost its backlog;
    None after `timeout` of silence (time for a keepalive)."""
    while True:
        message = sub.get(timeout=timeout)
        if sub.closed:  # the server is stopping
            return
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
    store, hub = app_state().store, app_state().hub
    if isinstance(view, JobView) and reads.get_job(store.db, view.job_id) is None:
        raise ApiError(404, f"job {view.job_id} not found")  # while a status can still say so
    last_id = request.headers.get("Last-Event-ID", "")

    def stream():
        # Subscribed here, inside the generator, so its `finally` always
        # unsubscribes; and before reading: nothing falls between.
        sub = hub.subscribe(QueueSubscription(view, "sse"))
        try:
            sent = None
            if last_id.isdigit() and can_replay_from(store.db, int(last_id)):
                job_id = view.job_id if isinstance(view, JobView) else None
                missed = reads.events_after(store.db, int(last_id), REPLAY_LIMIT, job_id)
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


def can_replay_from(db, seq: int) -> bool:
    """Whether the table still holds every event after `seq`. A seq ahead of
    the newest (a restored or replaced database) would leave the stream
    silent until the table caught up; one before the oldest kept has lost
    events to prune. Both get a snapshot instead."""
    oldest, newest = reads.kept_seqs(db)
    return newest > 0 and oldest - 1 <= seq <= newest


def sse_message(seq: int, html: str) -> str:
    data = "\n".join(f"data: {line}" for line in (html or "").splitlines() or [""])
    return f"id: {seq}\n{data}\n\n"

