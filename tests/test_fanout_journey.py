"""What a person sees of a fan-out step run by several workers, in Chromium:
the task table says which worker ran each task (#12); a step waiting
for a task slot says so."""

import pytest

from .conftest import wait_for
from .test_browser import browser, page, server  # noqa: F401 - fixtures
from .test_journeys import job_status

DEF = "spread_tasks"  # tests/browser_defs: a generate step, 0.4 s a task


def test_the_task_table_shows_the_tasks_spread_over_two_workers(page, server, start_worker):
    workers = [start_worker(), start_worker()]
    for worker in workers:
        worker.wait_started()
    page.goto(f"{server.url}/definitions/{DEF}")
    page.fill(f"#run-{DEF} input[name='param.tasks']", "")
    page.type(f"#run-{DEF} input[name='param.tasks']", "48")  # one page of the table
    page.click(f"#run-{DEF} button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    fan = page.locator("tr.step-row", has=page.locator("td.name:has-text('fan generate')"))
    fan.locator(".tasks-toggle").wait_for(timeout=30_000)  # once it has tasks
    fan.locator(".tasks-toggle").click()
    table = page.locator(".task-table")
    table.wait_for()
    page.wait_for_timeout(2000)  # look again 2 s later: tasks are running or done
    statuses = lambda: table.locator("tbody tr").evaluate_all(  # noqa: E731
        "rs => rs.map(r => r.dataset.status)")
    assert set(statuses()) & {"running", "completed"}
    # nothing clicked: the open table follows the step to its end
    wait_for(lambda: statuses() == ["completed"] * 48, 60, what="all 48 tasks completed")
    assert table.locator(".task-range").inner_text() == "1–48 of 48 tasks"
    shown = table.locator(".worker").all_inner_texts()
    ran_on = {name.strip() for name in shown}
    assert len(shown) == 48 and "" not in ran_on
    assert len(ran_on) == 2, ran_on  # both workers took a share, and each says so
    wait_for(lambda: job_status(server, job_id) == "completed", 30, what="the job")
    page.locator(".job-header[data-status=completed]").wait_for()


@pytest.mark.parametrize("cpu", ["idle", "saturated"])
def test_cancel_a_running_fan_out_and_see_its_cancelled_tasks_counted(page, server,
                                                                     start_worker, request, cpu):
    """Review: a cancelled fan-out's open tasks were counted nowhere, so its
    row showed nothing for them. A person runs 200 tasks (4 at a time, 0.4 s
    each: 20 s), cancels once some are done, and looking 2 s later reads "N
    cancelled" beside the completed ones, N being the tasks that never ran."""
    if cpu == "saturated":
        request.getfixturevalue("cpu_saturated")
    start_worker("--task-slots", "4").wait_started()
    page.goto(f"{server.url}/definitions/{DEF}")
    page.fill(f"#run-{DEF} input[name='param.tasks']", "")
    page.type(f"#run-{DEF} input[name='param.tasks']", "200")
    page.click(f"#run-{DEF} button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs/*")
    fan = page.locator("tr.step-row", has=page.locator("td.name:has-text('fan generate')"))
    fan.locator(".tc-completed:not(:text-is('0 completed'))").wait_for(timeout=30_000)
    page.on("dialog", lambda dialog: dialog.accept())  # "Cancel this job?"
    page.click(".job-header button:text('Cancel')")
    page.wait_for_timeout(2000)
    page.locator(".job-header[data-status=cancelled]").wait_for(timeout=10_000)
    assert fan.get_attribute("data-status") == "cancelled"
    completed = int(fan.locator(".tc-completed").inner_text().split()[0])
    cancelled = fan.locator(".tc-cancelled").inner_text()
    assert 0 < completed < 200
    assert cancelled == f"{200 - completed} cancelled", (completed, cancelled)
    assert "0 pending" in fan.locator("td.tasks").inner_text()


HOLD_SLOTS = """
[step.hold]
type = "generate"
tasks = 2
logs_per_task = 150
log_delay_ms = 100
"""  # two 15 s tasks: both slots of a `--task-slots 2` worker
WAITING = '[step.fan]\ntype = "generate"\ntasks = 10\nlogs_per_task = 1\n'


@pytest.mark.parametrize("cpu", ["idle", "saturated"])
def test_a_fan_out_waiting_for_a_task_slot_says_so(page, server, store, start_worker,
                                                   request, cpu):
    """New-user trial: a fan-out step "running" with "40 pending, 0 running"
    and "no lines yet" for a minute, as another job's tasks held every slot.
    Its row now says why, and stops saying it once its tasks run."""
    from stepline.store import reads

    from .conftest import make_definition

    if cpu == "saturated":
        request.getfixturevalue("cpu_saturated")
    start_worker("--task-slots", "2").wait_started()
    holder = store.create_job(make_definition(HOLD_SLOTS), {})
    held = reads.job_steps(store.db, holder)[0]["id"]
    wait_for(lambda: reads.task_counts(store.db, held)["running"] == 2, 60,
             what="both slots taken")
    job_id = store.create_job(make_definition(WAITING), {})
    page.goto(f"{server.url}/jobs/{job_id}")
    tasks = page.locator("tr.step-row td.tasks")
    wait_for(lambda: "10 pending — waiting for a free task slot" in tasks.inner_text(), 30,
             what="the step saying it waits")
    assert reads.task_counts(store.db, held)["running"] == 2  # it does wait
    wait_for(lambda: job_status(server, job_id) == "completed", 90, what="the job")
    page.locator(".job-header[data-status=completed]").wait_for(timeout=10_000)
    assert "10 completed" in tasks.inner_text() and "waiting" not in tasks.inner_text()
