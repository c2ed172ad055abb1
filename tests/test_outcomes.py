"""What a finished job says about its steps: a cancel runs the cleanup and
leaves never-started steps quietly cancelled, a step whose tasks failed never
reports success, and a job that carried on past a failure says so."""

from stepline.store import reads

from .conftest import log_messages, make_definition, steps_by_name, wait_for, wait_job

CANCEL_WITH_CLEANUP = """
[step.long]
type = "shell"
run = "echo working; sleep 60"
[step.after]
type = "shell"
run = "echo never"
depends = ["long"]
[step.cleanup]
type = "shell"
run = "echo cleaning up"
depends = ["long"]
always_run = true
"""


def test_cancel_runs_the_cleanup_and_quietly_cancels_what_never_started(store, start_worker):
    job_id = store.create_job(make_definition(CANCEL_WITH_CLEANUP), {})
    start_worker()
    wait_for(lambda: steps_by_name(store, job_id)["long"]["status"] == "running",
             what="the long step")
    store.request_cancel(job_id)
    job = wait_job(store, job_id)
    steps = steps_by_name(store, job_id)
    assert job["status"] == "cancelled" and job["error"] == "cancelled by user"
    assert (steps["long"]["status"], steps["long"]["error"]) == ("cancelled", "cancelled by user")
    assert (steps["after"]["status"], steps["after"]["error"]) == ("cancelled", None)
    assert steps["cleanup"]["status"] == "completed"
    assert "cleaning up" in log_messages(store, steps["cleanup"]["id"])
    listed = reads.get_job(store.db, job_id)
    assert (listed["steps_done"], listed["steps_total"]) == (1, 3)  # only cleanup ran to its end


def test_a_step_whose_tasks_failed_never_reports_success(store, start_worker):
    job_id = store.create_job(make_definition("""
[step.fan]
type = "python"
call = "tests.step_functions:tolerate_failures"
on_error = "continue"
[step.next]
type = "shell"
run = "echo next"
depends = ["fan"]
"""), {})
    start_worker()
    job = wait_job(store, job_id)
    steps = steps_by_name(store, job_id)
    assert (steps["fan"]["status"], steps["fan"]["error"]) == ("failed", "1 of 4 tasks failed")
    assert "1 of 4 tasks failed" in log_messages(store, steps["fan"]["id"])
    # on_error = continue: the job completes, and says one step failed
    assert steps["next"]["status"] == "completed"
    assert job["status"] == "completed"
    assert reads.get_job(store.db, job_id)["steps_failed"] == 1
