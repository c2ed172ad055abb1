"""What a person sees of a fan-out step run by several workers, in Chromium:
the task table says which worker ran each task (#12)."""

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
