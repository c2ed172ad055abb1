"""One renderer per fragment. The full pages include these same templates,
and the live stream pushes what these return, so there is no second copy of
any markup."""

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlencode, urlsplit, urlunsplit

from flask import Flask, current_app, render_template
from flask.templating import Environment
from markupsafe import Markup

from stepline.engine.definitions import FAN_OUT_TYPES
from stepline.engine.params import param_text
from stepline.engine.states import LOG_LEVELS, TERMINAL, Status, earlier_failure, failures_past
from stepline.web.ansi import ansi_to_html

TAIL_LINES = 500      # lines an opened panel starts with, and per "load earlier"
FOLLOW_LINES = 2_000  # at most this many new lines per fetch; a full page fetches again
WINDOW_LINES = 5_000  # lines a panel keeps in the DOM (stepline.js drops the oldest)
PAGE_SIZE = 25
# A search box's longest text. gunicorn refuses a request line over 4,094
# bytes with a bare 414 page (a 5,000-character log search put that page in
# the log panel); 300 characters is at most 2,700 bytes encoded (9 per CJK
# character), with room for the rest of the URL.
SEARCH_MAX_CHARS = 300
TASK_PAGE = 50        # rows of an open task table


def _macro(template: str):
    """Row templates hold one macro named after the file (see step_row.html)."""
    module = current_app.jinja_env.get_template(template).module
    return getattr(module, template.removesuffix(".html"))


def render_job_row(job: dict, oob: bool = False) -> str:
    return str(_macro("job_row.html")(job, oob))


def page_count(total: int) -> int:
    return max(1, -(-total // PAGE_SIZE))


def render_job_list(jobs: list[dict], total: int, filters, oob: bool = False) -> str:
    return render_template("job_list.html", jobs=jobs, total=total, filters=filters,
                           pages=page_count(total), oob=oob)


def render_job_changes(rows: list[dict], left: list[str], total: int, filters,
                       pager: bool) -> str:
    """The rows that changed or entered a page (upserted in order), deletes
    for those that left it, and the pager when the page's jobs or total changed."""
    return render_template("job_changes.html", rows=rows, left=left, total=total,
                           filters=filters, pages=page_count(total), pager=pager)


def render_metrics(counts: dict[str, int], oob: bool = False) -> str:
    return render_template("metrics.html", counts=counts, oob=oob)


def render_job_header(job: dict, oob: bool = False) -> str:
    return render_template("job_header.html", job=job, oob=oob)


def render_job_deleted(job_id: str) -> str:
    return render_template("job_deleted.html", job_id=job_id)


def render_step_row(step: dict, oob: bool = False) -> str:
    return str(_macro("step_row.html")(step, oob))


def render_log_trigger(step: dict) -> str:
    return render_template("log_trigger.html", step=step, oob=True)


NO_FILTER = {"level": None, "q": None}  # a log panel's filters when none is chosen


@dataclass
class LogPage:
    """What a log template shows: some lines of one step, and what the panel
    knows around them. Built by stepline/web/logview.py."""

    lines: list[dict]
    filters: dict = field(default_factory=lambda: dict(NO_FILTER))
    cursor: int = 0            # the last line seen: the panel's next fetch starts after it
    matches: int = 0           # matching lines counted so far (a filtered panel)
    over: bool = False         # ... and there are more than that
    more_before: bool = False  # earlier lines exist ("load earlier lines")
    more_after: bool = False   # later lines exist that no live fetch brings ("load later lines")
    more: bool = False         # a full page of new lines: the panel fetches again at once
    at: int | None = None      # the line the panel opened at (marked)


def render_log_panel(step: dict, log: LogPage) -> str:
    return render_template("log_panel.html", step=step, log=log)


def render_log_lines(step: dict, log: LogPage, mode: str) -> str:
    """mode: 'after' (new lines; moves the cursor and the match count),
    'before' (earlier lines; moves the 'load earlier' button), 'later' (the
    next page after a panel opened at a line) or 'tail' (the newest lines,
    replacing the panel's: a new filter, or a panel too far behind)."""
    return render_template("log_lines.html", step=step, log=log, mode=mode)


def render_task_table(step: dict, tasks: list[dict], total: int, status: str | None,
                      offset: int) -> str:
    """One page of a step's tasks: `total` of them match `status` (None: all)."""
    query = urlencode({k: v for k, v in (("status", status), ("offset", offset)) if v})
    return render_template("task_table.html", step=step, tasks=tasks, total=total,
                           status=status, offset=offset, page_size=TASK_PAGE, query=query)


def has_task_table(step: dict) -> bool:
    """Whether a step's row has a "tasks" button, the page a place for its
    table, and its live messages and snapshots a refresh for an open one.
    By type, not by its counts: a retry clears the tasks of a step whose
    table a person may have open, and that table keeps its button and its
    refreshes (counts back at zero are news to it)."""
    return step["type"] in FAN_OUT_TYPES


def render_task_trigger(step: dict) -> str:
    return render_template("task_trigger.html", step=step)


def render_timeline(timeline) -> str:
    return render_template("job_timeline.html", timeline=timeline)


# -- template helpers -----------------------------------------------------------

def duration(started: float | None, finished: float | None) -> str:
    if not started:
        return ""
    return span((finished or time.time()) - started)


def span(seconds: float) -> str:
    """`40ms`, `4.2s`, `12s`, `3m 05s`, `1h 02m`. Milliseconds under a
    second: a 0.08 s job's timeline ticks had all read `0.0s`."""
    if round(seconds * 1000) < 1000:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def clock(ts: float | None) -> str:
    if not ts:
        return ""
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def datetime_text(ts: float | None) -> str:
    """The absolute time, with the server's timezone: `2026-11-23 22:34:00 UTC`."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts)) if ts else ""


def iso_time(ts: float | None) -> str:
    """For <time datetime>: `2026-11-23T22:34:00+00:00`."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds") if ts else ""


def ago(ts: float | None) -> str:
    """How long ago, as stepline.ago() in static/stepline.js says it (the
    page's ticker keeps it current): `just now`, `42 s ago`, `3 min ago`,
    `5 h ago`, `2 days ago`."""
    if not ts:
        return ""
    seconds = time.time() - ts
    if seconds < 10:
        return "just now"
    if seconds < 60:
        return f"{int(seconds)} s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    days = int(seconds // 86400)
    return f"{days} day{'s' if days > 1 else ''} ago"


class RowEnvironment(Environment):
    """`step.name` on a dict looks the key up first. Jinja's default tries
    the attribute, fails, then the item: with 1,000 rows of ~30 lookups that
    miss was a third of a job page. Templates therefore call no dict methods
    (a user's param named "items" would shadow one); they use the `items` and
    `item` filters instead."""

    def getattr(self, obj, attribute):
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


def register(app: Flask) -> None:
    app.jinja_env.trim_blocks = True
    app.jinja_env.lstrip_blocks = True
    app.jinja_env.filters.update(
        ansi=ansi_to_html, duration=duration, span=span, clock=clock, datetime=datetime_text,
        iso=iso_time, ago=ago, param_text=param_text,
        items=lambda mapping: list(mapping.items()),
        item=lambda mapping, key, default=None: mapping.get(key, default),
    )
    app.jinja_env.globals.update(TERMINAL=TERMINAL, LOG_LEVELS=LOG_LEVELS, PAGE_SIZE=PAGE_SIZE,
                                 WINDOW_LINES=WINDOW_LINES, SEARCH_MAX_CHARS=SEARCH_MAX_CHARS,
                                 has_task_table=has_task_table,
                                 failures_past=failures_past, earlier_failure=earlier_failure,
                                 icon=lambda status: Markup(ICONS.get(status, "")))
    app.jinja_env.globals["url_for"] = path_builder(app)


def path_builder(app: Flask) -> Callable[..., str]:
    """The templates' url_for. The hub renders fragments outside any request,
    where Flask's url_for has no URL adapter (and would build absolute URLs),
    so links are paths built from the URL map alone: the same in a page and in
    a pushed fragment. A WebSocket route builds as `ws://host/ws`: its path
    alone lets the browser keep the page's scheme (wss under https).

    Werkzeug's build costs ~10-19 us a call, a third of a 1,000-step page's
    render: so each (endpoint, argument names) is built once, with
    placeholders, and later calls fill the ids in (~3.5 us)."""
    paths = app.url_map.bind("")
    quote_arg = app.url_map.converters["default"](app.url_map).to_url
    patterns: dict[tuple, list[str] | None] = {}

    def build(endpoint: str, values: dict) -> str:
        url = urlsplit(paths.build(endpoint, values))
        return urlunsplit(("", "", url.path, url.query, ""))

    def pattern(endpoint: str, names: tuple[str, ...]) -> list[str] | None:
        """The path split around its arguments: static, arg 0, static, ...
        None (always build) unless the endpoint is one rule whose arguments
        are exactly `names`, each with the default converter, no defaults."""
        rules = list(app.url_map.iter_rules(endpoint))
        if len(rules) != 1 or rules[0].defaults or rules[0].arguments != set(names) \
                or any(f"<{name}>" not in rules[0].rule for name in names):
            return None
        marks = [f"stepline{i}placeholder" for i in range(len(names))]
        path = build(endpoint, dict(zip(names, marks, strict=True)))
        parts = re.split("(" + "|".join(marks) + ")", path) if marks else [path]
        if parts[1::2] != marks:  # each argument once, in the order given
            return None
        return parts

    def url_for(endpoint: str, _anchor: str | None = None, **values) -> str:
        anchor = f"#{quote_arg(_anchor)}" if _anchor else ""  # as Flask's url_for(_anchor=)
        key = (endpoint, tuple(values))
        if key not in patterns:
            patterns[key] = pattern(endpoint, key[1])
        parts = patterns[key]
        if parts is None:
            return build(endpoint, values) + anchor
        filled = parts.copy()
        filled[1::2] = [value if type(value) is str and _PLAIN(value) else quote_arg(value)
                        for value in values.values()]
        return "".join(filled) + anchor

    return url_for


# Characters no URL path segment escapes (ids are made of them): skips quote().
_PLAIN = re.compile(r"[\w.~-]*", re.ASCII).fullmatch

ICONS = {
    Status.PENDING: "&#9675;",     # ○
    Status.RUNNING: "&#9680;",     # ◐
    Status.COMPLETED: "&#10003;",  # ✓
    Status.FAILED: "&#10007;",     # ✗
    Status.CANCELLED: "&#8856;",   # ⊘
    Status.SKIPPED: "&#8631;",     # ↷
}
