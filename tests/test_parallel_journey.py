"""In Chromium, on a phone: the built-in load_demo's two independent steps
run side by side, in the steps table and on the timeline."""

import pytest

from stepline.engine.states import TERMINAL

from .conftest import wait_for
from .test_browser import OUTPUT, browser, check_trace, page, server  # noqa: F401 - fixtures
from .test_journeys import job_status

# Both rows say "running" (data-status and the badge a person reads) in one look.
BOTH_RUNNING = """names => names.every(name => [...document.querySelectorAll('tr.step-row')]
  .some(row => row.querySelector('td.name').firstChild.textContent.trim() === name
        && row.dataset.status === 'running'
        && row.querySelector('.badge').innerText.includes('running')))"""


def bar_extent(page, step: str) -> tuple[float, float]:
    """Where a step's timeline bar starts and ends, in % of the axis."""
    rect = page.locator(f"svg.timeline g.span[data-step={step}] rect")
    x, width = (float(rect.get_attribute(a)[:-1]) for a in ("x", "width"))
    return x, x + width


@pytest.mark.parametrize("load", ["idle", "cpu_saturated"])
def test_load_demo_runs_fan_out_and_flaky_side_by_side(page, server, store, start_worker,
                                                       request, load):
    """A person runs load_demo with 8 tasks and watches its job page: once
    warm_up is done, fan_out and flaky both say "running" at the same time;
    2 s later fan_out still runs; when the job has ended, their bars on the
    timeline overlap, both after warm_up's."""
    if load == "cpu_saturated":
        request.getfixturevalue("cpu_saturated")
    page.set_viewport_size({"width": 390, "height": 844})
    start_worker()
    page.goto(f"{server.url}/definitions/load_demo")
    page.fill("#run-load_demo input[name='param.tasks']", "8")
    page.click("#run-load_demo button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]

    page.wait_for_function(BOTH_RUNNING, arg=["fan_out", "flaky"], timeout=60_000)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"parallel-steps-phone-{load}.png"), full_page=True)
    page.wait_for_timeout(2000)  # fan_out's tasks log for 7.5 s each: it still runs
    fan_out = page.locator("tr.step-row", has=page.locator("td.name:text-is('fan_out')"))
    assert fan_out.get_attribute("data-status") == "running"

    wait_for(lambda: job_status(server, job_id) in TERMINAL, 120, what="the job to end")
    page.wait_for_selector(f".job-header[data-status={job_status(server, job_id)}]")
    wait_for(lambda: page.locator("svg.timeline g.span").count() == 4
             and page.locator("svg.timeline g.span.status-running").count() == 0,
             30, what="the final timeline")
    fan_start, fan_end = bar_extent(page, "fan_out")
    flaky_start, flaky_end = bar_extent(page, "flaky")
    assert fan_start < flaky_end and flaky_start < fan_end  # side by side in time
    warm_end = bar_extent(page, "warm_up")[1]
    # both waited for warm_up (0.5 %: the rounding of x and width)
    assert warm_end <= min(fan_start, flaky_start) + 0.5
    page.screenshot(path=str(OUTPUT / f"parallel-timeline-phone-{load}.png"), full_page=True)
    check_trace(store, job_id, page.evaluate("window.__trace"))
