"""Task throughput (#9): one step fanning out 10,000 no-op tasks, every task
tracked pending -> running -> completed in SQLite."""

import argparse

from bench.harness import Store, definition, print_table, temp_db, wait_for, worker
from stepline.store import reads
from stepline.store.check import violations

FAN = """
[step.fan]
type = "python"
call = "bench.steps:noop_tasks"
config = {{ tasks = {tasks}, concurrency = {concurrency} }}
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with temp_db() as path:
        store = Store(path)
        job_id = store.create_job(definition(FAN.format(**vars(args))), {})
        with worker(path):
            wait_for(lambda: reads.get_job(store.db, job_id)["status"] == "completed",
                       timeout=600, interval=0.1)
        step = reads.job_steps(store.db, job_id)[0]
        seconds = step["finished"] - step["started"]
        rate = args.tasks / seconds
        done = step["tasks"]["completed"]
        problems = violations(store.db)
    print_table("Tasks", [
        (f"{args.tasks:,} no-op tasks, concurrency {args.concurrency}",
         f"{rate:,.0f} tasks/s ({seconds:.2f} s)", ">= 2,000 tasks/s", rate >= 2000),
        ("tasks completed / counters / invariants",
         f"{done:,} / {step['tasks']} / {len(problems)} violations", "all, exact, 0",
         done == args.tasks and not problems),
    ])


if __name__ == "__main__":
    main()
