"""The two long-running commands: `stepline serve` (a worker and gunicorn,
watched until a signal) and `stepline worker` (one Worker until a signal).
The CLI parses their options and checks them; this runs them."""

import os
import signal
import socket
import subprocess
import sys
import time
import traceback

from stepline import config
from stepline.engine.actions import start_job
from stepline.engine.runner import Worker
from stepline.store.backends import absolute, redacted
from stepline.store.writes import Store

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEMO_JOBS = ("codebase_classify", "load_demo")


def serve(db: str, definitions_dir: str | None, host: str, port: int, web_workers: int,
          demo: bool = False) -> int:
    """A `stepline worker` and gunicorn on `host:port`, both on `db`, until
    SIGTERM or SIGINT (exit 0) or until one of them exits (exit 1)."""
    env = {**os.environ, "STEPLINE_DB": absolute(db)}
    if definitions_dir:
        env["STEPLINE_DEFINITIONS"] = definitions_dir
    definitions, errors = config.definitions(definitions_dir)
    for error in errors:  # the others still load; say so now, not at first use
        print(f"stepline: skipping {error}", file=sys.stderr, flush=True)
    store = Store(env["STEPLINE_DB"])  # the schema exists before two processes start
    if demo:
        for name in DEMO_JOBS:
            print(f"stepline: queued {name} as job {start_job(store, definitions, name, {})}")
    if host in LOOPBACK:
        print(f"stepline: listening on {host} only: this machine alone can connect"
              " (to share it, set STEPLINE_TOKEN and pass --host)", flush=True)
    elif not env.get("STEPLINE_TOKEN"):
        print(f"stepline: WARNING: listening on {host} with no STEPLINE_TOKEN:"
              " anyone who can reach this port can run jobs", file=sys.stderr, flush=True)
    print(f"stepline: serving http://{host}:{port}/ (database {redacted(db)})", flush=True)
    procs = [
        subprocess.Popen([sys.executable, "-m", "stepline.cli", "worker"], env=env),
        subprocess.Popen([sys.executable, "-m", "gunicorn",
                          "-c", "python:stepline.web.gunicorn_conf",
                          "-b", f"{host}:{port}", "-w", str(web_workers),
                          "stepline.web.app:create_app()"], env=env),
    ]
    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
    return 0 if stop else 1


def port_unavailable(host: str, port: int) -> str | None:
    """Why gunicorn could not listen there (checked first: gunicorn itself
    would retry for 5 s, repeating its error, then exit 1)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def run_worker(store: Store, concurrency: int, task_slots: int,
               exit_when_idle: bool = False) -> int:
    """One Worker on `store` until SIGTERM or SIGINT (or idle, if asked)."""
    # A python step's `call = "pkg.module:function"` imports from the worker's
    # current directory, as `python -m` would (a console script does not).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    worker = Worker(store, concurrency=concurrency, task_slots=task_slots)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    # A step or task that ignored its stop flag still runs in a thread, and
    # Python joins pool threads at exit, for ever: leave with os._exit, its
    # work handed back (Worker._shutdown), or the shutdown's error printed.
    try:
        worker.run(exit_when_idle=exit_when_idle)
    except BaseException:
        if worker.left_running:
            traceback.print_exc()
            os._exit(1)
        raise
    if worker.left_running:
        sys.stdout.flush()
        print("stepline: exiting with a step or task still running", file=sys.stderr, flush=True)
        os._exit(0)
    return 0
