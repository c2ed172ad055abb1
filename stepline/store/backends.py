"""Which backend a database string names: a `postgresql://` URL, or else a
SQLite file path."""

import re

from stepline.store.sqlite import SqliteBackend


def is_url(path: str) -> bool:
    return path.startswith(("postgresql://", "postgres://"))


def redacted(path: str) -> str:
    """The database as it may be printed: a URL's password hidden."""
    return re.sub(r"^(\w+://[^:@/]*):[^@/]*@", r"\1:***@", path)


def open_backend(path: str):
    """A SqliteBackend or a PostgresBackend (same methods), schema current."""
    if is_url(path):
        # Imported only here: psycopg costs ~200 ms to import, which a SQLite
        # command or worker does not need.
        from stepline.store.postgres import PostgresBackend

        return PostgresBackend(path)
    return SqliteBackend(path)
