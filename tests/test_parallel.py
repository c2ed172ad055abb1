"""Independent steps run at the same time, at most `max_parallel` of a job
at once, with real `stepline worker` processes. What ran when is read back
from the events table (every status change has its event, in seq order),
not from how long things took."""

import os
import signal

import pytest

from stepline.store import reads
from stepline.store.check import violations

from .conftest import log_messages, make_definition, steps_by_name, wait_for, wait_job


@pytest.fixture(params=["idle", "cpu_saturated"])
def load(request) -> str:
    """Each test once as is and once with every core busy: the scheduler's
    decisions must not depend on how fast its threads get the CPU."""
    if request.param == "cpu_saturated":
        request.getfixturevalue("cpu_saturated")
    return request.param


def status_history(store, job_id: str) -> list[dict[str, str]]:
    """After each step event, in seq order: every step's status by name."""
    names = {s["id"]: s["name"] for s in reads.job_steps(store.db, job_id)}
    now = dict.fromkeys(names.values(), "pending")
    history = []
    for event in reads.events_after(store.db, 0, 10**6, job_id=job_id):
        if event["step_id"]:
            now[names[event["step_id"]]] = event["status"]
            history.append(dict(now))
    return history


def most_running(store, job_id: str) -> int:
    return max(list(h.values()).count("running") for h in status_history(store, job_id))


def first_seq(store, job_id: str, step: str, status: str) -> int:
    step_id = steps_by_name(store, job_id)[step]["id"]
    return next(e["seq"] for e in reads.events_after(store.db, 0, 10**6, job_id=job_id)
                if e["step_id"] == step_id and e["status"] == status)


def test_two_independent_steps_overlap(store, start_worker, load):
    job_id = store.create_job(make_definition("""
[step.left]
type = "sleep"
seconds = 2
[step.right]
type = "sleep"
seconds = 2
"""), {})
    start_worker()
    assert wait_job(store, job_id, timeout=60)["status"] == "completed"
    steps = steps_by_name(store, job_id)
    left, right = steps["left"], steps["right"]
    assert left["started"] < right["finished"] and right["started"] < left["finished"]
    assert {"left": "running", "right": "running"} in status_history(store, job_id)
    assert violations(store.db) == []


def test_max_parallel_is_never_exceeded(store, start_worker, load):
    steps = "".join(f'[step.s{n}]\ntype = "sleep"\nseconds = 1\n' for n in range(3))
    job_id = store.create_job(make_definition("max_parallel = 2\n" + steps), {})
    start_worker()
    assert wait_job(store, job_id, timeout=60)["status"] == "completed"
    assert most_running(store, job_id) == 2  # two at once, and never the third beside them
    # the third started only once a slot was free
    freed = min(first_seq(store, job_id, name, "completed") for name in ("s0", "s1"))
    assert first_seq(store, job_id, "s2", "running") > freed


def test_cancel_stops_every_running_step_and_the_cleanups_still_run(
        store, start_worker, load):
    job_id = store.create_job(make_definition("""
[step.a]
type = "shell"
run = "echo a; sleep 60"
[step.b]
type = "shell"
run = "echo b; sleep 60"
[step.sweep]
type = "python"
call = "tests.step_functions:wait_for_step"
config = { step = "a", status = "cancelled" }
always_run = true
[step.after]
type = "shell"
run = "echo never"
depends = ["a"]
[step.cleanup]
type = "shell"
run = "echo cleaning up"
depends = ["a", "b"]
always_run = true
"""), {})
    start_worker()
    wait_for(lambda: all(steps_by_name(store, job_id)[n]["status"] == "running"
                         for n in ("a", "b", "sweep")), timeout=60, what="a, b and sweep")
    store.request_cancel(job_id)
    job = wait_job(store, job_id, timeout=60)
    steps = steps_by_name(store, job_id)
    assert (job["status"], job["error"]) == ("cancelled", "cancelled by user")
    for name in ("a", "b"):
        assert (steps[name]["status"], steps[name]["error"]) == ("cancelled", "cancelled by user")
    assert (steps["after"]["status"], steps["after"]["error"]) == ("cancelled", None)
    # an always_run step running at the cancel runs to its end...
    assert steps["sweep"]["status"] == "completed"
    assert log_messages(store, steps["sweep"]["id"]) == ["a is cancelled"]
    # ...and one that waits for cancelled steps starts once they have ended
    assert steps["cleanup"]["status"] == "completed"
    assert first_seq(store, job_id, "cleanup", "running") > max(
        first_seq(store, job_id, name, "cancelled") for name in ("a", "b"))
    assert violations(store.db) == []


def test_a_failed_branch_skips_only_its_own_dependents(store, start_worker, load):
    job_id = store.create_job(make_definition("""
[step.root]
type = "shell"
run = "echo root"
[step.bad]
type = "shell"
run = "exit 3"
depends = ["root"]
[step.bad_child]
type = "shell"
run = "echo never"
depends = ["bad"]
[step.good]
type = "python"
call = "tests.step_functions:wait_for_step"
config = { step = "bad_child", status = "skipped" }
depends = ["root"]
[step.good_child]
type = "shell"
run = "echo good"
depends = ["good"]
[step.soft]
type = "shell"
run = "exit 1"
on_error = "continue"
depends = ["root"]
[step.soft_child]
type = "shell"
run = "echo after soft"
depends = ["soft"]
"""), {})
    start_worker()
    job = wait_job(store, job_id, timeout=60)
    status = {name: s["status"] for name, s in steps_by_name(store, job_id).items()}
    assert status == {"root": "completed", "bad": "failed", "bad_child": "skipped",
                      "good": "completed", "good_child": "completed", "soft": "failed",
                      "soft_child": "completed"}
    assert steps_by_name(store, job_id)["bad_child"]["error"] == "dependency 'bad' failed"
    assert (job["status"], job["error"]) == ("failed", "step 'bad' failed")
    # the skip did not wait for the other branch: `good` runs until it sees
    # bad_child skipped, so it could only complete after the skip (a skip
    # held back until `good` ended would have timed `good` out instead).
    # Whether `good` went running before or after the skip is up to the threads.
    skipped = first_seq(store, job_id, "bad_child", "skipped")
    assert skipped < first_seq(store, job_id, "good", "completed")
    assert "bad_child is skipped" in log_messages(store, steps_by_name(store, job_id)["good"]["id"])
    assert violations(store.db) == []


def test_a_job_timeout_stops_every_running_step(store, start_worker):
    job_id = store.create_job(make_definition("""
timeout = "2s"
[step.a]
type = "shell"
run = "sleep 30"
[step.b]
type = "shell"
run = "sleep 30"
[step.c]
type = "shell"
run = "echo never"
depends = ["a"]
"""), {})
    start_worker()
    job = wait_job(store, job_id, timeout=60)
    steps = steps_by_name(store, job_id)
    assert (job["status"], job["error"]) == ("failed", "job timed out after 2s")
    for name in ("a", "b"):
        assert (steps[name]["status"], steps[name]["error"]) == (
            "failed", "job timed out after 2s")
    assert steps["c"]["status"] == "cancelled"
    assert most_running(store, job_id) == 2


def stuck_and_retried(flag) -> str:
    """Two steps a worker leaves running: `stuck` (no retries) sleeps; `retried`
    (retries = 1) touches `flag` and sleeps the first time, ends the second."""
    return f"""
[step.stuck]
type = "shell"
run = "sleep 60"
[step.retried]
type = "shell"
run = '''if [ -e {flag} ]; then echo second run; else touch {flag}; sleep 60; fi'''
retries = 1
"""


def test_kill_9_while_two_steps_run_resumes_the_job(store, start_worker, tmp_path):
    """The job resumes with some steps done and some pending: the step
    without retries fails, the one with retries runs again, and each
    dependent goes its way."""
    flag = tmp_path / "flag"
    job_id = store.create_job(make_definition(f"""
[step.quick]
type = "shell"
run = "echo quick"
{stuck_and_retried(flag)}[step.after_retried]
type = "shell"
run = "echo after retried"
depends = ["retried"]
[step.after_stuck]
type = "shell"
run = "echo never"
depends = ["stuck"]
[step.cleanup]
type = "shell"
run = "echo cleanup"
depends = ["stuck", "retried"]
always_run = true
"""), {})
    victim = start_worker()
    wait_for(lambda: flag.exists() and steps_by_name(store, job_id)["quick"]["status"]
             == "completed" and steps_by_name(store, job_id)["stuck"]["status"] == "running",
             timeout=60, what="quick done, stuck and retried running")
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    start_worker()  # recovers the dead worker's job as it starts
    job = wait_job(store, job_id, timeout=60)
    steps = steps_by_name(store, job_id)
    status = {name: s["status"] for name, s in steps.items()}
    assert status == {"quick": "completed", "stuck": "failed", "retried": "completed",
                      "after_retried": "completed", "after_stuck": "skipped",
                      "cleanup": "completed"}
    assert steps["stuck"]["error"].startswith("interrupted: worker ")
    assert "second run" in log_messages(store, steps["retried"]["id"])
    assert job["status"] == "failed"
    assert violations(store.db) == []


def test_sigterm_while_two_steps_run_hands_both_back(store, start_worker, tmp_path):
    """A worker told to stop hands its running steps back: both run again on
    the next worker, with or without retries, and neither is charged an
    attempt (a clean shutdown is not the step's failure; kill -9 above is)."""
    flag = tmp_path / "flag"
    job_id = store.create_job(make_definition(stuck_and_retried(flag)), {})
    worker = start_worker()
    wait_for(lambda: flag.exists() and steps_by_name(store, job_id)["stuck"]["status"]
             == "running", timeout=60, what="stuck and retried running")
    worker.stop(signal.SIGTERM, timeout=30)
    assert worker.proc.returncode == 0
    assert reads.get_job(store.db, job_id)["status"] == "pending"
    steps = steps_by_name(store, job_id)
    assert {(s["status"], s["attempts"], s["error"]) for s in steps.values()} == {
        ("pending", 0, None)}
    start_worker()
    wait_for(lambda: steps_by_name(store, job_id)["retried"]["status"] == "completed"
             and steps_by_name(store, job_id)["stuck"]["status"] == "running",
             timeout=60, what="retried done and stuck running again")
    assert "second run" in log_messages(store, steps["retried"]["id"])
    assert steps_by_name(store, job_id)["retried"]["attempts"] == 0
    store.request_cancel(job_id)  # `stuck` would sleep its 60 s again
    assert wait_job(store, job_id, timeout=60)["status"] == "cancelled"
    assert violations(store.db) == []


def test_a_step_deaf_to_stop_does_not_keep_a_stopped_worker_alive(store, start_worker):
    """SIGTERM: the worker waits a while for its steps (10 s), then leaves the
    ones that ignore it to recovery and exits, instead of waiting the step's
    120 s. The step threads must not hold the process open."""
    job_id = store.create_job(make_definition("""
[step.deaf]
type = "python"
call = "tests.step_functions:deaf"
[step.other]
type = "python"
call = "tests.step_functions:wait_until_cancelled"
"""), {})
    worker = start_worker()
    wait_for(lambda: all(s["status"] == "running"
                         for s in steps_by_name(store, job_id).values()),
             timeout=60, what="both steps running")
    worker.stop(signal.SIGTERM, timeout=60)  # TimeoutExpired if it waits for `deaf`
    steps = steps_by_name(store, job_id)
    assert steps["deaf"]["status"] == "failed"
    assert steps["deaf"]["error"].startswith("interrupted: worker ")
    assert reads.get_job(store.db, job_id)["status"] == "pending"  # for the next worker
