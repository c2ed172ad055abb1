"""The JSON API and the pages, through Flask's test client on a real SQLite file."""

import re

import pytest
from openapi_spec_validator import validate

from app import create_app
from stepline.engine.definitions import load_file
from stepline.store import reads

from .conftest import make_definition, wait_job

TWO_STEPS = """
[step.hello]
type = "shell"
# stdout and stderr are two pipes, with no order between them: hence the pause
run = "echo hello; sleep 0.3; echo world >&2"
[step.bye]
type = "shell"
run = "echo bye"
depends = ["hello"]
"""

# what a new-user trial ran: every kind of param, one of them limited
PARAMS_DEMO = """
[params]
text = "hello"
count = 3
[params.ratio]
default = 0.5
min = 0
max = 1
[step.echo]
type = "shell"
run = "echo {params.text} {params.count} {params.ratio}"
"""


@pytest.fixture
def app(db_path, tmp_path):
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "two.toml").write_text(TWO_STEPS)
    (tmp_path / "defs" / "broken.toml").write_text("[step.a]\ntype = 'nope'\n")
    (tmp_path / "defs" / "params_demo.toml").write_text(PARAMS_DEMO)
    return create_app(db_path, definitions_dir=str(tmp_path / "defs"), token="")


@pytest.fixture
def client(app):
    return app.test_client()


def test_openapi_spec_is_valid_and_lists_every_api_route(client, app):
    spec = client.get("/api/openapi.json").get_json()
    validate(spec)
    documented = {path.replace("{", "<").replace("}", ">") for path in spec["paths"]}
    routes = {r.rule for r in app.url_map.iter_rules() if r.rule.startswith("/api/")
              and r.rule != "/api/openapi.json"}
    assert routes == documented


def test_run_structure_logs_and_download(client, store, start_worker):
    created = client.post("/api/definitions/two/run", json={"params": {}})
    assert created.status_code == 201
    job_id = created.get_json()["job_id"]
    start_worker()
    wait_job(store, job_id)
    structure = client.get(f"/api/jobs/{job_id}/structure").get_json()
    assert structure["status"] == "completed" and structure["job_id"] == job_id
    assert [s["name"] for s in structure["steps"]] == ["hello", "bye"]
    hello = structure["steps"][0]
    assert hello["log_count"] == 2 and hello["depends"] == []
    assert hello["tasks"] == {"pending": 0, "running": 0, "completed": 0, "failed": 0,
                             "cancelled": 0}
    assert structure["steps"][1]["depends"] == ["hello"]
    assert structure["updated_at"] >= hello["finished_at"]

    url = f"/api/jobs/{job_id}/steps/{hello['step_id']}/logs"
    page = client.get(url + "?limit=1").get_json()
    assert [line["message"] for line in page["lines"]] == ["hello"]
    assert page["next_after"] == 1 and page["total"] == 2
    rest = client.get(url + f"?after={page['next_after']}").get_json()
    assert [(line["line"], line["level"]) for line in rest["lines"]] == [(2, "warn")]
    assert client.get(url + "?level=warn").get_json()["total"] == 1
    assert client.get(url + "?level=info").get_json()["total"] == 2  # info and worse
    assert client.get(url + "?q=WOR").get_json()["lines"][0]["message"] == "world"
    text = client.get(url + ".txt")
    first, second = text.data.decode().splitlines()
    assert re.fullmatch(r"1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info  hello", first), first
    assert second.startswith("2 ") and second.endswith(" warn  world")
    assert "attachment" in text.headers["Content-Disposition"]

    listed = client.get("/api/jobs?status=completed").get_json()
    assert listed["total"] == 1 and listed["jobs"][0]["job_id"] == job_id
    assert client.get("/api/jobs?q=two").get_json()["total"] == 1
    assert client.get("/api/jobs?q=zzz").get_json()["total"] == 0
    full = client.get(f"/api/jobs/{job_id}").get_json()
    assert full["steps_done"] == 2 and len(full["steps"]) == 2

    rerun = client.post(f"/api/jobs/{job_id}/rerun", json={})
    assert rerun.status_code == 201
    assert reads.get_job(store.db, rerun.get_json()["job_id"])["rerun_of"] == job_id
    assert client.delete(f"/api/jobs/{job_id}").status_code == 204
    assert client.get(f"/api/jobs/{job_id}").status_code == 404


@pytest.mark.parametrize("method, url, body, status, message", [
    ("get", "/api/jobs/nope", None, 404, "job nope not found"),
    ("get", "/api/jobs/nope/structure", None, 404, "job nope not found"),
    ("get", "/api/jobs?status=weird", None, 400, "unknown status 'weird'"),
    ("get", "/api/jobs?limit=0", None, 400, "limit must be between 1 and 500"),
    ("get", "/api/jobs?offset=x", None, 400, "offset must be a whole number"),
    ("post", "/api/definitions/nope/run", {}, 404, "no definition named 'nope'"),
    ("post", "/api/definitions/broken/run", {}, 404,
     "definition 'broken' did not load: "),  # ...<dir>/broken.toml: step 'a': <problem>
    ("post", "/api/definitions/two/run", {"params": {"x": 1}}, 400, "unknown param 'x'"),
    ("post", "/api/definitions/two/run", [1, 2], 400, "body must be a JSON object"),
    ("post", "/api/jobs/nope/cancel", {}, 404, "job nope not found"),
    ("delete", "/api/jobs/nope", None, 404, "job nope not found"),
    ("get", "/api/nothing-here", None, 404, "not found"),
    ("put", "/api/jobs", {}, 405, "not allowed"),
])
def test_errors_are_json_with_the_right_status(client, method, url, body, status, message):
    kwargs = {"json": body} if body is not None else {}
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status
    assert message in response.get_json()["error"].lower() or message in response.get_json()[
        "error"]


@pytest.mark.parametrize("params, message", [
    ({"tasks": -3}, "param 'tasks' must be from 1 to 100000, got -3"),
    ({"tasks": "0"}, "param 'tasks' must be from 1 to 100000, got '0'"),
    ({"failure_rate": "7"}, "param 'failure_rate' must be from 0 to 1, got '7'"),
])
def test_params_outside_their_limits_are_400_and_create_no_job(client, store, params, message):
    response = client.post("/api/definitions/load_demo/run", json={"params": params})
    assert response.status_code == 400 and response.get_json() == {"error": message}
    assert reads.list_jobs(store.db)[1] == 0


@pytest.mark.parametrize("body, message", [
    # each was 201, then crashed the step and answered 500 on every page showing the job
    ('{"params": {"text": "\\ud800"}}',
     "param 'text' must be valid Unicode text (it holds a lone surrogate)"),
    ('{"params": {"text": "a\\u0000b"}}',
     "param 'text' must not contain a NUL character (commands and env vars cannot hold one)"),
    ('{"params": {"text": "%s"}}' % ("x" * 1_000_000),
     "param 'text' must be at most 10,000 characters, got 1,000,000"),
    ('{"params": {"ratio": 1%s}}' % ("0" * 400),  # an OverflowError, a 500
     "param 'ratio' must be a finite number, got 100000000000000000000000000000000000000000000"
     "00000...(cut)"),
    # The literals NaN and Infinity are refused with the body (see below);
    # a number past a float's range parses as inf all the same
    ('{"params": {"ratio": 1e999}}', "param 'ratio' must be a finite number, got Infinity"),
    ('{"params": {"ratio": -1e999}}', "param 'ratio' must be a finite number, got -Infinity"),
    ('{"params": {"count": 1e999}}', "param 'count' must be a finite number, got Infinity"),
], ids=["surrogate", "nul", "1MB", "huge-float", "inf", "-inf", "int-inf"])
def test_params_a_step_cannot_use_are_400_and_create_no_job(client, store, body, message):
    before = reads.list_jobs(store.db)[1]
    response = client.post("/api/definitions/params_demo/run", data=body,
                           content_type="application/json")
    assert response.status_code == 400 and response.get_json() == {"error": message}
    assert reads.list_jobs(store.db)[1] == before


def test_a_whole_number_is_a_good_float_param(client, store):
    response = client.post("/api/definitions/load_demo/run", json={"params": {"failure_rate": 1}})
    assert response.status_code == 201, response.get_json()
    assert reads.get_job(store.db, response.get_json()["job_id"])["params"]["failure_rate"] == 1.0


def test_state_conflicts_are_409(client, store):
    job_id = store.create_job(make_definition(TWO_STEPS), {})
    assert client.delete(f"/api/jobs/{job_id}").status_code == 409
    assert client.post(f"/api/jobs/{job_id}/rerun", json={}).status_code == 409
    assert client.post(f"/api/jobs/{job_id}/cancel", json={}).get_json()["status"] == "cancelled"
    again = client.post(f"/api/jobs/{job_id}/cancel", json={})
    assert again.status_code == 409 and "already cancelled" in again.get_json()["error"]


def test_definitions_api_lists_good_and_reports_bad(client):
    body = client.get("/api/definitions").get_json()
    names = {d["name"] for d in body["definitions"]}
    assert {"two", "codebase_classify", "load_demo"} <= names
    load_demo = next(d for d in body["definitions"] if d["name"] == "load_demo")
    assert load_demo["limits"]["tasks"] == {
        "min": 1, "max": 100000, "description": "tasks in the fan_out step"}
    assert any("broken.toml" in e and "unknown type" in e for e in body["errors"])


def test_pages_render_and_escape(client, store):
    definition = make_definition(TWO_STEPS.replace("[step.bye]", '[step."<b>bye</b>"]'))
    definition.name = "<script>alert(1)</script>"  # as if stored by an older version
    job_id = store.create_job(definition, {"p": "<img src=x onerror=alert(1)>"})
    home = client.get("/").get_data(as_text=True)
    assert f'id="job-{job_id}"' in home and "<script>alert(1)" not in home
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in home
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count('class="step-row') == 2
    assert "<b>bye</b>" not in page and "&lt;b&gt;bye&lt;/b&gt;" in page
    assert client.get("/jobs/nope").status_code == 404
    assert "two" in client.get("/definitions").get_data(as_text=True)
    assert client.get("/?status=bogus").status_code == 400


def test_a_job_whose_definition_is_not_loaded_here_offers_no_rerun(client, store, tmp_path):
    """Created through the API by another deployment (definition "t", not in
    this server's --definitions): its page says why there is no re-run, and
    the run form's URL, opened anyway, is a 404 page (or JSON) naming it."""
    elsewhere = store.create_job(make_definition(TWO_STEPS), {})
    store.request_cancel(elsewhere)  # pending: cancelled at once, so finished
    page = client.get(f"/jobs/{elsewhere}").get_data(as_text=True)
    told = "definition &#39;t&#39; is not loaded by this server: it cannot be run or re-run here"
    assert f'<p class="unavailable">{told}</p>' in page
    assert f"/jobs/{elsewhere}/rerun" not in page and "/definitions/t" not in page
    assert f"/jobs/{elsewhere}/delete" in page  # what still works stays

    form = client.get(f"/definitions/t?from={elsewhere}")
    assert form.status_code == 404 and f'<p class="error">{told}</p>' in form.get_data(
        as_text=True)
    as_json = client.get(f"/definitions/t?from={elsewhere}",
                         headers={"Accept": "application/json"})
    assert as_json.status_code == 404 and as_json.get_json() == {
        "error": "definition 't' is not loaded by this server: it cannot be run or re-run here"}

    # ...while a job of a definition loaded here keeps both controls
    loaded = store.create_job(load_file(tmp_path / "defs" / "two.toml"), {})
    store.request_cancel(loaded)
    page = client.get(f"/jobs/{loaded}").get_data(as_text=True)
    assert 'class="unavailable"' not in page and f"/jobs/{loaded}/rerun" in page
    assert f"/definitions/two?from={loaded}#rerun" in page
    assert client.get(f"/definitions/two?from={loaded}").status_code == 200
def test_run_form_needs_csrf_and_reports_bad_params(client):
    assert client.post("/definitions/load_demo/run", data={"param.tasks": "3"}).status_code == 403
    client.get("/definitions")
    with client.session_transaction() as session:
        token = session["csrf"]
    bad = client.post("/definitions/load_demo/run", data={"param.tasks": "many",
                                                          "csrf_token": token})
    assert bad.status_code == 422 and "must be an integer" in bad.get_data(as_text=True)
    outside = client.post("/definitions/load_demo/run", data={"param.tasks": "-3",
                                                              "csrf_token": token})
    page = outside.get_data(as_text=True)
    assert outside.status_code == 422
    assert "param &#39;tasks&#39; must be from 1 to 100000, got &#39;-3&#39;" in page
    assert 'name="param.tasks" inputmode="numeric"' in page
    assert '<small class="range">1 to 100000</small>' in page
    # what a person can type or paste (a browser cannot send a lone surrogate)
    for typed, message in [("x" * 20_000, "must be at most 10,000 characters, got 20,000"),
                           ("pasted\x00text", "must not contain a NUL character")]:
        refused = client.post("/definitions/params_demo/run", data={
            "param.text": typed, "csrf_token": token})
        assert refused.status_code == 422
        assert f"param &#39;text&#39; {message}" in refused.get_data(as_text=True)
    assert client.get("/api/jobs").get_json()["total"] == 0
    good = client.post("/definitions/load_demo/run", data={"param.tasks": "3"},
                       headers={"X-CSRF-Token": token, "HX-Request": "true"})
    assert good.status_code == 204 and good.headers["HX-Redirect"].startswith("/jobs/")
    # emptied fields: a number means its default (the placeholder); text keeps ""
    blank = client.post("/definitions/params_demo/run", data={
        "param.text": "", "param.count": "", "param.ratio": " ", "csrf_token": token})
    assert blank.status_code == 303, blank.get_data(as_text=True)
    job_id = blank.headers["Location"].rsplit("/", 1)[1]
    assert client.get(f"/api/jobs/{job_id}").get_json()["params"] == {
        "text": "", "count": 3, "ratio": 0.5}


def test_healthz_and_metrics(client, store):
    store.create_job(make_definition(TWO_STEPS), {})
    assert client.get("/healthz").get_json() == {"ok": True}
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'stepline_jobs{status="pending"} 1' in metrics
    assert "stepline_running_steps 0" in metrics
    assert 'stepline_live_connections{transport="ws"} 0' in metrics


def test_tasks_page_through_a_fan_out_with_errors_and_workers(client, store, start_worker):
    job_id = store.create_job(make_definition(
        '[step.fan]\ntype = "generate"\ntasks = 30\nfailure_rate = 0.3\nseed = 3\n'
        'on_error = "continue"'), {})
    start_worker()
    wait_job(store, job_id)
    step_id = reads.job_steps(store.db, job_id)[0]["id"]
    url = f"/api/jobs/{job_id}/steps/{step_id}/tasks"
    first = client.get(url + "?limit=20").get_json()
    rest = client.get(url + "?limit=20&offset=20").get_json()
    tasks = first["tasks"] + rest["tasks"]
    assert first["total"] == rest["total"] == 30
    assert [t["idx"] for t in tasks] == list(range(30))
    assert all(t["worker"] and t["started_at"] <= t["finished_at"] for t in tasks)
    failed = client.get(url + "?status=failed").get_json()
    assert failed["total"] == sum(t["status"] == "failed" for t in tasks) > 0
    assert all("simulated" in t["error"] for t in failed["tasks"])
    assert client.get(url + "?status=nope").status_code == 400
    assert client.get(f"/api/jobs/{job_id}/steps/nope/tasks").status_code == 404


def test_the_job_header_shows_params_as_steps_get_them(client, store):
    """New-user trial: a true/false param read `flag=False` (Python's) in the
    header, while the step got `false`."""
    job_id = store.create_job(make_definition(
        '[params]\nflag = false\nnote = "<b>x</b>"\n[step.a]\ntype = "shell"\nrun = "true"'),
        {"flag": False, "note": "<b>x</b>"})
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert ">flag=false</code>" in page and "False" not in page
    assert ">note=&lt;b&gt;x&lt;/b&gt;</code>" in page


@pytest.mark.parametrize("body, message", [
    ('{"params": {"ratio": NaN}}', "body must be JSON"),
    ('{"params": {"ratio": Infinity}}', "body must be JSON"),
    ('{"params": {"ratio": -Infinity}}', "body must be JSON"),
    ("[" * 100_000 + "]" * 100_000, "body must be JSON"),
    ('{"params": ', "body must be JSON"),
    (b'{"params": {"ratio": "\xff"}}', "body must be JSON"),
    ("[1, 2]", "body must be a JSON object"),
], ids=["NaN", "Infinity", "-Infinity", "nested 100,000 deep", "cut short", "not UTF-8",
        "a list"])
def test_a_body_that_is_not_a_strict_json_object_is_400_and_makes_no_job(client, store, body,
                                                                          message):
    """New-user trial: NaN made a job whose params /api/jobs then gave back as
    NaN (strict JSON parsers refuse the whole list); 100,000 '[' was a 500."""
    response = client.post("/api/definitions/params_demo/run", data=body,
                           content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)[:200]
    assert message in response.get_json()["error"]
    assert reads.list_jobs(store.db)[1] == 0


def test_a_good_body_and_an_empty_one_still_run(client):
    run = "/api/definitions/params_demo/run"
    made = client.post(run, data='{"params": {"ratio": 0.25}}', content_type="application/json")
    assert made.status_code == 201
    assert client.post(run, content_type="application/json").status_code == 201  # defaults
    jobs = client.get("/api/jobs").get_json()["jobs"]
    assert sorted(j["params"]["ratio"] for j in jobs) == [0.25, 0.5]
