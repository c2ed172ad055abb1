"""What the store's str dumper (pgsql.StorableStrDumper: NUL and lone
surrogates become U+FFFD) costs against psycopg's own: the time to dump four
typical str params, and a four-param SELECT round trip on a local server.
Run: `python3 -m bench.pg_params`."""

import time

import psycopg
from psycopg.adapt import PyFormat, Transformer

from bench.harness import _postgres
from stepline.store.pgsql import ADAPTERS

PARAMS = ["abcdef012345", "running", "worker-1234", "2026-11-24"]  # ids, a status...
ROUND_TRIPS = 5_000
DUMPS = 100_000


def measure(url: str, context) -> tuple[float, float]:
    """(µs per round trip, µs per dump of PARAMS)."""
    with psycopg.connect(url, autocommit=True, **({"context": context} if context else {})) \
            as conn:
        cur = conn.cursor()
        start = time.perf_counter()
        for _ in range(ROUND_TRIPS):
            cur.execute("SELECT %s, %s, %s, %s", PARAMS).fetchall()
        trip = (time.perf_counter() - start) / ROUND_TRIPS * 1e6
        transformer, formats = Transformer(conn), [PyFormat.AUTO] * len(PARAMS)
        start = time.perf_counter()
        for _ in range(DUMPS):
            transformer.dump_sequence(PARAMS, formats)
        dump = (time.perf_counter() - start) / DUMPS * 1e6
    return trip, dump


def main() -> None:
    url = _postgres().url()
    for _ in range(2):  # twice each, alternating, to see the noise
        for name, context in (("psycopg's str dumper", None), ("StorableStrDumper", ADAPTERS)):
            trip, dump = measure(url, context)
            print(f"{name:22} {trip:6.1f} us per round trip, {dump:5.2f} us to dump"
                  f" {len(PARAMS)} str params")


if __name__ == "__main__":
    main()
