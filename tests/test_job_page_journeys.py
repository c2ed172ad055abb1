"""What a person sees on a job page, in Chromium: a failed step's task table
(page through it, keep only the failures, read why each one failed); the
table of a running step changing by itself; the step timeline growing while
the job runs."""

import time

import pytest

from .conftest import wait_for
from .test_browser import OUTPUT, browser, page, server  # noqa: F401 - fixtures
from .test_journeys import job_status

DEF = "task_failures"  # tests/browser_defs: every third of `items` tasks fails


def error_of(i: int) -> str:
    """What tests.step_functions.flaky_tasks raises for task i, as stored."""
    return f"ValueError: row {i} has <b>no</b> id & cannot be parsed\n  in chunk {i // 10}"


def run_job(page, server, **params) -> str:
    page.goto(f"{server.url}/definitions/{DEF}")
    for name, value in params.items():
        page.fill(f"#run-{DEF} input[name='param.{name}']", str(value))
    page.click(f"#run-{DEF} button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs/*")
    return page.url.rsplit("/", 1)[1]


def step_row(page, name: str):
    return page.locator("tr.step-row", has=page.locator(f"td.name:has-text('{name} python')"))


def test_read_why_each_task_of_a_failed_step_failed(page, server, start_worker):
    start_worker()
    job_id = run_job(page, server, pause=0.05)
    wait_for(lambda: job_status(server, job_id) == "failed", 60, what="the job to fail")
    page.locator(".job-header[data-status=failed]").wait_for()
    fan = step_row(page, "fan")
    fan.locator(".toggle").click()  # the log, as before
    page.locator(".log-panel").wait_for()

    fan.locator(".tasks-toggle").click()
    table = page.locator(".task-table")
    table.wait_for()
    assert table.locator(".task-range").inner_text() == "1–50 of 60 tasks"
    assert table.locator("tbody tr").count() == 50
    first = table.locator("tbody tr").first
    assert first.locator("td").nth(0).inner_text() == "#0"
    assert "failed" in first.locator(".badge").inner_text()
    assert first.locator("td").nth(2).inner_text() == "1"  # attempts
    assert first.locator(".worker").inner_text().strip() != ""  # the worker that ran it

    table.locator("button.task-next").click()
    wait_for(lambda: table.locator(".task-range").inner_text() == "51–60 of 60 tasks", 10,
             what="the second page")
    assert table.locator("tbody tr").count() == 10

    table.locator("input[name=status]").check()  # failed only
    wait_for(lambda: table.locator(".task-range").inner_text() == "1–20 of 20 failed tasks",
             10, what="the failed tasks")
    rows = table.locator("tbody tr")
    assert rows.count() == 20
    assert set(rows.evaluate_all("rs => rs.map(r => r.dataset.status)")) == {"failed"}
    # each error in full, markup shown as text
    assert rows.locator("pre.error").all_inner_texts() == [error_of(i) for i in range(0, 60, 3)]
    assert page.locator(".task-table b").count() == 0
    page.wait_for_timeout(2000)  # look again: still the failures, still ticked
    assert table.locator("input[name=status]").is_checked()
    assert rows.count() == 20
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "job-page-failed-tasks.png"), full_page=True)

    fan.locator(".tasks-toggle").click()  # closed: gone from the page
    assert page.locator(".task-table").count() == 0


@pytest.mark.parametrize("load", ["idle", "cpu_saturated"])
def test_an_open_task_table_follows_the_running_step(page, server, start_worker, request,
                                                    load):
    if load == "cpu_saturated":
        request.getfixturevalue("cpu_saturated")
    start_worker()
    job_id = run_job(page, server, items=24, pause=0.8)  # 4 at a time: ~5 s
    fan = step_row(page, "fan")
    fan.locator(".tasks-toggle").wait_for(timeout=30_000)  # once it has tasks
    page.evaluate("window.__same_page = true")
    fan.locator(".tasks-toggle").click()
    table = page.locator(".task-table")
    table.wait_for()
    statuses = lambda: table.locator("tbody tr").evaluate_all(  # noqa: E731
        "rs => rs.map(r => r.dataset.status)")
    wait_for(lambda: "running" in statuses(), 30, what="a running task in the table")
    # closed, it costs nothing: no fetch while tasks keep changing
    fan.locator(".tasks-toggle").click()
    fetched = []  # from the moment it is closed (a fetch under way may still answer)
    page.on("request", lambda r: "/tasks" in r.url and fetched.append(r.url))
    page.wait_for_timeout(1500)
    assert page.locator(".task-table").count() == 0 and fetched == []
    assert job_status(server, job_id) == "running"
    fan.locator(".tasks-toggle").click()  # and open again
    table.wait_for()
    # nothing clicked: the table changes by itself until every task is done
    wait_for(lambda: statuses().count("failed") == 8 and statuses().count("completed") == 16,
             60, what="every task finished in the open table")
    assert table.locator(".task-range").inner_text() == "1–24 of 24 tasks"
    assert "8 failed" in fan.locator("td.tasks").inner_text()
    assert page.evaluate("window.__same_page") is True  # no reload
    wait_for(lambda: job_status(server, job_id) == "failed", 60, what="the job")


def bars(page) -> dict[str, str]:
    return dict(page.locator("svg.timeline g.span").evaluate_all(
        "gs => gs.map(g => [g.dataset.step, g.getAttribute('class').split('status-')[1]])"))


@pytest.mark.parametrize("load", ["idle", "cpu_saturated", "sse"])
def test_the_timeline_grows_while_the_job_runs(page, server, start_worker, request, load):
    """load "sse": idle, the page on the SSE fallback."""
    if load == "cpu_saturated":
        request.getfixturevalue("cpu_saturated")
    start_worker()
    page.goto(f"{server.url}/definitions/slow_pipeline")
    fetches = []
    page.on("request", lambda r: "/timeline" in r.url and fetches.append(time.monotonic()))
    page.click("#run-slow_pipeline button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    if load == "sse":
        page.goto(f"{page.url}?transport=sse")
        assert page.locator("#live[hx-sse\\:connect]").count() == 1
    opened = time.monotonic()
    page.evaluate("window.__same_page = true")
    wait_for(lambda: bars(page).get("prepare") == "running", 30, what="a bar for 'prepare'")
    assert "finish" not in bars(page)  # pending: no bar
    wait_for(lambda: bars(page).get("fan") == "running", 30, what="a bar for 'fan'")
    assert bars(page)["prepare"] == "completed"
    wait_for(lambda: bars(page) == dict.fromkeys(["prepare", "fan", "finish"], "completed"),
             60, what="every bar completed")
    assert job_status(server, job_id) == "completed"
    assert page.evaluate("window.__same_page") is True
    # each bar's title says its duration; the bars follow one another in time
    spans = page.locator("svg.timeline g.span")
    assert spans.locator("title").all_text_contents()[0].startswith("prepare · completed · ")
    xs = spans.locator("rect").evaluate_all("rs => rs.map(r => parseFloat(r.getAttribute('x')))")
    assert xs == sorted(xs) and xs[0] < xs[-1]
    # coalesced: live messages came many times a second, fetches at most ~1 a second
    elapsed = time.monotonic() - opened
    fetched = [t for t in fetches if t >= opened]
    assert 2 <= len(fetched) <= elapsed + 2, (len(fetched), elapsed)
    if load == "idle":
        OUTPUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT / "job-page-timeline.png"), full_page=True)


def seconds_of(text: str) -> float:
    """`350ms`, `4.2s`, `12s` (render.span) in seconds."""
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))


@pytest.mark.parametrize("load", ["idle", "cpu_saturated"])
def test_a_running_bar_grows_while_its_step_logs_nothing(page, server, start_worker, request,
                                                         load):
    """A step that prints nothing sends no live message, so nothing re-fetches
    the timeline: look at its running bar, look again 2 s later: its
    duration and the axis's end say 2 s more, and the bar still reaches the
    axis's end."""
    if load == "cpu_saturated":
        request.getfixturevalue("cpu_saturated")
    start_worker()
    page.goto(f"{server.url}/definitions/slow_pipeline")
    page.fill("#run-slow_pipeline input[name='param.pause']", "8")  # echo, 8 s of silence
    page.click("#run-slow_pipeline button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    wait_for(lambda: bars(page).get("prepare") == "running", 30, what="a bar for 'prepare'")
    page.route("**/timeline", lambda route: route.abort())  # silent: no fetch gets through
    bar = page.locator("svg.timeline g.span[data-step=prepare]")
    axis = page.locator("svg.timeline text.axis").last
    page.wait_for_timeout(1500)
    before = [seconds_of(bar.locator(".dur").text_content()), seconds_of(axis.text_content())]
    page.wait_for_timeout(2000)
    after = [seconds_of(bar.locator(".dur").text_content()), seconds_of(axis.text_content())]
    assert after[0] >= before[0] + 1.5 and after[1] >= before[1] + 1.5, (before, after)
    assert after[0] == pytest.approx(after[1], abs=1.5)  # the running bar spans the axis
    width = bar.locator("rect").evaluate(
        "r => r.getBoundingClientRect().width / r.ownerSVGElement.getBoundingClientRect().width")
    assert width > 0.95
    assert job_status(server, job_id) == "running"


def test_times_say_how_long_ago_and_stay_current(page, server, store):
    """Open the jobs list: the new job was created "just now", with the exact
    time and its timezone on hover; three minutes later, without a reload,
    it says "3 min ago". The browser words it as the server does."""
    from stepline.engine.definitions import load_file
    from stepline.web.render import ago

    from .test_browser import DEFS

    job_id = store.create_job(load_file(DEFS / "slow_pipeline.toml"), {})
    page.clock.install()
    page.goto(f"{server.url}/")
    created = page.locator(f"#job-{job_id} td.when time")
    assert created.inner_text() == "just now"
    title = created.get_attribute("title")
    assert title[:10] == created.get_attribute("datetime")[:10] and title.split()[-1].isalpha()
    page.clock.fast_forward("03:00")
    wait_for(lambda: created.inner_text() == "3 min ago", 10, what="the time to move on")
    for seconds in (3, 42, 61, 3599, 3601, 86399, 90000, 200000):
        assert page.evaluate("s => stepline.ago(s)", seconds) == ago(time.time() - seconds - .5)


CARRY_ON = """
name = "carry_on"
description = "A fan-out step fails, the job carries on past it (on_error = continue)."
[step.fan]
type = "python"
call = "tests.step_functions:flaky_tasks"
config = { items = 6 }
on_error = "continue"
[step.report]
type = "shell"
depends = ["fan"]
run = "echo reported"
"""


def test_a_job_completed_past_a_failed_step_says_so_everywhere(browser, live_server,
                                                              start_worker, tmp_path):
    """The list row, the job header and the definition's run history all mark
    a job that completed although a step failed; a clean run has no mark."""
    import os

    from .test_browser import DEFS

    (tmp_path / "carry_on.toml").write_text(CARRY_ON)
    server = live_server(env={"STEPLINE_DEFINITIONS": f"{DEFS}{os.pathsep}{tmp_path}"})
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    start_worker()
    page.goto(f"{server.url}/definitions/carry_on")
    page.click("#run-carry_on button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    header = page.locator(".job-header[data-status=completed]")
    header.wait_for(timeout=60_000)
    assert header.locator(".with-failures").inner_text() == "1 failed step"
    meaning = header.locator(".with-failures").get_attribute("title")  # on hover
    assert step_row(page, "fan").get_attribute("data-status") == "failed"

    page.goto(f"{server.url}/")
    row = page.locator(f"#job-{job_id}")
    assert row.get_attribute("data-status") == "completed"
    assert row.locator(".with-failures").inner_text() == "1 failed step"
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "jobs-list-failed-steps.png"))

    page.goto(f"{server.url}/definitions/carry_on")
    bar = page.locator(f"svg.history a.bar[data-job='{job_id}']")
    assert "with-failures" in bar.get_attribute("class")
    assert bar.locator("rect.failures").count() == 1
    assert "completed, 1 failed step" in bar.locator("title").text_content()
    assert meaning == "completed, but steps with on_error = continue failed"
    assert meaning in page.locator(".run-history .legend").inner_text()  # the same words
    page.screenshot(path=str(OUTPUT / "definition-page-failed-steps.png"), full_page=True)
    page.context.close()


def test_the_task_table_on_a_390px_phone(browser, server, start_worker):
    """On a phone: the failed job's task table fits the screen (no sideways
    page scroll), its controls are finger-sized, and an error is readable."""
    from .test_journeys import PHONE, page_width

    page = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True).new_page()
    start_worker()
    job_id = run_job(page, server)
    wait_for(lambda: job_status(server, job_id) == "failed", 60, what="the job to fail")
    page.locator(".job-header[data-status=failed]").wait_for()
    toggle = step_row(page, "fan").locator(".tasks-toggle")
    toggle.tap()
    table = page.locator(".task-table")
    table.wait_for()
    table.locator("input[name=status]").tap()
    wait_for(lambda: table.locator(".task-range").inner_text() == "1–20 of 20 failed tasks",
             10, what="the failed tasks")
    assert page_width(page) <= PHONE["width"]
    for control in (toggle, table.locator("label.opt"), table.locator("button.task-next")
                    if table.locator("button.task-next").count() else toggle):
        box = control.bounding_box()
        assert box["height"] >= 32 and box["width"] >= 32, control
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    error = table.locator("pre.error").first
    box = error.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    assert error.inner_text() == error_of(0)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "job-page-390px-tasks.png"), full_page=True)
    page.context.close()


@pytest.mark.parametrize("load", ["idle", "cpu_saturated"])
def test_the_page_and_filter_chosen_stay_while_the_table_refreshes(page, server,
                                                                   start_worker, request,
                                                                   load):
    """While tasks keep changing: click "next", look 2 s later: still the
    second page; tick "failed only", look 2 s later: still only failures,
    and more of them as they fail."""
    if load == "cpu_saturated":
        request.getfixturevalue("cpu_saturated")
    start_worker()
    job_id = run_job(page, server, items=120, pause=0.25)  # 4 at a time: ~8 s
    fan = step_row(page, "fan")
    fan.locator(".tasks-toggle").wait_for(timeout=30_000)
    fan.locator(".tasks-toggle").click()
    table = page.locator(".task-table")
    table.locator("button.task-next").click()
    wait_for(lambda: table.locator(".task-range").inner_text() == "51–100 of 120 tasks", 10,
             what="the second page")
    page.wait_for_timeout(2000)
    assert job_status(server, job_id) == "running"  # tasks changed meanwhile
    assert table.locator(".task-range").inner_text() == "51–100 of 120 tasks"
    assert table.locator("tbody td").first.inner_text() == "#50"

    table.locator("input[name=status]").check()
    page.wait_for_timeout(2000)
    assert table.locator("input[name=status]").is_checked()
    wait_for(lambda: job_status(server, job_id) == "failed", 60, what="the job")
    wait_for(lambda: table.locator(".task-range").inner_text() == "1–40 of 40 failed tasks",
             15, what="all 40 failures in the filtered table")
    page.wait_for_timeout(2000)  # look again: the refreshes after the end changed nothing
    assert table.locator(".task-range").inner_text() == "1–40 of 40 failed tasks"
    assert set(table.locator("tbody tr").evaluate_all("rs => rs.map(r => r.dataset.status)")
               ) == {"failed"}


def test_a_closed_task_table_stays_closed_while_tasks_change(page, server, start_worker):
    """Open and close the table of a busy step: closed, it stays closed, also
    when a refresh was on its way as the person clicked (the click is made
    the moment a refresh is sent, which a person does by bad luck)."""
    start_worker()
    job_id = run_job(page, server, items=200, pause=0.2)  # ~20 task changes a second
    fan = step_row(page, "fan")
    toggle = fan.locator(".tasks-toggle")
    toggle.wait_for(timeout=30_000)
    for _ in range(3):
        toggle.click()
        page.locator(".task-table").wait_for()
        page.wait_for_timeout(300)
        toggle.click()
        page.wait_for_timeout(500)
        assert page.locator(".task-table").count() == 0

    toggle.click()
    page.locator(".task-table").wait_for()
    page.evaluate("""id => document.addEventListener("htmx:before:request", (e) => {
        if (!e.detail.ctx.sourceElement.dataset.refresh || window.__closed) return;
        window.__closed = true;
        setTimeout(() => document.getElementById(id).click());  // the fetch is under way
    })""", toggle.get_attribute("id"))
    wait_for(lambda: page.evaluate("window.__closed"), 10, what="a refresh")
    page.wait_for_timeout(1000)
    assert page.locator(".task-table").count() == 0
    assert job_status(server, job_id) == "running"  # it was busy throughout
