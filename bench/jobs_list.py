"""The jobs list under load (#9): one-step jobs submitted through the API at a
fixed rate while a real Chromium page shows `/`.

Prints, per rate: how many WebSocket messages and bytes the page received,
its main thread's busy share (CDP Performance.getMetrics TaskDuration),
commit -> `completed` visible in the DOM (p50 / p99, for the jobs that were
on the page when they completed), whether the page converged to what a fresh
GET / renders and how long after the last job finished, and the web
process's CPU per idle minute with the page still connected.

    python3 -m bench.jobs_list                 # 10 and 100 jobs/s, 60 s each
    python3 -m bench.jobs_list --seconds 20 --rates 10 100
"""

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

import requests

from bench.harness import Store, median, pct, print_table, temp_db, wait_for, web, worker
from stepline.store import reads

ONE_STEP = """name = "one_step"
[step.only]
type = "python"
call = "bench.steps:nothing"
"""

# After every live message the page applies: the first time each row showed
# `completed` (epoch ms), and how many messages came.
PAGE_SCRIPT = """
window.__seen = {};
window.__messages = 0;
document.addEventListener('htmx:ws:after:message:incoming', () => {
  window.__messages++;
  const now = performance.timeOrigin + performance.now();
  for (const row of document.querySelectorAll('tr.job-row[data-status="completed"]')) {
    if (!(row.id in window.__seen)) window.__seen[row.id] = now;
  }
});
"""

DOM_STATE = """() => ({
  rows: [...document.querySelectorAll('#job-rows tr.job-row')]
    .map(r => [r.id, r.dataset.status, r.dataset.version]),
  counts: Object.fromEntries([...document.querySelectorAll('#metrics .metric')]
    .map(a => [a.querySelector('.metric-label').textContent, a.dataset.count])),
})"""

ROW = re.compile(r'<tr id="(job-[^"]+)" class="[^"]*" data-status="([^"]+)" '
                 r'data-version="([^"]+)"')
COUNT = re.compile(r'data-count="(\d+)">\s*<span class="metric-n">\d+</span>'
                   r'<span class="metric-label">([^<]+)</span>')


def fresh_state(url: str) -> dict:
    """What GET / renders now, in the same shape as DOM_STATE."""
    html = requests.get(url, timeout=30).text
    return {"rows": [list(m) for m in ROW.findall(html)],
            "counts": {label: n for n, label in COUNT.findall(html)}}


def mismatches(dom: dict, fresh: dict) -> int:
    rows = sum(a != b for a, b in zip(dom["rows"], fresh["rows"], strict=False))
    rows += abs(len(dom["rows"]) - len(fresh["rows"]))
    return rows + sum(dom["counts"].get(k) != v for k, v in fresh["counts"].items())


def submit(url: str, rate: float, seconds: float, job_ids: list[str]) -> None:
    """POST a run at a fixed schedule (a slow answer does not lower the rate)."""
    session = requests.Session()
    due = time.monotonic()
    end = due + seconds
    while due < end:
        job_ids.append(session.post(url + "/api/definitions/one_step/run",
                                    json={"params": {}}, timeout=30).json()["job_id"])
        due += 1 / rate
        time.sleep(max(0.0, due - time.monotonic()))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(rate: float, seconds: float, idle_s: float) -> list[tuple]:
    from playwright.sync_api import sync_playwright

    with temp_db() as path, tempfile.TemporaryDirectory() as defs:
        Path(defs, "one_step.toml").write_text(ONE_STEP)
        store = Store(path)
        frames: list[tuple[float, int]] = []  # (arrival, bytes)
        with web(path, env={"STEPLINE_DEFINITIONS": defs}) as server, \
                worker(path, "--concurrency", "16", "--definitions", defs), \
                sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.add_init_script(PAGE_SCRIPT)
            page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(
                (time.time(), len(payload.encode() if isinstance(payload, str) else payload)))))
            page.goto(server.url + "/")
            page.wait_for_selector("#live[data-opened]")
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")

            def task_s(name: str = "TaskDuration") -> float:
                """TaskDuration: main-thread busy (wall) time; ThreadTime: its
                CPU time. On a machine busy with other work the first grows
                with every preemption: at load 7-14 it was 2-3x the second."""
                metrics = cdp.send("Performance.getMetrics")["metrics"]
                return next(m["value"] for m in metrics if m["name"] == name)

            busy0, messages0, start = task_s(), page.evaluate("window.__messages"), time.time()
            cpu0 = task_s("ThreadTime")
            job_ids: list[str] = []
            submit(server.url, rate, seconds, job_ids)
            wait_for(lambda: all(reads.get_job(store.db, j)["status"] == "completed"
                                 for j in job_ids[-50:]), timeout=300, what="the last jobs")
            wait_for(lambda: reads.status_counts(store.db)["completed"] == len(job_ids),
                     timeout=300, what="every job completed")
            idle_since = max(e["ts"] for e in reads.events_after(store.db, 0, 10**7))
            converged = None
            deadline = time.time() + 60
            while time.time() < deadline:
                if mismatches(page.evaluate(DOM_STATE), fresh_state(server.url + "/")) == 0:
                    converged = time.time() - idle_since
                    break
                time.sleep(0.05)
            end = time.time()
            busy, messages = task_s() - busy0, page.evaluate("window.__messages") - messages0
            main_cpu = task_s("ThreadTime") - cpu0
            seen = page.evaluate("window.__seen")
            left = mismatches(page.evaluate(DOM_STATE), fresh_state(server.url + "/"))

            time.sleep(3)  # past the tailer's back-off
            pid = server.worker_pids()[0]
            cpu0 = cpu_seconds(pid)
            time.sleep(idle_s)
            idle_cpu = (cpu_seconds(pid) - cpu0) * 60 / idle_s
            browser.close()

    committed = {e["job_id"]: e["ts"] for e in reads.events_after(store.db, 0, 10**7)
                 if e["context"] == "job" and e["status"] == "completed"}
    lag = [seen[f"job-{j}"] - committed[j] * 1000 for j in committed if f"job-{j}" in seen]
    wire = sum(n for t, n in frames if start <= t <= end)
    wall = end - start
    events = reads.last_seq(store.db)
    label = (f"{rate:g} jobs/s for {seconds:g} s ({len(job_ids)} jobs, {events} events,"
             f" {wall:.0f} s until settled)")
    return [
        (f"{label}: WS messages / bytes per s", f"{messages} / {wire / wall / 1000:.1f} KB/s",
         "coalesced; <= 200 KB/s", wire / wall <= 200_000),
        (f"{label}: browser main thread busy", f"{busy / wall * 100:.1f} %", "<= 10 %",
         busy / wall <= 0.10),
        (f"{label}: browser main thread CPU (ThreadTime)", f"{main_cpu / wall * 100:.1f} %", "-",
         True),
        (f"{label}: commit -> `completed` in the DOM, p50 / p99 ({len(lag)} rows)",
         f"{median(lag):.0f} / {pct(lag, 99):.0f} ms" if lag else "none seen", "p99 <= 250 ms",
         bool(lag) and pct(lag, 99) <= 250),
        (f"{label}: page equals a fresh GET / after the server went idle",
         ("NEVER" if converged is None else f"after {converged:.2f} s")
         + f"; {left} mismatches", "0 mismatches", left == 0),
        (f"{label}: idle web process CPU, page connected", f"{idle_cpu:.2f} s/min",
         "<= 0.2 s/min", idle_cpu <= 0.2),
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", type=float, nargs="+", default=[10, 100])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--idle-seconds", type=float, default=30)
    args = parser.parse_args()
    rows = []
    for rate in args.rates:
        rows += run(rate, args.seconds, args.idle_seconds)
    print_table("Jobs list under load (#9)", rows)


if __name__ == "__main__":
    main()
