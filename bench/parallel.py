"""Parallel steps: the built-in load_demo (default params) run as shipped
(max_parallel = 4) and with max_parallel = 1 (one step at a time, as before
steps ran in parallel), one job after the other on one worker."""

import argparse

from bench.harness import Store, definition, print_table, temp_db, wait_for, worker
from stepline.engine.definitions import BUILTIN_DIR
from stepline.engine.states import TERMINAL
from stepline.store import reads


def run(store: Store, max_parallel: int) -> dict:
    text = (BUILTIN_DIR / "load_demo.toml").read_text()
    demo = definition(f"max_parallel = {max_parallel}\n" + text, "load_demo")
    job_id = store.create_job(demo, dict(demo.params))
    job = wait_for(lambda: (j := reads.get_job(store.db, job_id))["status"] in TERMINAL and j,
                   timeout=600, interval=0.2)
    steps = {s["name"]: s for s in reads.job_steps(store.db, job_id)}
    fan, flaky = steps["fan_out"], steps["flaky"]
    return {"seconds": job["finished"] - job["started"],
            "overlap": min(fan["finished"], flaky["finished"])
            - max(fan["started"], flaky["started"]),
            "flaky_waited": flaky["started"] - steps["warm_up"]["finished"]}


def main():
    argparse.ArgumentParser(description=__doc__).parse_args()
    with temp_db() as path:
        store = Store(path)
        with worker(path):
            one, four = run(store, 1), run(store, 4)
    print_table("Parallel steps (load_demo, default params)", [
        ("max_parallel = 1: job wall time / flaky waited after warm_up",
         f"{one['seconds']:.1f} s / {one['flaky_waited']:.1f} s", "-", True),
        ("max_parallel = 4: job wall time / flaky waited after warm_up",
         f"{four['seconds']:.1f} s / {four['flaky_waited']:.1f} s", "flaky does not wait",
         four["flaky_waited"] < 1),
        ("max_parallel = 4: fan_out and flaky running together",
         f"{four['overlap']:.1f} s", "> 0", four["overlap"] > 0),
    ])


if __name__ == "__main__":
    main()
