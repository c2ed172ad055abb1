"""Run-time params: the values a person or client sends when a job is run,
checked against the definition's `[params]`, and how they are put into steps
(substituted into specs, referenced as env vars in shell commands)."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepline.engine.definitions import Definition

# A param name is what `{params.NAME}` and STEPLINE_PARAM_NAME can carry.
PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PARAM_REF = re.compile(r"\{params\.(" + PARAM_NAME.pattern + r")\}")
# A text param is shown in the job header and passed in the environment (Linux
# caps one such string at 128 KiB, MAX_ARG_STRLEN): 10,000 characters is a long
# path list, and fits at 4 bytes a character.
MAX_TEXT_CHARS = 10_000


class ParamError(ValueError):
    """A run-time param that the definition does not accept."""


@dataclass
class ParamLimit:
    """`[params.NAME]` with default, min, max, description: run-time values
    outside min..max are refused."""
    min: float | None = None
    max: float | None = None
    description: str = ""


PARAM_TABLE_KEYS = {"default", "min", "max", "description"}


def param_table(key: str, table: dict, fail: Callable[[str], Exception]
                ) -> tuple[Any, ParamLimit]:
    """The default and the limits of one `[params.NAME]` table."""
    extra = set(table) - PARAM_TABLE_KEYS
    if extra:
        raise fail(f"param '{key}': unknown key(s) {', '.join(sorted(extra))}"
                   f" (expected {', '.join(sorted(PARAM_TABLE_KEYS))})")
    if "default" not in table:
        raise fail(f"param '{key}': missing 'default'")
    default = table["default"]
    limit = ParamLimit(description=str(table.get("description", "")))
    for bound in ("min", "max"):
        if bound not in table:
            continue
        number = table[bound]
        if not _is_number(number) or not math.isfinite(number):
            raise fail(f"param '{key}': {bound} must be a number, got {_shown(number)}")
        if not _is_number(default):
            raise fail(f"param '{key}': {bound} needs a number default, got {_shown(default)}")
        setattr(limit, bound, number)
    if limit.min is not None and limit.max is not None and limit.min > limit.max:
        raise fail(f"param '{key}': min {limit.min} is greater than max {limit.max}")
    if _out_of_range(default, limit):
        raise fail(f"param '{key}': default {_shown(default)} must be {_range_text(limit)}")
    return default, limit


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _out_of_range(value: Any, limit: ParamLimit) -> bool:
    return ((limit.min is not None and value < limit.min)
            or (limit.max is not None and value > limit.max))


def _range_text(limit: ParamLimit) -> str:
    """`from 1 to 100000`, `at least 1` or `at most 5`."""
    if limit.max is None:
        return f"at least {limit.min}"
    if limit.min is None:
        return f"at most {limit.max}"
    return f"from {limit.min} to {limit.max}"


def resolve_params(definition: Definition, overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults overridden by run-time values, each coerced to its default's type."""
    params = dict(definition.params)
    for key, value in overrides.items():
        if key not in params:
            known = ", ".join(sorted(params)) or "none"
            raise ParamError(f"unknown param {_shown(key)} (this definition takes: {known})")
        params[key] = _coerce(key, value, params[key])
        limit = definition.limits.get(key)
        if limit and _out_of_range(params[key], limit):
            raise ParamError(f"param '{key}' must be {_range_text(limit)}, got {_shown(value)}")
    return params


def text_problem(text: str) -> str | None:
    """Why `text` cannot be a param value, or None. Each would crash later: a
    NUL cannot be in argv or an env var, a lone surrogate cannot be encoded
    (the step, then every page showing the job, failed with a 500)."""
    if "\x00" in text:
        return "must not contain a NUL character (commands and env vars cannot hold one)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (it holds a lone surrogate)"
    if len(text) > MAX_TEXT_CHARS:
        return f"must be at most {MAX_TEXT_CHARS:,} characters, got {len(text):,}"
    return None


def _shown(value: Any) -> str:
    """A value as an error message quotes it: text as repr (escapes NUL and
    surrogates), anything else as JSON (true, null, {"a": 1}: what the client
    sent, not Python's True, None), cut short (a 1 MB value would make a 1 MB
    message)."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:50] + "...(cut)"


KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _coerce(key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if kind in (int, float) and isinstance(value, float) and not math.isfinite(value):
        # a JSON number past a float's range (1e999) parses as inf; NaN would
        # pass min/max (every comparison is False); neither is JSON to give back
        raise ParamError(f"param '{key}' must be a finite number, got {_shown(value)}")
    if isinstance(value, str) and (problem := text_problem(value)):
        raise ParamError(f"param '{key}' {problem}")
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)  # JSON's 1 for failure_rate: a number all the same
        except OverflowError:  # 1 followed by 400 zeros
            raise ParamError(f"param '{key}' must be a finite number, got {_shown(value)}"
                             ) from None
    if not isinstance(value, str):
        raise ParamError(f"param '{key}' must be {KIND_NAMES[kind]}, got {_shown(value)}")
    text = value.strip()
    if not text and kind in (int, float, bool):
        # an emptied form field: its placeholder shows the default, and that is
        # what a person means (it was "must be a number, got ''"). Text keeps
        # "", which may be the value wanted.
        return default
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ParamError(f"param '{key}' must be true or false, got {_shown(value)}")
    if kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            raise ParamError(
                f"param '{key}' must be {KIND_NAMES[kind]}, got {_shown(value)}") from None
        if not math.isfinite(number):  # JSON has no NaN or Infinity
            raise ParamError(f"param '{key}' must be a finite number, got {_shown(value)}")
        return number
    return value


def substitute(value: Any, params: dict[str, Any], quote: bool = False) -> Any:
    """Fill {params.x}; a string that is exactly one reference keeps its type.

    In a shell command (`quote`) a text value is never written into the
    command: the placeholder becomes "${STEPLINE_PARAM_X}", a quoted reference
    to the env var every shell step gets (param_env). As a bare word that is the
    value, as shell-quoting it would be; and the shell never parses what a
    variable expands to, so even where the definition check
    (quoted_placeholder) misjudged the context the value cannot run: a trial
    found `case` patterns inside "$(...)" and dash's lack of $'...' fooling
    it. Numbers and true/false have no characters the shell reads: written
    as they are (so they work in arithmetic too)."""
    if isinstance(value, dict):
        return {k: substitute(v, params, quote) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, params, quote) for v in value]
    if not isinstance(value, str):
        return value
    whole = PARAM_REF.fullmatch(value)
    if whole and not quote:
        return params[whole.group(1)]

    def fill(match: re.Match) -> str:
        key = match.group(1)
        if quote and isinstance(params[key], str):
            return f'"${{{env_name(key)}}}"'
        text = param_text(params[key])
        return shlex.quote(text) if quote else text

    return PARAM_REF.sub(fill, value)


def param_text(value: Any) -> str:
    """A param value as steps get it (and the job header shows it): true and
    false as in TOML, not Python's True and False."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def env_name(key: str) -> str:
    """The env var a param is in: names differ in more than case, so one each."""
    return f"STEPLINE_PARAM_{key.upper()}"


def param_env(params: dict[str, Any]) -> dict[str, str]:
    return {env_name(k): param_text(v) for k, v in params.items()}


WORD_START = " \t\n;&|()"  # after these, `#` starts a comment and `((` arithmetic


def quoted_placeholder(command: str, names: Collection[str]) -> tuple[str, str] | None:
    """(name, where) for a {params.x} of a text param that is not a bare word
    of a shell command, or None when every one is.

    `substitute` writes a text placeholder as "${STEPLINE_PARAM_X}", which is
    the value itself only where the shell reads a bare word, at the top or
    inside $(...): inside "..." it splits the value into words, inside '...'
    or $'...' or after a backslash it is literal text, after a $ it is
    something else, and in arithmetic ($((...)), ((...)), [[...]]) bash
    evaluates the value (a[$(id)] runs); comments, backquotes and
    here-documents are parses of their own. The shell never parses a
    variable's value otherwise, so where this scan misjudges, a value is
    mangled, not run (bash arithmetic aside). Numbers and true/false are
    safe anywhere, so only text params (`names`) are checked.
    tests/test_fuzz.py runs what this accepts through dash and bash."""
    # open contexts, innermost last, each [kind, unclosed "("s in it]; kinds:
    # top, cmd ($(), dq, sq, ansi, arith, test, brace
    stack = [["top", 0]]
    i = 0
    while i < len(command):
        here, ch = stack[-1][0], command[i]
        ref = PARAM_REF.match(command, i)
        if ref and ref.group(1) in names:
            if here not in ("top", "cmd"):
                return ref.group(1), f"is {CONTEXT_NAMES[here]}"
            if i and command[i - 1] == "$":
                return ref.group(1), "follows a $"
        if ref:
            i = ref.end()
            continue
        if here == "sq":
            if ch == "'":
                stack.pop()
            i += 1
            continue
        if ch == "\\":
            if (escaped := PARAM_REF.match(command, i + 1)) and escaped.group(1) in names:
                return escaped.group(1), "follows a backslash"
            i += 2
            continue
        if here == "ansi":
            if ch == "'":
                stack.pop()
            i += 1
            continue
        if ch == "`":
            # nesting in backquotes is its own parse: refuse from here on
            if later := _later_ref(command, i, names):
                return later, "comes after a backquote (use $(...) for the command)"
            return None
        if ch == "$" and (after := PARAM_REF.match(command, i + 1)) \
                and after.group(1) in names:
            return after.group(1), "follows a $"
        if command.startswith("<<<", i):  # a here-string: one word, not a document
            i += 3
            continue
        opened = _opening(command, i, here)
        if opened:
            kind, width = opened
            stack.append([kind, 0])
            i += width
            continue
        if here == "dq":
            if ch == '"':
                stack.pop()
            i += 1
            continue
        if here == "brace":
            if ch == "}":
                stack.pop()
            i += 1
            continue
        if ch == "(":
            stack[-1][1] += 1
        elif ch == ")" and stack[-1][1]:
            stack[-1][1] -= 1
        elif ch == ")" and here == "arith" and command.startswith("))", i):
            stack.pop()
            i += 2
            continue
        elif ch == ")" and here == "cmd":
            stack.pop()
        elif here == "test" and command.startswith("]]", i):
            stack.pop()
            i += 2
            continue
        elif ch == "#" and here in ("top", "cmd") and _word_start(command, i):
            line_end = command.find("\n", i)
            line_end = len(command) if line_end < 0 else line_end
            if later := _later_ref(command[:line_end], i, names):
                return later, "is in a comment (a newline in the value would end it)"
            i = line_end
            continue
        elif command.startswith("<<", i) and here in ("top", "cmd"):
            # where a here-document's body ends is a parse of its own: refuse from here on
            if later := _later_ref(command, i, names):
                return later, "is in or after a here-document"
            return None
        i += 1
    return None


CONTEXT_NAMES = {"dq": "inside double quotes", "sq": "inside single quotes",
                 "ansi": "inside $'...'", "arith": "inside arithmetic",
                 "test": "inside [[ ... ]]", "brace": "inside ${...}"}


def _opening(command: str, i: int, here: str) -> tuple[str, int] | None:
    """The context that opens at `i` in context `here`, and its width."""
    if command.startswith("$((", i):
        return "arith", 3
    if command.startswith("$(", i):
        return "cmd", 2
    if command.startswith("${", i):
        return "brace", 2
    if here in ("dq", "brace"):
        return ("dq", 1) if here == "brace" and command[i] == '"' else None
    if command.startswith("$'", i):
        return "ansi", 2
    if command[i] == "'":
        return "sq", 1
    if command[i] == '"':
        return "dq", 1
    if _word_start(command, i) and command.startswith("((", i):
        return "arith", 2
    if _word_start(command, i) and command.startswith("[[", i):
        return "test", 2
    return None


def _word_start(command: str, i: int) -> bool:
    return i == 0 or command[i - 1] in WORD_START


def _later_ref(command: str, i: int, names: Collection[str]) -> str | None:
    """The name in the first text param's placeholder at or after `i`."""
    return next((m.group(1) for m in PARAM_REF.finditer(command, i) if m.group(1) in names),
                None)
