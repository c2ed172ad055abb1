"""The worker's share of time-to-visible (#9 item 7), on a real gunicorn and
a real `stepline worker`, seen on a WebSocket as a browser would:

- a shell command's exit -> its step `completed` on the open job page's socket;
- a job submitted (its commit) -> its `running` on the jobs list's socket;
- a cancel request (its commit) on a running job -> its `cancelled` on its page;
- the idle worker's CPU time per minute (what its polling costs).

Arrival times come from the socket, event seqs tie them to the events table.
"""

import argparse
import asyncio
import os
import random
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from bench.harness import (
    Store,
    definition,
    median,
    pct,
    print_table,
    temp_db,
    wait_for,
    web,
    worker,
)
from bench.wsclient import Connection
from stepline.engine.states import TERMINAL
from stepline.store import reads


@contextmanager
def socket(server, path: str, linger_s: float = 0.5):
    """A WebSocket on the live server, read on its own thread; yields the
    Connection whose `received` lists (seq, arrival time)."""
    url = urlsplit(server.url)
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(Connection.open(url.hostname, url.port, path))
    reader = threading.Thread(target=loop.run_until_complete, args=(conn.run(),), daemon=True)
    reader.start()
    try:
        yield conn
    finally:
        time.sleep(linger_s)  # let the last messages arrive
        loop.call_soon_threadsafe(conn.abort)
        reader.join(5)


def first_arrival(store: Store, conn: Connection, where: str, args: list,
                  wait_s: float = 5.0) -> tuple[float, float] | None:
    """The first event matching `where` that the socket received: when it
    arrived, and when the worker wrote it (its ts, just before the commit).
    None if it has not arrived within wait_s. A message carries the seq of
    its last event, and a coalesced one (the jobs list) every event since the
    previous message: an event arrived with the first message of a seq at
    least its own (looking for its own seq counted 83 of 100 as missing)."""
    deadline = time.monotonic() + wait_s
    while True:
        received = list(conn.received)
        for seq, ts in store.db.execute(
                f"SELECT seq, ts FROM events WHERE {where} ORDER BY seq", args):
            arrived = [at for message_seq, at in received if message_seq >= seq]
            if arrived:
                return min(arrived), ts
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def job_done(store: Store, job_id: str) -> bool:
    return reads.get_job(store.db, job_id)["status"] in TERMINAL


def first_step_running(store: Store, job_id: str) -> bool:
    return reads.job_steps(store.db, job_id)[0]["status"] == "running"


def exit_to_completed(store: Store, server, path: str, steps: int) -> tuple[list[float], int]:
    """One job of `steps` shell steps; each prints the time and exits at once
    (`exec date`: the printing process is the step's process)."""
    toml = "\n".join(f'[step.s{i}]\ntype = "shell"\nrun = "sleep 0.0{i % 5 + 1}; '
                     f'exec date +%s.%N"\n' for i in range(steps))
    job_id = store.create_job(definition(toml), {})
    with socket(server, f"/ws?job={job_id}") as conn, worker(path):
        wait_for(lambda: job_done(store, job_id), timeout=120, what="the exit job")
    samples, missing = [], 0
    for step in reads.job_steps(store.db, job_id):
        exited = float(reads.log_lines(store.db, step["id"])[-1]["message"])
        seen = first_arrival(store, conn, "step_id = ? AND status = 'completed'", [step["id"]])
        if seen is None:
            missing += 1
        else:
            samples.append(((seen[0] - exited) * 1000, (seen[1] - exited) * 1000))
    return samples, missing


def submit_cancel_idle(store: Store, server, path: str, jobs: int, cpu_s: float
                       ) -> tuple[list, list, int, float]:
    """`jobs` quick jobs submitted at random moments (seen on the jobs list),
    then `jobs` running ones cancelled at random moments (each seen on its
    own job page); then the idle worker's CPU per minute."""
    quick = definition('[step.a]\ntype = "shell"\nrun = "true"\n', "quick")
    slow = definition('[step.a]\ntype = "shell"\nrun = "sleep 30"\n', "slow")
    runs, cancels, missing = [], [], 0
    with worker(path) as w:
        wait_for(partial(worker_ready, store), what="the worker to start")
        with socket(server, "/ws?view=jobs") as conn:
            submitted = {}
            for _ in range(jobs):
                time.sleep(random.uniform(0.05, 0.25))  # not in step with any poll
                job_id = store.create_job(quick, {})
                submitted[job_id] = time.time()  # committed
                wait_for(partial(job_done, store, job_id), interval=0.005, what="a quick job")
            for job_id, t0 in submitted.items():
                seen = first_arrival(store, conn,
                                     "job_id = ? AND context = 'job' AND status = ?",
                                     [job_id, "running"])
                missing += seen is None
                if seen:
                    runs.append(((seen[0] - t0) * 1000, (seen[1] - t0) * 1000))
        for _ in range(jobs):
            job_id = store.create_job(slow, {})
            with socket(server, f"/ws?job={job_id}", linger_s=0) as conn:
                wait_for(partial(first_step_running, store, job_id), interval=0.005,
                         what="the slow job to run")
                time.sleep(random.uniform(0.05, 0.25))
                store.request_cancel(job_id)
                t0 = time.time()  # committed
                seen = first_arrival(store, conn,
                                     "job_id = ? AND context = 'job' AND status = ?",
                                     [job_id, "cancelled"])
            missing += seen is None
            if seen:
                cancels.append(((seen[0] - t0) * 1000, (seen[1] - t0) * 1000))
        time.sleep(2)
        cpu_per_min = idle_cpu(w.proc.pid, cpu_s)
    return runs, cancels, missing, cpu_per_min


def worker_ready(store: Store) -> bool:
    return store.db.execute("SELECT count(*) FROM workers").fetchone()[0] > 0


def idle_cpu(pid: int, seconds: float) -> float:
    """CPU seconds (user + system) the process spends per idle minute."""
    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    before = cpu()
    time.sleep(seconds)
    return (cpu() - before) * 60 / seconds


def figures(samples: list[tuple[float, float]], missing: int) -> str:
    """p50 / p99 / max to the socket, then the worker's share (to its event's
    commit; the rest is the web's tailer and render)."""
    total, worker_share = [s[0] for s in samples], [s[1] for s in samples]
    return (f"{median(total):.1f} / {pct(total, 99):.1f} / {max(total):.1f} ms "
            f"(worker's share {median(worker_share):.1f} / {pct(worker_share, 99):.1f} / "
            f"{max(worker_share):.1f}; {len(samples)} samples, {missing} missing)")


def ok(samples: list[tuple[float, float]], missing: int, p50: float, p99: float) -> bool:
    total = [s[0] for s in samples]
    return not missing and median(total) <= p50 and pct(total, 99) <= p99


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--idle-s", type=float, default=30)
    args = parser.parse_args()
    with temp_db() as path:
        store = Store(path)
        with web(path) as server:
            exits, missing_exits = exit_to_completed(store, server, path, args.steps)
            runs, cancels, missing, cpu = submit_cancel_idle(store, server, path, args.jobs,
                                                             args.idle_s)
    print_table("Worker latency (#9)", [
        ("command exit -> step `completed` on the job page's WS, p50 / p99 / max",
         figures(exits, missing_exits), "p50 <= 20, p99 <= 50 ms",
         ok(exits, missing_exits, 20, 50)),
        ("submit (commit) -> job `running` on the jobs list's WS, p50 / p99 / max",
         figures(runs, missing), "p50 <= 30 ms", ok(runs, missing, 30, float("inf"))),
        ("cancel request (commit) on a running job -> `cancelled` on its job page's WS, "
         "p50 / p99 / max",
         figures(cancels, missing), "p99 <= 50 ms", ok(cancels, missing, float("inf"), 50)),
        (f"idle worker CPU (over {args.idle_s:g} s)", f"{cpu:.2f} s per minute",
         "low", cpu < 1.0),
    ])

if __name__ == "__main__":
    main()
