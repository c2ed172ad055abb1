"""Shared plumbing for the benchmarks: real processes on a temp SQLite file,
or with STEPLINE_BENCH_BACKEND=postgres on a fresh database of a PostgreSQL
server started for the run (tests/pg.py), e.g.

    STEPLINE_BENCH_BACKEND=postgres python3 -m bench.tasks
"""

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stepline.engine.definitions import build_definition  # noqa: E402
from stepline.store.writes import Store  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.live_server import LiveServer  # noqa: E402


def definition(toml_text: str, name: str = "bench"):
    import tomllib

    return build_definition(tomllib.loads(toml_text), f"{name}.toml", default_name=name)


@contextmanager
def temp_db(db: str | None = None, backend: str | None = None):
    """A fresh database, or `db` itself when a script was given one (--db).
    `backend` ("sqlite" or "postgres") defaults to STEPLINE_BENCH_BACKEND."""
    if db:
        yield db
        return
    if (backend or os.environ.get("STEPLINE_BENCH_BACKEND")) == "postgres":
        yield _postgres().create_database()
        return
    with tempfile.TemporaryDirectory(prefix="stepline-bench-") as tmp:
        yield str(Path(tmp) / "bench.db")


_server = None


def _postgres():
    """One server for the whole run, stopped when the run ends."""
    global _server
    if _server is None:
        import atexit

        from tests import pg

        bin_dir = pg.find_bin_dir()
        if bin_dir is None:
            raise SystemExit("STEPLINE_BENCH_BACKEND=postgres: no PostgreSQL binaries found")
        _server = pg.PostgresServer(bin_dir).start()
        atexit.register(_server.stop)
    return _server


class Worker:
    def __init__(self, db_path: str, *args: str):
        env = {**os.environ, "STEPLINE_DB": db_path, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "stepline.cli", "worker", *args],
                                     env=env, cwd=ROOT, stdout=subprocess.DEVNULL)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@contextmanager
def web(db_path: str, workers: int = 1, env: dict | None = None):
    server = LiveServer(db_path, workers=workers, env=env).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def worker(db_path: str, *args: str):
    w = Worker(db_path, *args)
    try:
        yield w
    finally:
        w.stop()


def pct(values, p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values) -> float:
    return statistics.median(values)


def timed(fn, repeat: int = 30) -> float:
    """Median ms of `repeat` calls of fn, after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return median(samples)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def machine() -> str:
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    python = sys.version.split()[0]
    return f"{os.cpu_count()} cores, {mem_kb / 1024 / 1024:.0f} GiB RAM, Python {python}"


def print_table(title: str, rows: list[tuple]) -> None:
    """rows: (what, measured, target, verdict)"""
    print(f"\n## {title}  ({machine()})\n")
    print("| what | measured | target | ok |")
    print("|---|---|---|---|")
    for what, measured, target, ok in rows:
        print(f"| {what} | {measured} | {target} | {'yes' if ok else 'NO'} |")
    sys.stdout.flush()


__all__ = ["Store", "definition", "temp_db", "web", "worker", "wait_for", "pct", "median",
           "rss_kb", "fd_count", "machine", "print_table"]
