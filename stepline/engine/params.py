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

PARAM_REF = re.compile(r"\{params\.([A-Za-z_][A-Za-z0-9_]*)\}")


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
            raise ParamError(f"unknown param '{key}' (this definition takes: {known})")
        params[key] = _coerce(key, value, params[key])
        limit = definition.limits.get(key)
        if limit and _out_of_range(params[key], limit):
            raise ParamError(f"param '{key}' must be {_range_text(limit)}, got {value!r}")
    return params


KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _coerce(key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # JSON's 1 for failure_rate: a number all the same
    if not isinstance(value, str):
        raise ParamError(f"param '{key}' must be {KIND_NAMES[kind]}, got {value!r}")
    text = value.strip()
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ParamError(f"param '{key}' must be true or false, got {value!r}")
    if kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            raise ParamError(
                f"param '{key}' must be {KIND_NAMES[kind]}, got {value!r}") from None
        if not math.isfinite(number):  # JSON has no NaN or Infinity
            raise ParamError(f"param '{key}' must be a finite number, got {value!r}")
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
        text = _param_text(params[match.group(1)])
        return shlex.quote(text) if quote else text

    return PARAM_REF.sub(fill, value)


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def param_env(params: dict[str, Any]) -> dict[str, str]:
    return {f"STEPLINE_PARAM_{k.upper()}": _param_text(v) for k, v in params.items()}
