"""PostgreSQL connections each Stepline process holds (README, "PostgreSQL"):
`stepline serve --workers 2` on a fresh database, counted with `ss` per
process, idle after start and again after a live page (/events) connected.
Run: `python3 -m bench.pg_connections`."""

import collections
import os
import socket
import subprocess
import sys
import time
import urllib.request

from bench.harness import ROOT, _postgres


def connections(port: int) -> dict[str, int]:
    """Established TCP connections to the server's port, by client process."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"dst 127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True).stdout
    per = collections.Counter()
    for line in out.splitlines():
        if "pid=" in line:
            pid = int(line.split("pid=")[1].split(",")[0])
            argv = open(f"/proc/{pid}/cmdline").read().split("\0")
            kind = "worker" if "worker" in argv else "gunicorn" if "gunicorn" in argv else "other"
            per[f"{kind} {pid}"] += 1
    return dict(sorted(per.items()))


def main() -> None:
    server = _postgres()
    server.admin("DROP DATABASE IF EXISTS pg_connections")
    server.admin("CREATE DATABASE pg_connections")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "STEPLINE_DB": server.url("pg_connections"), "PYTHONPATH": str(ROOT)}
    serve = subprocess.Popen([sys.executable, "-m", "stepline.cli", "serve", "--port",
                              str(port), "--workers", "2"], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(8)  # both gunicorn workers and the worker up (2 loaded cores)
        print(f"idle after start: {connections(server.port)}")
        try:  # one web worker serves a live page: its tailer starts
            urllib.request.urlopen(f"http://127.0.0.1:{port}/events?view=jobs",
                                   timeout=3).read(100)
        except OSError:
            pass
        time.sleep(3)
        print(f"after a live page: {connections(server.port)}")
    finally:
        serve.terminate()
        serve.wait(30)


if __name__ == "__main__":
    main()
