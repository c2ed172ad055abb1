"""Request helpers shared by the page, API and live routes."""

from flask import jsonify, render_template, request

from stepline.engine.states import LOG_LEVELS, Status


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


def status_arg(args) -> Status | None:
    raw = args.get("status") or None
    if raw is None:
        return None
    try:
        return Status(raw)
    except ValueError:
        raise ApiError(400, f"unknown status {raw!r} (one of {', '.join(Status)})") from None


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
    if level is not None and level not in LOG_LEVELS:
        raise ApiError(400, f"unknown level {level!r} (one of {', '.join(LOG_LEVELS)})")
    return level
