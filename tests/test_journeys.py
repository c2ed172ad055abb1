"""What a person does with a definition, in Chromium: look at its steps and
its runs, run it, then re-run a finished job with one param changed."""

import os
import signal
import time

import pytest
import requests

from stepline.engine.definitions import load_file
from stepline.web.render import duration

from .conftest import make_definition, wait_for
from .live_server import LiveServer
from .test_browser import DEFS, OUTPUT, browser, page, server  # noqa: F401 - fixtures

DEF = "slow_pipeline"


def job_status(server, job_id: str) -> str:
    return requests.get(f"{server.url}/api/jobs/{job_id}", timeout=5).json()["status"]


def test_definition_page_graph_history_and_rerun_with_edited_params(
        page, server, start_worker):
    start_worker()
    page.goto(f"{server.url}/definitions")
    page.click(f"#def-{DEF} h2 a")
    page.wait_for_url(f"{server.url}/definitions/{DEF}")
    assert page.locator(".description").count() == 1  # said once, above the graph
    # the steps as a graph: a box per step, a line per dependency
    assert page.locator("svg.graph.tall").is_hidden()  # the phone's drawing
    assert page.locator("svg.graph.wide .node").evaluate_all(
        "nodes => nodes.map(n => n.dataset.step)") == ["prepare", "fan", "finish"]
    assert page.locator("svg.graph.wide .edge").count() == 2
    assert page.locator(".run-history .empty").inner_text() == "Not run yet."
    page.click("details.source summary")  # the file itself, on request
    assert "[step.prepare]" in page.locator("details.source pre").inner_text()

    page.fill(f"#run-{DEF} input[name='param.pause']", "0.2")
    page.click(f"#run-{DEF} button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs/*")
    first = page.url.rsplit("/", 1)[1]
    wait_for(lambda: job_status(server, first) == "completed", timeout=60, what="first run")

    # "Edit params & re-run": the form comes pre-filled from the job
    page.click("text=Edit params & re-run")
    page.wait_for_url(f"{server.url}/definitions/{DEF}?from={first}#rerun")
    note = page.locator(".rerun-note")  # says so at the form, which is in view
    assert note.inner_text() == f"Re-running job {first} with its params (edit and run)"
    assert note.locator("a").get_attribute("href") == f"/jobs/{first}"
    top, bottom = page.evaluate("""() => [document.querySelector('.rerun-note'),
        document.querySelector('.run-form button[type=submit]')].map(
        (e, i) => e.getBoundingClientRect()[i ? 'bottom' : 'top'])""")
    assert 0 <= top and bottom <= page.viewport_size["height"]  # the note to the run button
    page.screenshot(path=str(OUTPUT / "definition-page-rerun.png"))
    pause = page.locator(f"#run-{DEF} input[name='param.pause']")
    assert pause.input_value() == "0.2"
    assert pause.get_attribute("inputmode") is None  # no min: a keypad without "-" would not do
    pause.fill("0.1")
    page.click(f"#run-{DEF} button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs/*")
    second = page.url.rsplit("/", 1)[1]
    assert second != first
    assert requests.get(f"{server.url}/api/jobs/{second}", timeout=5).json()["params"] == {
        "pause": 0.1}
    wait_for(lambda: job_status(server, second) == "completed", timeout=60, what="second run")

    # the history: one bar per run, oldest first, each a link to its job
    page.goto(f"{server.url}/definitions/{DEF}")
    bars = page.locator("svg.history a.bar")
    assert bars.evaluate_all("bars => bars.map(b => b.dataset.job)") == [first, second]
    assert bars.evaluate_all("bars => bars.map(b => b.classList.contains('status-completed'))"
                             ) == [True, True]
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "definition-page.png"), full_page=True)
    bars.first.click()
    page.wait_for_url(f"{server.url}/jobs/{first}")


def test_sign_in_and_out_with_a_token(browser, live_server):
    """A person who opens a protected Stepline: a page that says what it wants
    and where the token comes from, a wrong token refused, the right one let
    in, and a way out."""
    server = live_server(env={"STEPLINE_TOKEN": "s3cret-token"})
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{server.url}/definitions")
    assert page.locator("h1").inner_text() == "Sign in to Stepline"
    assert "STEPLINE_TOKEN" in page.locator(".hint").inner_text()
    page.fill("input[name=token]", "wrong")
    page.click("button:text('Sign in')")
    assert page.locator("[role=alert]").inner_text() == "wrong token"
    page.fill("input[name=token]", "s3cret-token")
    page.click("button:text('Sign in')")
    page.wait_for_url(f"{server.url}/definitions")  # back where they were going
    page.click("button:text('Sign out')")
    page.wait_for_url(f"{server.url}/login")
    page.goto(f"{server.url}/")
    assert page.url.startswith(f"{server.url}/login")
    context.close()


def test_cancel_a_job_and_see_its_cleanup_run(page, server, start_worker):
    """Cancel from the job page, look again 2 s later: the running step says
    it was cancelled, the step that never started is a quiet grey
    "cancelled" with no error, and the cleanup (always_run) completed."""
    start_worker()
    page.goto(f"{server.url}/definitions")
    page.click("#run-cancel_cleanup button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs/*")
    page.wait_for_selector("tr.step-row[data-status=running]")
    page.on("dialog", lambda dialog: dialog.accept())  # "Cancel this job?"
    page.click(".job-header button:text('Cancel')")
    page.wait_for_timeout(2000)
    page.wait_for_selector(".job-header[data-status=cancelled]", timeout=10_000)

    def row(name: str):
        return page.locator("tr.step-row", has=page.locator(f"td.name:text-is('{name}')"))

    rows = {name: row(name) for name in ("long", "after", "cleanup")}
    status = {name: r.get_attribute("data-status") for name, r in rows.items()}
    assert status == {"long": "cancelled", "after": "cancelled", "cleanup": "completed"}
    assert rows["long"].locator(".error").inner_text() == "cancelled by user"
    assert rows["after"].locator(".error").count() == 0


def test_a_refused_or_unsent_action_says_why(page, live_server, store, tmp_path):
    """A finished job's definition file is removed while its page is open:
    its Re-run (confirmed) once did nothing on screen, a 404 in the console;
    the server's refusal now shows above the page. Then the server is stopped
    and Delete is clicked: nothing either, before."""
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "gone.toml").write_text('[step.a]\ntype = "shell"\nrun = "true"\n')
    server = live_server(env={"STEPLINE_DEFINITIONS": str(defs)})
    job_id = store.create_job(load_file(defs / "gone.toml"), {})
    store.request_cancel(job_id)  # pending: cancelled at once, so it can be re-run
    page.goto(f"{server.url}/jobs/{job_id}")
    rerun = page.locator(".job-header button:text('Re-run')")
    rerun.wait_for()
    # removed once the live snapshot is in: it re-renders the header, which
    # would then (rightly) offer no Re-run (the race seen on PostgreSQL)
    wait_for(lambda: page.evaluate("window.__trace.length") > 0, 30,
             what="the live snapshot")
    (defs / "gone.toml").unlink()
    page.on("dialog", lambda dialog: dialog.accept())
    rerun.click()
    page.wait_for_timeout(2000)
    alert = page.locator("#action-error")
    assert "no definition named 'gone'" in alert.inner_text()
    assert page.url == f"{server.url}/jobs/{job_id}"  # still here, and told why

    server.stop()
    page.click(".job-header button:text('Delete')")
    wait_for(lambda: "could not reach the server" in alert.inner_text(), 10,
             what="the unsent delete said so")


# A step whose one line (~1,000 characters) is wider than any phone.
LONG_LINE = """
name = "long_line"
[step.talk]
type = "shell"
run = "echo short; yes long-line-word | head -n 70 | tr '\\n' ' '; echo; echo done"
"""
PHONE = {"width": 390, "height": 844}


def page_width(page) -> int:
    return page.evaluate("document.documentElement.scrollWidth")


NOT_LOADED = ("definition 'elsewhere' is not loaded by this server:"
              " it cannot be run or re-run here")


@pytest.mark.parametrize("viewport", [PHONE, {"width": 1280, "height": 900}],
                         ids=["390px", "desktop"])
def test_a_job_of_a_definition_not_loaded_here_says_why(browser, server, store, viewport):
    """A job queued from another project's definitions folder, not this
    server's. Before, its finished page offered "Edit params & re-run", which
    led to a bare 404, and Re-run, which was refused. Now the page offers
    neither and says why, on a phone as on a desktop; every link left on it
    leads somewhere; the run form's URL, opened anyway, says why too."""
    job_id = store.create_job(make_definition('[step.a]\ntype = "shell"\nrun = "true"',
                                              name="elsewhere"), {})
    phone = viewport is PHONE
    context = browser.new_context(viewport=viewport, is_mobile=phone, has_touch=phone)
    page = context.new_page()
    page.goto(f"{server.url}/jobs/{job_id}")
    header = page.locator(".job-header")
    page.on("dialog", lambda dialog: dialog.accept())
    header.locator("button:text('Cancel')").click()  # no worker here: still pending
    # the header the live stream pushes once it is cancelled says it too
    page.locator(".job-header[data-status=cancelled]").wait_for(timeout=30_000)
    page.wait_for_timeout(2000)
    note = header.locator(".unavailable")
    assert note.inner_text() == NOT_LOADED
    box = note.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], box
    assert page_width(page) <= viewport["width"]
    assert header.locator("button").all_inner_texts() == ["Delete"]
    assert header.locator("a:text('Edit params')").count() == 0
    assert "elsewhere" in header.locator("h1").inner_text()  # named, not linked
    assert header.locator("h1 a").count() == 0
    for href in page.locator("a[href]").evaluate_all("links => links.map(a => a.href)"):
        with requests.get(href, timeout=10, stream=True) as response:
            assert response.status_code < 400, href
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"job-not-loaded-{viewport['width']}px.png"),
                    full_page=True)

    # the run form's address, from a bookmark or typed: a page saying why
    response = page.goto(f"{server.url}/definitions/elsewhere?from={job_id}#rerun")
    assert response.status == 404
    assert page.locator("main .error").inner_text() == NOT_LOADED
    assert page_width(page) <= viewport["width"]
    context.close()


def test_a_definitions_steps_on_a_390px_phone(browser, server):
    """The steps graph fits a phone: every step box on the screen, nothing to
    scroll sideways, names still legible. Before: a 632 px row of boxes in a
    sideways-scrolling box, the last step out of sight with no sign of it."""
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(f"{server.url}/definitions/{DEF}")
    assert page.locator("svg.graph.wide").is_hidden()  # top to bottom instead
    nodes = page.locator("svg.graph.tall .node")
    assert nodes.evaluate_all("nodes => nodes.map(n => n.dataset.step)") == [
        "prepare", "fan", "finish"]
    for node in nodes.all():
        box = node.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    section = page.locator(".definition-graph")
    assert section.evaluate("e => e.scrollWidth <= e.clientWidth")
    assert page_width(page) <= PHONE["width"]
    name = nodes.first.locator("text.name").bounding_box()
    assert name["height"] >= 12  # 13 px type, drawn at full size
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "definition-page-390px.png"), full_page=True)
    context.close()


def test_a_job_on_a_390px_phone(browser, live_server, start_worker, tmp_path):
    """A person on a phone: no page scrolls sideways, the log toolbar fits on
    the screen, the expand toggle is finger-sized and a long log line scrolls
    inside its panel, not the page."""
    (tmp_path / "long_line.toml").write_text(LONG_LINE)
    server = live_server(env={"STEPLINE_DEFINITIONS": f"{DEFS}{os.pathsep}{tmp_path}"})
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    start_worker()
    page.goto(f"{server.url}/definitions")
    assert page_width(page) <= PHONE["width"]
    page.tap("#run-long_line button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs/*")
    page.locator(".job-header[data-status=completed]").wait_for(timeout=60_000)
    page.goto(f"{server.url}/")
    assert page_width(page) <= PHONE["width"]

    page.go_back()
    toggle = page.locator("tr.step-row .toggle").first
    box = toggle.bounding_box()
    assert box["width"] >= 32 and box["height"] >= 32
    toggle.tap()
    lines = page.locator(".log-panel .log-lines")
    wait_for(lambda: lines.locator(".ll").count() == 3, 15, what="the log lines")
    assert page_width(page) <= PHONE["width"]
    for control in page.locator(".log-tools > *").all():
        box = control.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], control.inner_html()
    # the long line scrolls inside the panel, which itself fits the screen
    assert lines.evaluate("e => e.scrollWidth > e.clientWidth")
    assert lines.bounding_box()["x"] + lines.bounding_box()["width"] <= PHONE["width"]
    # finger-sized tap targets: the nav links (16 px tall before), the labels
    # around the log checkboxes (20 px boxes), the line-number links (36 px
    # wide; their height is the line's: 32 px lines would halve the log shown)
    for link in page.locator(".topbar nav a").all():
        assert link.bounding_box()["height"] >= 32, link.inner_text()
    for label in page.locator(".log-tools label.opt").all():
        box = label.bounding_box()
        assert box["width"] >= 32 and box["height"] >= 32, label.inner_text()
    assert lines.locator("a.ln").first.bounding_box()["width"] >= 32
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "job-page-390px.png"), full_page=True)
    job_url = page.url

    # the run history: a bar's whole column is its link (a quick run's bar
    # is 2 px tall), and a tap on it opens the job
    page.goto(f"{server.url}/definitions/long_line")
    bar = page.locator("svg.history a.bar")
    box = bar.bounding_box()
    assert box["height"] == page.locator("svg.history").bounding_box()["height"], box
    assert box["width"] >= 18, box
    page.screenshot(path=str(OUTPUT / "definition-page-390px-history.png"), full_page=True)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + 4)  # far above a short bar
    page.wait_for_url(job_url)

    for path in ("/definitions", "/definitions/slow_pipeline"):
        page.goto(f"{server.url}{path}")
        assert page_width(page) <= PHONE["width"], path
    context.close()


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_live_indicator_says_offline_at_once_and_live_again(page, server, live_server,
                                                            transport):
    page.goto(f"{server.url}/?transport={transport}")
    live = page.locator("#live")
    wait_for(lambda: page.evaluate("document.getElementById('live').dataset.opened"),
             what="the live connection")
    wait_for(lambda: live.inner_text() == "live", 10, what="the first snapshot")
    assert live.inner_text() == "live"
    server.stop()  # returns once gunicorn has exited: its sockets are closed
    wait_for(lambda: "live" != live.inner_text(), 2, what="the offline indicator")
    assert "offline" in live.inner_text()
    live_server(port=server.port, env={"STEPLINE_DEFINITIONS": str(DEFS)})
    wait_for(lambda: live.inner_text() == "live", 30, what="live again after the restart")


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_a_stopping_server_ends_live_connections_before_its_grace(page, db_path, transport):
    """SIGTERM: gunicorn waits up to its graceful_timeout (5 s) for open
    requests, and a live connection never ends by itself, so pages said
    "live" for those 5 s. Now they say "offline" well before the grace ends."""
    server = LiveServer(db_path, graceful_timeout=None,
                        env={"STEPLINE_DEFINITIONS": str(DEFS)}).start()
    try:
        page.goto(f"{server.url}/?transport={transport}")
        live = page.locator("#live")
        wait_for(lambda: live.inner_text() == "live", 10, what="the first snapshot")
        server.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        wait_for(lambda: "offline" in live.inner_text(), 10, what="the offline indicator")
        assert time.monotonic() - stopped < 4, "offline only once the 5 s grace was over"
    finally:
        server.stop()


def test_running_durations_tick_in_the_servers_format(page, server):
    page.goto(f"{server.url}/")
    for seconds in (0.04, 0.4, 9.5, 42, 65, 3599, 3725, 90061):
        started = time.time() - seconds
        assert page.evaluate("s => stepline.duration(s)", seconds) == duration(
            started, started + seconds), seconds
    assert page.evaluate("stepline.duration(3725)") == "1h 02m"


def test_view_toggles_stay_as_the_person_left_them(page, server, start_worker):
    """Tick "timestamps", tick "follow" (a finished step's starts unticked),
    look again 2 s later: both stay as set and the times show (they used to
    reload the panel and reset)."""
    start_worker()
    page.goto(f"{server.url}/definitions")
    page.click(f"#run-{DEF} button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    wait_for(lambda: job_status(server, job_id) == "completed", timeout=60, what="the job")
    page.locator("tr.step-row button.toggle").first.click()
    page.wait_for_selector(".log-panel .ts-toggle")
    page.check(".log-panel .ts-toggle")
    assert not page.is_checked(".log-panel .follow")
    page.check(".log-panel .follow")
    page.wait_for_timeout(2000)
    assert page.is_checked(".log-panel .ts-toggle")
    assert page.is_checked(".log-panel .follow")
    assert page.locator(".log-panel .ll .ts").first.is_visible()
