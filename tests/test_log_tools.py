"""The log panel's tools as a person uses them, in a real Chromium against a
real gunicorn gevent server and real workers (#10): search and level filter
while typing, a live match count, a finished step at its end, a failed step
at its first error, links to a line."""

import re

import pytest
import requests

from stepline.store import reads

from .conftest import make_definition, wait_for, wait_job
from .test_browser import OUTPUT, browser, page, server  # noqa: F401  (the Chromium fixtures)

pytestmark = pytest.mark.browser


@pytest.fixture(params=["idle", "cpu_saturated"])
def load(request, server) -> str:  # noqa: F811
    """Race-prone journeys run twice: on an idle machine and with every core
    busy (the busy loops start once the server is up)."""
    if request.param == "cpu_saturated":
        request.getfixturevalue("cpu_saturated")
    return request.param


def numbered_job(store, start_worker, lines: int = 2300, errors=(), fail: bool = False) -> tuple:
    """A finished job of one step logging `lines` numbered lines."""
    job_id = store.create_job(make_definition(f"""
[step.numbered]
type = "python"
call = "tests.step_functions:numbered_log"
config = {{ lines = {lines}, errors = {list(errors)}, fail = {str(fail).lower()} }}
"""), {})
    start_worker()
    wait_job(store, job_id, timeout=60)
    return job_id, reads.job_steps(store.db, job_id)[0]["id"]


def open_panel(tab, step_id: str) -> None:
    tab.click(f"#step-{step_id} .toggle")
    tab.locator(f"#logs-{step_id} .ll").first.wait_for()


def shown_lines(tab, step_id: str) -> list[dict]:
    return tab.evaluate(f"""[...document.querySelectorAll('#logs-{step_id} .ll')].map(row => ({{
        line: parseInt(row.querySelector('.ln').textContent),
        level: row.querySelector('.lv').textContent,
        text: row.querySelector('.msg').textContent}}))""")


def in_view(tab, selector: str) -> bool:
    """Whether the element shows inside its log box and inside the window."""
    return tab.evaluate("""(sel) => {
      const el = document.querySelector(sel);
      if (!el) return false;
      const r = el.getBoundingClientRect();
      const box = el.closest('.log-lines').getBoundingClientRect();
      return r.height > 0 && r.top >= box.top - 1 && r.bottom <= box.bottom + 1
        && r.top >= -1 && r.bottom <= window.innerHeight + 1;
    }""", selector)


def matches_text(tab, step_id: str) -> str:
    return tab.locator(f"#logpanel-{step_id} .matches").inner_text()


def test_search_keeps_what_is_typed_and_filters_only_the_lines(page, server, store,  # noqa: F811
                                                               start_worker, load):
    """#10: the filter re-rendered the whole panel ~300 ms after a pause, so
    what was typed after the pause was lost and the box lost its focus."""
    job_id, step_id = numbered_job(store, start_worker, errors=(1200, 2000))
    page.goto(f"{server.url}/jobs/{job_id}")
    open_panel(page, step_id)
    search = page.locator(f"#logpanel-{step_id} input[type=search]")
    search.click()
    page.keyboard.type("wor", delay=60)
    page.wait_for_timeout(800)  # a pause: the first results arrive meanwhile
    page.keyboard.type("ld 1", delay=60)
    page.wait_for_timeout(1500)
    assert search.input_value() == "world 1"
    assert page.evaluate("document.activeElement === document.querySelector("
                         f"'#logpanel-{step_id} input[type=search]')")
    assert page.evaluate("document.activeElement.selectionStart") == len("world 1")
    # 1,111 lines match (1, 10-19, 100-199, 1000-1999): the newest 500 show
    wait_for(lambda: matches_text(page, step_id) == "over 500 matching lines", 20,
             what="the match count")
    lines = shown_lines(page, step_id)
    assert len(lines) == 500 and all("world 1" in line["text"] for line in lines)
    assert lines[-1]["line"] == 1999
    assert page.locator(f"#logs-{step_id} .ll mark").first.text_content() == "world 1"
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"log-search-{load}.png"))

    # the level select: only errors, still searched; the box keeps its text
    page.select_option(f"#logpanel-{step_id} select[name=level]", "error")
    wait_for(lambda: matches_text(page, step_id) == "1 matching line", 20,
             what="one matching error line")
    assert [(x["line"], x["level"]) for x in shown_lines(page, step_id)] == [(1200, "error")]
    assert search.input_value() == "world 1"
    assert page.locator(f"#logs-{step_id}-earlier").is_hidden()  # nothing earlier matches

    # typing on after the level change: focus back in the box, text appended
    search.click()
    page.keyboard.press("End")
    page.keyboard.type("2", delay=60)
    page.wait_for_timeout(800)
    assert search.input_value() == "world 12"
    wait_for(lambda: matches_text(page, step_id) == "1 matching line" and
             shown_lines(page, step_id)[0]["line"] == 1200, 20, what="world 12 errors")
    search.fill("nothing like this")
    wait_for(lambda: matches_text(page, step_id) == "0 matching lines", 20, what="no match")
    assert shown_lines(page, step_id) == []
    assert page.locator(f"#logs-{step_id} .none").inner_text() == "no matching lines"

    # a level's name typed as a search finds no text: the count says where levels are
    page.select_option(f"#logpanel-{step_id} select[name=level]", "")
    search.fill("Error ")
    wait_for(lambda: "pick “error” under levels" in matches_text(page, step_id), 20,
             what="the hint to the level filter")
    assert matches_text(page, step_id).startswith("0 matching lines")

    # a level shows that level and worse: the error line is among "info and worse"
    search.fill("world 1200")
    page.select_option(f"#logpanel-{step_id} select[name=level]", label="info and worse")
    wait_for(lambda: [(x["line"], x["level"]) for x in shown_lines(page, step_id)]
             == [(1200, "error")], 20, what="the error line under 'info and worse'")


BURSTS = """
[step.bursts]
type = "python"
call = "tests.step_functions:log_bursts"
config = { lines = 30000, burst = 1000, pause = 0.1 }
"""


def test_a_filter_applied_while_lines_stream_in_shows_only_matches(
        page, server, store, start_worker, load):  # noqa: F811
    """#10: a live fetch in flight when a filter was applied carried the old
    filter, and its answer streamed unfiltered lines into the filtered view
    (816 of 852 shown lines did not match in one trial)."""
    job_id = store.create_job(make_definition(BURSTS), {})
    step_id = reads.job_steps(store.db, job_id)[0]["id"]
    page.goto(f"{server.url}/jobs/{job_id}")
    start_worker()
    wait_for(lambda: reads.get_step(store.db, step_id)["log_count"] > 2000, 60, what="logging")
    open_panel(page, step_id)
    search = page.locator(f"#logpanel-{step_id} input[type=search]")
    search.click()
    page.keyboard.type("7", delay=60)
    page.wait_for_timeout(700)
    page.keyboard.type("7", delay=60)  # a second filter while the first one's lines come
    wait_for(lambda: page.locator(f"#logs-{step_id}-cursor [name=q]").input_value() == "77",
             20, what="the filter")
    bad = []

    def finished() -> bool:
        bad.extend(x for x in shown_lines(page, step_id) if "77" not in x["text"])
        return reads.get_job(store.db, job_id)["status"] == "completed"
    wait_for(finished, 120, interval=0.1, what="the job")
    assert bad == []
    every = [n for n in range(1, 30001) if "77" in f"line {n}"]
    wait_for(lambda: shown_lines(page, step_id)[-1]["line"] == every[-1], 20, what="the last")
    shown = [x["line"] for x in shown_lines(page, step_id)]
    assert shown == every[-len(shown):]  # no gap, no duplicate, no stranger
    assert search.input_value() == "77"


# Lines arrive every 0.2 s; every third one is a "found" line, one of them
# with markup in it.
TRICKLE = r"""
[step.trickle]
type = "shell"
run = '''
for i in $(seq 1 30); do
  echo "tick $i"
  if [ $((i % 3)) = 0 ]; then echo "found <b>$i</b>"; fi
  sleep 0.2
done'''
"""


def test_match_count_follows_new_matching_lines(page, server, store, start_worker,  # noqa: F811
                                                load):
    """#10: the match count went stale while matches streamed in; matches are
    marked, and a query with markup in it shows literally."""
    job_id = store.create_job(make_definition(TRICKLE), {})
    step_id = reads.job_steps(store.db, job_id)[0]["id"]
    page.goto(f"{server.url}/jobs/{job_id}")
    start_worker()
    page.locator(f"#step-{step_id}[data-status=running]").wait_for(timeout=30_000)
    open_panel(page, step_id)
    page.locator(f"#logpanel-{step_id} input[type=search]").fill("<b>")
    seen = set()

    def finished() -> bool:
        seen.add(matches_text(page, step_id))
        return reads.get_job(store.db, job_id)["status"] == "completed"
    wait_for(finished, 60, interval=0.1, what="the job")
    wait_for(lambda: matches_text(page, step_id) == "10 matching lines", 20,
             what="the final count")
    counts = sorted(int(m.group(1)) for text in seen if (m := re.match(r"(\d+) matching", text)))
    assert len(counts) >= 3, seen  # it counted up while the lines came
    assert "1 matching line" in seen or counts[0] > 1
    assert not any(text.startswith("1 matching lines") for text in seen)
    lines = shown_lines(page, step_id)
    assert [x["text"] for x in lines] == [f"found <b>{i}</b>" for i in range(3, 31, 3)]
    marks = page.locator(f"#logs-{step_id} .ll mark")
    assert marks.count() == 10 and set(marks.all_text_contents()) == {"<b>"}
    assert page.locator(f"#logs-{step_id} .msg b").count() == 0  # shown, never markup


def test_finished_step_opens_at_its_end(page, server, store, start_worker):  # noqa: F811
    """#10: a 2,300-line finished step opened at line 1801 (the top of its
    tail) instead of its end; "load earlier" showed with nothing earlier."""
    job_id, step_id = numbered_job(store, start_worker)
    page.goto(f"{server.url}/jobs/{job_id}")
    open_panel(page, step_id)
    page.wait_for_timeout(500)
    assert in_view(page, f"#log-{step_id}-L2300")
    assert not in_view(page, f"#log-{step_id}-L1801")
    # its lines laid out only once in view never widen the page (they made it 1,764 px)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    assert page.locator(f"#logs-{step_id}-earlier").is_visible()

    short_job, short_step = numbered_job(store, start_worker, lines=12)
    page.goto(f"{server.url}/jobs/{short_job}")
    open_panel(page, short_step)
    assert page.locator(f"#logs-{short_step} .ll").count() == 12
    assert page.locator(f"#logs-{short_step}-earlier").is_hidden()


def test_failed_job_opens_at_its_first_error(page, server, store, start_worker):  # noqa: F811
    """#10: a failed step opened at line 1, far from its error. Now the
    job's page comes with its failed step open at the first error line."""
    job_id, step_id = numbered_job(store, start_worker, errors=(1200, 2000), fail=True)
    assert reads.get_job(store.db, job_id)["status"] == "failed"
    # rendered with the page, not fetched by a script after it
    html = requests.get(f"{server.url}/jobs/{job_id}", timeout=10).text
    assert re.search(rf'class="ll lvl-error at" id="log-{step_id}-L1200"', html)
    page.goto(f"{server.url}/jobs/{job_id}")
    page.wait_for_timeout(2000)
    assert in_view(page, f"#log-{step_id}-L1200.at")
    assert page.locator(f"#logs-{step_id}-earlier").is_visible()
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "failed-job-at-its-error.png"))
    # its next lines on request, as far as the end
    later = page.locator(f"#logs-{step_id}-later")
    while later.is_visible():
        later.click()
        page.wait_for_timeout(300)
    numbers = [x["line"] for x in shown_lines(page, step_id)]
    total = reads.get_step(store.db, step_id)["log_count"]
    assert numbers == list(range(numbers[0], total + 1)) and numbers[0] <= 1100

    # collapsed and opened again: the same place
    page.click(f"#step-{step_id} .toggle")
    assert page.locator(f"#logs-{step_id}").count() == 0
    open_panel(page, step_id)
    page.wait_for_timeout(500)
    assert in_view(page, f"#log-{step_id}-L1200.at")


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 900},
                                      {"width": 390, "height": 844}], ids=["desktop", "phone"])
def test_link_to_a_line_opens_the_panel_there(browser, server, store, start_worker,  # noqa: F811
                                              viewport):
    """#10: /jobs/<job>#log-<step>-L<n> opens that step's panel at line n
    (far from its tail) and marks it; a click on a line number makes the
    link to copy."""
    job_id, step_id = numbered_job(store, start_worker)
    context = browser.new_context(viewport=viewport)
    tab = context.new_page()
    tab.goto(f"{server.url}/jobs/{job_id}#log-{step_id}-L150")
    tab.locator(f"#log-{step_id}-L150").wait_for()
    tab.wait_for_timeout(1000)
    assert in_view(tab, f"#log-{step_id}-L150.at")
    assert tab.locator(f"#logs-{step_id}-later").is_visible()

    tab.click(f"#log-{step_id}-L152 .ln")
    assert tab.url.endswith(f"#log-{step_id}-L152")
    assert tab.locator(f"#logs-{step_id} .ll.at").evaluate_all(
        "rows => rows.map(r => r.id)") == [f"log-{step_id}-L152"]
    # the copied link, in another tab
    other = context.new_page()
    other.goto(tab.url)
    other.locator(f"#log-{step_id}-L152.at").wait_for()
    other.wait_for_timeout(1000)
    assert in_view(other, f"#log-{step_id}-L152.at")
    OUTPUT.mkdir(exist_ok=True)
    other.screenshot(path=str(OUTPUT / f"log-line-link-{viewport['width']}px.png"))
    context.close()


def test_the_lines_a_panel_gets(server, store, start_worker):  # noqa: F811
    """The server side of the tools: a new filter's count and cursor, live
    fetches adding to the count, a panel opened at a line and its next page."""
    job_id, step_id = numbered_job(store, start_worker)
    base = f"{server.url}/jobs/{job_id}/steps/{step_id}"

    def get(path: str, **params) -> str:
        r = requests.get(base + path, params=params, timeout=10)
        r.raise_for_status()
        return r.text

    def numbers(html: str) -> list[int]:
        return [int(n) for n in re.findall(rf'id="log-{step_id}-L(\d+)"', html)]

    # "world 23": lines 23, 230-239 and 2300 of 2,300
    html = get("/lines", tail=1, q="world 23")
    assert numbers(html) == [23, *range(230, 240), 2300]
    assert ">12 matching lines</span>" in html and 'name="after" value="2300"' in html
    # a live fetch adds what it finds; its cursor passes the lines it scanned
    html = get("/lines", after=100, q="world 23", matches=2)
    assert numbers(html) == [*range(230, 240), 2300] and ">13 matching lines</span>" in html
    html = get("/lines", after=2300, q="world 23", matches=12)
    assert numbers(html) == [] and ">12 matching lines</span>" in html
    # opened at line 150: a page from line 50, "load later lines" for the rest
    html = get("/panel", at=150)
    assert numbers(html) == list(range(50, 550))
    assert re.search(rf'class="ll lvl-info at" id="log-{step_id}-L150"', html)
    later = re.search(r'<button[^>]*class="later"[^>]*>', html).group(0)
    assert " hidden" not in later
    html = get("/lines", later=1, after=549)
    assert numbers(html) == list(range(550, 1050))
    html = get("/lines", later=1, after=2000)
    assert numbers(html) == list(range(2001, 2301))
    assert " hidden" in re.search(r'<button[^>]*class="later"[^>]*>', html).group(0)


def placeholder_room(tab, step_id: str) -> tuple[float, float]:
    """The search box's placeholder width and the width its text has, in px."""
    return tuple(tab.evaluate(f"""() => {{
      const box = document.querySelector('#logpanel-{step_id} input[type=search]');
      const css = getComputedStyle(box);
      const ctx = document.createElement('canvas').getContext('2d');
      ctx.font = css.font;
      return [ctx.measureText(box.placeholder).width,
              box.clientWidth - parseFloat(css.paddingLeft) - parseFloat(css.paddingRight)];
    }}"""))


def test_the_search_box_says_what_it_is_on_a_phone_and_a_desktop(browser, server, store,  # noqa: F811
                                                                 start_worker):
    """New-user trial: the placeholder read "search the text of ever…" at
    every width. The whole placeholder shows at 390 px and at 1280 px."""
    from .test_journeys import PHONE

    job_id, step_id = numbered_job(store, start_worker, lines=50)
    for viewport, mobile in ((PHONE, True), ({"width": 1280, "height": 900}, False)):
        tab = browser.new_context(viewport=viewport, is_mobile=mobile,
                                  has_touch=mobile).new_page()
        tab.goto(f"{server.url}/jobs/{job_id}")
        open_panel(tab, step_id)
        text, room = placeholder_room(tab, step_id)
        assert 0 < text <= room, (viewport, text, room)
        tab.context.close()


def test_a_pasted_5000_character_search_stays_a_search(page, server, store,  # noqa: F811
                                                        start_worker):
    """New-user trial: 5,000 characters in the log search made a URL over
    gunicorn's 4,094-byte request line, and its bare "414 URI Too Long" page
    was swapped into the log panel. The box keeps SEARCH_MAX_CHARS (300)."""
    job_id, step_id = numbered_job(store, start_worker, lines=50)
    page.goto(f"{server.url}/jobs/{job_id}")
    open_panel(page, step_id)
    search = page.locator(f"#logpanel-{step_id} input[type=search]")
    search.click()
    page.keyboard.insert_text("world 1" + "日" * 4993)  # as a paste does
    assert search.input_value() == "world 1" + "日" * 293
    wait_for(lambda: matches_text(page, step_id) == "0 matching lines", 20,
             what="the search answered")
    assert "URI Too Long" not in page.locator(f"#logpanel-{step_id}").inner_text()
    search.fill("")
    page.keyboard.insert_text("world 1")
    wait_for(lambda: matches_text(page, step_id) == "11 matching lines", 20,
             what="a search after it")
