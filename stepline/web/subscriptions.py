"""The two kinds of live connection the hub delivers to (stepline.web.hub):
a queue an SSE stream's greenlet takes from, and a WebSocket the tailer
writes to itself. Both hold what the tailer gives them in event order and
resync from a fresh snapshot when they fall behind."""

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stepline.web.frames import Message, WholeFrames

QUEUE_SIZE = 500


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
