"""What PostgreSQL is sent, in one place: the store's SQL (written once, for
SQLite) as PostgreSQL, text as PostgreSQL can hold it, and the connections
that carry both (postgres.py opens them all through here)."""

import functools
import re

import psycopg
from psycopg.adapt import AdaptersMap
from psycopg.types.string import StrDumperUnknown

from stepline.store.logtext import storable_text


@functools.lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """The store's SQLite SQL as PostgreSQL: `?` placeholders become `%s`
    (and a literal `%` doubles); INSERT OR IGNORE becomes ON CONFLICT DO
    NOTHING; `col LIKE` becomes `col COLLATE "C" ILIKE`: SQLite's LIKE
    ignores case for ASCII letters only, and so does ILIKE under the C
    collation whatever the database's locale (plain ILIKE folds every
    Unicode letter on a UTF-8 locale, and the search highlight would then
    miss what it matched); an INDEXED BY hint goes (PostgreSQL's planner
    finds the partial index)."""
    sql = sql.replace("%", "%%").replace("?", "%s")
    sql = re.sub(r"\s+INDEXED BY \w+", "", sql, flags=re.I)
    if re.match(r"\s*INSERT OR IGNORE\b", sql, re.I):
        sql = re.sub(r"INSERT OR IGNORE", "INSERT", sql, count=1, flags=re.I)
        sql += " ON CONFLICT DO NOTHING"
    return re.sub(r"\b(\w+) LIKE\b", r'\1 COLLATE "C" ILIKE', sql)


class StorableStrDumper(StrDumperUnknown):
    """A str parameter as PostgreSQL text can hold it. PostgreSQL text has no
    NUL and UTF-8 no lone surrogate: psycopg refuses both, so a search for
    "%00" or a job id with one in a URL was a 500. They become U+FFFD, as in
    stored log lines (logtext.storable_text): a search for a NUL finds the
    lines that had one, and an id with one is simply not found. The web
    cleans its searches the same way first (http.search_arg), so SQLite
    agrees; this catches every other caller. The cleaning
    runs only after a refusal; the Python call costs ~0.4 us a str param
    (bench.pg_params: 2.1 against 0.5 us for four; a four-param SELECT round
    trip 58 against 56 us)."""

    def dump(self, obj: str):
        try:
            return super().dump(obj)
        except (psycopg.DataError, UnicodeEncodeError):
            return super().dump(storable_text(obj))


ADAPTERS = AdaptersMap(psycopg.adapters)
ADAPTERS.register_dumper(str, StorableStrDumper)
# Every connection the store opens, pooled or its own.
CONNECT_ARGS = {"autocommit": True, "context": ADAPTERS}


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, **CONNECT_ARGS)


COPY_LOGS = "COPY logs (step_id, line, job_id, ts, level, message) FROM STDIN"


def copy_text(value: str) -> str:
    """A value in COPY's text format: backslash, tab, newline and carriage
    return as their backslash escapes (chained replace: 1.8 ms per 2,000
    lines, str.translate with a table 8.2 ms)."""
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))
