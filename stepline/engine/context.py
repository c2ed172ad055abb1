"""`ctx`, the object every step receives: logging, progress, task fan-out."""

import threading
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepline.engine.logwriter import BatchWriter
from stepline.engine.states import Status, StopReason
from stepline.store import tasks
from stepline.store.backends import work_root
from stepline.store.workers import retry_while_unavailable
from stepline.store.writes import Store


class StepFailed(Exception):
    """Raised by step code to fail its step with a clear message."""


@dataclass
class SpawnResult:
    results: list[Any]
    failed: list[tuple[int, str]] = field(default_factory=list)  # (task index, error)


class StepContext:
    def __init__(self, store: Store, writer: BatchWriter, job_id: str, step_id: str,
                 params: dict, retries: int = 0):
        self.store = store
        self.writer = writer
        self.job_id = job_id
        self.step_id = step_id
        self.params = params
        self.retries = retries
        self.logbook = writer.open_step(job_id, step_id)
        # ctx.log(message, level="info"): the step log's own append, no wrapper
        self.log = self.logbook.append
        self.stop_reason: StopReason | None = None  # set by the worker's watchdog
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._on_stop: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        """True once the step must stop: cancel, timeout or worker shutdown."""
        return self._stopped.is_set()

    def stop(self, reason: StopReason) -> None:
        with self._stop_lock:
            if self.stop_reason is None:
                self.stop_reason = reason
            self._stopped.set()
            callbacks, self._on_stop = self._on_stop, []
        for callback in callbacks:
            callback()

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call callback() once when the step must stop, at once if it already
        must: how a step blocked outside Python (waiting on a process) is woken
        without polling. The callback runs on the stopping thread: keep it short."""
        with self._stop_lock:
            if not self._stopped.is_set():
                self._on_stop.append(callback)
                return
        callback()

    def wait(self, seconds: float) -> bool:
        """Sleep that wakes early on stop; returns True if stopped."""
        return self._stopped.wait(seconds)

    @property
    def workdir(self) -> Path:
        """A directory shared by the steps of this job (like a CI workspace)."""
        path = work_root(self.store.path) / "stepline-work" / self.job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def progress(self, done: int, total: int) -> None:
        self.writer.progress(self.step_id, int(done), int(total))

    def spawn(self, items: Iterable[Any], fn: Callable[[Any], Any],
              concurrency: int = 4) -> SpawnResult:
        """Run fn(item) as one tracked task per item, `concurrency` at a time,
        retrying each up to the step's `retries`. Task progress feeds the step's.
        These tasks run here, in the step's own worker: `fn` is an in-process
        callable (often a closure), which cannot travel to another worker.
        (Step types whose tasks can: `stepline.engine.fanout`.)"""
        items = list(items)
        def add_tasks():
            with self.store.write() as tx:
                return tasks.add(tx, self.step_id, len(items))

        task_ids = retry_while_unavailable(add_tasks, lambda: self.cancelled,
                                           f"step {self.step_id}")
        results: list[Any] = [None] * len(items)
        failed: list[tuple[int, str]] = []
        done = 0
        lock = threading.Lock()
        self.progress(0, len(items))

        def run_one(index: int) -> None:
            nonlocal done
            task_id = task_ids[index]
            if self.cancelled:
                self.writer.task(task_id, Status.CANCELLED)
                return
            for attempt in range(self.retries + 1):
                self.writer.task(task_id, Status.RUNNING)
                try:
                    results[index] = fn(items[index])
                except Exception as exc:  # noqa: BLE001 - task code may raise anything
                    error = f"{type(exc).__name__}: {exc}"
                    if attempt < self.retries and not self.cancelled:
                        self.writer.task(task_id, Status.PENDING, error)
                        continue
                    if self.cancelled:  # stopped, not broken: the step says why
                        self.writer.task(task_id, Status.CANCELLED)
                        break
                    self.writer.task(task_id, Status.FAILED, error)
                    with lock:
                        failed.append((index, error))
                else:
                    self.writer.task(task_id, Status.COMPLETED)
                break
            with lock:
                done += 1
                self.progress(done, len(items))

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            for future in [pool.submit(run_one, i) for i in range(len(items))]:
                exc = future.exception()
                if exc is not None:  # a bug in run_one itself
                    self.log("".join(traceback.format_exception(exc)), "error")
        failed.sort()
        return SpawnResult(results, failed)
