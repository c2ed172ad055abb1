"""Snapshots of every fragment in every status (syrupy). Ids and times are
fixed, so any change to the markup shows up as a reviewed snapshot diff."""

import pytest

from app import create_app
from stepline.engine.states import JOB_STATUSES, Status
from stepline.web import render
from stepline.web.views import JobsFilters

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
            "tasks": {"pending": 3, "running": 1, "completed": 40, "failed": 2}, **extra}


def step(status: str, **extra) -> dict:
    started = None if status in ("pending", "skipped") else T0 + 2
    finished = None if status in ("pending", "running") else T0 + 9.5
    error = {"failed": "command exited with code 3", "skipped": "dependency 'a' failed",
             "cancelled": "cancelled by user"}.get(status)
    return {"id": "step0001", "job_id": "job0001", "name": "import_files", "type": "python",
            "status": status, "error": error, "started": started, "finished": finished,
            "log_count": 1234, "version": 7, "depends": ["a"],
            "tasks": {"pending": 0, "running": 0, "completed": 0, "failed": 0},
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
    assert render.render_log_panel(s, LINES, {"level": None, "q": None}, 1234) == snapshot
    assert render.render_log_panel(s, LINES[:1], {"level": "warn", "q": "red"}, 7) == snapshot
    assert render.render_log_lines(s, LINES, {"level": None, "q": None}, "after") == snapshot
    assert render.render_log_lines(s, LINES, {"level": None, "q": None}, "before") == snapshot


def test_log_lines_escape_and_colour(app):
    html = render.render_log_lines(step("running"), LINES, {"level": None, "q": None}, "after")
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&amp;" in html
    assert '<span class="ansi-bold ansi-fg-red">red bold</span> ok' in html
    assert 'name="after" value="43"' in html


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
                            graph=charts.dependency_graph(definition))
    history = render_template("run_history.html",
                              history=charts.run_history(runs, now=T0 + 600))
    assert graph == snapshot(name="graph")
    assert history == snapshot(name="history")
    assert render_template("run_history.html", history=charts.run_history([], T0)
                           ) == snapshot(name="history-empty")


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
