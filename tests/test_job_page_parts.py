"""The job page's parts fetched on their own (task table, timeline) and the
live triggers that refresh them, through Flask's test client and the views
on a real SQLite file with a real worker."""

import signal

import pytest

from app import create_app
from stepline.store import reads
from stepline.web.views import JobView

from .conftest import make_definition, wait_job

FAN = ('[step.fan]\ntype = "generate"\ntasks = 120\nfailure_rate = 0.3\nseed = 3\n'
       'on_error = "continue"\n[step.after]\ntype = "shell"\nrun = "echo after"\n'
       'depends = ["fan"]\n')


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished job with a 120-task step, some tasks failed."""
    from stepline.store.writes import Store

    from .conftest import WorkerProcess

    path = str(tmp_path_factory.mktemp("parts") / "p.db")
    store = Store(path)
    job_id = store.create_job(make_definition(FAN), {})
    worker = WorkerProcess(path)
    try:
        wait_job(store, job_id, timeout=60)
    finally:
        worker.stop(signal.SIGKILL)
    steps = {s["name"]: s for s in reads.job_steps(store.db, job_id)}
    return path, job_id, steps


@pytest.fixture
def client(finished):
    return create_app(finished[0], token="").test_client()


def test_task_table_pages_and_filters(client, finished):
    path, job_id, steps = finished
    fan = steps["fan"]
    failed = fan["tasks"]["failed"]
    assert 0 < failed < 50 and fan["tasks"]["completed"] == 120 - failed
    url = f"/jobs/{job_id}/steps/{fan['id']}/tasks"
    first = client.get(url).get_data(as_text=True)
    assert "1&ndash;50 of 120 tasks" in first and first.count('class="task status-') == 50
    third = client.get(url + "?offset=100").get_data(as_text=True)
    assert "101&ndash;120 of 120 tasks" in third and third.count('class="task status-') == 20
    assert "task-next" not in third and "task-prev" in third
    only = client.get(url + "?status=failed").get_data(as_text=True)
    assert f"1&ndash;{failed} of {failed} failed tasks" in only
    assert only.count('class="task status-failed"') == failed
    assert only.count("(simulated, attempt 1)</pre>") == failed  # each error in full


def test_task_table_refuses_what_it_cannot_show(client, finished):
    path, job_id, steps = finished
    url = f"/jobs/{job_id}/steps/{steps['fan']['id']}/tasks"
    assert client.get(url + "?status=nope").status_code == 400
    assert client.get(url + "?offset=-1").status_code == 400
    assert client.get(f"/jobs/other/steps/{steps['fan']['id']}/tasks").status_code == 404


def test_step_messages_and_snapshots_carry_the_task_trigger(client, finished):
    """Every live message of a step with tasks brings the trigger an open
    task table refreshes on (a shell step's never do); a snapshot brings one per
    step with tasks, so an open table catches up after a reconnect."""
    path, job_id, steps = finished
    app = client.application
    fan, after = steps["fan"], steps["after"]
    view = JobView(job_id)
    db = app.extensions["stepline"].store.db
    with app.app_context():
        _, content = view.snapshot(db)
        assert f'id="tasks-{fan["id"]}-trigger" hx-swap-oob="true"' in content
        assert f'tasks-{after["id"]}-trigger' not in content  # no tasks
        events = reads.events_after(db, 0, 10_000, job_id)
        for event in events:
            html = view.render_event(db, event)
            wanted = event["step_id"] == fan["id"]  # shell steps never have tasks
            assert ("-trigger\" hx-swap-oob=\"true\" hx-get=\"/jobs/" in html
                    and "/tasks\"" in html) == wanted, event


def test_timeline_fragment_draws_the_started_steps(client, finished):
    path, job_id, steps = finished
    html = client.get(f"/jobs/{job_id}/timeline").get_data(as_text=True)
    assert html.count('<g class="span status-') == 2
    assert 'data-step="fan"' in html and 'data-step="after"' in html
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert html.strip() in page  # the page includes the same fragment
    assert client.get("/jobs/nope/timeline").status_code == 404


def test_a_fan_out_step_without_tasks_keeps_its_task_table(tmp_path):
    """A step that may have tasks but has none now (not started, or a retry
    cleared them) keeps its "tasks" button, its table's place and its
    refresh in a snapshot: a table open while a retry cleared the tasks kept
    showing them, and a reconnect did not refresh it (the counts said "none")."""
    from stepline.store.writes import Store

    path = str(tmp_path / "t.db")
    store = Store(path)
    job_id = store.create_job(make_definition(FAN), {})  # no worker: nothing runs
    steps = {s["name"]: s for s in reads.job_steps(store.db, job_id)}
    fan, after = steps["fan"], steps["after"]
    assert not any(fan["tasks"].values())
    app = create_app(path, token="")
    page = app.test_client().get(f"/jobs/{job_id}").get_data(as_text=True)
    assert f'id="tasks-toggle-{fan["id"]}"' in page and f'id="tasks-body-{fan["id"]}"' in page
    assert f'tasks-toggle-{after["id"]}' not in page  # a shell step has no tasks
    with app.app_context():
        _, content = JobView(job_id).snapshot(store.db)
    assert f'id="tasks-{fan["id"]}-trigger" hx-swap-oob="true"' in content
    assert f'tasks-{after["id"]}-trigger' not in content
