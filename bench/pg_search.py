"""Log search on PostgreSQL: the store's search (`message COLLATE "C" ILIKE`,
ASCII-only case folding as SQLite's LIKE) against plain ILIKE (Unicode case
folding) and a case-sensitive LIKE, over 1,000,000 lines of one step, on a
C-locale database and on a UTF-8 one (C.utf8, which folds every letter as a
typical server's default locale does). Run: `python3 -m bench.pg_search`."""

import statistics
import time

import psycopg

from bench.harness import _postgres
from stepline.store.pgsql import pg_sql
from stepline.store.reads import SEARCH

LINES = 1_000_000
SCANS = {
    "store's search (COLLATE \"C\" ILIKE)": pg_sql(SEARCH),
    "plain ILIKE (before)": "message ILIKE %s ESCAPE '\\'",
    "case-sensitive LIKE (reference)": "message LIKE %s ESCAPE '\\'",
}


def main() -> None:
    server = _postgres()
    for locale in ("C", "C.utf8"):
        server.admin("DROP DATABASE IF EXISTS pg_search")
        server.admin(f"CREATE DATABASE pg_search LOCALE '{locale}' TEMPLATE template0")
        with psycopg.connect(server.url("pg_search"), autocommit=True) as conn:
            conn.execute("CREATE TABLE logs (step_id TEXT, line BIGINT, message TEXT,"
                         " PRIMARY KEY (step_id, line))")
            conn.execute("INSERT INTO logs SELECT 's', g, 'INFO processing item ' || g"
                         f" || ' of {LINES}: ok' FROM generate_series(1, {LINES}) g")
            conn.execute("VACUUM ANALYZE logs")
            for what, where in SCANS.items():
                times = []
                for _ in range(5):
                    start = time.perf_counter()
                    conn.execute(f"SELECT count(*) FROM logs WHERE step_id = 's' AND {where}",
                                 ["%item 999999 of%"]).fetchone()
                    times.append((time.perf_counter() - start) * 1000)
                print(f"{locale:7} {what:40} p50 {statistics.median(times):6.0f} ms")
        server.admin("DROP DATABASE pg_search")


if __name__ == "__main__":
    main()
