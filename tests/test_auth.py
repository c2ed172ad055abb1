"""STEPLINE_TOKEN: every route refuses without it; CSRF on form posts;
the WebSocket checks Origin."""

import re

import pytest
import requests
from simple_websocket import Client
from simple_websocket import ConnectionError as WsConnectionError

from app import create_app

from .conftest import make_definition

TOKEN = "s3cret-token"
ONE_STEP = '[step.a]\ntype = "shell"\nrun = "echo a"\n'


@pytest.fixture
def app(db_path):
    return create_app(db_path, token=TOKEN)


def concrete_urls(app, job_id: str, step_id: str):
    """Every rule of the URL map with its parameters filled in, so a new route
    cannot be left unprotected by accident."""
    values = {"job_id": job_id, "step_id": step_id, "name": "load_demo", "filename": "x.css"}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        url = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, url


def test_every_route_refuses_without_the_token(app, store):
    job_id = store.create_job(make_definition(ONE_STEP), {})
    step_id = store.db.execute("SELECT id FROM steps").fetchone()[0]
    client = app.test_client()
    checked = 0
    for method, url in concrete_urls(app, job_id, step_id):
        if url in ("/login", "/healthz"):
            continue
        response = client.open(url, method=method, json={} if method == "POST" else None)
        checked += 1
        if url.startswith(("/api/", "/ws", "/events", "/metrics")):
            assert response.status_code == 401, (method, url)
            assert "authentication required" in response.get_json()["error"]
        else:
            assert response.status_code in (302, 401), (method, url)
    assert checked >= 20


def test_bearer_token_and_wrong_token(app, store):
    job_id = store.create_job(make_definition(ONE_STEP), {})
    client = app.test_client()
    ok = client.get(f"/api/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    bad = client.get(f"/api/jobs/{job_id}", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    # a bearer client needs no CSRF token for a state change
    cancel = client.post(f"/api/jobs/{job_id}/cancel",
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert cancel.status_code == 200


def test_login_cookie_then_csrf_on_every_form_post(app, store):
    job_id = store.create_job(make_definition(ONE_STEP), {})
    client = app.test_client()
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 302 and page.headers["Location"].startswith("/login?next=")
    login_page = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login_page).group(1)
    wrong = client.post("/login", data={"token": "guess", "csrf_token": csrf})
    assert wrong.status_code == 401
    signed_in = client.post("/login", data={"token": TOKEN, "csrf_token": csrf,
                                            "next": f"/jobs/{job_id}"})
    assert signed_in.status_code == 302 and signed_in.headers["Location"] == f"/jobs/{job_id}"
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert f'"X-CSRF-Token": "{csrf}"' in page
    for action in ("cancel", "rerun", "delete"):
        refused = client.post(f"/jobs/{job_id}/{action}")
        assert refused.status_code == 403 and "CSRF" in refused.get_data(as_text=True)
    cancelled = client.post(f"/jobs/{job_id}/cancel", headers={"X-CSRF-Token": csrf})
    assert cancelled.status_code == 204


def test_open_redirect_after_login_is_refused(app):
    client = app.test_client()
    csrf = re.search(r'value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
    response = client.post("/login", data={"token": TOKEN, "csrf_token": csrf,
                                           "next": "//evil.example/"})
    assert response.headers["Location"] == "/"


def test_ws_refuses_missing_token_and_foreign_origin(live_server, store):
    server = live_server(env={"STEPLINE_TOKEN": TOKEN})
    job_id = store.create_job(make_definition(ONE_STEP), {})
    ws_url = server.url.replace("http", "ws") + f"/ws?job={job_id}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with pytest.raises(WsConnectionError):
        Client.connect(ws_url)
    with pytest.raises(WsConnectionError):
        Client.connect(ws_url, headers={**auth, "Origin": "http://evil.example"})
    # this client sends `Host: 127.0.0.1` (no port), so that is its own origin
    ws = Client.connect(ws_url, headers={**auth, "Origin": "http://127.0.0.1"})
    assert '"snapshot": true' in ws.receive(timeout=5)
    ws.close()
    assert requests.get(server.url + f"/events?job={job_id}", timeout=5).status_code == 401
