"""One batch writer per worker process.

Step code logs and reports task changes from many threads; this collects
them and commits them in one transaction per flush (every 50 ms, or sooner
once 2,000 lines wait). Each flush bumps every touched step's log_count and
writes ONE event per touched step, so a step logging 20,000 lines/s costs the
browser at most 20 messages/s.
"""

import sys
import threading
from time import time_ns

from stepline.engine.states import LOG_LEVELS
from stepline.store.writes import LogEntry, Store, now_us

# what ctx.log accepts -> what is stored ("warning" is a common spelling of warn)
LEVELS = {**{level: level for level in LOG_LEVELS}, "warning": "warn"}
FLUSH_INTERVAL_S = 0.05
FLUSH_LINES = 2000
FLUSH_CHARS = 4 * 1024 * 1024  # ... or once this much text in long lines waits
# A step's loggers wait beyond either bound, so memory stays bounded: at most
# 100,000 lines, and 32 MB of text in lines longer than LONG_LINE_CHARS.
MAX_BUFFERED_LINES = 100_000
MAX_BUFFERED_CHARS = 32 * 1024 * 1024
LONG_LINE_CHARS = 1024
# A longer line is cut, and a warning line says how much was not kept.
MAX_LINE_CHARS = 64 * 1024
RUN_IDS = 500  # task ids per bulk transition


def truncation_marker(dropped: int, unit: str = "characters") -> str:
    return f"[line truncated: {dropped} more {unit} not shown]"


class StepLog:
    """One running step's log buffer. Appends are cheap; line numbers are
    given at insert time from the committed count, inside the flush's
    transaction, so they are 1..n with no gap whatever thread logged."""

    def __init__(self, writer: "BatchWriter", job_id: str, step_id: str):
        self.writer = writer
        self.job_id = job_id
        self.step_id = step_id
        self.entries: list[LogEntry] = []
        self.chars = 0  # text waiting in long entries
        self.lock = threading.Lock()

    def append(self, message, level: str = "info") -> None:
        """The hot path of every step: one dict lookup, one lock, one append."""
        try:
            level = LEVELS[level]
        except KeyError:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)},"
                             f" not {level!r}") from None
        message = str(message)
        if len(message) > LONG_LINE_CHARS:
            return self._append_long(message, level)
        entry = (time_ns() // 1000, level, message)  # LogEntry: microseconds
        with self.lock:
            self.entries.append(entry)
            waiting = len(self.entries)
        if waiting % FLUSH_LINES == 0:  # every 2,000 lines: flush now, or wait for room
            self.writer.wake(self)

    def _append_long(self, message: str, level: str) -> None:
        """Long lines are counted by size too (short ones are bounded by the
        line count alone, which keeps the hot path short), and cut past
        MAX_LINE_CHARS with a warning line saying how much was dropped."""
        dropped = len(message) - MAX_LINE_CHARS
        message = message[:MAX_LINE_CHARS]
        with self.lock:
            self.entries.append((now_us(), level, message))
            self.chars += len(message)
            waiting, chars = len(self.entries), self.chars
        if waiting % FLUSH_LINES == 0 or chars >= FLUSH_CHARS:
            self.writer.wake(self)
        if dropped > 0:
            self.append(truncation_marker(dropped), "warn")

    def take(self) -> list[LogEntry]:
        with self.lock:
            entries, self.entries, self.chars = self.entries, [], 0
        return entries

    def put_back(self, entries: list[LogEntry]) -> None:
        with self.lock:
            self.entries[:0] = entries
            self.chars += sum(len(e[2]) for e in entries if len(e[2]) > LONG_LINE_CHARS)

    def waiting(self) -> int:
        return len(self.entries)

    def full(self) -> bool:
        return len(self.entries) >= MAX_BUFFERED_LINES or self.chars >= MAX_BUFFERED_CHARS


class BatchWriter:
    def __init__(self, store: Store):
        self.store = store
        self.worker_id: str | None = None  # recorded on each task it starts
        self._cond = threading.Condition(threading.Lock())
        self._flush_lock = threading.Lock()
        self._steps: dict[str, StepLog] = {}
        self._tasks: list[tuple[int, str, str | None]] = []
        self._progress: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batch-writer", daemon=True)

    def start(self) -> "BatchWriter":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self.flush()

    # -- producers -------------------------------------------------------------

    def open_step(self, job_id: str, step_id: str) -> StepLog:
        """The step's log buffer in this process: the job's own step and the
        task slots running some of its tasks share one."""
        with self._cond:
            log = self._steps.get(step_id)
            if log is None:
                log = self._steps[step_id] = StepLog(self, job_id, step_id)
        return log

    def close_step(self, log: StepLog) -> None:
        """Commit what the step logged, then forget its buffer."""
        self.flush()
        with self._cond:
            if self._steps.get(log.step_id) is log:
                del self._steps[log.step_id]

    def wake(self, log: StepLog) -> None:
        """A buffer is full enough to flush now; past the bound, wait for it.
        A buffer already closed (its step ended while a task of it still ran
        here and logged) is never flushed: waiting for room would block that
        task for good, so its late lines are dropped, as the step's are done."""
        with self._cond:
            if self._steps.get(log.step_id) is not log:
                log.take()
                return
            self._cond.notify_all()
            while log.full() and not self._stop.is_set():
                self._cond.wait(0.1)

    def task(self, task_id: int, status: str, error: str | None = None) -> None:
        with self._cond:
            self._tasks.append((task_id, status, error))

    def progress(self, step_id: str, done: int, total: int) -> None:
        with self._cond:
            self._progress[step_id] = (done, total)

    # -- the flush ---------------------------------------------------------------

    def flush(self) -> None:
        """Commit everything handed over before this call. Safe from any thread."""
        with self._flush_lock:
            with self._cond:
                steps = list(self._steps.values())
                tasks, self._tasks = self._tasks, []
                progress, self._progress = self._progress, {}
            logs = [(log, rows) for log in steps if (rows := log.take())]
            if not (logs or tasks or progress):
                return
            try:
                self._write(logs, tasks, progress)
            except Exception:
                self._put_back(logs, tasks, progress)
                raise
            finally:
                with self._cond:
                    self._cond.notify_all()

    def _write(self, logs, tasks, progress) -> None:
        with self.store.write() as tx:
            for log, entries in logs:
                tx.append_logs(log.job_id, log.step_id, entries)
            # A change no longer allowed (its step's owner cancelled the task
            # meanwhile) is left out by the bulk transition, not an error.
            for ids, status, error in _runs(tasks):
                tx.transition("task", ids, status, error, worker=self.worker_id)
            for step_id, (done, total) in progress.items():
                tx.set_progress(step_id, done, total)

    def _put_back(self, logs, tasks, progress) -> None:
        """A failed flush (database locked, disk full) keeps its data in order."""
        for log, entries in logs:
            log.put_back(entries)
        with self._cond:
            self._tasks[:0] = tasks
            for step_id, value in progress.items():
                self._progress.setdefault(step_id, value)

    def _run(self) -> None:
        backoff = FLUSH_INTERVAL_S
        while not self._stop.is_set():
            with self._cond:
                if not any(log.waiting() >= FLUSH_LINES or log.chars >= FLUSH_CHARS
                           for log in self._steps.values()):
                    self._cond.wait(backoff)
            try:
                self.flush()
                backoff = FLUSH_INTERVAL_S
            except Exception as exc:
                print(f"stepline: log flush failed, will retry: {exc}", file=sys.stderr)
                backoff = min(backoff * 2, 2.0)


def _runs(changes: list[tuple[int, str, str | None]]):
    """Task changes as (ids, status, error) runs, each one bulk transition:
    consecutive changes to the same status and error, a task at most once per
    run (so each task's changes still apply in the order they were made), at
    most RUN_IDS ids (a statement's parameters are limited)."""
    ids: list[int] = []
    seen: set[int] = set()
    key: tuple[str, str | None] | None = None
    for task_id, status, error in changes:
        if ids and ((status, error) != key or task_id in seen or len(ids) >= RUN_IDS):
            yield ids, *key
            ids, seen = [], set()
        key = (status, error)
        ids.append(task_id)
        seen.add(task_id)
    if ids:
        yield ids, *key
