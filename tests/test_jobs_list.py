"""The jobs list under a burst of jobs (#9), in a real Chromium against a real
gunicorn and a real worker: after the burst every open page (the first page,
a status filter, page 2, the SSE fallback) shows exactly what GET / renders fresh, and it got
far fewer messages than there were events."""

import re
import time

import pytest
import requests

from stepline.store import reads

from .conftest import wait_for
from .test_browser import browser  # noqa: F401 - the shared Chromium fixture

pytestmark = pytest.mark.browser
JOBS = 100
RATE = 20  # jobs/s submitted through the API
PAGES = ["/", "/?status=completed", "/?page=2", "/?transport=sse"]

ONE_STEP = 'name = "one_step"\n[step.only]\ntype = "shell"\nrun = "true"\n'

COUNT_MESSAGES = """
window.__messages = 0;
document.addEventListener('htmx:ws:after:message:incoming', () => { window.__messages++; });
document.addEventListener('htmx:sse:after:message', () => { window.__messages++; });
"""

DOM_STATE = """() => ({
  rows: [...document.querySelectorAll('#job-rows tr')]
    .map(r => [r.id, r.dataset.status || '', r.dataset.version || '']),
  counts: Object.fromEntries([...document.querySelectorAll('#metrics .metric')]
    .map(a => [a.querySelector('.metric-label').textContent, a.dataset.count])),
  pager: document.querySelector('#job-list .pager span').textContent,
})"""

ROW = re.compile(r'<tr (?:id="([^"]+)" )?class="[^"]*"(?: data-status="([^"]+)" '
                 r'data-version="([^"]+)")?')
COUNT = re.compile(r'data-count="(\d+)">\s*<span class="metric-n">\d+</span>'
                   r'<span class="metric-label">([^<]+)</span>')
PAGER = re.compile(r'<nav [^>]*class="pager">.*?<span>([^<]+)</span>', re.S)


def fresh_state(url: str) -> dict:
    """What GET renders now, in DOM_STATE's shape."""
    html = requests.get(url, timeout=30).text
    rows = html[html.index('<tbody id="job-rows">'):html.index("</tbody>")]
    return {"rows": [[i, s, v] for i, s, v in ROW.findall(rows)],
            "counts": {label: n for n, label in COUNT.findall(html)},
            "pager": PAGER.search(html).group(1)}


def burst_then_compare(browser, store, live_server, start_worker, tmp_path) -> None:
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "one_step.toml").write_text(ONE_STEP)
    defs = str(tmp_path / "defs")
    server = live_server(env={"STEPLINE_DEFINITIONS": defs})
    start_worker("--definitions", defs)
    # Page 2 and the filter need rows before the burst: 30 finished jobs.
    first = [requests.post(server.url + "/api/definitions/one_step/run", json={"params": {}},
                           timeout=30).json()["job_id"] for _ in range(30)]
    wait_for(lambda: reads.status_counts(store.db)["completed"] == 30, 120,
             what="the first jobs")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(COUNT_MESSAGES)
    errors: list[str] = []
    pages = {}
    for path in PAGES:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + path)
        wait_for(lambda p=page: p.evaluate("window.__messages") > 0, 30,
                 what=f"the snapshot of {path}")
        pages[path] = page
    seq0 = reads.last_seq(store.db)

    session = requests.Session()
    due = time.monotonic()
    for i in range(JOBS):
        session.post(server.url + "/api/definitions/one_step/run", json={"params": {}},
                     timeout=30).raise_for_status()
        if i % 25 == 10:  # deletions pull rows up from the next page, with no event of theirs
            session.delete(server.url + f"/api/jobs/{first.pop()}", timeout=30)
        due += 1 / RATE
        time.sleep(max(0.0, due - time.monotonic()))
    wait_for(lambda: reads.status_counts(store.db)["pending"] + reads.status_counts(
        store.db)["running"] == 0, 180, what="every job to finish")
    events = reads.last_seq(store.db) - seq0

    for path, page in pages.items():
        def same(page=page, path=path):
            return page.evaluate(DOM_STATE) == fresh_state(server.url + path)

        try:
            wait_for(same, 60, interval=0.2, what=f"{path} to equal a fresh GET")
        except AssertionError:
            assert page.evaluate(DOM_STATE) == fresh_state(server.url + path)
        messages = page.evaluate("window.__messages")
        assert 0 < messages < events / 3, (path, messages, events)  # coalesced
    assert len(fresh_state(server.url + "/")["rows"]) == 25
    context.close()
    assert errors == []


def test_jobs_list_pages_equal_a_fresh_render_after_a_burst(browser, store, live_server,
                                                            start_worker, tmp_path):
    burst_then_compare(browser, store, live_server, start_worker, tmp_path)


def test_jobs_list_pages_converge_with_the_cpu_saturated(browser, store, live_server,
                                                         start_worker, tmp_path,
                                                         cpu_saturated):
    burst_then_compare(browser, store, live_server, start_worker, tmp_path)
