"""A real PostgreSQL server for the tests: started once per session in a temp
dir (initdb + pg_ctl on a free port, socket in the temp dir, as the `postgres`
user when the tests run as root) and stopped at the end. Each test gets a
fresh, empty database (CREATE DATABASE: ~40 ms) and loses it afterwards."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from itertools import count

# Debian's layout first, then whatever is on PATH.
BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")


def find_bin_dir() -> str | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    for pattern in BIN_GLOBS:
        found = sorted(glob.glob(pattern), key=_version_key, reverse=True)
        for directory in found:
            if os.access(os.path.join(directory, "pg_ctl"), os.X_OK):
                return directory
    pg_ctl = shutil.which("pg_ctl")
    return os.path.dirname(pg_ctl) if pg_ctl else None


def _version_key(path: str) -> tuple:
    part = path.rstrip("/").split("/")[-2]
    return (int(part),) if part.isdigit() else (0,)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One throwaway cluster. Durability is off (fsync, full pages): a test
    database lives for one test, and CREATE DATABASE then costs ~40 ms."""

    def __init__(self, bin_dir: str):
        self.bin_dir = bin_dir
        self.dir = tempfile.mkdtemp(prefix="stepline-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = _free_port()
        self._names = count(1)
        # The server refuses to run as root: it runs as `postgres`, which must
        # own the directory.
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_user:
            shutil.chown(self.dir, "postgres")

    def _run(self, *cmd: str) -> None:
        result = subprocess.run([*self._as_user, *cmd], capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> "PostgresServer":
        self._run(f"{self.bin_dir}/initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
                   " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
                   " -c max_connections=400 -c shared_buffers=64MB")
        self._run(f"{self.bin_dir}/pg_ctl", "-D", self.data, "-o", options, "-l",
                  os.path.join(self.dir, "server.log"), "-w", "-t", "60", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        """A fresh empty database; returns its URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        # FORCE: a worker or server killed with -9 may leave a session behind.
        self.admin(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")

    def stop(self) -> None:
        try:
            self._run(f"{self.bin_dir}/pg_ctl", "-D", self.data, "-m", "immediate", "-w",
                      "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def required(config) -> bool:
    """In CI, or when PostgreSQL was asked for, a missing server is a failure."""
    return bool(os.environ.get("CI")) or config.getoption("--db-backend") == "postgres"


def server_for_session(config) -> Iterator[PostgresServer | None]:
    """Yields a running server, or None when there is no PostgreSQL here and
    it is not required (the tests that need it then skip)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        if required(config):
            raise RuntimeError("PostgreSQL is required (CI or --db-backend=postgres) but no"
                               " pg_ctl was found in /usr/lib/postgresql/*/bin or on PATH")
        yield None
        return
    server = PostgresServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()
