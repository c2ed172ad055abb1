"""One batch writer per worker process.

Step code logs and reports task changes from many threads; this collects
them and commits them in one transaction per flush (every 50 ms, or sooner
once 2,000 lines wait). Each flush bumps every touched step's log_count and
writes ONE event per touched step, so a step logging 20,000 lines/s costs the
browser at most 20 messages/s.
"""

import sys
import threading
import time
from collections import defaultdict

from .states import InvalidTransition
from .store import LogLine, Store

LEVELS = ("debug", "info", "warn", "error")
FLUSH_INTERVAL_S = 0.05
FLUSH_LINES = 2000
MAX_BUFFERED_LINES = 100_000  # loggers wait beyond this: memory stays bounded


class BatchWriter:
    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Condition()
        self._flush_lock = threading.Lock()
        self._logs: dict[tuple[str, str], list[LogLine]] = defaultdict(list)
        self._tasks: list[tuple[int, str, str | None]] = []
        self._progress: dict[str, tuple[int, int]] = {}
        self._buffered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batch-writer", daemon=True)

    def start(self) -> "BatchWriter":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    # -- producers -------------------------------------------------------------

    def log(self, job_id: str, step_id: str, message: str, level: str = "info") -> None:
        if level == "warning":
            level = "warn"
        if level not in LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
        with self._lock:
            while self._buffered >= MAX_BUFFERED_LINES and not self._stop.is_set():
                self._lock.notify_all()
                self._lock.wait(0.1)
            self._logs[(job_id, step_id)].append(LogLine(time.time(), level, message))
            self._buffered += 1
            if self._buffered >= FLUSH_LINES:
                self._lock.notify_all()

    def task(self, task_id: int, status: str, error: str | None = None) -> None:
        with self._lock:
            self._tasks.append((task_id, status, error))

    def progress(self, step_id: str, done: int, total: int) -> None:
        with self._lock:
            self._progress[step_id] = (done, total)

    # -- the flush ---------------------------------------------------------------

    def flush(self) -> None:
        """Commit everything handed over before this call. Safe from any thread."""
        with self._flush_lock:
            with self._lock:
                logs, self._logs = self._logs, defaultdict(list)
                tasks, self._tasks = self._tasks, []
                progress, self._progress = self._progress, {}
                self._buffered = 0
                self._lock.notify_all()
            if not (logs or tasks or progress):
                return
            try:
                self._write(logs, tasks, progress)
            except Exception:
                self._put_back(logs, tasks, progress)
                raise

    def _write(self, logs, tasks, progress) -> None:
        with self.store.write() as tx:
            for (job_id, step_id), lines in logs.items():
                tx.append_logs(job_id, step_id, lines)
            for task_id, status, error in tasks:
                try:
                    tx.transition("task", task_id, status, error)
                except InvalidTransition as exc:  # a bug, not a reason to lose the batch
                    print(f"stepline: dropped task change: {exc}", file=sys.stderr)
            for step_id, (done, total) in progress.items():
                tx.set_progress(step_id, done, total)

    def _put_back(self, logs, tasks, progress) -> None:
        """A failed flush (database locked, disk full) keeps its data in order."""
        with self._lock:
            for key, lines in logs.items():
                self._logs[key][:0] = lines
                self._buffered += len(lines)
            self._tasks[:0] = tasks
            for step_id, value in progress.items():
                self._progress.setdefault(step_id, value)

    def _run(self) -> None:
        backoff = FLUSH_INTERVAL_S
        while not self._stop.is_set():
            with self._lock:
                if self._buffered < FLUSH_LINES:
                    self._lock.wait(backoff)
            try:
                self.flush()
                backoff = FLUSH_INTERVAL_S
            except Exception as exc:
                print(f"stepline: log flush failed, will retry: {exc}", file=sys.stderr)
                backoff = min(backoff * 2, 2.0)
