"""The task table of a step with 10,000 tasks (#10): what opening it, paging
to its end and filtering its failures cost, and what each live refresh costs
(the same request)."""


import requests

from bench.harness import Store, definition, print_table, temp_db, timed, web
from stepline.engine.states import Status
from stepline.store import tasks

TASKS = 10_000



def main():
    with temp_db() as path:
        store = Store(path)
        job_id = store.create_job(definition('[step.fan]\ntype = "generate"\ntasks = 1\n'), {})
        step_id = next(store.db.query("SELECT id FROM steps WHERE job_id = ?", [job_id]))["id"]
        with store.write() as tx:  # every tenth task failed, with an error to show
            for i, task_id in enumerate(tasks.add(tx, step_id, TASKS)):
                tx.transition("task", task_id, Status.RUNNING, worker="bench-worker")
                tx.transition("task", task_id, Status.FAILED if i % 10 == 0 else
                              Status.COMPLETED, error=f"ValueError: row {i}" if i % 10 == 0
                              else None)
        with web(path) as server:
            session = requests.Session()
            url = f"{server.url}/jobs/{job_id}/steps/{step_id}/tasks"
            first = timed(lambda: session.get(url).raise_for_status())
            size = len(session.get(url).content)
            last = timed(lambda: session.get(url, params={"offset": TASKS - 50})
                         .raise_for_status())
            failed = timed(lambda: session.get(url, params={"status": "failed", "offset": 950})
                           .raise_for_status())
    print_table(f"Task table of a step with {TASKS:,} tasks", [
        ("open (first 50), p50", f"{first:.1f} ms ({size / 1024:.0f} KB)", "-", True),
        ("last page (offset 9,950), p50", f"{last:.1f} ms", "-", True),
        ("failed only, last page (offset 950), p50", f"{failed:.1f} ms", "-", True),
    ])


if __name__ == "__main__":
    main()
