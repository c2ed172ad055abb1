"""Latency from a step's status commit to the WebSocket message (#1) and to
the DOM of a real Chromium page (#2). `--db postgresql://...` measures on
that database (or STEPLINE_BENCH_BACKEND=postgres: a fresh one)."""

import argparse
import asyncio
import threading
import time
from urllib.parse import urlsplit

from bench.harness import Store, definition, median, pct, print_table, temp_db, web
from bench.wsclient import Connection
from stepline.store import reads


def steps_toml(n: int) -> str:
    return "\n".join(f'[step.s{i}]\ntype = "shell"\nrun = "true"\n' for i in range(n))


def drive(store: Store, job_id: str, pause_s: float) -> dict[int, float]:
    """Walk every step pending -> running -> completed, as a worker would;
    returns commit time by event seq."""
    committed = {}
    due = time.monotonic()
    for step in reads.job_steps(store.db, job_id):
        for status in ("running", "completed"):
            with store.write() as tx:
                tx.transition("step", step["id"], status)
                seq = tx.conn.execute("SELECT max(seq) FROM events").fetchone()[0]
            committed[seq] = time.time()
            due += pause_s  # a fixed schedule: a slow commit does not lower the rate
            time.sleep(max(0.0, due - time.monotonic()))
    return committed


def ws_latency(transitions: int, pause_s: float, db: str | None = None) -> list[float]:
    with temp_db(db) as path:
        store = Store(path)
        job_id = store.create_job(definition(steps_toml(transitions // 2)), {})
        with web(path) as server:
            url = urlsplit(server.url)
            loop = asyncio.new_event_loop()
            conn = loop.run_until_complete(Connection.open(url.hostname, url.port,
                                                           f"/ws?job={job_id}"))
            reader = threading.Thread(target=loop.run_until_complete, args=(conn.run(),),
                                      daemon=True)
            reader.start()
            time.sleep(0.5)
            committed = drive(store, job_id, pause_s)
            time.sleep(1)
            loop.call_soon_threadsafe(conn.abort)  # the loop's own thread
            reader.join(5)
        arrived = dict(conn.received)
    return [(arrived[seq] - t) * 1000 for seq, t in committed.items() if seq in arrived], \
        len(committed) - sum(seq in arrived for seq in committed)


DOM_SCRIPT = """
window.__applied = [];
document.addEventListener('htmx:ws:after:message:incoming', (e) => {
  const seq = JSON.parse(e.detail.message.data).seq;
  window.__applied.push([seq, performance.timeOrigin + performance.now()]);
});
"""


def dom_latency(transitions: int, pause_s: float, db: str | None = None
                ) -> tuple[list[float], int]:
    from playwright.sync_api import sync_playwright

    with temp_db(db) as path:
        store = Store(path)
        job_id = store.create_job(definition(steps_toml(transitions // 2)), {})
        with web(path) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page()
            page.add_init_script(DOM_SCRIPT)
            page.goto(f"{server.url}/jobs/{job_id}")
            page.wait_for_function("window.__applied.length > 0")
            committed = drive(store, job_id, pause_s)
            time.sleep(1)
            applied = dict(page.evaluate("window.__applied"))
            statuses = page.evaluate(
                "[...document.querySelectorAll('tr.step-row')].map(r => r.dataset.status)")
            browser.close()
    assert set(statuses) == {"completed"}, "DOM does not show every step completed"
    samples = [(applied[seq] / 1000 - t) * 1000 for seq, t in committed.items() if seq in applied]
    return samples, len(committed) - len(samples)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--transitions", type=int, default=1000)
    parser.add_argument("--pause-ms", type=float, default=10)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--db", metavar="PATH|URL",
                        help="run on this database, e.g. postgresql://user@host:port/db")
    args = parser.parse_args()
    rows = []
    ws, missing = ws_latency(args.transitions, args.pause_ms / 1000, args.db)
    rows.append((f"commit -> WS message, {len(ws)} transitions, p50 / p99 / max",
                 f"{median(ws):.1f} / {pct(ws, 99):.1f} / {max(ws):.1f} ms ({missing} missing)",
                 "p99 <= 50 ms", pct(ws, 99) <= 50 and missing == 0))
    if not args.no_browser:
        dom, missing = dom_latency(args.transitions, args.pause_ms / 1000, args.db)
        rows.append((f"commit -> Chromium DOM swapped, {len(dom)} transitions, p50 / p99 / max",
                     f"{median(dom):.1f} / {pct(dom, 99):.1f} / {max(dom):.1f} ms "
                     f"({missing} missing)", "p99 <= 150 ms",
                     pct(dom, 99) <= 150 and missing == 0))
    print_table("Live latency", rows)


if __name__ == "__main__":
    main()
