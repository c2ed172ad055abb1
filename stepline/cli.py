"""The `stepline` command. User mistakes print one line to stderr and exit 2."""

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from stepline import config
from stepline.engine.actions import start_job
from stepline.engine.definitions import ParamError, parse_duration
from stepline.engine.states import TERMINAL, Status
from stepline.store import reads
from stepline.store.check import violations
from stepline.store.writes import Conflict, NotFound, Store

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class UsageError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (UsageError, ParamError, NotFound, Conflict) as exc:
        print(f"stepline: {exc}", file=sys.stderr)
        return 2
    except sqlite3.OperationalError as exc:  # unwritable path, locked, disk full
        print(f"stepline: database {config.db_path(args.db)}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help="SQLite file (env STEPLINE_DB, default ./stepline.db)")
    common.add_argument("--definitions", metavar="DIR",
                        help="extra definitions directory (env STEPLINE_DEFINITIONS)")
    parser = argparse.ArgumentParser(prog="stepline", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name, func, help_text):
        p = sub.add_parser(name, parents=[common], help=help_text)
        p.set_defaults(func=func)
        return p

    p = command("serve", cmd_serve, "web UI (gunicorn + gevent) plus one worker")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="gunicorn web workers")
    p.add_argument("--demo", action="store_true",
                   help="queue the demo pipeline and load_demo on start")
    p = command("worker", cmd_worker, "claim and run pending jobs")
    p.add_argument("--concurrency", type=int, default=4, help="jobs run at once")
    p.add_argument("--exit-when-idle", action="store_true", help=argparse.SUPPRESS)
    p = command("run", cmd_run, "queue a job from a definition")
    p.add_argument("name")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--wait", action="store_true", help="follow until the job ends")
    p = command("jobs", cmd_jobs, "list jobs")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p = command("logs", cmd_logs, "print a job's logs")
    p.add_argument("job")
    p.add_argument("--step")
    p.add_argument("--follow", action="store_true")
    p = command("cancel", cmd_cancel, "cancel a pending or running job")
    p.add_argument("job")
    p = command("definitions", cmd_definitions, "list definitions")
    p.add_argument("--check", action="store_true", help="exit 2 if any file is bad")
    p = command("prune", cmd_prune, "delete finished jobs older than a duration")
    p.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 30d")
    p = command("check", cmd_check, "validate the database's invariants")
    p.add_argument("--live", action="store_true",
                   help="workers are running: allow running work a registered worker owns")
    return parser


def open_store(args) -> Store:
    return Store(config.db_path(args.db))


def cmd_serve(args) -> int:
    env = {**os.environ, "STEPLINE_DB": str(Path(config.db_path(args.db)).resolve())}
    if args.definitions:
        env["STEPLINE_DEFINITIONS"] = args.definitions
    store = Store(env["STEPLINE_DB"])  # the schema exists before two processes start
    if args.demo:
        definitions, _ = config.definitions(args.definitions)
        for name in ("codebase_classify", "load_demo"):
            print(f"stepline: queued {name} as job {start_job(store, definitions, name, {})}")
    if args.host in LOOPBACK:
        print(f"stepline: listening on {args.host} only: this machine alone can connect"
              " (to share it, set STEPLINE_TOKEN and pass --host)", flush=True)
    elif not env.get("STEPLINE_TOKEN"):
        print(f"stepline: WARNING: listening on {args.host} with no STEPLINE_TOKEN:"
              " anyone who can reach this port can run jobs", file=sys.stderr, flush=True)
    print(f"stepline: serving http://{args.host}:{args.port}/ (database {env['STEPLINE_DB']})",
          flush=True)
    procs = [
        subprocess.Popen([sys.executable, "-m", "stepline.cli", "worker"], env=env),
        subprocess.Popen([sys.executable, "-m", "gunicorn",
                          "-c", "python:stepline.web.gunicorn_conf",
                          "-b", f"{args.host}:{args.port}", "-w", str(args.workers),
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


def cmd_worker(args) -> int:
    from stepline.engine.runner import Worker

    # A python step's `call = "pkg.module:function"` imports from the worker's
    # current directory, as `python -m` would (a console script does not).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    worker = Worker(open_store(args), concurrency=args.concurrency)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    worker.run(exit_when_idle=args.exit_when_idle)
    return 0


def parse_param_pairs(pairs: list[str]) -> dict[str, str]:
    """`-p KEY=VALUE` options; the definition coerces each value to its type."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"-p takes KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = value
    return overrides


def cmd_run(args) -> int:
    definitions, _errors = config.definitions(args.definitions)
    overrides = parse_param_pairs(args.param)
    store = open_store(args)
    job_id = start_job(store, definitions, args.name, overrides)
    print(job_id, flush=True)
    if not args.wait:
        return 0
    return follow_job(store, job_id)


def follow_job(store: Store, job_id: str) -> int:
    """Print each step's changes as they happen; exit 0 if the job completed."""
    seq, shown = 0, {}
    while True:
        for event in reads.events_after(store.db, seq, job_id=job_id):
            seq = event["seq"]
            key = event["step_id"] or "job"
            if event["status"] != shown.get(key):
                shown[key] = event["status"]
                step = reads.get_step(store.db, event["step_id"]) if event["step_id"] else None
                name = f"step {step['name']}" if step else "job"
                print(f"{time.strftime('%H:%M:%S')} {name}: {event['status']}", flush=True)
        job = reads.get_job(store.db, job_id)
        if job["status"] in TERMINAL:
            for step in reads.job_steps(store.db, job_id):
                t = step["tasks"]
                tasks = f", tasks {t['completed']} ok {t['failed']} failed" if any(
                    t.values()) else ""
                error = f" — {step['error']}" if step["error"] else ""
                print(f"  {step['status']:>9}  {step['name']} ({step['log_count']} log lines"
                      f"{tasks}){error}")
            print(f"job {job_id} {job['status']}" + (f": {job['error']}" if job["error"] else ""))
            return 0 if job["status"] == Status.COMPLETED else 1
        time.sleep(0.2)


def cmd_jobs(args) -> int:
    rows, _total = reads.list_jobs(open_store(args).db, status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['id']}  {row['status']:<9}  {row['definition']:<24}"
              f"  {row['steps_done']}/{row['steps_total']} steps"
              f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(row['created']))}")
    return 0


def cmd_logs(args) -> int:
    store = open_store(args)
    if reads.get_job(store.db, args.job) is None:
        raise NotFound(f"job {args.job} not found")
    steps = reads.job_steps(store.db, args.job)
    if args.step:
        steps = [s for s in steps if s["name"] == args.step]
        if not steps:
            raise UsageError(f"job {args.job} has no step {args.step!r}")
    cursors = {s["id"]: 0 for s in steps}
    while True:
        finished = reads.get_job(store.db, args.job)["status"] in TERMINAL
        printed = 0
        for step in steps:
            for row in reads.log_lines(store.db, step["id"], after=cursors[step["id"]],
                                         limit=10_000):
                print(f"{step['name']} | {row['line']:>6} {row['level']:<5} {row['message']}")
                cursors[step["id"]] = row["line"]
                printed += 1
        if not args.follow or (finished and not printed):
            return 0
        if not printed:
            time.sleep(0.2)


def cmd_cancel(args) -> int:
    print(open_store(args).request_cancel(args.job))
    return 0


def cmd_definitions(args) -> int:
    definitions, errors = config.definitions(args.definitions)
    for definition in definitions.values():
        params = ", ".join(f"{k}={v!r}" for k, v in definition.params.items())
        print(f"{definition.name:<24} {len(definition.steps)} steps  {params}")
    for error in errors:
        print(f"stepline: {error}", file=sys.stderr)
    return 2 if args.check and errors else 0


def cmd_prune(args) -> int:
    try:
        seconds = parse_duration(args.older_than)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"deleted {open_store(args).prune(seconds)} jobs")
    return 0


def cmd_check(args) -> int:
    found = violations(open_store(args).db, allow_running=args.live, require_owner=args.live)
    for line in found:
        print(line)
    print("ok" if not found else f"{len(found)} violations", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
