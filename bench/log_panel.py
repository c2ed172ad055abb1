"""Open log panels (#9): catch-up time from the job's end until an open panel
shows the last line, and the browser's main-thread time per 2,000 appended
lines, in a real Chromium against a real gunicorn server and worker.

    python3 -m bench.log_panel [--lines 40000 1000000] [--pause 0.05]
"""

import argparse
import time

from bench.harness import (
    Store,
    definition,
    median,
    print_table,
    temp_db,
    wait_for,
    web,
    worker,
)
from stepline.store import reads

CHROMIUM = "/usr/bin/chromium"
BURSTS = """
[step.bursts]
type = "python"
call = "tests.step_functions:log_bursts"
config = {{ lines = {lines}, burst = 2000, pause = {pause} }}
"""
# In the page: when the last line appeared (page clock = server clock, one
# machine).
WATCH = """
window.__appended = 0;
window.__watchLast = (id, line) => {
  new MutationObserver((records) => {
    for (const r of records) {
      for (const n of r.addedNodes) window.__appended += n.childElementCount || 0;
    }
  }).observe(document.getElementById(`logs-${id}`), {childList: true});
  const seen = () => document.getElementById(`log-${id}-L${line}`);
  const done = () => { window.__lastAt = Date.now() / 1000; };
  if (seen()) return done();
  new MutationObserver((_, obs) => { if (seen()) { done(); obs.disconnect(); } })
    .observe(document.getElementById(`logs-${id}`), {childList: true});
};
"""


def task_seconds(cdp, name: str = "TaskDuration") -> float:
    """TaskDuration: main-thread busy time (wall); ThreadTime: its CPU time,
    which a machine busy with other work inflates less."""
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return metrics[name]


def one_run(browser, lines: int, pause: float) -> dict:
    with temp_db() as path:
        store = Store(path)
        job_id = store.create_job(definition(BURSTS.format(lines=lines, pause=pause)), {})
        step_id = reads.job_steps(store.db, job_id)[0]["id"]
        with web(path) as server:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.add_init_script(WATCH)
            page.goto(f"{server.url}/jobs/{job_id}")
            wait_for(lambda: page.evaluate("document.getElementById('live').dataset.opened"),
                     15)
            page.click(f"#step-{step_id} .toggle")
            page.locator(f"#logs-{step_id}").wait_for(state="attached")
            page.evaluate(f"window.__watchLast('{step_id}', {lines})")
            cdp = context.new_cdp_session(page)
            cdp.send("Performance.enable")
            busy_before = task_seconds(cdp)
            with worker(path):
                wait_for(lambda: page.evaluate("window.__lastAt"), timeout=1800, interval=0.2)
                busy = task_seconds(cdp) - busy_before
            finished = reads.get_job(store.db, job_id)["finished"]
            shown_at = page.evaluate("window.__lastAt")
            rows = page.evaluate(f"document.querySelectorAll('#logs-{step_id} .ll').length")
            appended = page.evaluate("window.__appended")
            context.close()
    return {"lines": lines, "catch_up_s": max(0.0, shown_at - finished),
            "main_ms_per_2000_all": busy * 1000 / (appended / 2000), "dom_rows": rows,
            "appended": appended}


# One append of 2,000 lines through the panel's own pipeline (htmx swap,
# stepline.js trim and follow), timed until two frames later so style,
# layout and paint are in. The panel's filter `level=info` matches every
# line and keeps the server from jumping to the tail: unfiltered, a panel
# more than its window behind gets the newest lines instead (HX-Reswap
# innerHTML). The request takes the filter from the panel's cursor, not from
# the URL: until 2026-11-24 the bench set it only in the URL, so 19 of its
# 20 "appends" were such tail replacements. A full page of lines brings the trigger
# of the panel's next fetch: ONE_FETCH drops those fetches, or each measured
# append would sometimes include one or more others (the figures up to
# 2026-11-23 did: 342-651 ms "per append").
ONE_FETCH = """document.addEventListener("htmx:config:request", (e) => {
  if (e.target.id?.endsWith("-trigger")) e.preventDefault();
})"""
APPEND = """async ([id, url, after]) => {
  document.querySelector(`#logs-${id}-cursor [name=after]`).value = after;
  document.querySelector(`#logs-${id}-cursor [name=level]`).value = "info";
  await htmx.ajax('GET', url, {target: `#logs-${id}`, swap: 'beforeend'});
  for (let i = 0; i < 2; i++) await new Promise(requestAnimationFrame);
}"""


def append_cost(browser, appends: int = 20) -> tuple[list[float], list[float]]:
    """Main-thread ms per 2,000 lines appended to a panel that already holds
    its full window, with nothing else going on (the job has ended): busy
    time and CPU time of each append."""
    total = 5_000 + appends * 2_000
    with temp_db() as path:
        store = Store(path)
        job_id = store.create_job(definition(BURSTS.format(lines=total, pause=0)), {})
        step_id = reads.job_steps(store.db, job_id)[0]["id"]
        with web(path) as server:
            with worker(path):
                wait_for(lambda: reads.get_job(store.db, job_id)["finished"], timeout=600)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.goto(f"{server.url}/jobs/{job_id}")
            page.click(f"#step-{step_id} .toggle")
            page.locator(f"#logs-{step_id} .ll").first.wait_for(state="attached")
            page.evaluate(ONE_FETCH)
            # A reader following the log: at the bottom, where new lines show.
            page.evaluate(f"(b => b.scrollTop = b.scrollHeight)"
                          f"(document.getElementById('logs-{step_id}'))")
            cdp = context.new_cdp_session(page)
            cdp.send("Performance.enable")
            url = f"/jobs/{job_id}/steps/{step_id}/lines?level=info"
            costs, cpu = [], []
            for k in range(appends):
                before, cpu_before = task_seconds(cdp), task_seconds(cdp, "ThreadTime")
                page.evaluate(APPEND, [step_id, url, 5_000 + k * 2_000 - 2_000])
                costs.append((task_seconds(cdp) - before) * 1000)
                cpu.append((task_seconds(cdp, "ThreadTime") - cpu_before) * 1000)
            shown = page.evaluate(f"document.getElementById('logs-{step_id}').lastElementChild"
                                  ".lastElementChild.id")
            assert shown.endswith(f"-L{5_000 + appends * 2_000 - 2_000}"), shown  # one fetch each
            rows = page.evaluate(f"document.querySelectorAll('#logs-{step_id} .ll').length")
            assert rows <= 5_000, rows
            context.close()
    return costs, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="*", default=[40_000, 1_000_000],
                        help="catch-up runs (none: only the append phase)")
    parser.add_argument("--pause", type=float, default=0.05,
                        help="seconds between bursts of 2,000 lines")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        rows = []
        for lines in args.lines:
            for _ in range(args.runs):
                started = time.monotonic()
                result = one_run(browser, lines, args.pause)
                result["wall_s"] = time.monotonic() - started
                rows.append(result)
                print(result, flush=True)
        costs, cpu = append_cost(browser)
        print("append ms per 2,000 lines:", [round(c, 1) for c in costs], flush=True)
        print("  of which main-thread CPU:", [round(c, 1) for c in cpu], flush=True)
        browser.close()
    table = []
    for lines in args.lines:
        mine = [r for r in rows if r["lines"] == lines]
        catch_up = median([r["catch_up_s"] for r in mine])
        main_ms = median([r["main_ms_per_2000_all"] for r in mine])
        target = 3 if lines <= 40_000 else 10
        table.append((f"catch-up, {lines:,} lines (median of {len(mine)})",
                      f"{catch_up:.2f} s", f"<= {target} s", catch_up <= target))
        table.append((f"main thread while following, all tasks (rows too), per 2,000 lines"
                      f" shown, {lines:,}", f"{main_ms:.1f} ms", "-", True))
        table.append((f"DOM lines at the end, {lines:,}", max(r["dom_rows"] for r in mine),
                      "<= 5,000", max(r["dom_rows"] for r in mine) <= 5_000))
    append_ms = median(costs)
    table.append((f"main thread per 2,000 appended lines (median of {len(costs)} appends"
                  " into a full 5,000-line panel)", f"{append_ms:.1f} ms", "<= 50 ms",
                  append_ms <= 50))
    table.append(("  the same, main-thread CPU time (ThreadTime)", f"{median(cpu):.1f} ms", "-",
                  True))
    print_table("Log panels (#9)", table)


if __name__ == "__main__":
    main()
