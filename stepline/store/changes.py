"""Noticing another process's commit within milliseconds, at no idle cost.

`PRAGMA data_version` says whether another connection has committed since
this one last asked (~30 us, no I/O), but only when asked: asking every 5 ms
costs an idle worker ~1 s of CPU per minute on a busy 2-core machine. So the
asking is driven by writes: on Linux, inotify wakes the watcher when any file
in the database's directory (the WAL) is written, and an idle worker sleeps.
SQLite writes a commit's WAL frames a moment before it publishes the commit
in shared memory, so after each wake-up the watcher keeps asking every
POLL_S for FOLLOW_S. Where inotify is unavailable it asks every POLL_S.
"""

import ctypes
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlite_utils import Database

POLL_S = 0.005
FOLLOW_S = 0.05
IN_MODIFY = 0x2
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000


class CommitWatch:
    """For one thread: `wait(timeout)` returns True as soon as another
    connection has committed since the last call, False at the timeout."""

    def __init__(self, path: str, db: Callable[[], Database]):
        self._db = db  # the calling thread's connection: data_version is per connection
        self._version: int | None = None
        self._follow_until = 0.0
        self._fd = _inotify(os.path.dirname(os.path.abspath(path)))
        self._poll = select.poll()  # not select(): no limit on the fd's number
        if self._fd is not None:
            self._poll.register(self._fd, select.POLLIN)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._changed():
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            if self._fd is None or now < self._follow_until:
                time.sleep(min(POLL_S, deadline - now))
            elif self._written(deadline - now):
                self._follow_until = time.monotonic() + FOLLOW_S

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _changed(self) -> bool:
        version = self._db().execute("PRAGMA data_version").fetchone()[0]
        changed, self._version = version != self._version, version
        return changed

    def _written(self, timeout: float) -> bool:
        """Block until a file in the directory is written (then read away
        every queued event), or the timeout passes."""
        if not self._poll.poll(timeout * 1000):
            return False
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass
        return True


class SharedWatch:
    """A process's ONE commit watch, shared by every thread that waits for
    commits (a worker's watchdog and each fan-out step it owns), as the web
    side has one tailer per process. On PostgreSQL a watch is a LISTEN
    connection, on SQLite an inotify descriptor: one per waiter made a worker
    running 4 `generate` steps hold 5 LISTEN connections. One thread waits on
    the watch while anyone listens, and wakes every waiter."""

    def __init__(self, open_watch: Callable[[], Any]):
        self._open_watch = open_watch  # the backend's commit_watch
        self._waiters: set[Waiter] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def waiter(self) -> "Waiter":
        """For one thread; close it when done (the last one out stops the
        watch thread and lets its connection go)."""
        waiter = Waiter(self)
        with self._lock:
            self._waiters.add(waiter)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="commit-watch",
                                                daemon=True)
                self._thread.start()
        return waiter

    def waiter_count(self) -> int:
        with self._lock:
            return len(self._waiters)

    def wake_all(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.event.set()

    def _remove(self, waiter: "Waiter") -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def _run(self) -> None:
        try:
            watch, first = self._open_watch(), True
        except Exception as exc:  # e.g. no inotify left: waiters poll on their timeouts
            print(f"stepline: commit watch: {exc}", file=sys.stderr, flush=True)
            with self._lock:
                self._thread = None  # the next waiter tries again
            return
        try:
            while True:
                with self._lock:
                    if not self._waiters:
                        self._thread = None  # the next waiter starts a new one
                        return
                try:
                    # The first answer is "connected, look" (true): a new
                    # waiter starts woken already.
                    if watch.wait(SHARED_WAIT_S) and not first:
                        self.wake_all()
                    first = False
                except Exception as exc:  # a lost connection: the watch reconnects
                    print(f"stepline: commit watch: {exc}", file=sys.stderr, flush=True)
                    time.sleep(SHARED_ERROR_S)
        finally:
            watch.close()


# How often the shared watch thread looks whether anyone still listens, and
# how long it pauses after an error (the database restarting, say).
SHARED_WAIT_S = 0.5
SHARED_ERROR_S = 0.2


class Waiter:
    """One thread's view of the SharedWatch: `wait(timeout)` is True as soon
    as another connection has committed since the last call (or someone
    called `wake_all`), False at the timeout."""

    def __init__(self, shared: SharedWatch):
        self._shared = shared
        self.event = threading.Event()
        self.event.set()  # as a fresh watch: the first call says "look"

    def wait(self, timeout: float) -> bool:
        if not self.event.wait(timeout):
            return False
        self.event.clear()  # a wake-up from now on is kept for the next call
        return True

    def close(self) -> None:
        self._shared._remove(self)


class DataVersionPoll:
    """The web tailer's watch: `wait(timeout)` asks `PRAGMA data_version` of
    its own connection (`db`) once; if nothing was committed it sleeps the
    timeout and says False. (Under gevent a sleep lets the other greenlets run;
    the tailer chooses the timeout: 10 ms while events flow, 200 ms idle.)"""

    # After a poll that found events the tailer sleeps this long before it
    # looks again: commit -> tailer stays ~5 ms while events flow, and the
    # sleep lets the web worker's other greenlets run (a SQLite read never yields).
    after_events_s = 0.01

    def __init__(self, db: Database):
        self.db = db
        self._version: int | None = None

    def wait(self, timeout: float) -> bool:
        version = self.db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._version = version
            return True
        time.sleep(timeout)
        return False

    def close(self) -> None:
        self.db.conn.close()


def _inotify(directory: str) -> int | None:
    """An inotify descriptor watching writes in directory, or None (not
    Linux, no instances left, ...): then the watcher polls."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(directory), IN_MODIFY) < 0:
        os.close(fd)
        return None
    return fd
