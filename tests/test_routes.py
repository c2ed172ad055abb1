"""Every route of the app, with junk in every query parameter the code reads:
a bad value is the client's mistake (4xx) or ignored, never a server error.

A Flask test client is enough here: the routes parse their arguments the same
way under gunicorn. The streaming routes are read for one chunk and closed.
The store is the run's backend: PostgreSQL refuses text SQLite takes (a NUL
in a search or an id was a 500 there only)."""

import re
from pathlib import Path
from urllib.parse import quote

import pytest

from app import create_app
from stepline.engine.definitions import load_definitions
from stepline.engine.states import Status
from stepline.store import reads

WEB_DIR = Path(__file__).resolve().parent.parent / "stepline" / "web"
# Every query parameter a route reads (test_the_list_is_complete keeps it so).
PARAMS = ["status", "q", "page", "job", "view", "after", "before", "limit", "level", "offset",
          "transport", "format", "next", "from", "tail", "later", "matches", "over", "at"]
JUNK = ["", "x", "-1", "0", "1e3", "99999999999999999999999999", "ü日本\u202e", "\x00",
        "%", "a" * 5000]
JUNK_IDS = ["x", "-1", "ü日本", "\x00", "a" * 500]
STREAMING = {"live.server_sent_events", "api.logs_txt"}
# Which statuses other than 5xx each route may answer is its own test's business.
SERVER_ERROR = range(500, 600)


@pytest.fixture(scope="module")
def site(module_db_path):
    app = create_app(module_db_path, token="")
    store = app.extensions["stepline"].store
    found, _ = load_definitions([])
    job_id = store.create_job(found["load_demo"], {})
    step_id = reads.job_steps(store.db, job_id)[0]["id"]
    return app, {"job_id": job_id, "step_id": step_id, "name": "load_demo"}


def rules(app, methods: set[str]):
    return sorted((r for r in app.url_map.iter_rules() if r.methods & methods),
                  key=lambda r: r.rule)


def urls(rule, real: dict[str, str]) -> list[str]:
    """The rule's path with real ids, then with junk in each path argument."""
    values = [dict.fromkeys(rule.arguments, None) | {a: real.get(a, "x") for a in rule.arguments}]
    for argument in sorted(rule.arguments):
        values += [{**values[0], argument: junk} for junk in JUNK_IDS]
    built = []
    for v in values:
        path = rule.rule
        for name, value in v.items():
            path = re.sub(rf"<(?:[a-z]+:)?{name}>", quote(value, safe=""), path)
        built.append(path)
    return built


def request(client, method: str, url: str, endpoint: str) -> int:
    kwargs = {"json": {}} if method != "GET" else {}
    if endpoint in STREAMING:
        response = client.open(url, method=method, buffered=False, **kwargs)
        try:
            if response.status_code == 200:
                next(iter(response.response), None)  # the first chunk: snapshot or lines
        finally:
            response.close()
        return response.status_code
    return client.open(url, method=method, **kwargs).status_code


ALL_AT_ONCE = ["&".join(f"{p}={quote(v, safe='')}" for p in PARAMS) for v in JUNK]
# each parameter alone, so one that is refused does not hide the others
QUERIES = ([f"{p}={quote(v, safe='')}" for p in PARAMS for v in JUNK] + ALL_AT_ONCE
           + ["job=x&view=jobs", "view=nope", "status=running&job="])


def walk(app, real: dict[str, str], methods: set[str]) -> list[str]:
    client = app.test_client()
    failures = []
    for rule in rules(app, methods):
        method = sorted(rule.methods & methods)[0]
        for i, url in enumerate(urls(rule, real)):
            for query in QUERIES if i == 0 else ALL_AT_ONCE:  # junk ids: fewer queries
                status = request(client, method, f"{url}?{query}", rule.endpoint)
                if status in SERVER_ERROR:
                    failures.append(f"{method} {url[:80]}?{query[:80]} -> {status}")
    return failures


def test_no_route_answers_junk_arguments_with_a_server_error(site):
    app, real = site
    failures = walk(app, real, {"GET"})
    # Then the buttons and the API's writes, the job's own last.
    failures += walk(app, {**real, "job_id": "nope"}, {"POST", "DELETE"})
    failures += walk(app, real, {"POST", "DELETE"})
    assert not failures, f"{len(failures)} server errors, e.g.:\n" + "\n".join(failures[:20])


def test_jobs_page_ignores_a_job_argument(site):
    """`?job=` picks what a live connection watches; the jobs list shows the list."""
    app, real = site
    client = app.test_client()
    page = client.get(f"/?job={real['job_id']}")
    assert page.status_code == 200 and 'id="job-list"' in page.get_data(as_text=True)
    assert client.get("/?job=x&status=running").status_code == 200
    # a job is never skipped (only a step is): not a filter, and not offered
    refused = client.get(f"/api/jobs?status={Status.SKIPPED}")
    assert refused.status_code == 400 and refused.get_json()["error"].count("skipped") == 1
    assert client.get(f"/?status={Status.SKIPPED}").status_code == 400


def test_the_list_is_complete():
    """A parameter read anywhere in the web layer is one this test sends junk in."""
    source = "\n".join(p.read_text() for p in WEB_DIR.glob("*.py"))
    read = set(re.findall(r"""(?:args|values)(?:\.get\(|\[)["']([a-z_]+)["']""", source))
    read |= set(re.findall(r"""int_arg\(args, ["']([a-z_]+)["']""", source))
    assert read, "the patterns no longer match how the routes read their arguments"
    assert read <= set(PARAMS), f"not walked with junk: {sorted(read - set(PARAMS))}"
