"""Which backend a database string names: a `postgresql://` URL, or else a
SQLite file path."""

from pathlib import Path

from stepline.store.errors import BadDatabaseURL
from stepline.store.sqlite import SqliteBackend


def is_url(path: str) -> bool:
    return path.startswith(("postgresql://", "postgres://"))


def absolute(path: str) -> str:
    """The same database named so that it means the same from any directory
    (for child processes): a file path resolved, a URL as it is."""
    return path if is_url(path) else str(Path(path).resolve())


def work_root(path: str) -> Path:
    """Where jobs get their work directories: beside a SQLite file; for a
    database server, the current directory of the worker."""
    return Path.cwd() if is_url(path) else Path(path).resolve().parent


def redacted(path: str) -> str:
    """The database as it may be printed: a URL's password hidden, in the
    user part and as a `password=` parameter. Printed URLs are often the ones
    that failed to connect, so this holds for a password typed unencoded
    too: urlsplit would end the user part at a `/` or `?` inside it, so
    everything from the user's `:` to the LAST `@` goes."""
    if not is_url(path):
        return path
    scheme, _, rest = path.partition("://")
    userinfo, at, location = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    base, mark, query = location.partition("?")
    query = "&".join("password=***" if part.startswith("password=") else part
                     for part in query.split("&"))
    return f"{scheme}://{userinfo}{at}{base}{mark}{query}"


def open_backend(path: str):
    """A SqliteBackend or a PostgresBackend (same methods), schema current."""
    if is_url(path):
        # Imported only here: psycopg costs ~200 ms to import, which a SQLite
        # command or worker does not need.
        import psycopg

        from stepline.store.postgres import PostgresBackend

        try:
            psycopg.conninfo.conninfo_to_dict(path)
        except psycopg.ProgrammingError:
            # not libpq's message: it quotes the bad part, often the password
            raise BadDatabaseURL(
                f"database {redacted(path)}: not a valid PostgreSQL URL (percent-encode"
                " special characters of the user and password: %25 for %, %40 for @)"
            ) from None
        return PostgresBackend(path)
    return SqliteBackend(path)
