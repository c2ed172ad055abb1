"""Reading a log while it streams, in a real Chromium against a real
gunicorn gevent server and real workers: "load earlier" is never lost, a
panel read at a line stays there, an open panel catches up after a
reconnect, a panel closed mid-fetch stays closed, and the toggles say
whether their panel is open."""

import pytest

from stepline.store import reads

from .conftest import make_definition, wait_for
from .test_browser import DEFS, browser, page, server  # noqa: F401  (the Chromium fixtures)
from .test_log_tools import in_view, load, numbered_job, open_panel, shown_lines  # noqa: F401

pytestmark = pytest.mark.browser


def streaming_job(store, start_worker, lines: int = 120_000, burst: int = 50,
                  pause: float = 0.05) -> tuple[str, str]:
    """A running job whose one step logs `burst` lines every `pause` seconds:
    a log_refresh about every 50 ms, so the panel's queue is rarely empty."""
    job_id = store.create_job(make_definition(f"""
[step.stream]
type = "python"
call = "tests.step_functions:log_bursts"
config = {{ lines = {lines}, burst = {burst}, pause = {pause} }}
"""), {})
    start_worker()
    return job_id, reads.job_steps(store.db, job_id)[0]["id"]


def logged(store, step_id: str) -> int:
    return reads.get_step(store.db, step_id)["log_count"]


def numbers(tab, step_id: str) -> list[int]:
    return [x["line"] for x in shown_lines(tab, step_id)]


def test_load_earlier_while_the_log_streams(page, server, store, start_worker,  # noqa: F811
                                            load):
    """A click on "load earlier lines" waited in the panel's queue behind a
    live fetch, and the next live fetch (hx-sync "queue last") replaced the
    whole waiting queue: the click was silently lost."""
    job_id, step_id = streaming_job(store, start_worker)
    page.goto(f"{server.url}/jobs/{job_id}")
    wait_for(lambda: logged(store, step_id) > 3000, 60, what="logging")
    open_panel(page, step_id)
    earlier = page.locator(f"#logs-{step_id}-earlier")
    for _ in range(3):
        first = numbers(page, step_id)[0]
        earlier.click()
        wait_for(lambda first=first: numbers(page, step_id)[0] < first, 15,
                 what=f"the lines before {first}")
        shown = numbers(page, step_id)
        assert shown[:501] == list(range(first - 500, first + 1))  # the page before, no gap
        page.wait_for_timeout(300)
    # 2 s later the lines read are still there; new ones wait for the reader
    page.wait_for_timeout(2000)
    assert numbers(page, step_id)[0] == first - 500
    later = page.locator(f"#logs-{step_id}-later")
    assert later.is_visible() and not page.is_checked(f"#logpanel-{step_id} .follow")
    last = numbers(page, step_id)[-1]
    later.click()
    wait_for(lambda: numbers(page, step_id)[-1] == last + 500, 15, what="the next lines")
    page.check(f"#logpanel-{step_id} .follow")
    wait_for(lambda: numbers(page, step_id)[0] > first, 15, what="the newest lines")


def test_a_running_steps_line_stays_in_view(page, server, store, start_worker,  # noqa: F811
                                            load):
    """A link to line 100 of a running step: the first live fetch replaced the
    panel with the newest lines (or appended them and trimmed line 100 away).
    Now the lines wait behind "load later lines"; "follow" brings the newest."""
    job_id, step_id = streaming_job(store, start_worker, burst=200)
    wait_for(lambda: logged(store, step_id) > 7000, 90, what="logging")
    page.goto(f"{server.url}/jobs/{job_id}#log-{step_id}-L100")
    page.locator(f"#log-{step_id}-L100").wait_for()
    page.wait_for_timeout(3000)
    assert in_view(page, f"#log-{step_id}-L100.at")
    assert numbers(page, step_id) == list(range(1, 501))
    assert page.locator(f"#logs-{step_id}-later").is_visible()
    page.click(f"#logs-{step_id}-later")
    wait_for(lambda: numbers(page, step_id)[-1] == 1000, 15, what="the next page")
    assert in_view(page, f"#log-{step_id}-L100.at")

    page.check(f"#logpanel-{step_id} .follow")  # back to the newest lines
    wait_for(lambda: numbers(page, step_id)[0] > 5000, 15, what="the newest lines")
    assert page.locator(f"#logs-{step_id}-later").is_hidden()
    last = numbers(page, step_id)[-1]
    wait_for(lambda: numbers(page, step_id)[-1] > last, 15, what="live lines again")


TICKS = """
[step.ticks]
type = "shell"
run = 'for i in $(seq 1 40); do echo "tick $i"; sleep 0.1; done'
"""


def test_open_panel_catches_up_after_a_reconnect(page, server, live_server, store,  # noqa: F811
                                                 start_worker):
    """The server goes away while a step logs its last lines and finishes:
    the snapshot after the reconnect held no log trigger, so the panel
    stayed short for good."""
    job_id = store.create_job(make_definition(TICKS), {})
    step_id = reads.job_steps(store.db, job_id)[0]["id"]
    page.goto(f"{server.url}/jobs/{job_id}")
    start_worker()
    wait_for(lambda: logged(store, step_id) >= 3, 30, what="the first ticks")
    open_panel(page, step_id)
    server.stop()
    wait_for(lambda: reads.get_job(store.db, job_id)["status"] == "completed", 30,
             what="the job")
    assert numbers(page, step_id)[-1] < 40
    live_server(port=server.port, env={"STEPLINE_DEFINITIONS": str(DEFS)})
    wait_for(lambda: numbers(page, step_id)[-1] == 40, 30, what="the lines logged meanwhile")
    assert numbers(page, step_id) == list(range(1, 41))


def test_a_panel_closed_while_it_fetches_stays_closed(page, server, store,  # noqa: F811
                                                      start_worker):
    """Closed while a live fetch was on its way (and the next one waited):
    the extension read the cursor of a panel no longer in the page, and threw."""
    job_id, step_id = streaming_job(store, start_worker)
    page.goto(f"{server.url}/jobs/{job_id}")
    wait_for(lambda: logged(store, step_id) > 500, 60, what="logging")
    errors = []
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    open_panel(page, step_id)
    # the person's click lands just as a live fetch is sent
    page.evaluate(f"""document.addEventListener("htmx:before:request", (e) => {{
        if (window.__closed || e.detail.ctx.target?.id !== "logs-{step_id}") return;
        window.__closed = true;
        document.getElementById("toggle-{step_id}").click();
    }})""")
    wait_for(lambda: page.evaluate("window.__closed"), 15, what="a live fetch")
    page.wait_for_timeout(2000)
    assert errors == []
    assert page.locator(f"#panel-body-{step_id}").inner_html() == ""


def test_toggles_say_whether_their_panel_is_open(page, server, store,  # noqa: F811
                                                 start_worker):
    """A failed step opened with the page said nothing; a live row update
    (a morph of the row) removed what the script had set."""
    failed_job, failed_step = numbered_job(store, start_worker, lines=300, errors=(150,),
                                           fail=True)
    page.goto(f"{server.url}/jobs/{failed_job}")
    assert page.get_attribute(f"#toggle-{failed_step}", "aria-expanded") == "true"
    page.click(f"#toggle-{failed_step}")
    assert page.get_attribute(f"#toggle-{failed_step}", "aria-expanded") == "false"

    job_id, step_id = streaming_job(store, start_worker)
    page.goto(f"{server.url}/jobs/{job_id}")
    assert page.get_attribute(f"#toggle-{step_id}", "aria-expanded") == "false"
    open_panel(page, step_id)
    count = page.locator(f"#step-{step_id} .log-count")
    before = count.inner_text()
    wait_for(lambda: count.inner_text() != before, 15, what="a live row update")
    page.wait_for_timeout(500)
    assert page.get_attribute(f"#toggle-{step_id}", "aria-expanded") == "true"
    page.click(f"#toggle-{step_id}")
    assert page.get_attribute(f"#toggle-{step_id}", "aria-expanded") == "false"
    assert page.locator(f"#logs-{step_id}").count() == 0


def test_scrolling_up_stops_following_and_follow_returns_to_the_end(
        page, server, store, start_worker, load):  # noqa: F811
    """New-user trial: scrolled up in a running log, "follow" stayed ticked
    while the view stayed put, and ticking it again did not go back to the
    newest line. Now the box says what the panel does."""
    job_id, step_id = streaming_job(store, start_worker, burst=20, pause=0.1)
    page.goto(f"{server.url}/jobs/{job_id}")
    open_panel(page, step_id)
    follow = page.locator(f"#logpanel-{step_id} .follow")
    wait_for(lambda: len(numbers(page, step_id)) > 300, 30, what="a screenful of lines")
    assert follow.is_checked()
    page.locator(f"#logs-{step_id}").hover()
    page.mouse.wheel(0, -600)  # up, to read
    page.wait_for_timeout(2000)
    assert not follow.is_checked()
    top = page.evaluate(f"""() => {{  // the first line wholly showing in the box
      const box = document.getElementById('logs-{step_id}').getBoundingClientRect();
      return [...document.querySelectorAll('#logs-{step_id} .ll')].find(
        (el) => el.getBoundingClientRect().top >= box.top).id; }}""")
    newest = numbers(page, step_id)[-1]
    wait_for(lambda: numbers(page, step_id)[-1] > newest + 40, 30, what="more lines")
    assert in_view(page, f"#{top}")  # still reading where the person was
    assert not in_view(page, f"#log-{step_id}-L{numbers(page, step_id)[-1]}")

    follow.check()  # back to the newest lines, and following them
    page.wait_for_timeout(2000)
    assert follow.is_checked()
    assert page.evaluate(f"""() => {{  // the box shows its newest line, at its end
      const box = document.getElementById('logs-{step_id}');
      return box.scrollTop + box.clientHeight >= box.scrollHeight - 8; }}""")
    assert numbers(page, step_id)[-1] > newest + 40


def test_load_earlier_lines_of_a_finished_step_reads_back(page, server, store,  # noqa: F811
                                                          start_worker, load):
    """New-user trial: on a finished step, "load earlier lines" loaded 500
    lines (first line 1807 -> 1307) while "follow", ticked, kept the view at
    the bottom: nothing seemed to happen. A finished step now opens with
    "follow" unticked; asking for earlier lines unticks it (reading back, as
    scrolling up does) and shows the new lines' end just above the line that
    was first."""
    job_id, step_id = numbered_job(store, start_worker, lines=2306)
    page.goto(f"{server.url}/jobs/{job_id}")
    open_panel(page, step_id)
    follow = page.locator(f"#logpanel-{step_id} .follow")
    page.wait_for_timeout(1000)
    assert numbers(page, step_id)[0] == 1807
    assert in_view(page, f"#log-{step_id}-L2306")  # the last lines, opened for
    assert not follow.is_checked()  # a finished step: nothing to follow

    page.click(f"#logs-{step_id}-earlier")
    page.wait_for_timeout(1000)
    assert numbers(page, step_id)[0] == 1307
    # the new lines' end, and below it the line that was first
    assert in_view(page, f"#log-{step_id}-L1806") and in_view(page, f"#log-{step_id}-L1807")
    assert not in_view(page, f"#log-{step_id}-L2306")
    assert not follow.is_checked()

    # ticked by the person (back to the end), then earlier lines again: unticked
    follow.check()
    page.wait_for_timeout(1000)
    assert in_view(page, f"#log-{step_id}-L2306")
    page.click(f"#logs-{step_id}-earlier")
    page.wait_for_timeout(1000)
    assert numbers(page, step_id)[0] == 807
    assert in_view(page, f"#log-{step_id}-L1306") and not in_view(page, f"#log-{step_id}-L2306")
    assert not follow.is_checked()


def test_a_running_step_opens_following_and_keeps_it_when_it_finishes(
        page, server, store, start_worker, load):  # noqa: F811
    """"follow" starts ticked for a step still logging; the step finishing
    while its panel is open leaves it as the person has it."""
    job_id = store.create_job(make_definition(TICKS), {})
    step_id = reads.job_steps(store.db, job_id)[0]["id"]
    page.goto(f"{server.url}/jobs/{job_id}")
    start_worker()
    page.locator(f"#step-{step_id}[data-status=running]").wait_for(timeout=30_000)
    page.click(f"#step-{step_id} .toggle")
    follow = page.locator(f"#logpanel-{step_id} .follow")
    follow.wait_for()
    assert follow.is_checked()
    page.locator(f"#step-{step_id}[data-status=completed]").wait_for(timeout=30_000)
    wait_for(lambda: numbers(page, step_id)[-1:] == [40], 15, what="the last tick")
    page.wait_for_timeout(1000)
    assert follow.is_checked()
    assert page.evaluate(f"""() => {{  // it followed: the box shows its last line
      const box = document.getElementById('logs-{step_id}');
      return box.scrollTop + box.clientHeight >= box.scrollHeight - 8; }}""")
