"""The live side of a web process: ONE tailer per process reads new rows of
the `events` table (woken by the store's event watch: a cheap SQLite
`PRAGMA data_version` check, or a PostgreSQL NOTIFY) and fans
each event out to the connections watching an affected view.

A fragment is rendered once per event and view, encoded once, and the same
bytes go to every subscriber. A coalescing view (the jobs list) instead gets
at most one message per window (COALESCE_S, longer in a flood) for all its
events since the last (see `Hub.send_batches`, `JobsView.render_batch`).
One that falls behind gets a fresh snapshot instead of an unbounded backlog.
Under gevent (monkey-patched) the tailer is a greenlet; under a plain
server, a thread.

The connections themselves are subscriptions (stepline.web.subscriptions):
SSE ones take messages from a bounded queue; WebSocket ones are written to by
the tailer itself without blocking, so one event for 1,000 watchers costs
1,000 non-blocking sends and no greenlet switch.
"""

import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from stepline.store import reads
from stepline.web.frames import Message

POLL_S = 0.01  # while events flow: commit -> tailer in ~5 ms
IDLE_POLL_S = 0.2  # after IDLE_AFTER_S without an event (10 ms polls: 1.4 s CPU/min idle)
IDLE_AFTER_S = 1.0
# A coalescing view gets one message per window for all its events since
# the last; each costs the browser a frame (~8 ms of main thread). The window
# is short while events trickle, so a submitted job's `running` shows at once
# (submit -> running p50 13 ms with 100 ms, 82 ms with 200 ms), and long in a
# flood, where every message carries many rows (100 jobs/s: 100 ms took
# 13.8 % of the page's main thread, 200 ms 9.7-11.5 %; bench.jobs_list and
# bench.latency_worker, RESULTS).
COALESCE_S = 0.1
FLOOD_COALESCE_S = 0.2
FLOOD_EVENTS = 10  # a message that carried this many: the next waits FLOOD_COALESCE_S
BURST = 2  # ...and after a quiet spell up to 2 at once: a job's pending and running


# Every live message's fields (DESIGN "HTTP and live protocol"): one event's row.
EVENT_KEYS = ("seq", "context", "job_id", "step_id", "step_name", "status", "log_refresh",
              "log_count", "version")


def event_fields(event: dict) -> dict[str, Any]:
    return {**{key: event[key] for key in EVENT_KEYS}, "log_refresh": bool(event["log_refresh"])}


@dataclass
class Batch:
    """A coalescing view's events since its last message, and what that
    message left on its pages (`shown`, the view's own record; None: unknown)."""

    events: list[dict] = field(default_factory=list)
    sent_at: float = 0.0  # time.monotonic() of the last message
    tokens: float = BURST  # messages it may send at once (one back per window)
    window: float = COALESCE_S  # COALESCE_S, or FLOOD_COALESCE_S after a big message
    shown: Any = None
    subs: frozenset = frozenset()  # who got the last message


class Hub:
    """Views are hashable objects with `.key`, `.wants(event)`, and either
    `render_event(db, event)` (the fragment for one event: one message per
    event) or, with `.coalesce` true, `render_batch(db, events, shown)` (one
    message for many events, see `send_batches`). `call(method, db, *args)`
    runs a view's method inside the app, on `db`: the tailer's own
    connection (the watch's), never the process's shared pool, where a render
    would queue behind page requests. A subscription is any
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
                self.send_batches(watch.db)
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
            touched.update(self.dispatch(event, db))
        for sub in touched:
            sub.flush()
        return len(events)

    def dispatch(self, event: dict, db) -> list:
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
                content = self.call(view.render_event, db, event)
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

    def send_batches(self, db) -> None:
        """Send each coalescing view that has a token ONE message for all its
        events since its last: a token bucket of BURST, refilled one per
        window (COALESCE_S; FLOOD_COALESCE_S after a message of FLOOD_EVENTS
        or more). The first events after a quiet spell go out at once (a
        submitted job's `pending` and then its `running` too: with one token,
        `running` waited out the window), events that trickle in at most 10
        messages a second, and a flood at 5 whatever its rate."""
        now = time.monotonic()
        for key, batch in list(self._batches.items()):
            with self._lock:
                subs = set(self._views.get(key, ()))
            if not subs:
                del self._batches[key]
                continue
            tokens = min(BURST, batch.tokens + (now - batch.sent_at) / batch.window)
            if not batch.events or tokens < 1:
                continue
            events, batch.events = batch.events, []
            batch.tokens, batch.sent_at = tokens - 1, now
            batch.window = FLOOD_COALESCE_S if len(events) >= FLOOD_EVENTS else COALESCE_S
            view = next(iter(subs)).view
            # A page opened since the last message shows its own snapshot, not
            # what `shown` records: send it the whole list once.
            shown = batch.shown if subs <= batch.subs else None
            try:
                fields, content, batch.shown = self.call(view.render_batch, db, events,
                                                         shown)
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
