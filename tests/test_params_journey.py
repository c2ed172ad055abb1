"""A person re-runs load_demo with a nonsense param, in Chromium on a phone:
the form says which range is allowed and no job is created."""

import requests

from .test_browser import DEFS, OUTPUT, browser, server  # noqa: F401 - fixtures

MESSAGE = "param 'tasks' must be from 1 to 100000, got '-3'"


def job_ids(server) -> list[str]:
    body = requests.get(f"{server.url}/api/jobs", timeout=5).json()
    return [job["job_id"] for job in body["jobs"]]


def test_rerun_form_refuses_tasks_outside_the_range_and_says_which(browser, server):
    first = requests.post(f"{server.url}/api/definitions/load_demo/run",
                          json={"params": {"tasks": 5}}, timeout=5).json()["job_id"]
    # no worker: cancelling the pending job makes it finished, so it can be re-run
    requests.post(f"{server.url}/api/jobs/{first}/cancel", json={}, timeout=5)
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{server.url}/jobs/{first}")
        page.click("text=Edit params & re-run")
        page.wait_for_url(f"{server.url}/definitions/load_demo?from={first}#rerun")
        tasks = page.locator("#run-load_demo input[name='param.tasks']")
        assert tasks.input_value() == "5"
        assert page.locator("#run-load_demo label:has(input[name='param.tasks']) .range"
                            ).inner_text() == "1 to 100000"

        tasks.fill("")
        tasks.press_sequentially("-3", delay=80)
        page.click("#run-load_demo button[type=submit]")
        alert = page.locator("#run-load_demo .error[role=alert]")
        alert.wait_for(timeout=15_000)
        assert alert.inner_text() == MESSAGE
        page.wait_for_timeout(2000)  # and 2 s later: still here, nothing queued
        assert page.url.split("#")[0] == f"{server.url}/definitions/load_demo?from={first}"
        assert page.locator("#run-load_demo .error").inner_text() == MESSAGE
        assert page.locator("#run-load_demo input[name='param.tasks']").input_value() == "-3"
        assert job_ids(server) == [first]

        # corrected, the same form runs it
        page.locator("#run-load_demo input[name='param.tasks']").fill("12")
        page.click("#run-load_demo button[type=submit]")
        page.wait_for_url(f"{server.url}/jobs/*")
        second = page.url.rsplit("/", 1)[1]
        assert set(job_ids(server)) == {first, second}
        assert requests.get(f"{server.url}/api/jobs/{second}", timeout=5).json()[
            "params"] == {"tasks": 12, "failure_rate": 0.1}
    finally:
        context.close()
    assert errors == []


def test_an_emptied_field_runs_with_its_default(browser, server):
    """New-user trial: clearing a number field (its placeholder shows the
    default) and pressing run said "must be a number, got ''"."""
    page = browser.new_page()
    try:
        page.goto(f"{server.url}/definitions/load_demo")
        tasks = page.locator("#run-load_demo input[name='param.tasks']")
        assert tasks.get_attribute("placeholder") == "40"
        tasks.fill("")
        page.locator("#run-load_demo input[name='param.failure_rate']").fill("0.5")
        page.click("#run-load_demo button[type=submit]")
        page.wait_for_url(f"{server.url}/jobs/*")
        job_id = page.url.rsplit("/", 1)[1]
        assert requests.get(f"{server.url}/api/jobs/{job_id}", timeout=5).json()[
            "params"] == {"tasks": 40, "failure_rate": 0.5}
    finally:
        page.close()


def test_nonsense_in_a_number_field_is_named_not_replaced_by_the_default(browser, server):
    """Second trial: "e--5x1abc" typed into a number field was sent as ""
    (what a number input sends when it cannot parse) and ran the default."""
    page = browser.new_page()
    try:
        page.goto(f"{server.url}/definitions/load_demo")
        tasks = page.locator("#run-load_demo input[name='param.tasks']")
        tasks.fill("")
        tasks.press_sequentially("e--5x1abc", delay=40)
        page.click("#run-load_demo button[type=submit]")
        alert = page.locator("#run-load_demo .error[role=alert]")
        alert.wait_for(timeout=15_000)
        assert alert.inner_text() == "param 'tasks' must be an integer, got 'e--5x1abc'"
        page.wait_for_timeout(2000)  # and 2 s later: still the form, what was typed kept
        assert page.url == f"{server.url}/definitions/load_demo"
        assert tasks.input_value() == "e--5x1abc"
        assert job_ids(server) == []
    finally:
        page.close()
