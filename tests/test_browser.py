"""Real Chromium (Debian's /usr/bin/chromium) driven by Playwright against a
real gunicorn gevent server and a real worker."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

from stepline.engine.definitions import load_file
from stepline.engine.states import TERMINAL
from stepline.store import reads

from .conftest import log_messages, wait_for, wait_job

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
OUTPUT = Path(__file__).resolve().parent / "output"
DEFS = Path(__file__).resolve().parent / "browser_defs"
ORDER = {"pending": 0, "running": 1, "completed": 2, "failed": 2, "cancelled": 2, "skipped": 2}

# Records, after every live message the page applies, what the DOM shows.
TRACE_SCRIPT = """
window.__trace = [];
const record = (seq) => {
  const job = document.querySelector('.job-header');
  const steps = {};
  for (const row of document.querySelectorAll('tr.step-row')) {
    steps[row.id.slice(5)] = row.dataset.status;
  }
  window.__trace.push({seq, job: job && job.dataset.status, steps});
};
document.addEventListener('htmx:ws:after:message:incoming', (e) => {
  try { record(JSON.parse(e.detail.message.data).seq); } catch (err) { record(null); }
});
document.addEventListener('htmx:sse:after:message', (e) => record(parseInt(e.detail.message.id)));
"""


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.add_init_script(TRACE_SCRIPT)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == []


@pytest.fixture
def server(live_server):
    return live_server(env={"STEPLINE_DEFINITIONS": str(DEFS)})


def dom_state(page) -> dict:
    return page.evaluate("""() => ({
      job: document.querySelector('.job-header').dataset.status,
      steps: Object.fromEntries([...document.querySelectorAll('tr.step-row')]
        .map(r => [r.id.slice(5), r.dataset.status]))})""")


def structure_state(server, job_id: str) -> dict:
    s = requests.get(f"{server.url}/api/jobs/{job_id}/structure", timeout=5).json()
    return {"job": s["status"], "steps": {x["step_id"]: x["status"] for x in s["steps"]}}


def wait_dom_matches_structure(page, server, job_id, timeout=15) -> dict:
    def same():
        state = structure_state(server, job_id)
        return state if dom_state(page) == state else None
    return wait_for(same, timeout, interval=0.1, what="DOM to equal /structure")


def run_from_ui(page, server, name: str) -> str:
    page.goto(f"{server.url}/definitions")
    page.click(f"#run-{name} button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs/*")
    wait_for(lambda: page.evaluate("document.getElementById('live').dataset.opened")
             or page.evaluate("document.getElementById('live').hasAttribute('hx-sse:connect')"),
             what="live connection")
    return page.url.rsplit("/", 1)[1]


def check_trace(store, job_id: str, trace: list[dict]) -> None:
    """After every message: the job is terminal only when all steps are; no
    status ever goes backwards; and the DOM is never behind the event stream
    (each shown status is one the entity had at or after that message's seq)."""
    events = reads.events_after(store.db, 0, 10**6, job_id=job_id)
    assert trace, "no live message was applied"
    history: dict[str, list[tuple[int, str]]] = {}
    for e in events:
        history.setdefault(e["step_id"] or "job", []).append((e["seq"], e["status"]))
    last: dict[str, str] = {}
    for entry in trace:
        shown = {"job": entry["job"], **entry["steps"]}
        if entry["job"] in TERMINAL:
            assert all(s in TERMINAL for s in entry["steps"].values()), entry
        for key, status in shown.items():
            assert ORDER[status] >= ORDER[last.get(key, "pending")], (key, entry)
            last[key] = status
            if entry["seq"] is None:
                continue
            at_seq = [s for seq, s in history.get(key, []) if seq <= entry["seq"]]
            later = [s for seq, s in history.get(key, []) if seq > entry["seq"]]
            allowed = set(at_seq[-1:] or ["pending"]) | set(later)
            assert status in allowed, (key, status, entry["seq"], allowed)


def test_demo_pipeline_from_the_ui_goes_live_to_completed(page, server, store, start_worker):
    job_id = run_from_ui(page, server, "codebase_classify")
    assert set(dom_state(page)["steps"].values()) == {"pending"}
    start_worker()
    wait_for(lambda: dom_state(page)["job"] == "completed", 30, what="job completed in DOM")
    final = wait_dom_matches_structure(page, server, job_id)
    assert set(final["steps"].values()) <= {"completed"}
    check_trace(store, job_id, page.evaluate("window.__trace"))
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "demo-job-page.png"), full_page=True)


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_watch_every_step_and_lazy_logs(page, server, store, start_worker, transport):
    log_requests: list[str] = []
    page.on("request", lambda r: log_requests.append(r.url)
            if "/lines" in r.url or "/panel" in r.url else None)
    page.goto(f"{server.url}/definitions" + ("?transport=sse" if transport == "sse" else ""))
    job_id = run_from_ui(page, server, "slow_pipeline")
    if transport == "sse":  # force the fallback on the job page itself
        page.goto(f"{server.url}/jobs/{job_id}?transport=sse")
        wait_for(lambda: page.evaluate("window.__trace.length") > 0, what="SSE snapshot")
        assert page.evaluate("document.getElementById('live').hasAttribute('hx-sse:connect')")
    steps = {s["name"]: s["id"] for s in reads.job_steps(store.db, job_id)}
    start_worker()

    def seen_running(name: str) -> None:
        running = page.locator(f"#step-{steps[name]}[data-status=running]")
        running.wait_for(timeout=20_000)

    # every step is seen running in the DOM, without a reload
    seen_running("prepare")
    assert log_requests == []  # nothing expanded: no log request at all
    lines = page.locator(f"#logs-{steps['prepare']} .ll")
    page.click(f"#step-{steps['prepare']} .toggle")
    lines.first.wait_for()
    shown = lines.count()
    wait_for(lambda: lines.count() > shown, 10, what="new lines in the expanded step")
    numbers = page.locator(f"#logs-{steps['prepare']} .ll .ln").all_text_contents()
    assert numbers == [str(n) for n in range(1, len(numbers) + 1)]  # in order, once
    page.click(f"#step-{steps['prepare']} .toggle")  # collapse
    assert lines.count() == 0
    collapsed_at = len(log_requests)
    seen_running("fan")
    seen_running("finish")
    wait_job(store, job_id)
    assert wait_dom_matches_structure(page, server, job_id)["job"] == "completed"
    # the fan step logged 120 lines while every step was collapsed: no fetch
    assert len(log_requests) == collapsed_at
    assert all(steps["prepare"] in url for url in log_requests)
    check_trace(store, job_id, page.evaluate("window.__trace"))


def test_expanded_step_follows_new_lines_and_search_covers_all(page, server, store,
                                                               start_worker):
    job_id = run_from_ui(page, server, "slow_pipeline")
    fan = next(s["id"] for s in reads.job_steps(store.db, job_id) if s["name"] == "fan")
    page.click(f"#step-{fan} .toggle")
    # Opened before the step ran: it says so, and its toggle points down.
    # (stepline.js removes the note once lines come; the toggle turns by its
    # aria-expanded: neither is a CSS :has()/:only-child rule any more)
    note = page.locator(f"#logs-{fan} .none")
    note.wait_for()
    assert note.inner_text() == "no lines yet"
    wait_for(lambda: toggle_turn(page, fan) != "none", 5, what="the toggle turned")
    start_worker()
    page.locator(f"#step-{fan}[data-status=completed]").wait_for(timeout=30_000)
    total = reads.get_step(store.db, fan)["log_count"]
    wait_for(lambda: page.locator(f"#logs-{fan} .ll").count() == total, 10,
             what="all fan lines")
    assert not note.is_visible()  # the lines came: no "no lines yet" above them
    numbers = page.locator(f"#logs-{fan} .ll .ln").all_text_contents()
    assert numbers == [str(n) for n in range(1, total + 1)]
    page.fill(f"#logpanel-{fan} input[type=search]", "line 20 of 20")
    page.locator(f"#logpanel-{fan} .matches").wait_for()
    wait_for(lambda: page.locator(f"#logs-{fan} .ll").count() == 6, 10, what="search results")
    assert "6 matching lines" in page.inner_text(f"#logpanel-{fan} .matches")
    page.click(f"#step-{fan} .toggle")  # collapse: the toggle points right again
    wait_for(lambda: toggle_turn(page, fan) == "none", 5, what="the toggle back")


def toggle_turn(page, step_id: str) -> str:
    """The step's log toggle's transform ("none": pointing right)."""
    return page.eval_on_selector(f"#step-{step_id} .toggle", "b => getComputedStyle(b).transform")


def test_page_resyncs_after_the_server_restarts(page, server, store, start_worker,
                                                live_server):
    job_id = run_from_ui(page, server, "slow_pipeline")
    start_worker()
    page.locator(".step-row[data-status=running]").first.wait_for(timeout=20_000)
    server.stop()
    time.sleep(1.5)  # the job moves on while nobody serves the page
    restarted = live_server(port=server.port, env={"STEPLINE_DEFINITIONS": str(DEFS)})
    wait_dom_matches_structure(page, restarted, job_id, timeout=20)
    page.locator(".job-header[data-status=completed]").wait_for(timeout=30_000)
    wait_dom_matches_structure(page, restarted, job_id, timeout=10)


def test_falls_back_to_sse_when_the_websocket_cannot_connect(page, server, store,
                                                             start_worker):
    page.route_web_socket("**/ws*", lambda ws: ws.close())
    job_id = run_from_ui(page, server, "slow_pipeline")
    wait_for(lambda: page.evaluate(
        "document.getElementById('live').hasAttribute('hx-sse:connect')"), 10,
        what="SSE fallback")
    start_worker()
    page.locator(".job-header[data-status=completed]").wait_for(timeout=30_000)
    wait_dom_matches_structure(page, server, job_id)
    check_trace(store, job_id, page.evaluate("window.__trace"))


def test_big_log_shows_its_tail_and_loads_earlier_pages(page, server, store, start_worker):
    from .conftest import make_definition

    job_id = store.create_job(make_definition(
        '[step.count]\ntype = "shell"\nrun = "seq 1 1200"\n'), {})
    start_worker()
    wait_job(store, job_id)
    step_id = reads.job_steps(store.db, job_id)[0]["id"]
    page.goto(f"{server.url}/jobs/{job_id}")
    page.click(f"#step-{step_id} .toggle")
    rows = page.locator(f"#logs-{step_id} .ll")
    rows.first.wait_for()
    assert rows.count() == 500
    assert rows.first.locator(".msg").text_content() == "701"
    for expected_first, expected_count in (("201", 1000), ("1", 1200)):
        page.click(f"#logs-{step_id}-earlier")
        wait_for(lambda n=expected_count: rows.count() == n, 10, what="earlier lines")
        assert rows.first.locator(".msg").text_content() == expected_first
    assert page.locator(f"#logs-{step_id}-earlier").is_hidden()
    numbers = page.locator(f"#logs-{step_id} .ll .ln").all_text_contents()
    assert numbers == [str(n) for n in range(1, 1201)]
    page.click(f"a[href='#log-{step_id}-L42']")
    assert page.url.endswith(f"#log-{step_id}-L42")


def hostile_definition(directory: Path) -> None:
    """Payloads in the description, a param default, a step name and a shell
    command's output; the python step logs every payload and fails with one."""
    from .step_functions import XSS_PAYLOADS

    q = json.dumps  # a JSON string is a valid TOML basic string
    (directory / "hostile.toml").write_text(
        f"description = {q(XSS_PAYLOADS[0])}\n"
        f"[params]\nnote = {q(XSS_PAYLOADS[2])}\n"
        f"[step.{q(XSS_PAYLOADS[1])}]\ntype = \"python\"\n"
        "call = \"tests.step_functions:hostile\"\n"
        "[step.echo]\ntype = \"shell\"\nrun = \"echo {params.note}\"\n", encoding="utf-8")


def assert_nothing_ran(page, dialogs: list, requests_seen: list) -> None:
    assert page.evaluate("window.__pwned") is None
    assert dialogs == [] and not [u for u in requests_seen if "pwned" in u]
    # the one SVG a job page draws itself: the step timeline (its names are text)
    assert page.evaluate("""() => [...document.querySelectorAll(
        'img, svg, iframe, object, embed, a[href^="javascript:" i], [onerror], [onload]'
    )].filter(e => !(e.matches('#timeline > svg.timeline')
                     && !e.querySelector('[onload], [onerror], foreignObject'))).length""") == 0


def test_hostile_text_is_shown_literally_and_never_runs(page, live_server, store,
                                                        start_worker, tmp_path):
    from .step_functions import XSS_PAYLOADS

    hostile_definition(tmp_path)
    server = live_server(env={"STEPLINE_DEFINITIONS": str(tmp_path)})
    dialogs, requests_seen = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: requests_seen.append(r.url))

    page.goto(f"{server.url}/definitions")
    assert XSS_PAYLOADS[0] in page.inner_text("main")
    assert_nothing_ran(page, dialogs, requests_seen)

    # a run param from the API, then the page watches the run live
    started = requests.post(f"{server.url}/api/definitions/hostile/run", timeout=5,
                            json={"params": {"note": XSS_PAYLOADS[3]}})
    job_id = started.json()["job_id"]
    page.goto(f"{server.url}/jobs/{job_id}")
    start_worker()
    page.locator(".job-header[data-status=failed]").wait_for(timeout=30_000)
    steps = {s["name"]: s["id"] for s in reads.job_steps(store.db, job_id)}
    hostile, echo = steps[XSS_PAYLOADS[1]], steps["echo"]
    header = page.inner_text(".job-header")
    assert f"note={XSS_PAYLOADS[3]}" in header
    assert f"step {XSS_PAYLOADS[1]!r} failed" in header
    row = page.inner_text(f"#step-{hostile}")
    assert XSS_PAYLOADS[1] in row  # the step's name and its error

    for step_id in (hostile, echo):
        page.click(f"#step-{step_id} .toggle")
        page.locator(f"#logs-{step_id} .ll").first.wait_for()
    shown = page.locator(f"#logs-{hostile} .ll .msg").all_inner_texts()
    assert shown[:len(XSS_PAYLOADS)] == XSS_PAYLOADS
    assert shown[len(XSS_PAYLOADS):len(XSS_PAYLOADS) + 3] == [
        "osc link", "<b>red</b> after clear", "invoice[U+202E]gnp.exe"]
    assert page.locator(f"#logs-{echo} .ll .msg").first.inner_text() == XSS_PAYLOADS[3]
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "hostile-job-page.png"), full_page=True)
    page.fill(f"#logpanel-{hostile} input[type=search]", "<script>")
    matching = [m for m in log_messages(store, hostile) if "<script>" in m]
    assert len(matching) == 3
    wait_for(lambda: page.locator(f"#logs-{hostile} .ll .msg").all_inner_texts() == matching,
             10, what="search for <script>")
    assert_nothing_ran(page, dialogs, requests_seen)

    page.goto(f"{server.url}/")
    page.locator(f"#job-{job_id}").wait_for()
    assert f"step {XSS_PAYLOADS[1]!r} failed" in page.inner_text(f"#job-{job_id}")
    assert_nothing_ran(page, dialogs, requests_seen)


def test_pages_resync_within_5s_after_their_web_worker_is_killed(browser, server, store,
                                                                  start_worker):
    """kill -9 of the gunicorn worker that holds the live connections: the
    master starts another, every page reconnects and matches /structure."""
    job_id = store.create_job(load_file(DEFS / "slow_pipeline.toml"), {"pause": 1.0})
    contexts = [browser.new_context() for _ in range(2)]
    pages = [context.new_page() for context in contexts]
    for page in pages:
        page.add_init_script(TRACE_SCRIPT)
        page.goto(f"{server.url}/jobs/{job_id}")
        wait_for(lambda p=page: p.evaluate("document.getElementById('live').dataset.opened"),
                 what="live connection")
    start_worker()
    pages[0].locator(".step-row[data-status=running]").first.wait_for(timeout=20_000)
    [victim] = server.worker_pids()
    seen = [page.evaluate("window.__trace.length") for page in pages]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    store.request_cancel(job_id)  # the job changes while nobody serves the pages
    wait_job(store, job_id)
    for page, before in zip(pages, seen, strict=True):
        left = 5 - (time.monotonic() - killed_at)
        wait_for(lambda p=page, n=before: p.evaluate("window.__trace.length") > n, left,
                 what="a message from the new web worker")
        final = wait_dom_matches_structure(page, server, job_id,
                                           timeout=5 - (time.monotonic() - killed_at))
        assert final["job"] == "cancelled"
    resynced_s = time.monotonic() - killed_at
    assert victim not in server.worker_pids()
    for context in contexts:
        context.close()
    print(f"\nweb worker killed: both pages matched /structure after {resynced_s:.2f}s")
