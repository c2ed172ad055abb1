"""The live side of a web process: ONE tailer per process reads new rows of
the `events` table (woken by the store's event watch: a cheap SQLite
`PRAGMA data_version` check, or a PostgreSQL NOTIFY) and fans
each event out to the connections watching an affected view.

A fragment is rendered once per event and view, encoded once, and the same
bytes go to every subscriber. A coalescing view (the jobs list) instead gets
one message per COALESCE_S on average for all its events since the last (see
`Hub.send_batches`, `JobsView.render_batch`). One that falls behind gets a
fresh snapshot instead of an unbounded backlog. Under gevent (monkey-patched)
the tailer is a greenlet; under a plain server, a thread.

SSE connections take messages from a bounded queue; WebSocket connections
are written to by the tailer itself without blocking (see
`SocketSubscription` below), so one event for 1,000 watchers costs 1,000
non-blocking sends and no greenlet switch.
"""

import queue
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from stepline.store import reads
from stepline.web.frames import Message, WholeFrames

POLL_S = 0.01  # while events flow: commit -> tailer in ~5 ms
IDLE_POLL_S = 0.2  # after IDLE_AFTER_S without an event (10 ms polls: 1.4 s CPU/min idle)
IDLE_AFTER_S = 1.0
COALESCE_S = 0.1  # a coalescing view gets one message per 100 ms on average...
BURST = 2  # ...and after a quiet spell up to 2 at once: a job's pending and running
QUEUE_SIZE = 500


# Every live message's fields (DESIGN "HTTP and live protocol"): one event's row.
EVENT_KEYS = ("seq", "context", "job_id", "step_id", "step_name", "status", "log_refresh",
              "log_count", "version")


def event_fields(event: dict) -> dict[str, Any]:
    return {**{key: event[key] for key in EVENT_KEYS}, "log_refresh": bool(event["log_refresh"])}


@dataclass(eq=False)
class QueueSubscription:
    """A connection whose own greenlet takes messages from a bounded queue
    (SSE). One that falls behind is marked `lagging` and resyncs."""

    view: Any
    transport: str
    inbox: queue.Queue = field(default_factory=lambda: queue.Queue(QUEUE_SIZE))
    lagging: bool = False
    closed: bool = False  # the server is stopping: the stream ends

    def put(self, message: Message) -> None:
        try:
            self.inbox.put_nowait(message)
        except queue.Full:
            self.resync()

    def resync(self) -> None:
        """Drop the backlog; the reader sends a snapshot at once (the None
        wakes it: no later event may come to do that)."""
        self.lagging = True
        self._wake_reader()

    def close(self) -> None:
        self.closed = True
        self._wake_reader()

    def _wake_reader(self) -> None:
        while not self.inbox.empty():
            self.inbox.get_nowait()
        self.inbox.put_nowait(None)

    def get(self, timeout: float) -> Message | None:
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def flush(self) -> None:
        """Nothing to do: the stream's own greenlet takes from the queue."""


class SocketSubscription:
    """A WebSocket watcher. After each poll the tailer writes the frames it
    collected for this socket in one non-blocking send; only when the socket
    is full do they wait in a short list for this connection's own greenlet
    to write, and past MAX_WAITING writes they are dropped for one fresh
    snapshot. A healthy connection costs no greenlet switch and no queue.

    Why no event can fall between a snapshot and the live messages (DESIGN
    invariant 5), however the greenlets interleave: the subscription starts
    out (and goes back, when it fell behind) with `held` set, and while it is
    set the tailer keeps every message for it there. The snapshot is read
    only after that, so its seq S is at least every seq the tailer had passed
    when holding began; every later event therefore reaches `held` (or the
    live path, once holding ends). `go_live` then, under the lock the tailer
    takes to hold, sends the snapshot followed by the held messages newer
    than S, and ends holding. Yields anywhere in between (a lock, a socket,
    Thread.is_alive under gevent) only make `held` longer."""

    MAX_WAITING = 200  # parked writes (each one poll's frames)
    MAX_HELD = 1000  # messages kept while a snapshot is read; past it, read another

    def __init__(self, view, sock: WholeFrames, with_content: bool,
                 snapshot: Callable[[Any], Message]):
        self.view = view
        self.snapshot = snapshot  # builds a fresh snapshot Message for a view
        self.transport = "ws"
        self.sock = sock
        self.with_content = with_content
        self.sent = 0  # highest seq handed to the socket
        self.batch: list[bytes] = []  # this poll's frames, not yet written
        self.waiting: list[bytes] = []
        self.held: list[Message] | None = []  # not None: a snapshot is due (see above)
        self.dropped = 0  # highest seq dropped from a full `held`
        self.lock = threading.Lock()  # between holding (tailer) and go_live (connection)
        self.closed = False
        self.wake = threading.Event()
        self.wake.set()

    def put(self, message: Message) -> None:
        """Called by the tailer for each event: collect its frame."""
        if self.closed:
            return
        if self.held is not None:
            with self.lock:
                if self.held is not None:
                    self._hold(message)
                    return
        if message.seq <= self.sent:
            return
        self.sent = message.seq
        self.batch.append(message.frame(self.with_content))

    def resync(self) -> None:
        """Drop what waits and send a fresh snapshot (a message was lost)."""
        with self.lock:
            self.waiting.clear()
            self.held = []
        self.wake.set()

    def close(self) -> None:  # the server is stopping: live.websocket's loop ends
        self.closed = True
        self.wake.set()

    @property
    def behind(self) -> bool:
        """A snapshot is due (new, or fell behind): the hub's coalescing views
        then send this connection their whole list once it is live."""
        return self.held is not None

    def _hold(self, message: Message) -> None:
        if len(self.held) >= self.MAX_HELD:
            self.held.clear()
            self.dropped = message.seq
        else:
            self.held.append(message)

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
            with self.lock:  # too far behind: hold from here, and resync
                self.waiting.clear()
                self.held = []
        else:
            self.waiting.append(data)
        self.wake.set()

    def write_waiting(self) -> None:
        """Run by the connection's greenlet: finish a begun frame, send a
        snapshot where one is due, then write what waits."""
        self.sock.send(b"")
        while True:
            if self.held is not None:
                self.go_live(self.snapshot(self.view))
                continue
            if not self.waiting:
                return
            self.sock.send(self.waiting.pop(0))

    def go_live(self, snapshot: Message) -> None:
        """Queue the snapshot and the held messages after it, and stop holding.
        If `held` overflowed with events newer than this snapshot, keep
        holding: the caller reads another."""
        with self.lock:
            if self.dropped > snapshot.seq:
                return
            held, self.held, self.dropped = self.held, None, 0
            # Frames still waiting were dispatched before holding began, so
            # they are older than the snapshot: it replaces them.
            self.waiting = [snapshot.frame(self.with_content)]
            self.sent = max(self.sent, snapshot.seq)
            for message in held:
                if message.seq > self.sent:
                    self.waiting.append(message.frame(self.with_content))
                    self.sent = message.seq


@dataclass
class Batch:
    """A coalescing view's events since its last message, and what that
    message left on its pages (`shown`, the view's own record; None: unknown)."""

    events: list[dict] = field(default_factory=list)
    sent_at: float = 0.0  # time.monotonic() of the last message
    tokens: float = BURST  # messages it may send at once (one back per COALESCE_S)
    shown: Any = None
    subs: frozenset = frozenset()  # who got the last message


class Hub:
    """Views are hashable objects with `.key`, `.wants(event)`, and either
    `render_event(db, event)` (the fragment for one event: one message per
    event) or, with `.coalesce` true, `render_batch(db, events, shown)` (one
    message for many events, see `send_batches`). `call(method, *args)` runs
    a view's method with the database inside the app. A subscription is any
    object with `.view`, `.transport`, `.put(message)` and `.flush()` (after
    each poll's messages); both run in the tailer and must never block."""

    def __init__(self, event_watch: Callable[[], Any], call: Callable[..., Any]):
        self.event_watch = event_watch  # Store.event_watch
        self.call = call
        self._batches: dict[Hashable, Batch] = {}  # coalescing views' pending events
        self._views: dict[Hashable, set] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._watch = None  # the running tailer's, from event_watch
        self.last_seq = 0
        self.events_seen = 0

    # -- subscriptions -----------------------------------------------------------

    def subscribe(self, sub):
        """Register `sub` for its view's events: every event the tailer
        dispatches from here on reaches it. The caller reads its snapshot
        after this call (DESIGN invariant 5); the tailer is started first, so
        the snapshot's seq can never be behind where the tailer begins."""
        self._ensure_running()
        with self._lock:
            self._views.setdefault(sub.view.key, set()).add(sub)
        return sub

    def unsubscribe(self, sub) -> None:
        with self._lock:
            subs = self._views.get(sub.view.key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._views[sub.view.key]

    def close_all(self) -> None:
        """End every live connection now (the server is stopping, see
        stepline.web.gunicorn_conf): pages say "offline" at once."""
        with self._lock:
            subs = [sub for subs in self._views.values() for sub in subs]
        for sub in subs:
            sub.close()

    def connection_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {"ws": 0, "sse": 0}
        with self._lock:
            for subs in self._views.values():
                for sub in subs:
                    counts[sub.transport] = counts.get(sub.transport, 0) + 1
        return counts

    # -- the tailer ----------------------------------------------------------------

    def _ensure_running(self) -> None:
        """Started lazily, so it runs in each gunicorn worker after the fork."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                if self._watch is not None:  # the stopped tailer's: its connections go
                    self._watch.close()
                watch = self._watch = self.event_watch()
                if self._thread is None:  # a restarted tailer goes on where it stopped
                    self.last_seq = reads.last_seq(watch.db)
                self._thread = threading.Thread(target=self._tail, args=(watch,), daemon=True,
                                                name="event-tailer")
                self._thread.start()

    def _tail(self, watch) -> None:
        more, event_at = True, time.monotonic()
        while True:
            idle = time.monotonic() - event_at > IDLE_AFTER_S and not self._batches_due()
            try:
                # More may wait (500 at a time): look again after the watch's
                # pause (SQLite: a sleep that lets handshakes and sockets run).
                # Back off on events, not commits: heartbeats bring none.
                if more:
                    time.sleep(watch.after_events_s)
                if more or watch.wait(IDLE_POLL_S if idle else POLL_S):
                    more = self.poll_once(watch.db) > 0
                    event_at = time.monotonic() if more else event_at
                self.send_batches()
            except Exception as exc:  # a locked or briefly missing database
                print(f"stepline: event tailer: {exc}", file=sys.stderr)
                more = True
                time.sleep(0.5)

    def poll_once(self, db) -> int:
        """Dispatch the events committed since the last poll, then let every
        subscriber that got some write them out: a tailer that fell behind
        picks up several events at once, and a socket then takes them in one
        send instead of one each, so the busier it gets the less it costs."""
        events = reads.events_after(db, self.last_seq, limit=500)
        touched: set = set()
        for event in events:
            self.last_seq = event["seq"]
            self.events_seen += 1
            touched.update(self.dispatch(event))
        for sub in touched:
            sub.flush()
        return len(events)

    def dispatch(self, event: dict) -> list:
        """Hand one event to every subscriber whose view wants it; returns them.
        A coalescing view only collects it for its next batch."""
        with self._lock:
            targets = [(subs, next(iter(subs)).view) for subs in self._views.values() if subs]
        reached = []
        for subs, view in targets:
            if not view.wants(event):
                continue
            if getattr(view, "coalesce", False):
                self._batches.setdefault(view.key, Batch()).events.append(event)
                continue
            try:
                content = self.call(view.render_event, event)
            except Exception as exc:  # never let one bad render stop the stream...
                print(f"stepline: render {view.key} seq {event['seq']}: {exc}",
                      file=sys.stderr)
                for sub in list(subs):  # ...nor leave its watchers an event short
                    sub.resync()
                continue
            message = Message(event["seq"], event_fields(event), content)
            for sub in list(subs):
                sub.put(message)
                reached.append(sub)
        return reached

    def _batches_due(self) -> bool:
        return any(batch.events for batch in self._batches.values())

    def send_batches(self) -> None:
        """Send each coalescing view that has a token ONE message for all its
        events since its last: a token bucket of BURST, refilled one per
        COALESCE_S. The first events after a quiet spell go out at once (a
        submitted job's `pending` and then its `running` too: with one token,
        `running` waited out the window), a flood at 10 messages a second
        whatever its rate."""
        now = time.monotonic()
        for key, batch in list(self._batches.items()):
            with self._lock:
                subs = set(self._views.get(key, ()))
            if not subs:
                del self._batches[key]
                continue
            tokens = min(BURST, batch.tokens + (now - batch.sent_at) / COALESCE_S)
            if not batch.events or tokens < 1:
                continue
            events, batch.events = batch.events, []
            batch.tokens, batch.sent_at = tokens - 1, now
            view = next(iter(subs)).view
            # A page opened since the last message shows its own snapshot, not
            # what `shown` records: send it the whole list once.
            shown = batch.shown if subs <= batch.subs else None
            try:
                fields, content, batch.shown = self.call(view.render_batch, events, shown)
            except Exception as exc:  # never let one bad render stop the stream
                print(f"stepline: render {key} seq {events[-1]['seq']}: {exc}",
                      file=sys.stderr)
                batch.shown = None
                for sub in subs:  # their pages missed these events: fresh snapshots
                    sub.resync()
                continue
            # One that fell behind resyncs from a snapshot of its own: it too
            # gets the whole list once it is back.
            batch.subs = frozenset(sub for sub in subs if not (
                getattr(sub, "behind", False) or getattr(sub, "lagging", False)))
            message = Message(fields["seq"], fields, content)
            for sub in subs:
                sub.put(message)
                sub.flush()
