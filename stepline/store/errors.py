"""The store's errors that callers above it handle: NotFound (HTTP 404),
Conflict (409), and the database being unavailable for now (locked, full,
read-only, connection lost, deadlock victim). Nothing was written -- the
transaction rolled back -- so a worker retries, the web answers 503 and the
CLI says why.

`unavailable()` gives the exception classes to catch, for `except` clauses
and Flask error handlers. psycopg's class only joins once psycopg has been
imported (by a PostgreSQL store): importing it costs ~200 ms, which a SQLite
CLI call or worker should not pay, and an unimported driver raises nothing.
"""

import sqlite3
import sys


def unavailable() -> tuple[type[Exception], ...]:
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return (sqlite3.OperationalError,)
    return (sqlite3.OperationalError, psycopg.OperationalError)


class BadDatabaseURL(ValueError):
    """A postgresql:// URL that does not parse; the message is safe to print."""


class NotFound(LookupError):
    """No job, step or task with that id."""


class Conflict(RuntimeError):
    """The request is valid but the entity's state forbids it (HTTP 409)."""
