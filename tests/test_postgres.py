"""PostgreSQL-only behaviour of the store, on a real server (tests/pg.py)."""

import psycopg


def test_each_test_gets_its_own_empty_database(pg_url, pg_server):
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                              ).fetchone()[0]
    assert tables == 0
    assert pg_url != pg_server.url()
