"""`stepline run --wait`: follow a job until it ends, in a terminal or a pipe."""

import shutil
import sys
import time

from stepline.engine.runner import STALE_AFTER_S
from stepline.engine.states import TERMINAL, Status
from stepline.store import reads, workers
from stepline.store.writes import Store

# A live worker claims a job as soon as it is committed; after 2 s with no
# live worker registered, the person is told why nothing happens.
NO_WORKER_HINT_AFTER_S = 2.0


def follow_job(store: Store, job_id: str) -> int:
    """Print each status change as it happens, and the running steps' tasks
    and lines: redrawn in place on a terminal, a plain line every few seconds
    when piped. Exit 0 if the job completed."""
    on_tty = sys.stdout.isatty()
    seq, shown, progress_shown, progress_at = 0, {}, "", 0.0
    hint_due = time.monotonic() + NO_WORKER_HINT_AFTER_S
    while True:
        if hint_due and time.monotonic() >= hint_due:
            hint_due = 0.0  # once: waiting goes on, a worker may start any time
            if not workers.live(store, STALE_AFTER_S):
                print("waiting: no worker is running (start one: stepline worker)",
                      file=sys.stderr, flush=True)
        for event in reads.events_after(store.db, seq, job_id=job_id):
            seq = event["seq"]
            key = event["step_id"] or "job"
            if event["status"] != shown.get(key):
                shown[key] = event["status"]
                name = f"step {event['step_name']}" if event["step_id"] else "job"
                clear = "\r\033[K" if on_tty and progress_shown else ""
                progress_shown = "" if clear else progress_shown
                print(f"{clear}{time.strftime('%H:%M:%S')} {name}: {event['status']}", flush=True)
        job = reads.get_job(store.db, job_id)
        if job["status"] in TERMINAL:
            if on_tty and progress_shown:
                print("\r\033[K", end="")
            for step in reads.job_steps(store.db, job_id):
                t = step["tasks"]
                tasks = f", tasks {t['completed']} ok {t['failed']} failed" if any(
                    t.values()) else ""
                error = f" — {step['error']}" if step["error"] else ""
                lines = step["log_count"]
                print(f"  {step['status']:>9}  {step['name']} ({lines} log line{'s' * (lines != 1)}"
                      f"{tasks}){error}")
            print(f"job {job_id} {job['status']}" + (f": {job['error']}" if job["error"] else ""))
            return 0 if job["status"] == Status.COMPLETED else 1
        if on_tty:
            progress = progress_line(reads.job_steps(store.db, job_id))
            if progress != progress_shown:
                width = shutil.get_terminal_size().columns - 1
                print(f"\r\033[K{progress[:width]}", end="", flush=True)
                progress_shown = progress
        elif time.monotonic() - progress_at >= PROGRESS_EVERY_S:  # read only when due
            progress = progress_line(reads.job_steps(store.db, job_id))
            if progress and progress != progress_shown:
                print(f"{time.strftime('%H:%M:%S')} {progress}", flush=True)
                progress_shown, progress_at = progress, time.monotonic()
        time.sleep(0.2)


PROGRESS_EVERY_S = 5.0  # piped output: a progress line at most this often


def progress_line(steps: list[dict]) -> str:
    """`code_map: 12/40 tasks, 1 failed, 830 lines | report: 3 lines`."""
    parts = []
    for step in steps:
        if step["status"] != Status.RUNNING:
            continue
        t = step["tasks"]
        total = sum(t.values())
        tasks = f"{t['completed'] + t['failed']}/{total} tasks, " if total else ""
        failed = f"{t['failed']} failed, " if t["failed"] else ""
        lines = step["log_count"]
        parts.append(f"{step['name']}: {tasks}{failed}{lines:,} line{'s' * (lines != 1)}")
    return " | ".join(parts)
