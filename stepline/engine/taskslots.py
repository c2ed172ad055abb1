"""A worker's task slots: it claims pending tasks of ANY running step whose
type runs remote tasks (`stepline.engine.fanout.REMOTE_TASKS`), whoever
owns the step, and runs them in threads.

One thread claims: woken by the worker's watchdog when another process
commits (tasks made, a step stopped) or this one made tasks
(Store.commits.wake_all), and when a slot frees up, else at the
latest every IDLE_RECHECK_S. A claim takes at most the free slots, so the
tasks of one step spread over every worker that has room -- except where
tasks take under SHORT_TASK_S: then each claim also takes a queue of
QUEUE_PER_SLOT per slot, as a claim is a write transaction that costs more
than such tasks (on PostgreSQL, 20,000 no-op tasks on 4 workers: 1,900
tasks/s claiming slots only, see bench/RESULTS.md for the figure with it).
"""

import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from stepline.engine.fanout import REMOTE_TASKS, TaskRun
from stepline.engine.logwriter import BatchWriter, StepLog
from stepline.engine.params import substitute
from stepline.engine.states import Status, StopReason, may_run_again
from stepline.store import reads, tasks
from stepline.store.errors import unavailable
from stepline.store.workers import RETRY_MAX_S, retry_while_unavailable
from stepline.store.writes import Store

IDLE_RECHECK_S = 1.0
SHORT_TASK_S = 0.02
QUEUE_PER_SLOT = 8
TASK_SLOTS = 8  # a worker's default: tasks it runs at once, beside its jobs


@dataclass
class HeldStep:
    """A step this worker runs tasks of: what every task of it needs."""

    job_id: str
    step_id: str
    type: str
    spec: dict
    retries: int
    log: StepLog
    stopped: threading.Event = field(default_factory=threading.Event)
    held: int = 0  # its tasks in this worker's slots now


class TaskSlots:
    def __init__(self, store: Store, writer: BatchWriter, slots: int):
        self.store = store
        self.writer = writer
        self.slots = max(1, slots)
        self.worker_id = ""
        self._held = 0  # tasks claimed and not yet handed back, queued or running
        self._task_s: float | None = None  # recent tasks' mean duration, None: none yet
        self._steps: dict[str, HeldStep] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._shutdown = threading.Event()  # tasks stopped by it go back to the queue
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix="task")
        self._thread = threading.Thread(target=self._run, name="task-claims", daemon=True)

    def start(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, deadline: float) -> bool:
        """Stop claiming; running tasks stop and go back to pending (another
        worker takes them). Waits until they have handed back -- a task stops
        at its next look at its stop flag (a generate task looks once per
        line) -- or until `deadline` (time.monotonic()): a task that never
        looks must not keep the worker from exiting. What it still holds then
        is the worker's recovery's (Worker._shutdown: workers.recover).
        Returns whether every task handed back."""
        self._shutdown.set()
        self._stop.set()
        self._wake.set()
        with self._lock:
            for step in self._steps.values():
                step.stopped.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._pool.shutdown(wait=False, cancel_futures=False)
        while self._held and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._held == 0

    # -- claiming ----------------------------------------------------------------

    def _run(self) -> None:
        types = sorted(REMOTE_TASKS)
        while not self._stop.is_set():
            self._wake.clear()  # before looking: a wake-up from now on is kept
            try:
                self._notice_stopped_steps()
                free = self._room()
                if free > 0 and reads.claimable_tasks_exist(self.store.db, types):
                    with self.store.write() as tx:
                        claimed = tasks.claim(tx, self.worker_id, free, types)
                    if claimed:
                        self._start(claimed)
                        continue
            except unavailable() as exc:
                print(f"stepline: cannot claim tasks: {exc}", file=sys.stderr, flush=True)
                self._stop.wait(RETRY_MAX_S)
                continue
            except Exception:  # a bug: keep the worker alive, say what broke
                print(f"stepline: task claims:\n{traceback.format_exc()}", file=sys.stderr)
                self._stop.wait(RETRY_MAX_S)
                continue
            self._wake.wait(IDLE_RECHECK_S)

    def _start(self, claimed: list[dict]) -> None:
        for task in claimed:
            step = self._steps.get(task["step_id"])
            if step is None or step.stopped.is_set():  # new, or running again after a retry
                # claimed already: never dropped for a busy database (given up
                # only at shutdown, whose recovery re-queues them)
                step = retry_while_unavailable(lambda step_id=task["step_id"]: self._hold(step_id),
                                               self._stop.is_set, "task claims")
            with self._lock:
                self._held += 1
                step.held += 1
            self._pool.submit(self._run_task, step, task)

    def _hold(self, step_id: str) -> HeldStep:
        row = reads.get_step(self.store.db, step_id)
        params = reads.get_job(self.store.db, row["job_id"])["params"]
        step = HeldStep(row["job_id"], step_id, row["type"], substitute(row["spec"], params),
                        row["retries"], self.writer.open_step(row["job_id"], step_id))
        with self._lock:
            self._steps[step_id] = step
        return step

    def _notice_stopped_steps(self) -> None:
        """Steps that no longer run (cancelled, failed, timed out): their tasks
        here stop; a step with none left here is forgotten."""
        with self._lock:
            ids = list(self._steps)
        if not ids:
            return
        running = reads.running_among(self.store.db, ids)
        for step_id in ids:
            if step_id in running:
                continue
            step = self._steps[step_id]
            step.stopped.set()
            if step.held == 0:
                with self._lock:
                    del self._steps[step_id]
                self.writer.close_step(step.log)

    # -- running -----------------------------------------------------------------

    def _room(self) -> int:
        """How many tasks a claim may take now."""
        with self._lock:
            short = self._task_s is not None and self._task_s < SHORT_TASK_S
            return self.slots * (1 + QUEUE_PER_SLOT if short else 1) - self._held

    def _run_task(self, step: HeldStep, task: dict) -> None:
        started = time.monotonic()
        if self._shutdown.is_set():  # queued here, never started: straight back in line
            status, error = Status.PENDING, str(StopReason.SHUTDOWN)
        elif step.stopped.is_set():  # queued, and its step stopped meanwhile
            status, error = Status.CANCELLED, None
        else:
            status, error = self._attempt(step, task)
        self.writer.task(task["id"], status, error)
        took = time.monotonic() - started
        with self._lock:
            self._held -= 1
            step.held -= 1
            self._task_s = took if self._task_s is None else 0.9 * self._task_s + 0.1 * took
        self._wake.set()

    def _attempt(self, step: HeldStep, task: dict) -> tuple[str, str | None]:
        """Run the task once: (status, error) to record."""
        try:
            REMOTE_TASKS[step.type](TaskRun(step.spec, task["idx"], task["attempt"],
                                            step.log, step.stopped))
        except BaseException as exc:  # noqa: BLE001 - task code may raise anything, even exit
            if self._shutdown.is_set():
                return Status.PENDING, str(StopReason.SHUTDOWN)
            if step.stopped.is_set():
                return Status.CANCELLED, None
            error = f"{type(exc).__name__}: {exc}"
            # in the step's log too, where a person reads while it runs (and a
            # failed step's panel opens at its first error line)
            if may_run_again(task["attempt"], step.retries):
                step.log.append(f"task {task['idx']}: {error} (will retry)", "warn")
                return Status.PENDING, error  # back in line: any worker retries it
            step.log.append(f"task {task['idx']}: {error}", "error")
            return Status.FAILED, error
        return Status.COMPLETED, None
