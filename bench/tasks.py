"""Task throughput (#9, #12).

1. One python step fanning out 10,000 no-op tasks through ctx.spawn: every
   task tracked pending -> running -> completed, all in the step's worker.
2. One `generate` step of --fan tasks (no logs) run by 1, 2 and 4 workers:
   every worker claims tasks of the step (#12). Throughput is tasks over the
   step's started..finished; the table also says how many workers ran tasks.

    python3 -m bench.tasks
    STEPLINE_BENCH_BACKEND=postgres python3 -m bench.tasks
"""

import argparse
import os
from contextlib import ExitStack

from bench.harness import (
    Store,
    definition,
    print_table,
    temp_db,
    wait_for,
    worker,
)
from stepline.store import reads
from stepline.store.check import violations

FAN = """
[step.fan]
type = "python"
call = "bench.steps:noop_tasks"
config = {{ tasks = {tasks}, concurrency = {concurrency} }}
"""
GENERATE = """
[step.fan]
type = "generate"
tasks = {tasks}
"""


def spawn_rate(tasks: int, concurrency: int) -> tuple:
    with temp_db() as path:
        store = Store(path)
        job_id = store.create_job(definition(FAN.format(tasks=tasks,
                                                        concurrency=concurrency)), {})
        with worker(path):
            wait_for(lambda: reads.get_job(store.db, job_id)["status"] == "completed",
                     timeout=600, interval=0.1)
        step = reads.job_steps(store.db, job_id)[0]
        seconds = step["finished"] - step["started"]
        problems = violations(store.db)
        store.close()
    rate = tasks / seconds
    return (f"{tasks:,} no-op tasks by ctx.spawn, concurrency {concurrency}",
            f"{rate:,.0f} tasks/s ({seconds:.2f} s), {len(problems)} violations",
            ">= 2,000 tasks/s", rate >= 2000 and not problems)


def generate_rate(tasks: int, workers: int, slots: int) -> tuple[float, int, int]:
    """(tasks/s, workers that ran tasks, invariant violations)"""
    with temp_db() as path:
        store = Store(path)
        with ExitStack() as stack:
            for _ in range(workers):
                stack.enter_context(worker(path, "--task-slots", str(slots)))
            wait_for(lambda: len(list(store.db.query("SELECT id FROM workers"))) == workers,
                     timeout=60, interval=0.1)
            job_id = store.create_job(definition(GENERATE.format(tasks=tasks)), {})
            wait_for(lambda: reads.get_job(store.db, job_id)["status"] == "completed",
                     timeout=1800, interval=0.1)
        step = reads.job_steps(store.db, job_id)[0]
        ran = store.db.execute("SELECT count(DISTINCT worker) FROM tasks WHERE step_id = ?",
                               [step["id"]]).fetchone()[0]
        problems = violations(store.db)
        store.close()
    return tasks / (step["finished"] - step["started"]), ran, len(problems)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--fan", type=int, default=50_000, help="tasks of the generate step")
    parser.add_argument("--slots", type=int, default=8, help="--task-slots of each worker")
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    backend = os.environ.get("STEPLINE_BENCH_BACKEND", "sqlite")
    rows = [spawn_rate(args.tasks, args.concurrency)]
    for n in map(int, args.workers.split(",")):
        rate, ran, problems = generate_rate(args.fan, n, args.slots)
        target = ">= 5,000 tasks/s" if n == 4 and backend == "postgres" else "(scaling)"
        rows.append((f"{args.fan:,} generate tasks, {n} worker(s) x {args.slots} slots"
                     f" ({backend})", f"{rate:,.0f} tasks/s, ran on {ran} worker(s),"
                     f" {problems} violations", target,
                     (rate >= 5000 if target.startswith(">=") else True) and not problems))
    print_table("Tasks", rows)


if __name__ == "__main__":
    main()
