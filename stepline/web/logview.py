"""What a step's log panel shows: which lines, where it opens, and what it
knows around them (its cursor, its match count, whether there are earlier or
later lines). The log routes in pages.py call these; the log_*.html
templates render the LogPage they return."""

from sqlite_utils import Database

from stepline.engine.states import Status
from stepline.store import reads
from stepline.web.render import FOLLOW_LINES, NO_FILTER, TAIL_LINES, LogPage

CONTEXT_LINES = 100  # lines shown above the line a panel opens at


def panel(db: Database, step: dict, filters: dict, at: int | None = None) -> LogPage:
    """An opened panel: around line `at` when asked, a failed step around its
    first error line, any other step at its end (filtered when asked)."""
    if not at and filters == NO_FILTER and step["status"] == Status.FAILED:
        at = reads.first_error_line(db, step["id"])
    if at:
        return around(db, step, at)
    return tail(db, step, filters)


def tail(db: Database, step: dict, filters: dict, limit: int = TAIL_LINES) -> LogPage:
    """The newest `limit` lines (those matching the filter): how a panel
    opens, what a new filter shows. One line more than that tells whether
    there are earlier ones, with no second scan to count them."""
    rows = reads.log_lines(db, step["id"], limit=limit + 1, tail=True, **filters)
    over = len(rows) > limit
    rows = rows[-limit:]
    return LogPage(rows, filters, cursor=_seen(rows, step), matches=len(rows), over=over,
                   more_before=over)


def around(db: Database, step: dict, at: int) -> LogPage:
    """A page of lines holding line `at` a little below its top (or the last
    page, when `at` is near the end), unfiltered."""
    start = max(1, min(at - CONTEXT_LINES, step["log_count"] - TAIL_LINES + 1))
    rows = reads.log_lines(db, step["id"], after=start - 1, limit=TAIL_LINES)
    last = rows[-1]["line"] if rows else 0
    return LogPage(rows, NO_FILTER, cursor=last, more_before=start > 1,
                   more_after=last < step["log_count"], at=at)


def before(db: Database, step: dict, filters: dict, line: int) -> LogPage:
    """"load earlier lines": the page before `line`."""
    rows = reads.log_lines(db, step["id"], before=line, limit=TAIL_LINES + 1, **filters)
    return LogPage(rows[-TAIL_LINES:], filters, more_before=len(rows) > TAIL_LINES)


def later(db: Database, step: dict, filters: dict, after: int) -> LogPage:
    """"load later lines" (a panel opened at a line): the page after it."""
    rows = reads.log_lines(db, step["id"], after=after, limit=TAIL_LINES + 1, **filters)
    more_after = len(rows) > TAIL_LINES
    rows = rows[:TAIL_LINES]
    return LogPage(rows, filters, cursor=rows[-1]["line"] if rows else after,
                   more_after=more_after)


def after(db: Database, step: dict, filters: dict, line: int, matches: int = 0,
          over: bool = False) -> LogPage:
    """New lines after the panel's cursor (a live fetch); `matches` is the
    panel's count so far, which these lines add to."""
    rows = reads.log_lines(db, step["id"], after=line, limit=FOLLOW_LINES, **filters)
    # A full page may not be the end: the panel fetches again from its new cursor.
    more = len(rows) == FOLLOW_LINES
    cursor = rows[-1]["line"] if more else max(line, _seen(rows, step))
    return LogPage(rows, filters, cursor=cursor, matches=matches + len(rows), over=over,
                   more=more)


def _seen(rows: list[dict], step: dict) -> int:
    """The last line a complete read has seen. The step row, read before the
    lines, counted `log_count` lines already stored: a filtered read saw them
    all even when none matched, so the next fetch need not scan them again."""
    return max(rows[-1]["line"] if rows else 0, step["log_count"])
