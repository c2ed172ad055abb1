"""`stepline worker`: claim pending jobs and run their steps.

Jobs run in threads (not gevent): step code may block, spawn processes and
use CPU. A watchdog thread heartbeats, notices cancel requests and timeouts,
and recovers jobs left running by dead workers.
"""

import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass

from stepline.engine.context import StepContext, StepFailed
from stepline.engine.definitions import DEFAULT_MAX_PARALLEL
from stepline.engine.logwriter import BatchWriter
from stepline.engine.states import TERMINAL, Status, StopReason, blocks_dependents
from stepline.engine.steps import run_step
from stepline.engine.taskslots import TASK_SLOTS, TaskSlots
from stepline.store import reads, workers
from stepline.store.backends import redacted
from stepline.store.errors import unavailable
from stepline.store.workers import RETRY_MAX_S, retry_while_unavailable
from stepline.store.writes import Store

# Step threads that log flat out hold the GIL for a whole switch interval
# (5 ms by default) whenever the batch writer wants it back; a shorter one
# keeps flushes flowing (about +25% log throughput, measured in bench/logs.py).
SWITCH_INTERVAL_S = 0.0005
HEARTBEAT_S = 1.0
# The watchdog wakes within ~5 ms of another connection's commit (new jobs,
# cancel requests: see stepline.store.changes), and at least this often for
# heartbeats and timeouts.
WATCH_S = 0.1
WATCH_ERROR_S = 0.2  # pause after a failed round (database locked, full)
# The claim loop, woken by the watchdog, also looks for pending jobs this often.
IDLE_RECHECK_S = 1.0
STALE_AFTER_S = 15.0
SHUTDOWN_S = 7.0  # to stop on SIGTERM; #12 asks for an exit within 10 s (flush, recovery)


class Worker:
    def __init__(self, store: Store, concurrency: int = 4, task_slots: int = TASK_SLOTS):
        self.store = store
        self.concurrency = concurrency
        self.writer = BatchWriter(store)
        self.slots = TaskSlots(store, self.writer, task_slots)  # see engine.taskslots
        self.worker_id = ""
        self._running: dict[str, JobRun] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # the claim loop's: maybe a job to claim
        self.left_running = False  # after run(): a stuck step or task's thread lives on

    # -- lifecycle ---------------------------------------------------------------

    def run(self, exit_when_idle: bool = False) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.worker_id = self.writer.worker_id = workers.register(self.store)
        print(f"stepline worker {self.worker_id} started on {redacted(self.store.path)}",
              flush=True)
        self.writer.start()
        self.recover_dead_workers()
        self.slots.start(self.worker_id)
        watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        watchdog.start()
        try:
            while not self._stop.is_set():
                self._wake.clear()  # before looking: a wake-up from now on is kept
                try:
                    job_id = (self._free_slot() and reads.pending_job_exists(self.store.db)
                              and self.store.claim_next_job(self.worker_id))
                except unavailable() as exc:  # locked, full, read-only: wait it out
                    print(f"stepline: cannot claim jobs: {exc}", file=sys.stderr, flush=True)
                    self._stop.wait(RETRY_MAX_S)
                    continue
                if job_id:
                    self._start(job_id)
                    continue
                if exit_when_idle and not self._running:
                    break
                self._wake.wait(IDLE_RECHECK_S)
        finally:
            self._shutdown()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _shutdown(self) -> None:
        """Stop running steps, then hand unfinished jobs back to the queue, also
        of a step or task still running at SHUTDOWN_S (see `left_running`)."""
        deadline = time.monotonic() + SHUTDOWN_S
        with self._lock:
            runs = list(self._running.values())
        for run in runs:
            run.stop(StopReason.SHUTDOWN)
        slots_clear = self.slots.stop(deadline)  # its tasks go back in line for other workers
        for run in runs:
            run.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.left_running = not slots_clear or any(run.thread.is_alive() for run in runs)
        self.writer.stop()
        workers.recover(self.store, self.worker_id,  # re-queued; uncharged if they stopped
                        handed_back=set().union(*(run.steps_handed_back() for run in runs)))
        workers.unregister(self.store, self.worker_id)

    def _free_slot(self) -> bool:
        with self._lock:
            return len(self._running) < self.concurrency

    def _start(self, job_id: str) -> None:
        run = JobRun(self, job_id)
        with self._lock:
            self._running[job_id] = run
        run.thread.start()

    def _finished(self, job_id: str) -> None:
        with self._lock:
            self._running.pop(job_id, None)
        self._wake.set()  # a free slot

    # -- watchdog ----------------------------------------------------------------

    def _watch(self) -> None:
        last_beat = last_recovery = 0.0
        # Only a worker that has been able to write for a while may call another
        # one dead: after the database was locked or full, every heartbeat is
        # stale, and the others are blocked, not dead.
        writable_since = time.monotonic()
        commits = self.store.commit_watch()
        while not self._stop.is_set():
            try:
                committed = commits.wait(WATCH_S)
                if committed:  # by another connection: maybe a new job, new tasks
                    self._wake.set()
                    self.slots.wake()
                # Asked every round while jobs run, not only on a commit: a
                # cancel committed just before its job reached _running is
                # not missed. (~80 us a query.)
                if self._running:
                    for job_id in reads.cancel_requested(self.store.db, self.worker_id):
                        if run := self._running.get(job_id):
                            run.stop(StopReason.CANCELLED)
                now = time.monotonic()
                if now - last_beat >= HEARTBEAT_S:
                    try:
                        workers.heartbeat(self.store, self.worker_id)
                    except unavailable():
                        writable_since = None
                        raise
                    last_beat = now
                    writable_since = writable_since or now
                if (now - last_recovery >= STALE_AFTER_S / 3 and writable_since is not None
                        and now - writable_since >= STALE_AFTER_S):
                    self.recover_dead_workers()
                    last_recovery = now
                with self._lock:
                    runs = list(self._running.values())
                for run in runs:
                    run.check_timeouts()
            except Exception as exc:  # the database may be busy or full: try again soon
                print(f"stepline: watchdog: {exc}", file=sys.stderr)
                self._stop.wait(WATCH_ERROR_S)
        commits.close()

    def recover_dead_workers(self) -> None:
        for dead in workers.dead(self.store, STALE_AFTER_S):
            if dead == self.worker_id:
                continue
            jobs = workers.recover(self.store, dead)
            if jobs:
                print(f"stepline: recovered {len(jobs)} job(s) from dead worker {dead}",
                      flush=True)


@dataclass
class StepRun:
    """One step running in a job: how to stop it, and when it times out."""

    ctx: StepContext
    always_run: bool
    deadline: float | None  # time.time() after which its own timeout stops it


class JobRun:
    """One job: each step on a thread of its own, started as soon as its
    dependencies have settled and one of the job's `max_parallel` slots is
    free."""

    def __init__(self, worker: Worker, job_id: str):
        self.worker = worker
        self.store = worker.store
        self.job_id = job_id
        self.stop_reason: StopReason | None = None
        self._steps: dict[str, StepRun] = {}  # step id -> its run, while it runs
        self._handed_back: set[str] = set()  # steps that stopped for a shutdown
        self._lock = threading.Lock()  # stop() against a step starting or handed back
        self.thread = threading.Thread(target=self.run, name=f"job-{job_id}", daemon=True)
        job = reads.get_job(self.store.db, job_id)
        self.job_deadline = job["started"] + job["timeout_s"] if job and job["timeout_s"] else None
        self.job_timeout = job["timeout_s"] if job else None
        # a job created before the column existed has none
        self.max_parallel = (job and job["max_parallel"]) or DEFAULT_MAX_PARALLEL

    def stop(self, reason: StopReason) -> None:
        """Stop every running step (but a cleanup on cancel); the scheduler
        then settles the ones not started."""
        with self._lock:
            # a shutdown wins over a cancel: the cleanups a cancel lets run
            # stop too, and the job goes back to the queue (still cancelled)
            if self.stop_reason is None or reason is StopReason.SHUTDOWN:
                self.stop_reason = reason
            runs = list(self._steps.values())
        for run in runs:
            if not self._runs_anyway(run.always_run):
                run.ctx.stop(reason)

    def steps_handed_back(self) -> set[str]:
        """The steps that stopped when the shutdown asked (recovered uncharged)."""
        with self._lock:
            return set(self._handed_back)

    def _runs_anyway(self, always_run: bool) -> bool:
        """An always_run step (a cleanup) runs to its end when the job is
        cancelled; a timeout or a shutdown still stops it."""
        return always_run and self.stop_reason is StopReason.CANCELLED

    def check_timeouts(self) -> None:
        now = time.time()
        if self.job_deadline and now > self.job_deadline:
            self.stop(StopReason.JOB_TIMEOUT)
            return
        with self._lock:
            runs = list(self._steps.values())
        for run in runs:
            if run.deadline and now > run.deadline:
                run.ctx.stop(StopReason.STEP_TIMEOUT)

    def run(self) -> None:
        try:
            self._run_steps()
        except Exception as exc:
            print(f"stepline: job {self.job_id} crashed:\n{traceback.format_exc()}",
                  file=sys.stderr)
            # Never leave it running behind a live heartbeat: fail what was open.
            error = f"internal error: {type(exc).__name__}: {exc}"
            self._retry(lambda: workers.recover(self.store,
                self.worker.worker_id, only_job=self.job_id, error=error))
        finally:
            self.worker._finished(self.job_id)

    def _run_steps(self) -> None:
        """Start what is ready, wait for any running step to end, repeat. Only
        this thread changes the steps' dicts; each step's thread reports its
        status through `ended`. A step thread that raised (a store write
        failed for good: a failing step only reports FAILED) stops the
        starting of steps and raises here once the others have ended, and
        run() hands the job to recovery."""
        job = reads.get_job(self.store.db, self.job_id)
        steps = reads.job_steps(self.store.db, self.job_id, with_spec=True)
        by_name = {s["name"]: s for s in steps}
        # a resumed job: the terminal steps finished before a crash
        waiting = [s for s in steps if s["status"] not in TERMINAL]
        ended: queue.SimpleQueue[tuple[dict, str | Exception]] = queue.SimpleQueue()
        running, crash = 0, None
        while True:
            if self.stop_reason is not StopReason.SHUTDOWN and crash is None:
                try:
                    free = self.max_parallel - running
                    for step in self._settle_or_start(waiting, by_name, free):
                        self._start(step, job["params"], ended)
                        running += 1
                except Exception as exc:  # noqa: BLE001 - as a step thread's: raised below
                    crash = exc
            if not running:
                break
            step, outcome = ended.get()
            running -= 1
            if isinstance(outcome, Exception):
                crash = crash or outcome
            else:
                step["status"] = outcome
        if crash is not None:
            raise crash
        if self.stop_reason is StopReason.SHUTDOWN:
            return  # running steps were left for recovery, which re-queues the job
        self._finish_job(steps)

    def _start(self, step: dict, params: dict, ended: queue.SimpleQueue) -> None:
        """Run one step on a daemon thread: a step deaf to stop must not keep
        a stopped worker alive (Worker._shutdown waits SHUTDOWN_S, then recovers)."""
        def run() -> None:
            try:
                outcome = self._run_one(step, params)
            except BaseException as exc:  # noqa: BLE001 - even sys.exit(): _run_steps waits
                outcome = exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
            ended.put((step, outcome))

        threading.Thread(target=run, name=f"job-{self.job_id}-{step['name']}",
                         daemon=True).start()

    def _settle_or_start(self, waiting: list[dict], by_name: dict[str, dict],
                         free: int) -> list[dict]:
        """Settle the waiting steps that will never run (cancelled, skipped)
        and take off `waiting` the ones to start now, at most `free`. Steps
        come in execution order (dependencies first), so a skip reaches its
        dependents in the same pass."""
        start = []
        for step in list(waiting):
            if self.stop_reason and not self._runs_anyway(step["always_run"]):
                # never started: a quiet grey "cancelled"; the job says why
                self._settle(step, Status.CANCELLED)
            elif any(by_name[d]["status"] not in TERMINAL for d in step["depends"]):
                continue  # its dependencies are still to run, or running
            elif ((blocker := next((d for d in step["depends"]
                                    if blocks_dependents(by_name[d])), None))
                  and not step["always_run"]):
                self._settle(step, Status.SKIPPED,
                             f"dependency '{blocker}' {by_name[blocker]['status']}")
            elif len(start) < free:
                start.append(step)
            else:
                continue  # no slot yet
            waiting.remove(step)
        return start

    def _settle(self, step: dict, status: Status, error: str | None = None) -> None:
        self._transition("step", step["id"], status, error)
        step["status"] = status

    def _run_one(self, step: dict, params: dict) -> str:
        """Run one step on its own thread; its final status (RUNNING: left
        for recovery by a shutdown)."""
        ctx = StepContext(self.store, self.worker.writer, self.job_id, step["id"], params,
                          retries=step["retries"])
        self._transition("step", step["id"], Status.RUNNING)
        deadline = time.time() + step["timeout_s"] if step["timeout_s"] else None
        with self._lock:  # from here on stop() reaches it; or it saw the stop already
            self._steps[step["id"]] = StepRun(ctx, bool(step["always_run"]), deadline)
            stopped = self.stop_reason
        if stopped and not self._runs_anyway(step["always_run"]):
            ctx.stop(stopped)  # stopped while it was starting
        status, error = Status.COMPLETED, None
        try:
            run_step(ctx, step["type"], step["spec"])
            if ctx.cancelled:
                raise RuntimeError(ctx.stop_reason)
        except Exception as exc:  # noqa: BLE001 - any step failure is data, not a crash
            timeout_s = (step["timeout_s"] if ctx.stop_reason is StopReason.STEP_TIMEOUT
                         else self.job_timeout)
            error = (ctx.stop_reason.error(timeout_s) if ctx.stop_reason
                     else str(exc) or type(exc).__name__)
            status = (Status.CANCELLED if ctx.stop_reason is StopReason.CANCELLED
                      else Status.FAILED)
            if not ctx.stop_reason and not isinstance(exc, StepFailed):
                ctx.log("".join(traceback.format_exception(exc)).rstrip(), "error")
            ctx.log(error, "error")
        finally:
            with self._lock:
                del self._steps[step["id"]]
        if status == Status.COMPLETED:  # a step whose tasks failed did not succeed
            self._retry(self.worker.writer.flush)  # its task changes, counted below
            tasks = reads.get_step(self.store.db, step["id"])["tasks"]
            if tasks[Status.FAILED]:
                status = Status.FAILED
                error = f"{tasks[Status.FAILED]} of {sum(tasks.values())} tasks failed"
                ctx.log(error, "error")
        # lines and tasks land before the status
        self._retry(lambda: self.worker.writer.close_step(ctx.logbook))
        if self.stop_reason is StopReason.SHUTDOWN:  # left for recovery, which re-queues it
            with self._lock:  # read by the shutdown while late steps may still stop
                self._handed_back.add(step["id"])
            return Status.RUNNING
        self._transition("step", step["id"], status, error)
        return status

    def _finish_job(self, steps: list[dict]) -> None:
        if self.stop_reason is StopReason.CANCELLED:
            status, error = Status.CANCELLED, str(StopReason.CANCELLED)
        elif self.stop_reason:
            status, error = Status.FAILED, self.stop_reason.error(self.job_timeout)
        elif failed := [s["name"] for s in steps
                        if s["status"] == Status.FAILED and s["on_error"] == "fail"]:
            status, error = Status.FAILED, f"step {failed[0]!r} failed"
        else:
            status, error = Status.COMPLETED, None
        self._transition("job", self.job_id, status, error)

    def _transition(self, kind: str, entity_id: str, to: str, error: str | None = None):
        def write():
            with self.store.write() as tx:
                tx.transition(kind, entity_id, to, error)

        self._retry(write)

    def _retry(self, write) -> None:
        retry_while_unavailable(write, self.worker._stop.is_set, f"job {self.job_id}")
