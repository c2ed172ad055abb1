"""ANSI colour codes in log lines, rendered as escaped HTML spans."""

import re
from functools import lru_cache

from markupsafe import Markup, escape

SGR = re.compile(r"\x1b\[([0-9;]*)m")
OTHER_ESCAPES = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
COLOURS = ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")
# Invisible characters that reorder the text around them (the "Trojan
# Source" trick): a log line shows them as a visible marker instead.
BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _classes(codes: list[int], current: set[str]) -> set[str]:
    for code in codes or [0]:
        if code == 0:
            current = set()
        elif code == 1:
            current = current | {"ansi-bold"}
        elif 30 <= code <= 37 or 90 <= code <= 97:
            current = {c for c in current if not c.startswith("ansi-fg")}
            current.add(f"ansi-fg-{COLOURS[code % 10]}")
        elif 40 <= code <= 47:
            current = {c for c in current if not c.startswith("ansi-bg")}
            current.add(f"ansi-bg-{COLOURS[code % 10]}")
        elif code == 39:
            current = {c for c in current if not c.startswith("ansi-fg")}
        elif code == 49:
            current = {c for c in current if not c.startswith("ansi-bg")}
    return current


def ansi_to_html(text: str, highlight: str | None = None) -> Markup:
    """Split the line at its SGR colour codes, which become spans with fixed
    class names; every piece of text between them has any other escape
    sequence dropped and is then HTML-escaped, so no terminal trick and no
    markup in the log reaches the page as markup. Each occurrence of
    `highlight` (a search) within a piece is wrapped in <mark>."""
    mark = _search(highlight) if highlight else None
    out: list[str] = []
    classes: set[str] = set()
    pos = 0
    open_span = False
    for match in SGR.finditer(text):
        out.append(_plain(text[pos:match.start()], mark))
        pos = match.end()
        codes = [int(c) for c in match.group(1).split(";") if c.isdigit()]
        classes = _classes(codes, classes)
        if open_span:
            out.append("</span>")
            open_span = False
        if classes:
            out.append(f'<span class="{" ".join(sorted(classes))}">')
            open_span = True
    out.append(_plain(text[pos:], mark))
    if open_span:
        out.append("</span>")
    return Markup("".join(out))


@lru_cache(maxsize=64)
def _search(query: str) -> re.Pattern:
    """What the log search matches: the store's LIKE ignores case for ASCII
    letters only, on both backends (reads.SEARCH)."""
    return re.compile(f"({re.escape(query)})", re.IGNORECASE | re.ASCII)


def _plain(text: str, mark: re.Pattern | None = None) -> str:
    text = OTHER_ESCAPES.sub("", text).replace("\x1b", "")
    if mark is None:
        return _escaped(text)
    # split() with one group: the matches are at the odd positions
    return "".join(f"<mark>{_escaped(part)}</mark>" if i % 2 else _escaped(part)
                   for i, part in enumerate(mark.split(text)) if part)


def _escaped(text: str) -> str:
    return BIDI_CONTROLS.sub(_bidi_marker, str(escape(text)))


def _bidi_marker(match: re.Match) -> str:
    code = f"U+{ord(match.group()):04X}"
    return f'<span class="ctl" title="invisible text-direction control {code}">[{code}]</span>'

