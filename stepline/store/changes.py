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
import time
from collections.abc import Callable

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
