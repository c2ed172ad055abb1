"""Request helpers shared by the page, API and live routes."""

from flask import jsonify, render_template, request

from stepline.engine.states import STATUSES


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def wants_json() -> bool:
    return (request.path.startswith("/api/") or request.path in ("/events", "/ws", "/metrics",
                                                                 "/healthz")
            or request.accept_mimetypes.best == "application/json")


def error_response(status: int, message: str):
    if wants_json():
        return jsonify(error=message), status
    return render_template("error.html", code=status, message=message), status


def status_arg(args) -> str | None:
    status = args.get("status") or None
    if status is not None and status not in STATUSES:
        raise ApiError(400, f"unknown status {status!r} (one of {', '.join(STATUSES)})")
    return status


MAX_INT_ARG = 10**9  # offsets and line numbers; the OpenAPI spec says the same


def int_arg(args, name: str, default: int, low: int = 0, high: int = MAX_INT_ARG) -> int:
    raw = args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}")
    return value


def page_arg(args) -> int:
    return int_arg(args, "page", 1, low=1)


def level_arg(args) -> str | None:
    level = args.get("level") or None
    if level is not None and level not in ("debug", "info", "warn", "error"):
        raise ApiError(400, f"unknown level {level!r} (debug, info, warn or error)")
    return level
