"""Workers die (`kill -9` at random moments) and race (several on one
database): nothing is left running, nothing committed is lost, every job runs
exactly once. `pytest --soak` runs them at full size."""

import os
import random
import signal
import time

import pytest

from stepline import config
from stepline.engine.actions import start_job
from stepline.engine.states import TERMINAL
from stepline.store import reads
from stepline.store.check import violations

from .conftest import (
    assert_each_job_ran_once,
    make_definition,
    marking_job,
    stepline,
    wait_for,
    wait_job,
)


def committed_logs(store) -> dict[tuple[str, int], str]:
    return {(step_id, line): message for step_id, line, message in
            store.db.execute("SELECT step_id, line, message FROM logs").fetchall()}


def worker_id_of(store, pid: int) -> str:
    return wait_for(lambda: store.db.execute("SELECT id FROM workers WHERE pid = ?",
                                             [pid]).fetchone(), what="worker registered")[0]


def unfinished(store) -> list[str]:
    return [job["id"] for job in reads.list_jobs(store.db, limit=10**6)[0]
            if job["status"] not in TERMINAL]


def test_kill_9_at_random_moments_loses_nothing(store, db_path, start_worker, soak):
    rounds = 20 if soak else 4
    seed = int(os.environ.get("STEPLINE_KILL_SEED", time.time()))
    rng = random.Random(seed)
    definitions, _ = config.definitions(None)
    demo_params = {} if soak else {"tasks": 8}  # the full load_demo takes a minute

    def queue_demo_jobs() -> None:
        start_job(store, definitions, "load_demo", demo_params)
        start_job(store, definitions, "codebase_classify", {})

    queue_demo_jobs()
    worker = start_worker()
    interrupted = 0
    for round_ in range(rounds):
        dead_id = worker_id_of(store, worker.proc.pid)
        time.sleep(rng.uniform(0.2, 4.0))
        before = committed_logs(store)
        running_before = store.db.execute(
            "SELECT count(*) FROM steps WHERE status = 'running'").fetchone()[0]
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
        worker = start_worker()  # recovers the dead one's work as it starts

        def recovered(dead=dead_id) -> bool:
            return not store.db.execute(
                "SELECT 1 FROM workers WHERE id = ? UNION ALL"
                " SELECT 1 FROM jobs WHERE worker_id = ? AND status = 'running'",
                [dead, dead]).fetchone()

        wait_for(recovered, 30, what=f"round {round_}: recovery of {dead_id}")
        found = violations(store.db, allow_running=True, require_owner=True)
        assert found == [], (f"seed {seed} round {round_}", found)
        after = committed_logs(store)
        lost = [key for key, message in before.items() if after.get(key) != message]
        assert lost == [], f"seed {seed} round {round_}: committed lines changed or lost"
        interrupted += running_before
        if not unfinished(store):
            queue_demo_jobs()

    for job_id in unfinished(store):
        wait_job(store, job_id, timeout=300)
    check = stepline(db_path, "check")
    assert check.returncode == 0 and check.stderr.strip() == "ok", check.stdout
    jobs = reads.list_jobs(store.db, limit=10**6)[0]
    print(f"\nkill -9: {rounds} rounds (seed {seed}), {len(jobs)} jobs, {interrupted} running"
          f" steps interrupted, {len(committed_logs(store))} log lines kept; check: ok")


@pytest.mark.parametrize("workers", [2, 4])
def test_racing_workers_run_each_job_exactly_once(store, db_path, start_worker, tmp_path,
                                                   workers, soak):
    count = 500 if soak else 120
    definition, marks = marking_job(tmp_path)
    job_ids = [store.create_job(definition, {"n": n}) for n in range(count)]
    started = time.monotonic()
    for _ in range(workers):
        start_worker()
    for job_id in job_ids:
        assert wait_job(store, job_id, timeout=300)["status"] == "completed"
    elapsed = time.monotonic() - started
    assert_each_job_ran_once(store, marks, count)
    by_worker = store.db.execute("SELECT count(DISTINCT worker_id) FROM jobs").fetchone()[0]
    assert violations(store.db) == []
    print(f"\n{workers} workers: {count} jobs, each once, in {elapsed:.1f}s"
          f" ({by_worker} distinct claimants)")


def test_a_retried_fan_out_step_starts_clean_after_a_crash(store, start_worker):
    """kill -9 during a retryable 8-task step: it runs again from the start and
    ends with 8 completed tasks -- no leftover pending tasks, counters or
    'interrupted' error from the first attempt."""
    job_id = store.create_job(make_definition(
        '[step.fan]\ntype = "generate"\ntasks = 8\nlogs_per_task = 10\nlog_delay_ms = 50\n'
        'retries = 1'), {})
    # 2 task slots: 4 rounds of 0.5 s. With the default 8 the step was done
    # before the kill, and this test never saw a retry.
    victim = start_worker("--task-slots", "2")

    def some_tasks_done():
        step = reads.job_steps(store.db, job_id)[0]
        return step["tasks"]["completed"] >= 2
    wait_for(some_tasks_done, what="the first tasks")
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    first = {r[0] for r in store.db.execute("SELECT id FROM tasks").fetchall()}
    start_worker()
    assert wait_job(store, job_id)["status"] == "completed"
    # new ids: a worker still holding a first-attempt task cannot report onto
    # one of the second (SQLite reused deleted ids before AUTOINCREMENT)
    second = {r[0] for r in store.db.execute("SELECT id FROM tasks").fetchall()}
    assert len(first) == len(second) == 8 and not first & second, (first, second)
    step = reads.job_steps(store.db, job_id)[0]
    assert step["status"] == "completed" and step["error"] is None and step["attempts"] == 1
    assert step["tasks"] == {"pending": 0, "running": 0, "completed": 8, "failed": 0,
                             "cancelled": 0}
    assert store.db.execute("SELECT count(*) FROM tasks").fetchone()[0] == 8
    assert violations(store.db) == []
