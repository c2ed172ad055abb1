"""Snapshots of every fragment in every status (syrupy). Ids and times are
fixed, so any change to the markup shows up as a reviewed snapshot diff."""

import re

import pytest

from app import create_app
from stepline.engine.states import JOB_STATUSES, Status
from stepline.web import render
from stepline.web.render import LogPage
from stepline.web.views import JobsFilters

pytestmark = pytest.mark.one_backend  # renders fixed dicts, reads no store

T0 = 1_700_000_000.0  # fixed clock for every timestamp and "now"


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setattr(render.time, "time", lambda: T0 + 125)
    monkeypatch.setenv("TZ", "UTC")
    render.time.tzset()
    app = create_app(str(tmp_path / "f.db"), token="")
    with app.test_request_context("/"):
        yield app


def job(status: str, **extra) -> dict:
    started = None if status == "pending" else T0 + 1
    finished = T0 + 61 if status in ("completed", "failed", "cancelled") else None
    return {"id": "job0001", "definition": "codebase_classify", "params": {"path": "/src"},
            "status": status, "error": "step 'code_map' failed" if status == "failed" else None,
            "created": T0, "started": started, "finished": finished, "version": 3,
            "steps_total": 4, "steps_done": 2, "cancel_requested": 0, "rerun_of": None,
            "tasks": {"pending": 3, "running": 1, "completed": 40, "failed": 2, "cancelled": 0},
            **extra}


def step(status: str, **extra) -> dict:
    started = None if status in ("pending", "skipped") else T0 + 2
    finished = None if status in ("pending", "running") else T0 + 9.5
    error = {"failed": "command exited with code 3", "skipped": "dependency 'a' failed",
             "cancelled": "cancelled by user"}.get(status)
    return {"id": "step0001", "job_id": "job0001", "name": "import_files", "type": "python",
            "status": status, "error": error, "started": started, "finished": finished,
            "log_count": 1234, "version": 7, "depends": ["a"],
            "tasks": {"pending": 0, "running": 0, "completed": 0, "failed": 0, "cancelled": 0},
            "progress_done": 0, "progress_total": 0, **extra}


LINES = [
    {"line": 41, "ts": T0 + 3.25, "level": "info", "message": "plain line"},
    {"line": 42, "ts": T0 + 3.5, "level": "warn", "message": "\x1b[1;31mred bold\x1b[0m ok"},
    {"line": 43, "ts": T0 + 4, "level": "error", "message": '<script>alert(1)</script>"&'},
]


@pytest.mark.parametrize("status", JOB_STATUSES)
def test_job_row(app, snapshot, status):
    assert render.render_job_row(job(status), oob=True) == snapshot


@pytest.mark.parametrize("status", JOB_STATUSES)
def test_job_header(app, snapshot, status):
    assert render.render_job_header(job(status)) == snapshot


def test_job_header_completed_past_a_failed_step(app, snapshot):
    """on_error = continue: the job completed, and its header says a step failed."""
    assert render.render_job_header(job("completed", steps_failed=2)) == snapshot


def test_job_header_cancelling(app, snapshot):
    assert render.render_job_header(job("running", cancel_requested=1), oob=True) == snapshot


@pytest.mark.parametrize("status", ["running", "failed"])
def test_job_header_of_a_definition_not_loaded_here(app, snapshot, status):
    """A job created elsewhere: its definition's name is no link, and a
    finished one says why it has no Re-run / "Edit params & re-run"."""
    header = render.render_job_header(job(status, definition="elsewhere"))
    assert "/definitions/" not in header
    assert ("is not loaded by this server" in header) == (status == "failed")
    assert header == snapshot


@pytest.mark.parametrize("status", list(Status))
def test_step_row(app, snapshot, status):
    assert render.render_step_row(step(status), oob=True) == snapshot


def test_step_row_counts_lines_in_words(app):
    assert ">1 line</td>" in render.render_step_row(step("running", log_count=1))
    assert ">0 lines</td>" in render.render_step_row(step("running", log_count=0))


def test_step_row_with_tasks(app, snapshot):
    tasks = {"pending": 3, "running": 1, "completed": 40, "failed": 2}
    fragment = render.render_step_row(step("running", tasks=tasks, progress_done=42,
                                           progress_total=46))
    assert "3 pending" in fragment and "40 completed" in fragment and "2 failed" in fragment
    assert fragment == snapshot


def test_a_cancelled_fan_out_step_row_counts_its_cancelled_tasks(app, snapshot):
    """Review: a cancelled fan-out's open tasks were counted nowhere, so the
    row showed nothing for them; "0 cancelled" stays off every other row."""
    tasks = {"pending": 0, "running": 0, "completed": 12, "failed": 1, "cancelled": 35}
    fragment = render.render_step_row(step("cancelled", tasks=tasks, progress_done=13,
                                           progress_total=48))
    assert '<span class="tc tc-cancelled">35 cancelled</span>' in fragment
    assert "12 completed" in fragment and "1 failed" in fragment
    assert "cancelled</span>" not in render.render_step_row(step("completed", tasks={
        **tasks, "completed": 48, "failed": 0, "cancelled": 0}))
    assert fragment == snapshot


def test_a_fan_out_step_waiting_for_a_task_slot_says_so(app, snapshot):
    """New-user trial: a step "running" for a minute read "40 pending, 0
    running, 0 completed" while its tasks waited for a slot other jobs' tasks
    held. The row (the same fragment a live message carries) now says so."""
    waiting = {"pending": 40, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}
    fragment = render.render_step_row(step("running", tasks=waiting), oob=True)
    assert "40 pending</span> <span class=\"tc-wait\">&mdash; waiting for a free task slot" \
        in fragment
    assert fragment == snapshot
    # not while a task runs, nor for a step not running (its tasks wait for nothing)
    assert "tc-wait" not in render.render_step_row(step("running", tasks={**waiting,
                                                                           "running": 1}))
    assert "tc-wait" not in render.render_step_row(step("cancelled", tasks=waiting))
    assert "tc-wait" not in render.render_job_row(job("running", tasks=waiting))


def test_job_list_and_metrics(app, snapshot):
    filters = JobsFilters(status="failed", q="code", page=2)
    jobs = [job("failed"), job("completed", id="job0002")]
    assert render.render_job_list(jobs, 60, filters, oob=True) == snapshot
    assert render.render_job_list([], 0, JobsFilters()) == snapshot
    counts = {"pending": 1, "running": 2, "completed": 30, "failed": 4, "cancelled": 0}
    assert render.render_metrics(counts, oob=True) == snapshot


def test_job_deleted(app, snapshot):
    assert render.render_job_deleted("job0001") == snapshot


def test_log_fragments(app, snapshot):
    s = step("running")
    assert render.render_log_trigger(s) == snapshot
    assert render.render_log_panel(s, LogPage(LINES, cursor=43, more_before=True)) == snapshot
    assert render.render_log_panel(s, LogPage(LINES[:1], {"level": "warn", "q": "red"},
                                              cursor=1234, matches=7)) == snapshot
    assert render.render_log_lines(s, LogPage(LINES, cursor=43), "after") == snapshot
    assert render.render_log_lines(s, LogPage(LINES, more_before=True), "before") == snapshot


def test_follow_starts_ticked_only_for_a_step_that_may_still_log(app):
    """New-user trial: a finished step's panel came with "follow" ticked (one
    opened from a link to a line came without): nothing is left to follow."""
    ticked = 'class="follow" form="none" checked'
    for status in ("pending", "running"):
        assert ticked in render.render_log_panel(step(status), LogPage(LINES, cursor=43))
    for status in ("completed", "failed", "cancelled", "skipped"):
        assert ticked not in render.render_log_panel(step(status), LogPage(LINES, cursor=43))
    assert ticked not in render.render_log_panel(step("running"), LogPage(LINES, at=42))


def test_log_lines_escape_and_colour(app):
    html = render.render_log_lines(step("running"), LogPage(LINES, cursor=43), "after")
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&amp;" in html
    assert '<span class="ansi-bold ansi-fg-red">red bold</span> ok' in html
    assert 'name="after" value="43"' in html


def test_log_filter_and_line_fragments(app, snapshot):
    s = step("failed")
    search = {"level": None, "q": "<SCRIPT>"}
    # a new filter: its lines, count and cursor; no matching line at all
    assert render.render_log_lines(s, LogPage(LINES[2:], search, cursor=43, matches=1),
                                   "tail") == snapshot
    assert render.render_log_lines(s, LogPage([], search, cursor=43), "tail") == snapshot
    # a panel opened at line 42 of a longer log, and its next page
    assert render.render_log_panel(s, LogPage(LINES, cursor=43, more_before=True,
                                              more_after=True, at=42)) == snapshot
    assert render.render_log_lines(s, LogPage(LINES, cursor=43, more_after=True),
                                   "later") == snapshot


def test_log_search_marks_matches_as_text(app):
    """Both the query and the line are untrusted: a match is marked, escaped."""
    search = {"level": None, "q": "<script>"}
    html = render.render_log_lines(step("running"), LogPage(LINES[2:], search, matches=1),
                                   "after")
    assert "<mark>&lt;script&gt;</mark>alert(1)&lt;/script&gt;" in html
    assert ">1 matching line</span>" in html
    html = render.render_log_lines(step("running"), LogPage(LINES, search, matches=3), "after")
    assert ">3 matching lines</span>" in html


def test_definition_graph_and_run_history(app, snapshot):
    from flask import render_template

    from stepline.engine.definitions import load_file
    from stepline.web import charts
    from tests.conftest import ROOT

    definition = load_file(ROOT / "jobs" / "codebase_classify.toml")
    runs = [{"id": f"job{i:04d}", "status": status, "created": T0 + i * 100,
             "started": T0 + i * 100 + 1 if status != "pending" else None,
             "finished": T0 + i * 100 + 1 + 20 * i if status not in ("pending", "running")
             else None}
            for i, status in enumerate(["completed", "failed", "cancelled", "running",
                                        "pending"], 1)]
    graph = render_template("definition_graph.html", d=definition,
                            graph=charts.dependency_graph(definition),
                            tall_graph=charts.dependency_graph(definition, tall=True))
    history = render_template("run_history.html",
                              history=charts.run_history(runs, now=T0 + 600))
    assert graph == snapshot(name="graph")
    assert history == snapshot(name="history")
    assert render_template("run_history.html", history=charts.run_history([], T0)
                           ) == snapshot(name="history-empty")


TASKS = [
    {"task_id": 7, "idx": 0, "status": "failed", "attempts": 2, "worker": "host-1234-ab",
     "error": "ValueError: <b>bad</b> & worse\n  in chunk 0", "started_at": T0 + 3,
     "finished_at": T0 + 4.5},
    {"task_id": 8, "idx": 1, "status": "running", "attempts": 1, "worker": "host-1234-ab",
     "error": None, "started_at": T0 + 5, "finished_at": None},
    {"task_id": 9, "idx": 2, "status": "pending", "attempts": 0, "worker": None,
     "error": None, "started_at": None, "finished_at": None},
]


def test_task_table_and_its_trigger(app, snapshot):
    s = step("running", tasks={"pending": 1, "running": 1, "completed": 0, "failed": 1})
    first = render.render_task_table(s, TASKS, 120, None, 0)
    assert "1&ndash;3 of 120 tasks" in first and "task-next" in first
    assert "task-prev" not in first and 'data-query=""' in first
    assert "&lt;b&gt;bad&lt;/b&gt; &amp; worse" in first and "<b>" not in first
    assert first == snapshot(name="first page")
    failed = render.render_task_table(s, TASKS[:1], 51, "failed", 50)
    assert 'data-query="status=failed&amp;offset=50"' in failed and "task-next" not in failed
    assert "offset=0&amp;status=failed" in failed or "status=failed&amp;offset=0" in failed
    assert failed == snapshot(name="failed only, second page")
    assert render.render_task_table(s, [], 0, "failed", 0) == snapshot(name="none")
    assert render.render_task_trigger(s) == snapshot(name="trigger")


def test_task_table_shows_an_earlier_attempts_error_as_history(app):
    """A task that failed once and then completed (or runs again) is not a
    failure: its error reads as the earlier attempt's, muted; red stays for
    failed tasks."""
    s = step("running", tasks={"pending": 1, "running": 1, "completed": 1, "failed": 1})
    retried = [{**TASKS[0], "task_id": 10, "idx": 5, "status": "completed", "attempts": 2,
                "error": "StepFailed: task 5 failed (attempt 1)"},
               {**TASKS[0], "task_id": 11, "idx": 6, "status": "running", "attempts": 3,
                "error": "StepFailed: task 6 failed (attempt 2)", "finished_at": None},
               {**TASKS[0], "task_id": 12, "idx": 7, "status": "pending", "attempts": 1,
                "error": "StepFailed: task 7 failed (attempt 1)", "finished_at": None}]
    html = render.render_task_table(s, [TASKS[0], *retried], 4, None, 0)
    errors = re.findall(r'<pre class="([^"]*)">(.*?)</pre>', html, re.S)
    assert errors == [
        ("error", "ValueError: &lt;b&gt;bad&lt;/b&gt; &amp; worse\n  in chunk 0"),
        ("error earlier", '<span class="label">attempt 1 failed:</span>'
                          " StepFailed: task 5 failed (attempt 1)"),
        ("error earlier", '<span class="label">attempt 2 failed:</span>'
                          " StepFailed: task 6 failed (attempt 2)"),
        ("error earlier", '<span class="label">attempt 1 failed:</span>'
                          " StepFailed: task 7 failed (attempt 1)")]


def test_step_timeline(app, snapshot):
    from stepline.web import charts

    steps = [{"name": "prepare", "status": "completed", "started": T0, "finished": T0 + 20},
             {"name": "fan <b>out</b>", "status": "failed", "started": T0 + 20,
              "finished": T0 + 90},
             {"name": "a_very_long_step_name_that_needs_cutting", "status": "running",
              "started": T0 + 90, "finished": None},
             {"name": "never", "status": "skipped", "started": None, "finished": None}]
    timeline = charts.timeline(steps, now=T0 + 125)
    # x and width in % of the page's width; a name over its bar, ending over
    # its end in the right half
    assert [(s.name, s.x, s.width, s.label_x, s.anchor) for s in timeline.spans] == [
        ("prepare", 0, 16, 0, "start"), ("fan <b>out</b>", 16, 56, 16, "start"),
        ("a_very_long_step_name_that_needs_cutting", 72, 28, 100, "end")]
    html = render.render_timeline(timeline)
    assert "fan &lt;b&gt;out&lt;/b&gt;" in html and "<b>" not in html
    assert html == snapshot(name="three started steps")
    assert render.render_timeline(charts.timeline(steps[3:], T0)) == snapshot(name="none")


def test_step_timeline_of_a_job_under_a_second_reads_in_milliseconds(app):
    """The axis of a 0.08 s job: each tick says its own time (all read
    "0.0s" before span() had a millisecond form)."""
    from stepline.web import charts

    steps = [{"name": "quick", "status": "completed", "started": T0, "finished": T0 + 0.08}]
    html = render.render_timeline(charts.timeline(steps, now=T0 + 1))
    ticks = re.findall(r'<text class="axis"[^>]*>([^<]*)</text>', html)
    assert ticks == ["0s", "20ms", "40ms", "60ms", "80ms"]
    assert '<tspan class="dur">80ms</tspan>' in html


def test_step_timeline_keeps_a_zero_second_last_step_inside_the_axis(app):
    """A 0.0 s last step starts where the axis ends: its bar (drawn at
    least 0.5 % wide so it shows) ended at 100.5 % before the clamp."""
    from stepline.web import charts

    steps = [{"name": "build", "status": "completed", "started": T0, "finished": T0 + 10},
             {"name": "notify", "status": "completed", "started": T0 + 10, "finished": T0 + 10}]
    spans = charts.timeline(steps, now=T0 + 20).spans
    assert all(0 <= s.x and s.x + s.width <= 100 for s in spans)
    assert (spans[1].x, spans[1].width, spans[1].label_x) == (99.5, 0.5, 100)


def test_step_timeline_draws_at_most_its_cap(app):
    from stepline.web import charts

    steps = [{"name": f"s{i}", "status": "completed", "started": T0 + i, "finished": T0 + i + 1}
             for i in range(1000)]
    timeline = charts.timeline(steps, now=T0 + 1001)
    assert len(timeline.spans) == charts.TIMELINE_MAX_BARS
    assert timeline.hidden == 1000 - charts.TIMELINE_MAX_BARS
    assert timeline.seconds == 1000  # the axis still spans the whole job
    assert f"{timeline.hidden} more are in the table" in render.render_timeline(timeline)


def test_times_say_how_long_ago_with_the_exact_time_on_hover(app):
    html = render.render_job_row(job("completed"))  # created 125 s before "now"
    assert ('<time datetime="2023-11-14T22:13:20+00:00" title="2023-11-14 22:13:20 UTC"'
            f' data-at="{T0}">2 min ago</time>') in html
    header = render.render_job_header(job("running"))
    assert "in progress <span data-since" in header
    assert [render.ago(T0 + 125 - s) for s in (3, 42, 61, 3599, 3600, 86399, 86400, 200000)] \
        == ["just now", "42 s ago", "1 min ago", "59 min ago", "1 h ago", "23 h ago",
            "1 day ago", "2 days ago"]


def test_completed_past_failed_steps_is_marked_everywhere(app, snapshot):
    """on_error = continue: the row, the header and the run history all say
    that the completed job had failed steps, the same way."""
    from flask import render_template

    from stepline.web import charts

    done = job("completed", steps_failed=2)
    badge = "2 failed steps</span>"
    assert badge in render.render_job_row(done) and badge in render.render_job_header(done)
    assert "failed step" not in render.render_job_row(job("completed", steps_failed=0))
    assert render.render_job_row(done) == snapshot(name="row")
    runs = [{"id": "job0001", "status": "completed", "created": T0, "started": T0 + 1,
             "finished": T0 + 21, "steps_failed": 1},
            {"id": "job0002", "status": "completed", "created": T0 + 60, "started": T0 + 61,
             "finished": T0 + 71, "steps_failed": 0}]
    history = render_template("run_history.html", history=charts.run_history(runs, T0 + 100))
    assert history.count("with-failures") == 2  # the first bar, and its legend swatch
    assert "completed, 1 failed step" in history
    meaning = "completed, but steps with on_error = continue failed"  # one text, both places
    assert f'title="{meaning}"' in render.render_job_row(done)
    assert f"</span>{meaning}</li>" in history
    assert history == snapshot(name="history")

@pytest.mark.parametrize("value", ["job0001", "a b/c?d#e%", "ünï", "x&y=z", "<x>", 7, "a.b~c-d_e"])
def test_path_builder_builds_what_werkzeug_builds(app, value):
    """The templates' url_for fills ids into a pattern built once per endpoint
    (render.path_builder): every route, asked twice (pattern built, then
    reused), with and without a query argument, in both argument orders,
    gives werkzeug's own path."""
    url_for = render.path_builder(app)
    paths = app.url_map.bind("")
    for rule in app.url_map.iter_rules():
        for extra in ({}, {"page": 2}):
            for names in (sorted(rule.arguments), sorted(rule.arguments, reverse=True)):
                # a different value per argument, so a mix-up shows
                values = {name: value * (i + 1) for i, name in enumerate(names)} | extra
                want = paths.build(rule.endpoint, values).removeprefix("ws://")
                want = want[want.index("/"):]
                assert [url_for(rule.endpoint, **values) for _ in range(2)] == [want] * 2
