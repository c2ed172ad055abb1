"""Log ingest (#6), a 1,000,000-line log (#7) and coalescing (#10).

`--db postgresql://...` runs them on that database (a SQLite file path
works too); the ingest baseline is then one bare COPY of the same rows.
Without it each part gets a fresh SQLite file (or a fresh PostgreSQL
database with STEPLINE_BENCH_BACKEND=postgres, see bench.harness)."""

import argparse
import json
import sqlite3
import time

import requests

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
from stepline.store.backends import is_url

FLOOD = """
[step.flood]
type = "python"
call = "bench.steps:log_flood"
config = {{ lines = {lines} }}
"""


def ingest(lines: int, db: str | None = None) -> tuple[float, float, str]:
    """Lines/s from a python step's first log call to the last line being
    visible through the logs API, against a bare baseline (executemany on
    SQLite, COPY on PostgreSQL)."""
    with temp_db(db) as path:
        store = Store(path)
        job_id = store.create_job(definition(FLOOD.format(lines=lines)), {})
        step_id = reads.job_steps(store.db, job_id)[0]["id"]
        with web(path) as server, worker(path):
            url = f"{server.url}/api/jobs/{job_id}/steps/{step_id}/logs?after={lines - 1}"
            wait_for(lambda: requests.get(url, timeout=10).json()["lines"], timeout=600,
                       interval=0.02)
            visible = time.time()
        step = reads.get_step(store.db, step_id)
        first_ts = next(store.db.query("SELECT ts FROM logs WHERE step_id = ? AND line = 1",
                                       [step_id]))["ts"]
        stepline_rate = lines / (visible - first_ts)
        assert step["log_count"] == lines
    rows = [("bare", i, "j", time.time(), "info", f"line {i} of a step logging as fast as it can")
            for i in range(1, lines + 1)]
    with temp_db(db) as path:
        Store(path)
        bare_rate = lines / (bare_copy(path, rows) if is_url(path) else bare_insert(path, rows))
    return stepline_rate, bare_rate, f"{lines:,} lines"


def bare_insert(path: str, rows: list[tuple]) -> float:
    """Seconds for one executemany of the rows into a SQLite file's logs."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO logs (step_id, line, job_id, ts, level, message)"
                     " VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.execute("DELETE FROM logs WHERE step_id = 'bare'")
    return elapsed


def bare_copy(url: str, rows: list[tuple]) -> float:
    """Seconds for one COPY of the rows (text prepared beforehand) into
    PostgreSQL's logs: what the server and the wire cost, nothing else."""
    import psycopg

    data = "".join("\t".join(map(str, row)) + "\n" for row in rows).encode()
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy(
                "COPY logs (step_id, line, job_id, ts, level, message) FROM STDIN") as copy:
            copy.write(data)
        conn.commit()
        elapsed = time.perf_counter() - start
        conn.execute("DELETE FROM logs WHERE step_id = 'bare'")
        conn.commit()
    return elapsed


BIG = """
[step.big]
type = "python"
call = "bench.steps:log_flood"
config = { lines = 1000000 }
"""


def big_log(db: str | None = None) -> list[tuple]:
    with temp_db(db) as path:
        store = Store(path)
        job_id = store.create_job(definition(BIG), {})
        step_id = reads.job_steps(store.db, job_id)[0]["id"]
        with worker(path):
            wait_for(lambda: reads.get_job(store.db, job_id)["status"] == "completed",
                       timeout=600, interval=0.2)
        with web(path) as server:
            base = f"{server.url}/jobs/{job_id}/steps/{step_id}"
            session = requests.Session()
            session.get(base + "/panel")  # warm up
            tails, sizes, pages, searches, bare = [], [], [], [], []
            for _ in range(20):
                t = time.perf_counter()
                r = session.get(base + "/panel")
                tails.append((time.perf_counter() - t) * 1000)
                sizes.append(len(r.content))
                t = time.perf_counter()
                session.get(base + "/lines?before=500000")
                pages.append((time.perf_counter() - t) * 1000)
            ats, firsts = [], []
            for _ in range(20):
                t = time.perf_counter()
                r = session.get(base + "/panel?at=500000")  # a link to a line
                ats.append((time.perf_counter() - t) * 1000)
                assert f'id="log-{step_id}-L500000"' in r.text
                # a failed step's first error line when it is the last line
                # (the worst case: no error before it)
                t = time.perf_counter()
                reads.first_error_line(store.db, step_id)
                firsts.append((time.perf_counter() - t) * 1000)
            for _ in range(5):
                t = time.perf_counter()
                r = session.get(base + "/lines?tail=1&q=line+999999+of")  # the filter form
                searches.append((time.perf_counter() - t) * 1000)
                assert "999999" in r.text
                t = time.perf_counter()
                store.db.execute("SELECT count(*) FROM logs WHERE message LIKE ?",
                                 ["%line 999999 of%"]).fetchone()
                bare.append((time.perf_counter() - t) * 1000)
    return [
        ("expand (tail of 500 lines), p50", f"{median(tails):.1f} ms", "<= 50 ms",
         median(tails) <= 50),
        ("expand response size", f"{max(sizes) / 1024:.0f} KB", "<= 200 KB",
         max(sizes) <= 200 * 1024),
        ("page of 500 earlier lines, p50", f"{median(pages):.1f} ms", "-", True),
        ("open at line 500,000 (a link), p50", f"{median(ats):.1f} ms", "<= 50 ms",
         median(ats) <= 50),
        ("first error line of 1,000,000 lines (none there), p50",
         f"{median(firsts):.2f} ms", "reference", True),
        ("search over 1,000,000 lines, p50", f"{median(searches):.0f} ms", "<= 250 ms",
         median(searches) <= 250),
        ("bare LIKE scan of the same rows, p50", f"{median(bare):.0f} ms", "reference", True),
    ]


PACED = """
[step.paced]
type = "python"
call = "bench.steps:log_paced"
config = {{ per_second = 20000, seconds = {seconds} }}
"""


def coalescing(seconds: float, db: str | None = None) -> list[tuple]:
    from simple_websocket import Client

    with temp_db(db) as path:
        store = Store(path)
        job_id = store.create_job(definition(PACED.format(seconds=seconds)), {})
        step_id = reads.job_steps(store.db, job_id)[0]["id"]
        with web(path) as server:
            ws = Client.connect(server.url.replace("http", "ws") + f"/ws?job={job_id}")
            ws.receive(timeout=5)
            arrivals = []
            with worker(path):
                while True:
                    raw = ws.receive(timeout=1)
                    if raw is None:
                        continue
                    m = json.loads(raw)
                    if m["step_id"] == step_id:
                        arrivals.append(time.monotonic())
                    if m["context"] == "job" and m["status"] in ("completed", "failed"):
                        break
            ws.close()
        step = reads.get_step(store.db, step_id)
        lines = step["log_count"]
        rows = store.db.execute("SELECT count(*), max(line) FROM logs WHERE step_id = ?",
                                [step_id]).fetchone()
    per_second = [0] * (int(arrivals[-1] - arrivals[0]) + 1)
    for t in arrivals:
        per_second[int(t - arrivals[0])] += 1
    busiest = max(per_second[:-1] or per_second)
    mean = len(arrivals) / max(1e-9, arrivals[-1] - arrivals[0])
    return [
        (f"live messages for one step logging 20,000 lines/s for {seconds:g}s",
         f"{busiest}/s at most (mean {mean:.1f}/s)", "<= 25/s", busiest <= 25),
        ("lines persisted / logged",
         f"{rows[0]:,} rows, max line {rows[1]:,}, log_count {lines:,}", "none lost",
         rows[0] == rows[1] == lines and lines >= 20000 * seconds * 0.95),
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--only", choices=["ingest", "big", "coalescing"])
    parser.add_argument("--db", metavar="PATH|URL",
                        help="run on this database, e.g. postgresql://user@host:port/db")
    args = parser.parse_args()
    rows = []
    if args.only in (None, "ingest"):
        rate, bare, label = ingest(args.lines, args.db)
        bare_what = ("one bare COPY, same schema" if args.db and is_url(args.db)
                     else "bare sqlite3 executemany, same schema")
        rows += [(f"log ingest, python step, {label}, end to end", f"{rate:,.0f} lines/s",
                  ">= 200,000 lines/s", rate >= 200_000),
                 (bare_what, f"{bare:,.0f} lines/s",
                  "reference", True),
                 ("stepline / bare", f"{rate / bare:.2f}", ">= 0.5", rate / bare >= 0.5)]
    if args.only in (None, "big"):
        rows += big_log(args.db)
    if args.only in (None, "coalescing"):
        rows += coalescing(args.seconds, args.db)
    print_table("Logs", rows)


if __name__ == "__main__":
    main()
