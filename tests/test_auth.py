"""STEPLINE_TOKEN: every route refuses without it; CSRF on form posts;
the WebSocket checks Origin."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests
from simple_websocket import Client
from simple_websocket import ConnectionError as WsConnectionError

from app import create_app
from stepline.store import reads

from .conftest import ROOT, make_definition, wait_for
from .live_server import free_port, serving

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
    assert '"snapshot": true' in ws.receive(timeout=30)
    ws.close()
    assert requests.get(server.url + f"/events?job={job_id}", timeout=5).status_code == 401


def unsafe_urls(app, job_id: str, step_id: str):
    return [(m, u) for m, u in concrete_urls(app, job_id, step_id)
            if m not in ("GET", "HEAD") and u not in ("/login",)]


@pytest.mark.parametrize("token", [TOKEN, None], ids=["with-token", "no-token"])
def test_no_state_change_can_be_forged_cross_site(db_path, store, token):
    """What a foreign page can send without a CORS preflight -- a POST with a
    form or text body, cookies attached -- is refused on every unsafe route
    unless it carries the CSRF token. JSON bodies and DELETE need a
    preflight, which is never granted."""
    app = create_app(db_path, token=token)
    job_id = store.create_job(make_definition(ONE_STEP), {})
    step_id = store.db.execute("SELECT id FROM steps").fetchone()[0]
    client = app.test_client()
    csrf = re.search(r'value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
    if token:
        client.post("/login", data={"token": TOKEN, "csrf_token": csrf})
    routes = unsafe_urls(app, job_id, step_id)
    assert len(routes) >= 8
    for method, url in routes:
        if method != "POST":
            continue
        for body in ({"data": {"x": "1"}}, {"data": "x", "content_type": "text/plain"}):
            response = client.open(url, method=method, **body)
            assert response.status_code == 403, (method, url, body)
            assert "CSRF" in response.get_data(as_text=True)
    assert reads.get_job(store.db, job_id)["status"] == "pending"  # nothing changed
    assert store.db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    # the page's own requests carry the header and go through
    assert client.post(f"/jobs/{job_id}/cancel", headers={"X-CSRF-Token": csrf}).status_code == 204


def run_serve(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stepline.cli", "serve", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), "GUNICORN_CMD_ARGS": "--access-logfile -",
             **(env or {})},
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_serve(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on this port (/proc/net/tcp)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_the_token_is_never_logged_or_echoed(tmp_path):
    """Sign in, use the API and the WebSocket with the token, and mistype it:
    neither the server's output (access log on) nor any page shows it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = run_serve("--port", str(port), "--db", str(tmp_path / "s.db"),
                     env={"STEPLINE_TOKEN": TOKEN})
    try:
        wait_for(lambda: serving(url), timeout=30, what="stepline serve")
        session = requests.Session()
        login = session.get(url + "/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)
        pages = [session.post(url + "/login", data={"token": TOKEN, "csrf_token": csrf}).text,
                 session.get(url + "/").text, session.get(url + "/definitions").text]
        pages.append(session.post(url + "/login", data={"token": TOKEN + "x",
                                                        "csrf_token": csrf}).text)
        api = requests.get(url + "/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
        assert api.ok
        pages.append(api.text)
        ws = Client.connect(url.replace("http", "ws") + "/ws?view=jobs",
                            headers={"Authorization": f"Bearer {TOKEN}"})
        snapshot = ws.receive(timeout=30)  # 5 s was too short once, under load on PostgreSQL
        ws.close()
        assert snapshot, "no snapshot on the WebSocket"
        pages.append(snapshot)
        assert all(TOKEN not in page for page in pages)
        time.sleep(0.5)
    finally:
        output = stop_serve(proc)
    assert "GET /api/jobs" in output  # the access log was on
    assert TOKEN not in output


def test_serve_binds_loopback_and_warns_on_an_open_address(tmp_path):
    port = free_port()
    proc = run_serve("--port", str(port), "--db", str(tmp_path / "s.db"),
                     env={"STEPLINE_TOKEN": ""})
    try:
        wait_for(lambda: serving(f"http://127.0.0.1:{port}"), timeout=30, what="stepline serve")
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
    finally:
        output = stop_serve(proc)
    assert "listening on 127.0.0.1 only" in output
    assert "WARNING" not in output

    port = free_port()
    proc = run_serve("--host", "0.0.0.0", "--port", str(port), "--db", str(tmp_path / "s.db"),
                     env={"STEPLINE_TOKEN": ""})
    try:
        wait_for(lambda: serving(f"http://127.0.0.1:{port}"), timeout=30, what="stepline serve")
        assert listening_addresses(port) == {"00000000"}
    finally:
        output = stop_serve(proc)
    assert "WARNING: listening on 0.0.0.0 with no STEPLINE_TOKEN" in output


def test_secrets_are_only_compared_in_constant_time():
    """No `==`/`!=` on the access token or the CSRF token anywhere: only
    hmac.compare_digest, whose time does not depend on where they differ."""
    import ast
    import inspect

    from stepline.web import auth

    tree = ast.parse(inspect.getsource(auth))
    secret_names = {"token", "csrf_token", "sent", "given", "value"}
    compared = 0
    for node in ast.walk(tree):
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
            n.func.id for n in ast.walk(node)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        if isinstance(node, ast.Compare) and any(
                isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            assert not names & secret_names, ast.unparse(node)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "hmac.compare_digest":
            compared += 1
    assert compared == 3  # bearer header, login form, CSRF token
