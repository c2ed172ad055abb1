import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepline.engine.definitions import build_definition
from stepline.engine.states import TERMINAL
from stepline.store import reads
from stepline.store.writes import Store

from . import pg

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true",
                     help="run the fault tests at full size (20 kill rounds, 500 jobs,"
                          " 1,000 WebSocket cycles); results go in bench/RESULTS.md")
    parser.addoption("--db-backend", choices=("sqlite", "postgres"), default="sqlite",
                     help="the database the store fixtures (db_path, store) give each test:"
                          " a SQLite file, or a fresh database on a PostgreSQL server the"
                          " session starts (tests/pg.py)")


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only: about the SQLite file itself (skipped"
                            " with --db-backend=postgres)")
    config.addinivalue_line("markers", "one_backend: the same whatever --db-backend says (no"
                            " store, or it picks its backends itself): runs in the default"
                            " run only")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--db-backend") != "postgres":
        return
    sqlite_file = pytest.mark.skip(reason="about the SQLite file itself")
    ran_already = pytest.mark.skip(reason="not about the store backend: the default run has it")
    for item in items:
        if item.get_closest_marker("sqlite_only"):
            item.add_marker(sqlite_file)
        elif item.get_closest_marker("one_backend"):
            item.add_marker(ran_already)


@pytest.fixture
def soak(request) -> bool:
    return request.config.getoption("--soak")


@pytest.fixture(scope="session")
def pg_server(request):
    """The session's PostgreSQL server, or None where there is none and none
    is required (see tests/pg.py)."""
    yield from pg.server_for_session(request.config)


@pytest.fixture
def pg_url(pg_server) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for tests that need PostgreSQL
    whatever --db-backend says."""
    if pg_server is None:
        pytest.skip("no PostgreSQL server binaries here (install Debian's postgresql;"
                    " in CI or with --db-backend=postgres this is a failure)")
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture
def db_backend(request) -> str:
    return request.config.getoption("--db-backend")


@pytest.fixture
def db_path(request, tmp_path, db_backend) -> str:
    """What STEPLINE_DB / --db is set to: a SQLite file, or with
    --db-backend=postgres the URL of a fresh PostgreSQL database."""
    if db_backend == "postgres":
        return request.getfixturevalue("pg_url")
    return str(tmp_path / "stepline.db")


@pytest.fixture(scope="module")
def module_db_path(request, tmp_path_factory) -> Iterator[str]:
    """db_path for a module whose tests share one app and its data."""
    if request.config.getoption("--db-backend") != "postgres":
        yield str(tmp_path_factory.mktemp("db") / "stepline.db")
        return
    server = request.getfixturevalue("pg_server")
    url = server.create_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def store(db_path) -> Iterator[Store]:
    store = Store(db_path)
    yield store
    store.close()


def make_definition(toml_text: str, name: str = "t"):
    import tomllib

    return build_definition(tomllib.loads(toml_text), f"{name}.toml", default_name=name)


def marking_job(tmp_path: Path):
    """For the claim races: a one-step definition whose command leaves a file
    `<param n>-<pid>` in the returned folder, so each run of it is counted."""
    marks = tmp_path / "marks"
    marks.mkdir()
    return make_definition(f"""
[step.mark]
type = "shell"
run = "touch {marks}/$STEPLINE_PARAM_N-$$"
[params]
n = 0
"""), marks


def assert_each_job_ran_once(store, marks: Path, count: int) -> None:
    """Jobs n = 0 .. count-1 of marking_job: each command ran exactly once,
    and each job was claimed (went running) exactly once."""
    runs = sorted(int(p.name.split("-")[0]) for p in marks.iterdir())
    assert runs == list(range(count))
    claims = store.db.execute(
        "SELECT job_id, count(*) FROM events WHERE context = 'job' AND status = 'running'"
        " GROUP BY job_id").fetchall()
    assert len(claims) == count and {n for _, n in claims} == {1}


class WorkerProcess:
    """A real `stepline worker` subprocess on the test's database."""

    def __init__(self, db_path: str, *extra: str, env: dict | None = None):
        env = {**os.environ, "STEPLINE_DB": db_path, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stepline.cli", "worker", *extra], env=env, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def wait_started(self, timeout: float = 60) -> str:
        """Until the worker has registered: its line "... started on ...".
        Returns what it printed until then."""
        deadline, seen = time.monotonic() + timeout, []
        while select.select([self.proc.stdout], [], [], max(0, deadline - time.monotonic()))[0]:
            line = self.proc.stdout.readline()
            seen.append(line)
            if not line or " started on " in line:
                break
        assert seen and " started on " in seen[-1], "".join(seen) or "silent"
        return "".join(seen)

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=timeout)
        return out


@pytest.fixture
def start_worker(db_path):
    workers: list[WorkerProcess] = []

    def start(*extra: str, path: str | None = None, env: dict | None = None) -> WorkerProcess:
        worker = WorkerProcess(path or db_path, *extra, env=env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(signal.SIGKILL)


@pytest.fixture
def cpu_saturated():
    """One busy-loop process per core for the test's duration, so the server,
    the workers and the test's own clients compete for CPU as on a busy
    machine. Not niced: the load must compete. Yields how many run."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(os.cpu_count() or 1)]
    yield len(loops)
    for loop in loops:
        loop.kill()
    for loop in loops:
        loop.wait()


def stepline(db_path: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The `stepline` command as a user runs it, on the test's database."""
    env = {**os.environ, "STEPLINE_DB": db_path, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stepline.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def wait_for(predicate, timeout: float = 30, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_job(store: Store, job_id: str, timeout: float = 30) -> dict:
    def done():
        job = reads.get_job(store.db, job_id)
        return job if job["status"] in TERMINAL else None

    return wait_for(done, timeout, what=f"job {job_id} to finish")


def steps_by_name(store: Store, job_id: str) -> dict[str, dict]:
    return {s["name"]: s for s in reads.job_steps(store.db, job_id)}


def log_messages(store: Store, step_id: str) -> list[str]:
    return [r["message"] for r in reads.log_lines(store.db, step_id, limit=10**9)]


@pytest.fixture
def live_server(db_path):
    from .live_server import LiveServer

    servers = []

    def start(**kwargs):
        server = LiveServer(kwargs.pop("path", db_path), **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
