"""The `stepline` command. User mistakes print one line to stderr and exit 2."""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from stepline import config, processes
from stepline.engine.actions import start_job
from stepline.engine.definitions import parse_duration
from stepline.engine.params import ParamError
from stepline.engine.runner import STALE_AFTER_S
from stepline.engine.states import JOB_STATUSES, TERMINAL, earlier_failure, failures_past
from stepline.engine.taskslots import TASK_SLOTS
from stepline.follow import follow_job
from stepline.store import reads, workers
from stepline.store.backends import redacted
from stepline.store.check import violations
from stepline.store.errors import BadDatabaseURL, Conflict, NotFound, unavailable
from stepline.store.logtext import encodable
from stepline.store.writes import Store
from stepline.web.api import job_json
from stepline.web.render import duration


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """A usage mistake is one line on stderr and exit 2, like every other."""

    def error(self, message: str):
        self.exit(2, f"stepline: {message} (see: {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # argparse reports these from the top parser; point at the command's help
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        for directory in config.definition_dirs(args.definitions):
            if not Path(directory).is_dir():
                raise UsageError(f"definitions directory {directory}: not a directory")
        check_text(args)
        return args.func(args) or 0
    except (UsageError, ParamError, NotFound, Conflict, BadDatabaseURL) as exc:
        print(f"stepline: {exc}", file=sys.stderr)
        return 2
    except unavailable() as exc:  # unwritable path, locked, disk full, no server
        print(f"stepline: database {redacted(config.db_path(args.db))}: {exc}",
              file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `stepline jobs | head -1`: the reader has what it wanted. Point stdout
        # at /dev/null so the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


PATH_OPTIONS = {"db", "definitions"}  # any bytes the file system takes


def check_text(args: argparse.Namespace) -> None:
    """Every argument but a path is UTF-8 text, as the store keeps it: a job
    id given as the byte 0xff was a traceback on SQLite (it could not be
    bound) and "not found" on PostgreSQL."""
    for name, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and name not in PATH_OPTIONS and not encodable(text):
                raise UsageError(f"{name} {text!r} is not UTF-8 text")


GLOBAL_OPTIONS = (
    (("--db",), {"metavar": "PATH|URL",
                 "help": "SQLite file or postgresql://user@host:port/db URL"
                         " (env STEPLINE_DB, default ./stepline.db)"}),
    (("--definitions",), {"metavar": "DIR",
                          "help": "your definitions directory (env STEPLINE_DEFINITIONS,"
                                  " default ./jobs when it exists)"}),
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="stepline", description=__doc__)
    for flags, options in GLOBAL_OPTIONS:  # before the command...
        parser.add_argument(*flags, default=None, **options)
    # ...or after it: SUPPRESS keeps a value given before the command
    common = argparse.ArgumentParser(add_help=False)
    for flags, options in GLOBAL_OPTIONS:
        common.add_argument(*flags, default=argparse.SUPPRESS, **options)
    sub = parser.add_subparsers(required=True, metavar="COMMAND", parser_class=Parser,
                                help="see: stepline COMMAND --help")

    def command(name, func, help_text):
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func, parser=p)
        return p

    p = command("serve", cmd_serve, "web UI (gunicorn + gevent) plus one worker")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=at_least_one, default=1,
                   help="gunicorn web workers (default 1)")
    p.add_argument("--demo", action="store_true",
                   help="queue the demo pipeline and load_demo on start")
    p = command("worker", cmd_worker, "claim and run pending jobs")
    p.add_argument("--concurrency", type=at_least_one, default=4,
                   help="jobs run at once (default 4)")
    p.add_argument("--task-slots", type=at_least_one, default=TASK_SLOTS,
                   help=f"tasks of fan-out steps (any worker's) run at once (default {TASK_SLOTS})")
    p.add_argument("--exit-when-idle", action="store_true", help=argparse.SUPPRESS)
    p = command("run", cmd_run, "queue a job from a definition")
    p.add_argument("name", help="definition name (see: stepline definitions)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param of the definition; repeat for several")
    p.add_argument("--wait", action="store_true",
                   help="show progress until the job ends; exit 0 only if it completed")
    p = command("jobs", cmd_jobs, "list jobs, newest first")
    p.add_argument("--status", choices=[s.value for s in JOB_STATUSES],
                   help="only jobs in this status")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = command("logs", cmd_logs, "print a job's logs")
    p.add_argument("job", help="job id")
    p.add_argument("--step", help="only this step (by name)")
    p.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    p = command("tasks", cmd_tasks, "list the tasks of a job's fan-out steps, with errors")
    p.add_argument("job", help="job id")
    p.add_argument("--step", help="only this step (by name)")
    p.add_argument("--failed", action="store_true", help="only failed tasks")
    p = command("cancel", cmd_cancel, "cancel a pending or running job")
    p.add_argument("job", help="job id")
    p = command("definitions", cmd_definitions, "list definitions")
    p.add_argument("--check", action="store_true", help="exit 2 if any file is bad")
    p = command("prune", cmd_prune, "delete finished jobs older than a duration")
    p.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 30d")
    command("migrate", cmd_migrate, "create or update the database's schema (every command"
            " also does this on start)")
    p = command("check", cmd_check, "validate the database's invariants")
    p.add_argument("--live", action="store_true",
                   help="workers are running: allow running work a registered worker owns")
    return parser


def at_least_one(text: str) -> int:
    """A count of processes, jobs or slots: 0 or less would run nothing."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def open_store(args) -> Store:
    return Store(config.db_path(args.db))


def cmd_serve(args) -> int:
    busy = processes.port_unavailable(args.host, args.port)
    if busy:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {busy} (pass --port)")
    return processes.serve(config.db_path(args.db), args.definitions, args.host, args.port,
                           args.workers, demo=args.demo)


def cmd_worker(args) -> int:
    return processes.run_worker(open_store(args), args.concurrency, args.task_slots,
                                exit_when_idle=args.exit_when_idle)


def parse_param_pairs(pairs: list[str]) -> dict[str, str]:
    """`-p KEY=VALUE` options; the definition coerces each value to its type."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"-p takes KEY=VALUE, got {pair!r}")
        if key.strip() in overrides:  # silently keeping the last hid a typo
            raise UsageError(f"-p {key.strip()} is given twice; give each param once")
        overrides[key.strip()] = value
    return overrides


def cmd_run(args) -> int:
    definitions, errors = config.definitions(args.definitions)
    overrides = parse_param_pairs(args.param)
    store = open_store(args)
    job_id = start_job(store, definitions, args.name, overrides, errors=errors)
    print(job_id, flush=True)
    if not args.wait:
        return 0
    return follow_job(store, job_id)


def cmd_jobs(args) -> int:
    rows, _total = reads.list_jobs(open_store(args).db, status=args.status, limit=args.limit)
    if args.json:  # the same objects as GET /api/jobs
        print(json.dumps([job_json(row) for row in rows], indent=2))
        return 0
    if not rows:  # a note, not output: a pipe reading stdout sees no rows
        print(f"no {args.status} jobs" if args.status else "no jobs", file=sys.stderr)
    for row in rows:
        past = failures_past(row["status"], row["steps_failed"])  # the web's badge
        failed = f" ({past} failed)" if past else ""
        print(f"{row['id']}  {row['status']:<9}  {row['definition']:<24}"
              f"  {row['steps_done']}/{row['steps_total']} steps{failed}"
              f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(row['created']))}")
    return 0


def cmd_logs(args) -> int:
    store = open_store(args)
    steps = job_steps_named(store.db, args.job, args.step)
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


def cmd_tasks(args) -> int:
    """One line per task: step, index, status, attempts, duration, worker, error."""
    db = open_store(args).db
    steps = job_steps_named(db, args.job, args.step)
    printed = 0
    for step in steps:
        offset = 0
        while True:  # a page at a time: a 10,000-task step never sits in memory
            rows, total = reads.step_tasks(db, step["id"], status="failed" if args.failed
                                           else None, offset=offset, limit=1000)
            for task in rows:
                took = duration(task["started_at"], task["finished_at"]) or "-"
                earlier = earlier_failure(task["status"], task["attempts"])
                error = f"  {task['error']}" if task["error"] else ""
                if task["error"] and earlier is not None:  # retried: not this task's failure
                    error = f"  (attempt {earlier} failed: {task['error']})"
                print(f"{step['name']}  #{task['idx']:<5} {task['status']:<9}"
                      f" x{task['attempts']}  {took:>8}  {task['worker'] or '-'}{error}")
            offset += len(rows)
            if not rows or offset >= total:
                break
        printed += offset
    if not printed:  # a note, not output: a pipe reading stdout sees no rows
        print("no failed tasks" if args.failed else "no tasks", file=sys.stderr)
    return 0


def job_steps_named(db, job_id: str, step_name: str | None) -> list[dict]:
    """The job's steps, or the one named; a missing job or step is a usage error."""
    if reads.get_job(db, job_id) is None:
        raise NotFound(f"job {job_id} not found")
    steps = reads.job_steps(db, job_id)
    if step_name:
        named = [s for s in steps if s["name"] == step_name]
        if not named:
            known = ", ".join(s["name"] for s in steps) or "none"
            raise UsageError(f"job {job_id} has no step {step_name!r} (known: {known})")
        steps = named
    return steps


def cmd_cancel(args) -> int:
    print(open_store(args).request_cancel(args.job))
    return 0


def cmd_definitions(args) -> int:
    definitions, errors = config.definitions(args.definitions)
    for definition in definitions.values():
        params = ", ".join(f"{k}={v!r}{limits_text(definition.limits.get(k))}"
                           for k, v in definition.params.items())
        count = len(definition.steps)
        print(f"{definition.name:<24} {count} step{'' if count == 1 else 's'}  {params}")
    for error in errors:
        print(f"stepline: {error}", file=sys.stderr)
    return 2 if args.check and errors else 0


def limits_text(limit) -> str:
    """` (1..100000)`, ` (1..)` or ` (..5)` after a param's default."""
    if limit is None or (limit.min is None and limit.max is None):
        return ""
    low, high = ("" if v is None else v for v in (limit.min, limit.max))
    return f" ({low}..{high})"


def cmd_prune(args) -> int:
    try:
        seconds = parse_duration(args.older_than)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"deleted {open_store(args).prune(seconds)} jobs")
    return 0


def cmd_migrate(args) -> int:
    store = open_store(args)  # opening a store brings its schema up to date
    changes = store.backend.schema_changes
    done = "; ".join(changes) if changes else "the schema is current"
    print(f"{redacted(config.db_path(args.db))}: {done}")
    return 0


def cmd_check(args) -> int:
    store = open_store(args)
    found = violations(store.db, allow_running=args.live, require_owner=args.live)
    for line in found:
        print(line)
    print("ok" if not found else f"{len(found)} violations", file=sys.stderr)
    running = 0 if args.live or not found else len(workers.live(store, STALE_AFTER_S))
    if running:  # their work is running, not left running: not what the plain check is for
        print(f"{running} worker{' is' if running == 1 else 's are'} running:"
              " use `stepline check --live` while they work", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
