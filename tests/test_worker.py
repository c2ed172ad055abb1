"""The runner, end to end, with real `stepline worker` processes."""

import json
import os
import signal
import threading
import time

import pytest

from stepline.store import reads
from stepline.store.check import violations
from stepline.store.writes import Store, storable_text

from .conftest import (
    log_messages,
    make_definition,
    stepline,
    steps_by_name,
    wait_for,
    wait_job,
)


def run(store, start_worker, toml: str, params: dict | None = None, timeout: float = 30):
    definition = make_definition(toml)
    job_id = store.create_job(definition, params or dict(definition.params))
    start_worker()
    return job_id, wait_job(store, job_id, timeout)


def test_shell_step_streams_stdout_and_stderr_and_keeps_bad_bytes(store, start_worker):
    job_id, job = run(store, start_worker, r"""
[step.out]
type = "shell"
run = 'echo hello; echo oops >&2; printf "bad \377 byte\n"; printf "no newline"'

""")
    assert job["status"] == "completed"
    step = steps_by_name(store, job_id)["out"]
    rows = reads.log_lines(store.db, step["id"])
    by_message = {r["message"]: r["level"] for r in rows}
    assert by_message["hello"] == "info"
    assert by_message["oops"] == "warn"
    assert by_message["bad \ufffd byte"] == "info"
    assert by_message["no newline"] == "info"
    assert step["log_count"] == 4


def test_exit_code_fails_step_and_job_and_skips_dependents(store, start_worker):
    job_id, job = run(store, start_worker, """
[step.build]
type = "shell"
run = "echo building; exit 3"
[step.deploy]
type = "shell"
run = "echo deploying"
depends = ["build"]
[step.notify]
type = "shell"
run = "echo notified"
depends = ["deploy"]
always_run = true
[step.independent]
type = "shell"
run = "echo still runs"
""")
    steps = steps_by_name(store, job_id)
    assert steps["build"]["status"] == "failed"
    assert "exited with code 3" in steps["build"]["error"]
    assert steps["deploy"]["status"] == "skipped"
    assert "dependency 'build' failed" in steps["deploy"]["error"]
    assert steps["notify"]["status"] == "completed"  # always_run
    assert steps["independent"]["status"] == "completed"
    assert job["status"] == "failed" and "build" in job["error"]
    assert violations(store.db) == []


def test_on_error_continue_lets_the_job_complete(store, start_worker):
    job_id, job = run(store, start_worker, """
[step.flaky]
type = "python"
call = "tests.step_functions:boom"
on_error = "continue"
[step.after]
type = "shell"
run = "echo after"
depends = ["flaky"]
""")
    steps = steps_by_name(store, job_id)
    assert steps["flaky"]["status"] == "failed"
    assert steps["flaky"]["error"] == "something broke"
    flaky_log = log_messages(store, steps["flaky"]["id"])
    assert any("ValueError: something broke" in m for m in flaky_log)
    assert steps["after"]["status"] == "completed"
    assert job["status"] == "completed"


def test_param_cannot_inject_a_command(store, start_worker, tmp_path):
    target = tmp_path / "pwned"
    job_id, job = run(store, start_worker, """
[params]
name = "x"
[step.greet]
type = "shell"
run = "echo hello {params.name}; echo env $STEPLINE_PARAM_NAME"
""", params={"name": f"x; touch {target}; $(touch {target})"})
    assert job["status"] == "completed"
    assert not target.exists()
    messages = log_messages(store, steps_by_name(store, job_id)["greet"]["id"])
    assert messages[0] == f"hello x; touch {target}; $(touch {target})"


@pytest.mark.parametrize("command", [
    # second trial: each loaded and ran a value's command (the scan misread them)
    'echo "$(case {params.lang} in fr) echo "Bonjour {params.who}";; *) echo "Hi {params.who}";;'
    ' esac)"',
    "echo $'\\'' {params.who} '",
])
def test_a_value_cannot_run_where_the_definition_check_was_fooled(store, start_worker, tmp_path,
                                                                  command):
    target = tmp_path / "pwned"
    value = f"$(touch {target})`touch {target}`'\"\ntouch {target} #"
    job_id, job = run(store, start_worker, f"""
[params]
lang = "en"
who = "x"
[step.greet]
type = "shell"
run = {json.dumps(command)}
""", params={"lang": "en", "who": value})
    assert job["status"] in ("completed", "failed")
    assert not target.exists()


def test_a_true_false_param_reads_the_same_in_env_and_placeholders(store, start_worker):
    """Review: `env = { DRY = "{params.dry}" }` gave Python's False, while
    $STEPLINE_PARAM_DRY and the command gave false; and the step's env must
    not replace the param its placeholders read."""
    job_id, job = run(store, start_worker, """
[params]
dry = false
[step.show]
type = "shell"
run = "echo {params.dry} $STEPLINE_PARAM_DRY $DRY"
env = { DRY = "{params.dry}", STEPLINE_PARAM_DRY = "shadowed" }
""")
    assert job["status"] == "completed"
    assert log_messages(store, steps_by_name(store, job_id)["show"]["id"]) == [
        "false false false"]


def test_fan_out_counts_tasks_and_retries(store, start_worker):
    job_id, job = run(store, start_worker, """
[step.fan]
type = "python"
call = "tests.step_functions:fan_out"
config = { items = 30, fail_every = 7 }
retries = 1
""")
    assert job["status"] == "completed"
    step = steps_by_name(store, job_id)["fan"]
    assert step["tasks"] == {"pending": 0, "running": 0, "completed": 30, "failed": 0,
                             "cancelled": 0}
    assert (step["progress_done"], step["progress_total"]) == (30, 30)
    retried = list(store.db.query("SELECT attempts FROM tasks WHERE step_id = ? AND idx % 7 = 0",
                                  [step["id"]]))
    assert {r["attempts"] for r in retried} == {2}
    assert f"sum {sum(i * i for i in range(30))}" in log_messages(store, step["id"])


def test_generate_step_with_failures(store, start_worker):
    job_id, job = run(store, start_worker, """
[step.gen]
type = "generate"
tasks = 50
logs_per_task = 4
failure_rate = 0.3
seed = 1
""")
    step = steps_by_name(store, job_id)["gen"]
    assert step["status"] == "failed"
    assert step["tasks"]["failed"] > 0 and step["tasks"]["completed"] > 0
    assert step["tasks"]["failed"] + step["tasks"]["completed"] == 50
    assert "of 50 tasks failed" in step["error"]
    assert violations(store.db) == []


def test_hundred_threads_logging_into_one_step(store, start_worker):
    job_id, job = run(store, start_worker, """
[step.noisy]
type = "python"
call = "tests.step_functions:log_many"
config = { threads = 100, lines = 200 }
""")
    assert job["status"] == "completed"
    step = steps_by_name(store, job_id)["noisy"]
    rows = reads.log_lines(store.db, step["id"], limit=10**6)
    assert [r["line"] for r in rows] == list(range(1, 20_001))
    assert step["log_count"] == 20_000
    assert len({r["message"] for r in rows}) == 20_000
    # lines from one thread keep their order
    t7 = [r["message"] for r in rows if r["message"].startswith("t7 ")]
    assert t7 == [f"t7 n{n}" for n in range(200)]
    # batched: far fewer log_refresh events than lines
    refreshes = store.db.execute(
        "SELECT count(*) FROM events WHERE step_id = ? AND log_refresh = 1", [step["id"]]
    ).fetchone()[0]
    assert 1 <= refreshes < 200


def test_cancel_kills_the_process_group_within_two_seconds(store, start_worker, tmp_path):
    pidfile = tmp_path / "child.pid"
    definition = make_definition(f"""
[step.long]
type = "shell"
run = "sleep 60 & echo $! > {pidfile}; wait"
[step.later]
type = "shell"
run = "echo never"
depends = ["long"]
""")
    job_id = store.create_job(definition, {})
    start_worker()
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="child pid")
    child = int(pidfile.read_text())
    started = time.monotonic()
    assert store.request_cancel(job_id) == "cancelling"
    job = wait_job(store, job_id, timeout=5)
    assert time.monotonic() - started < 2.0
    assert job["status"] == "cancelled"
    steps = steps_by_name(store, job_id)
    assert steps["long"]["status"] == "cancelled"
    assert steps["later"]["status"] == "cancelled"
    wait_for(lambda: not _alive(child), timeout=2, what="grandchild to die")


def test_cancel_kills_a_group_that_ignores_term(store, start_worker, tmp_path):
    """The watchdog only signals (TERM, then KILL on a timer): a command
    deaf to TERM is still killed, its whole group with it."""
    pidfile = tmp_path / "child.pid"
    definition = make_definition(f"""
[step.deaf]
type = "shell"
run = "trap '' TERM; sleep 60 & echo $! > {pidfile}; wait; wait"
""")
    job_id = store.create_job(definition, {})
    start_worker()
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="child pid")
    child = int(pidfile.read_text())
    assert store.request_cancel(job_id) == "cancelling"
    job = wait_job(store, job_id, timeout=15)
    assert job["status"] == "cancelled"
    assert steps_by_name(store, job_id)["deaf"]["status"] == "cancelled"
    wait_for(lambda: not _alive(child), timeout=5, what="grandchild to die")


def test_output_held_by_a_background_process_neither_hangs_nor_loses_lines(
        store, start_worker, tmp_path):
    """The command exits while a process it started still holds stdout: the
    step ends (not 60 s later), with every line written before, and the
    leftover process is stopped."""
    pidfile, ready = tmp_path / "child.pid", tmp_path / "ready"
    job_id, job = run(store, start_worker, f"""
[step.main]
type = "shell"
run = "(echo from-background; touch {ready}; exec sleep 60) & echo $! > {pidfile}; \
while [ ! -e {ready} ]; do sleep 0.01; done; echo from-main"
""", timeout=30)
    assert job["status"] == "completed"
    step = steps_by_name(store, job_id)["main"]
    lines = log_messages(store, step["id"])
    assert {"from-background", "from-main"} <= set(lines)
    assert any("still hold its output" in line for line in lines)
    assert step["log_count"] == len(lines)
    wait_for(lambda: not _alive(int(pidfile.read_text())), timeout=5,
             what="the background process to be stopped")


def test_commit_watch_wakes_on_other_connections_commits_only(store):
    """The worker's watchdog and its fan-out steps wait on this for new
    jobs, tasks and cancel requests: a commit wakes every waiter of the
    process, which share one watch (on SQLite its connection never writes, so
    it sees every commit; PostgreSQL's ignores the process's own: see
    test_postgres)."""
    definition = make_definition('[step.a]\ntype = "shell"\nrun = "true"\n')
    watch, second = store.commit_watch(), store.commit_watch()
    try:
        assert watch.wait(0) is True  # the first call sees "a change": nothing seen yet
        assert second.wait(0) is True
        assert watch.wait(0.3) is False
        other = Store(store.path)  # another connection, as another process has
        threading.Timer(0.2, other.create_job, (definition, {})).start()
        assert watch.wait(30) is True
        assert second.wait(30) is True  # the same commit, for each waiter
        assert store.commits.waiter_count() == 2
    finally:
        watch.close()
        second.close()
    assert store.commits.waiter_count() == 0


def test_cancel_pending_job_is_immediate(store):
    job_id = store.create_job(make_definition('[step.a]\ntype = "shell"\nrun = "true"\n'), {})
    assert store.request_cancel(job_id) == "cancelled"
    job = reads.get_job(store.db, job_id)
    assert job["status"] == "cancelled"
    assert violations(store.db) == []


def test_step_and_job_timeouts(store, start_worker):
    job_id, job = run(store, start_worker, """
[step.slow]
type = "shell"
run = "sleep 30"
timeout = "500ms"
on_error = "continue"
[step.fine]
type = "shell"
run = "echo fine"
""")
    steps = steps_by_name(store, job_id)
    assert steps["slow"]["status"] == "failed"
    assert steps["slow"]["error"] == "step timed out after 0.5s"
    assert steps["fine"]["status"] == "completed"
    assert job["status"] == "completed"

    job_id, job = run(store, start_worker, """
timeout = "1s"
[step.slow]
type = "shell"
run = "sleep 30"
[step.next]
type = "shell"
run = "echo next"
depends = ["slow"]
""")
    steps = steps_by_name(store, job_id)
    assert job["status"] == "failed" and "timed out" in job["error"]
    assert steps["slow"]["status"] == "failed"
    assert steps["next"]["status"] == "cancelled"


def test_kill_9_leaves_nothing_running(store, start_worker):
    definition = make_definition("""
[step.first]
type = "shell"
run = "echo quick"
[step.stuck]
type = "shell"
run = "for i in $(seq 1 100); do echo line $i; sleep 0.05; done; sleep 60"
[step.cleanup]
type = "shell"
run = "echo cleanup"
depends = ["stuck"]
always_run = true
""")
    job_id = store.create_job(definition, {})
    victim = start_worker()
    stuck = steps_by_name(store, job_id)["stuck"]["id"]
    wait_for(lambda: reads.get_step(store.db, stuck)["log_count"] >= 100, what="log lines")
    committed = log_messages(store, stuck)
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    start_worker()  # a fresh worker recovers the dead one's work on start
    job = wait_job(store, job_id)
    steps = steps_by_name(store, job_id)
    error = "interrupted: worker "
    assert steps["stuck"]["status"] == "failed"
    assert steps["stuck"]["error"].startswith(error) and steps["stuck"]["error"].endswith("stopped")
    assert steps["first"]["status"] == "completed"
    assert steps["cleanup"]["status"] == "completed"
    assert job["status"] == "failed"
    after = log_messages(store, stuck)
    assert after[: len(committed)] == committed  # every committed line kept, once
    assert after[-1].startswith(error)
    assert violations(store.db) == []


def test_sigterm_stops_a_worker_whose_task_never_returns(store, db_path, start_worker):
    """The worker waited for its running tasks without bound on SIGTERM, and
    Python joins pool threads at exit: a task that never looks at its stop
    flag kept the worker alive for ever. DESIGN: it stops within 10 s."""
    job_id = store.create_job(make_definition("""
[step.stuck]
type = "python"
call = "tests.step_functions:spawn_a_task_that_never_stops"
"""), {})
    worker = start_worker()
    step_id = steps_by_name(store, job_id)["stuck"]["id"]
    wait_for(lambda: "looping for ever" in log_messages(store, step_id), what="the task running")
    asked = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    try:
        worker.proc.wait(timeout=30)
    finally:
        print(f"\nSIGTERM -> exit in {time.monotonic() - asked:.1f} s")
    assert time.monotonic() - asked < 10
    assert worker.proc.returncode == 0
    # what it held went back: the job waits for the next worker, nothing runs
    assert reads.get_job(store.db, job_id)["status"] == "pending"
    assert store.db.execute("SELECT count(*) FROM tasks WHERE status = 'running'"
                            ).fetchone()[0] == 0
    assert reads.get_step(store.db, step_id)["status"] != "running"
    assert violations(store.db) == []
    check = stepline(db_path, "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_retryable_step_is_requeued_after_a_crash(store, start_worker):
    definition = make_definition("""
[step.work]
type = "shell"
run = '''if [ -e $STEPLINE_PARAM_FLAG ]; then echo second run;
else touch $STEPLINE_PARAM_FLAG; sleep 60; fi'''
retries = 1
[params]
flag = ""
""")
    import tempfile
    flag = tempfile.mktemp()
    job_id = store.create_job(definition, {"flag": flag})
    victim = start_worker()
    wait_for(lambda: os.path.exists(flag), what="first attempt")
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    start_worker()
    job = wait_job(store, job_id)
    os.unlink(flag)
    assert job["status"] == "completed"
    step = steps_by_name(store, job_id)["work"]
    assert step["attempts"] == 1
    assert "second run" in log_messages(store, step["id"])
    assert violations(store.db) == []


def test_sigterm_hands_a_running_step_back_without_charging_an_attempt(
        store, start_worker, tmp_path):
    """Review: a clean shutdown (SIGTERM) charged the running step an attempt,
    so a step with retries = 0 failed "interrupted" instead of running again
    on the next worker. A kill -9 still charges one (the test above): a crash
    may be the step's own doing (see workers.recover)."""
    definition = make_definition("""
[step.work]
type = "shell"
run = '''if [ -e $STEPLINE_PARAM_FLAG ]; then echo second run;
else touch $STEPLINE_PARAM_FLAG; sleep 60; fi'''
[params]
flag = ""
""")
    flag = tmp_path / "first-run"
    job_id = store.create_job(definition, {"flag": str(flag)})
    leaving = start_worker()
    wait_for(flag.exists, what="first run")
    leaving.proc.send_signal(signal.SIGTERM)
    assert leaving.proc.wait(timeout=30) == 0
    step = steps_by_name(store, job_id)["work"]
    assert (step["status"], step["attempts"], step["error"]) == ("pending", 0, None)
    assert reads.get_job(store.db, job_id)["status"] == "pending"
    start_worker()
    job = wait_job(store, job_id)
    step = steps_by_name(store, job_id)["work"]
    assert job["status"] == "completed", job
    assert (step["status"], step["attempts"], step["error"]) == ("completed", 0, None)
    messages = log_messages(store, step["id"])
    assert any("shutting down" in m for m in messages) and "second run" in messages
    assert violations(store.db) == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_huge_lines_binary_and_invalid_utf8_lose_nothing_but_what_is_marked(
        store, start_worker, tmp_path):
    binary = tmp_path / "random.bin"
    binary.write_bytes(os.urandom(300_000) + b"\n")
    definition = make_definition(r"""
[params]
binary = "BINARY"
[step.shell]
type = "shell"
run = '''head -c 1048576 /dev/zero | tr '\0' a; echo; echo ok
cat "$STEPLINE_PARAM_BINARY"; printf 'bad \377\376 end\n'; echo last'''
[step.python]
type = "python"
call = "tests.step_functions:huge_lines"
""".replace("BINARY", str(binary)))
    job_id = store.create_job(definition, {})
    start_worker()
    assert wait_job(store, job_id)["status"] == "completed"
    steps = steps_by_name(store, job_id)
    shell = log_messages(store, steps["shell"]["id"])
    assert shell[0] == "a" * 65536
    assert shell[1] == "[line truncated: 983040 more bytes not shown]"
    assert shell[2] == "ok"
    assert shell[-2:] == ["bad \ufffd\ufffd end", "last"]
    expected = [storable_text(line.rstrip(b"\r").decode("utf-8", "replace"))
                for line in binary.read_bytes().split(b"\n")[:-1]]
    assert all(len(line) <= 65536 for line in expected)
    assert shell[3:-2] == expected  # every random line; NULs and bad bytes as U+FFFD
    python = log_messages(store, steps["python"]["id"])
    assert python == ["x" * 65536, "[line truncated: 983040 more characters not shown]",
                      "nul \ufffd inside, lone surrogate \ufffd, emoji \U0001f600", "after"]


def test_a_flood_of_lines_keeps_worker_memory_bounded(store, start_worker, soak):
    lines = 10_000_000 if soak else 1_000_000
    job_id = store.create_job(make_definition(f"""
[step.flood]
type = "python"
call = "tests.step_functions:flood"
config = {{ lines = {lines} }}
"""), {})
    started = time.monotonic()
    worker = start_worker()
    assert wait_job(store, job_id, timeout=900)["status"] == "completed"
    elapsed = time.monotonic() - started
    status = open(f"/proc/{worker.proc.pid}/status").read()
    peak_mb = int(status.split("VmHWM:")[1].split()[0]) / 1024
    step_id = steps_by_name(store, job_id)["flood"]["id"]
    count, top = store.db.execute("SELECT count(*), max(line) FROM logs WHERE step_id = ?",
                                  [step_id]).fetchone()
    assert count == top == lines
    last = store.db.execute("SELECT message FROM logs WHERE step_id = ? AND line = ?",
                            [step_id, lines]).fetchone()[0]
    assert last == f"flood {lines}"
    print(f"\n{lines:,} lines in {elapsed:.1f}s, worker peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 250  # the buffer holds at most 100,000 lines / 32 MB of text
