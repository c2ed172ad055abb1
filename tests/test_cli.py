"""The `stepline` command as a person uses it: through real pipes, on a
real busy port, with options where a person puts them."""

import os
import select
import socket
import subprocess
import sys
import time

import pytest

from stepline.cli import build_parser
from stepline.store import reads

from .conftest import ROOT, make_definition, stepline, wait_for, wait_job


def stepline_popen(db_path: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "STEPLINE_DB": db_path, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "stepline.cli", *args], env=env, cwd=ROOT,
                            text=True, **kwargs)


def test_a_closed_pipe_ends_the_command_quietly(store, db_path):
    """`stepline jobs | head -1`, `stepline logs JOB | head -1`: the reader
    went away. No traceback, exit 0."""
    job_id = store.create_job(make_definition('[step.a]\ntype = "shell"\nrun = "true"'), {})
    step_id = store.db.execute("SELECT id FROM steps WHERE job_id = ?", [job_id]).fetchone()[0]
    with store.write() as tx:
        tx.append_logs(job_id, step_id, [(0, "info", f"line {i}") for i in range(20_000)])
    for args in (["jobs"], ["logs", job_id]):
        proc = stepline_popen(db_path, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()  # nobody reads: the first write finds the pipe closed
        stderr = proc.stderr.read()
        assert proc.wait(30) == 0, stderr
        assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_serve_on_a_busy_port_says_so_in_one_line(db_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = stepline(db_path, "serve", "--port", str(port), timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"stepline: cannot listen on 127.0.0.1:{port}: Address already in use (pass --port)"]


def test_global_options_go_before_or_after_the_command(tmp_path, db_path):
    other = str(tmp_path / "other.db")
    queued = stepline(db_path, "--db", other, "run", "load_demo", "-p", "tasks=1")
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    before = stepline(db_path, "--db", other, "jobs")
    after = stepline(db_path, "jobs", "--db", other)
    default = stepline(db_path, "jobs")
    assert job_id in before.stdout and job_id in after.stdout
    assert job_id not in default.stdout  # STEPLINE_DB, the test's own file


@pytest.mark.sqlite_only
def test_processes_starting_together_on_a_new_file_all_start(tmp_path):
    """`stepline worker` beside `stepline run` on a file that does not exist
    yet: each switches it to WAL, and SQLite used to fail all but one at once
    with "database is locked" (about one start in five with 4 processes),
    leaving no worker and the job pending for ever. Four processes open 30
    new files, each file at the same instant."""
    opener = ("import sys, time\n"
              "from stepline.store.writes import Store\n"
              "folder, at = sys.argv[1], float(sys.argv[2])\n"
              "for n in range(30):\n"
              "    time.sleep(max(0, at + n * 0.1 - time.time()))\n"
              "    Store(f'{folder}/new-{n}.db')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    at = f"{time.time() + 2}"  # all four have started by then
    procs = [subprocess.Popen([sys.executable, "-c", opener, str(tmp_path), at], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [proc.communicate(timeout=60)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, "\n".join(errors)


def test_run_wait_shows_progress_while_tasks_run(db_path, tmp_path, start_worker):
    (tmp_path / "slow_fan.toml").write_text(
        '[step.fan]\ntype = "generate"\ntasks = 12\nlogs_per_task = 10\n'
        'log_delay_ms = 100\nconcurrency = 2\n')
    start_worker().wait_started()  # a slow machine may take over 2 s to start one
    result = stepline(db_path, "run", "slow_fan", "--wait", "--definitions", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    progress = [line for line in lines if "fan: " in line and "/12 tasks" in line]
    assert progress, result.stdout  # piped: plain progress lines, no \r redraws
    assert not any("\r" in line or "\033" in line for line in lines)
    assert lines[-1].endswith("completed")
    assert "no worker" not in result.stderr  # one was running all along


def test_every_argument_has_help():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "==SUPPRESS==" and a.choices)
    missing = []
    for name, sub in [("", parser), *commands.choices.items()]:
        for action in sub._actions:
            if action.help is None and action.dest != "help":
                missing.append(f"{name} {action.dest}")
    assert missing == []


def test_tasks_show_why_each_task_failed(store, db_path, tmp_path, start_worker):
    (tmp_path / "fan.toml").write_text(
        '[step.fan]\ntype = "generate"\ntasks = 8\nlogs_per_task = 1\nfailure_rate = 0.5\n'
        'seed = 7\non_error = "continue"\n')
    queued = stepline(db_path, "run", "fan", "--definitions", str(tmp_path))
    job_id = queued.stdout.strip()
    worker = start_worker()
    wait_job(store, job_id)
    every = stepline(db_path, "tasks", job_id).stdout.splitlines()
    failed = stepline(db_path, "tasks", job_id, "--failed", "--step", "fan").stdout.splitlines()
    assert len(every) == 8 and 0 < len(failed) < 8, every
    for line in failed:  # step, index, status, attempts, duration, worker, the error itself
        assert line.startswith("fan  #") and " failed " in line and "x1" in line
        assert f"{socket.gethostname()}-{worker.proc.pid}-" in line
        assert line.endswith("(simulated, attempt 1)")


def test_tasks_mark_a_retried_tasks_error_as_an_earlier_attempts(store, db_path, tmp_path,
                                                                 start_worker):
    """Seed 9 at 50 %: 4 of 8 tasks fail attempt 1 and pass attempt 2; their
    line says the error was attempt 1's, not that the completed task failed."""
    (tmp_path / "fan.toml").write_text(
        '[step.fan]\ntype = "generate"\ntasks = 8\nlogs_per_task = 1\nfailure_rate = 0.5\n'
        'seed = 9\nretries = 1\non_error = "continue"\n')
    job_id = stepline(db_path, "run", "fan", "--definitions", str(tmp_path)).stdout.strip()
    start_worker()
    wait_job(store, job_id)
    lines = stepline(db_path, "tasks", job_id).stdout.splitlines()
    retried = [line for line in lines if " completed " in line and "failed" in line]
    assert len(retried) == 4, "\n".join(lines)
    for line in retried:
        idx = line.split("#")[1].split()[0]
        assert line.endswith(f"  (attempt 1 failed: StepFailed: task {idx} failed"
                             " (simulated, attempt 1))"), line
    for line in lines:
        if line.split()[2] == "failed":  # its own failure, as before
            assert line.endswith("  StepFailed: task 7 failed (simulated, attempt 2)"), line

def test_params_outside_their_limits_are_refused_and_nothing_is_queued(db_path):
    for params, message in [
        (["tasks=-3"], "stepline: param 'tasks' must be from 1 to 100000, got '-3'"),
        (["failure_rate=7"], "stepline: param 'failure_rate' must be from 0 to 1, got '7'"),
        (["tasks=many"], "stepline: param 'tasks' must be an integer, got 'many'"),
        (["tasks=" + "1" * 10_001],
         "stepline: param 'tasks' must be at most 10,000 characters, got 10,001"),
        # the last one silently won: a typo in a long command line went unseen
        (["tasks=3", "tasks=4"], "stepline: -p tasks is given twice; give each param once"),
    ]:
        result = stepline(db_path, "run", "load_demo", *[a for p in params for a in ("-p", p)])
        assert (result.returncode, result.stdout) == (2, ""), result
        assert result.stderr.splitlines() == [message]
    listed = stepline(db_path, "jobs")
    assert (listed.stdout, listed.stderr) == ("", "no jobs\n")
    definitions = stepline(db_path, "definitions").stdout  # the limits, where to look them up
    assert "tasks=40 (1..100000), failure_rate=0.1 (0..1)" in definitions


def test_a_mistyped_option_points_at_the_commands_help(db_path):
    result = stepline(db_path, "jobs", "--stauts", "x")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "stepline: unrecognized arguments: --stauts x (see: stepline jobs --help)"]


def test_empty_lists_say_so_on_stderr_and_leave_stdout_empty(store, db_path, tmp_path,
                                                              start_worker):
    (tmp_path / "one.toml").write_text('[step.say]\ntype = "shell"\nrun = "echo hi"\n')
    job_id = stepline(db_path, "run", "one", "--definitions", str(tmp_path)).stdout.strip()
    failed = stepline(db_path, "jobs", "--status", "failed")
    assert (failed.returncode, failed.stdout, failed.stderr) == (0, "", "no failed jobs\n")
    tasks = stepline(db_path, "tasks", job_id, "--step", "say")
    assert (tasks.returncode, tasks.stdout, tasks.stderr) == (0, "", "no tasks\n")
    listed = stepline(db_path, "jobs")
    assert job_id in listed.stdout and listed.stderr == ""


def test_run_wait_without_a_worker_says_so_once_and_keeps_waiting(db_path, tmp_path,
                                                                 start_worker):
    (tmp_path / "one.toml").write_text('[step.say]\ntype = "shell"\nrun = "echo hi"\n')
    proc = stepline_popen(db_path, "run", "one", "--wait", "--definitions", str(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 60)
        assert ready, "no hint within 60 s"
        assert proc.stderr.readline() == (
            "waiting: no worker is running (start one: stepline worker)\n")
        assert proc.poll() is None  # still waiting
        start_worker()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert stderr == ""  # said once only
    assert "  completed  say (1 log line)" in stdout.splitlines()


def test_a_count_of_zero_is_refused_in_one_line(db_path):
    """`--task-slots 0` used to mean 1, silently; `--concurrency 0` a worker
    that claims nothing."""
    for args in (["worker", "--task-slots", "0"], ["worker", "--concurrency", "-1"],
                 ["serve", "--workers", "zero"]):
        result = stepline(db_path, *args, timeout=30)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and args[1] in lines[0], (args, lines)


def test_jobs_says_a_completed_job_had_failed_steps(store, db_path, start_worker):
    """New-user trial: `stepline jobs` said "completed 2/2 steps" where the
    web's badge says "1 failed step" (on_error = continue)."""
    job_id = store.create_job(make_definition(
        '[step.soft]\ntype = "shell"\nrun = "exit 1"\non_error = "continue"\n'
        '[step.after]\ntype = "shell"\nrun = "true"\ndepends = ["soft"]\n'), {})
    start_worker()
    assert wait_job(store, job_id)["status"] == "completed"
    line = stepline(db_path, "jobs").stdout.splitlines()[0]
    assert line.startswith(job_id) and "2/2 steps (1 failed)" in line, line


@pytest.mark.one_backend
def test_no_command_prints_the_database_password(pg_url, start_worker):
    """STEPLINE_DB with a password: the worker's start line, `migrate` and the
    worker's stop show it as *** (the test server trusts any password)."""
    url = pg_url.replace("postgresql://postgres@", "postgresql://postgres:s3cr3t-pw@")
    assert "s3cr3t-pw" in url
    worker = start_worker(path=url)
    said = worker.wait_started()
    said += worker.stop()
    migrate = stepline(url, "migrate")
    assert migrate.returncode == 0, migrate.stderr
    for output in (said, migrate.stdout + migrate.stderr):
        assert "postgresql://postgres:***@127.0.0.1" in output
        assert "s3cr3t-pw" not in output


def test_check_while_a_worker_runs_names_tasks_and_points_at_live(store, db_path,
                                                                   start_worker):
    """A plain `stepline check` with a worker at work: the running tasks are
    named as the UI names them, and one line says what to run instead."""
    start_worker().wait_started()
    job_id = store.create_job(make_definition(
        '[step.fan_out]\ntype = "generate"\ntasks = 2\nlogs_per_task = 600\n'
        'log_delay_ms = 100'), {})
    step_id = reads.job_steps(store.db, job_id)[0]["id"]
    wait_for(lambda: reads.task_counts(store.db, step_id)["running"] == 2, timeout=60,
             what="both tasks running")
    result = stepline(db_path, "check")
    assert result.returncode == 1, result.stderr
    found = result.stdout.splitlines()
    assert f"task fan_out #0 (job {job_id}) left running" in found
    assert f"step fan_out (job {job_id}) left running" in found
    assert result.stderr.strip().splitlines()[-1] == (
        "1 worker is running: use `stepline check --live` while they work")
    live = stepline(db_path, "check", "--live")
    assert (live.returncode, live.stdout, live.stderr) == (0, "", "ok\n")


@pytest.mark.one_backend
@pytest.mark.parametrize("command", ["jobs", "worker", "migrate"])
def test_a_url_that_does_not_parse_is_one_line_without_the_password(command):
    """A `%` typed as is in the password: libpq's own message quotes the
    token it choked on, the password; ours says what to do instead."""
    pytest.importorskip("psycopg")
    result = stepline("postgresql://stepline:pa%ss@127.0.0.1:1/stepline", command, timeout=60)
    assert result.returncode == 2
    assert "pa%ss" not in result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "stepline: database postgresql://stepline:***@127.0.0.1:1/stepline: not a valid"
        " PostgreSQL URL (percent-encode special characters of the user and password:"
        " %25 for %, %40 for @)"]


@pytest.mark.parametrize("command", ["logs", "tasks", "cancel"])
def test_an_argument_that_is_not_utf8_is_one_line(db_path, command):
    """New-user trial: `stepline logs "$(printf '\\377')"` printed a traceback on
    SQLite (the id could not be bound). Both backends: one line, exit 2."""
    result = stepline(db_path, command, "\udcff")  # the byte 0xff, as Python gets it
    assert result.returncode == 2, result.stderr
    assert result.stderr == "stepline: job '\\udcff' is not UTF-8 text\n"
