"""Run-time params: the values a person or client sends when a job is run,
checked against the definition's `[params]`, and how they are put into steps
(substituted into specs, shell-quoted in commands, exported as env vars)."""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepline.engine.definitions import Definition

# A param name is what `{params.NAME}` and STEPLINE_PARAM_NAME can carry.
PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PARAM_REF = re.compile(r"\{params\.(" + PARAM_NAME.pattern + r")\}")
# A text param is shown in the job header and passed in argv and the environment
# (Linux caps one such string at 128 KiB, MAX_ARG_STRLEN): 10,000 characters is
# a long path list, and even quoted (up to 5 bytes a character) it fits.
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


def param_table(key: str, table: dict, fail) -> tuple[Any, ParamLimit]:
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
            raise fail(f"param '{key}': {bound} must be a number, got {number!r}")
        if not _is_number(default):
            raise fail(f"param '{key}': {bound} needs a number default, got {default!r}")
        setattr(limit, bound, number)
    if limit.min is not None and limit.max is not None and limit.min > limit.max:
        raise fail(f"param '{key}': min {limit.min} is greater than max {limit.max}")
    if _out_of_range(default, limit):
        raise fail(f"param '{key}': default {default!r} must be {_range_text(limit)}")
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
    """A value as an error message quotes it: repr (escapes NUL and surrogates),
    cut short (a 1 MB value would make a 1 MB message)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:50] + "...(cut)"


KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _coerce(key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if kind in (int, float) and isinstance(value, float) and not math.isfinite(value):
        # Flask's JSON parser reads NaN and Infinity; NaN would pass min/max
        # (every comparison is False) and make GET /api/jobs invalid JSON
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
    """Fill {params.x}. Shell commands quote every value, so a param can never
    inject a command; a string that is exactly one reference keeps its type."""
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
        text = param_text(params[match.group(1)])
        return shlex.quote(text) if quote else text

    return PARAM_REF.sub(fill, value)


def param_text(value: Any) -> str:
    """A param value as steps get it (and the job header shows it): true and
    false as in TOML, not Python's True and False."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def param_env(params: dict[str, Any]) -> dict[str, str]:
    return {f"STEPLINE_PARAM_{k.upper()}": param_text(v) for k, v in params.items()}


def quoted_placeholder(command: str) -> str | None:
    """Why a {params.x} in a shell command would not be safe, or None.

    `substitute` shell-quotes each value ('...'), which protects it only where
    the shell reads a bare word: inside "..." the quotes are literal and $(id)
    in the value runs; inside '...' they end the quoting; after a backslash
    the escaped quote opens nothing; in a here-document quotes are literal;
    inside `...` a backquote in the value ends the command early.
    A small POSIX sh scan: quotes, backslashes, backquotes, comments and
    here-documents (tests/test_fuzz.py runs what it accepts through /bin/sh)."""
    quote = ""  # the open quote character, if any
    backquoted = False
    i = 0
    while i < len(command):
        ch = command[i]
        ref = PARAM_REF.match(command, i)
        if ref:
            if quote:
                return f"{ref.group(0)} is inside quotes"
            if backquoted:
                return f"{ref.group(0)} is inside backquotes (use $(...) instead)"
            i = ref.end()
        elif ch == "\\" and quote != "'":
            if escaped := PARAM_REF.match(command, i + 1):
                return f"{escaped.group(0)} follows a backslash"
            i += 2
        elif ch == "`" and quote != "'":
            backquoted, i = not backquoted, i + 1
        elif quote:
            quote = "" if ch == quote else quote
            i += 1
        elif ch in "'\"":
            quote, i = ch, i + 1
        elif ch == "#" and (i == 0 or command[i - 1] in " \t\n;&|()"):
            # skip to the end of the line, or of the `...` the comment is in
            ends = [command.find(stop, i) for stop in ("\n", "`" if backquoted else "\n")]
            i = min([end for end in ends if end >= 0], default=len(command))
        elif command.startswith("<<", i):
            # where a here-document's body ends is a parse of its own ($( in the
            # body spans lines): any placeholder from here on is refused
            later = PARAM_REF.search(command, i)
            if later:
                return (f"{later.group(0)} is in or after a here-document"
                        f" (use $STEPLINE_PARAM_{later.group(1).upper()} there)")
            return None
        else:
            i += 1
    return None

