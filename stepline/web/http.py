"""Request helpers shared by the page, API and live routes: the app's state,
job and step lookups, the loaded definitions, argument parsing and errors."""

from collections.abc import Sequence
from typing import TYPE_CHECKING

from flask import current_app, jsonify, render_template, request

from stepline import config
from stepline.engine.definitions import Definition
from stepline.engine.states import LOG_LEVELS, Status
from stepline.store import reads
from stepline.store.logtext import storable_text

if TYPE_CHECKING:  # app.py imports this module
    from stepline.web.app import Stepline


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def app_state() -> "Stepline":
    """The store, hub and snapshot cache of the app serving this request."""
    return current_app.extensions["stepline"]


def current_db():
    """This process's store connection (one per OS thread, see store.sqlite)."""
    return app_state().store.db


def job_or_404(job_id: str) -> dict:
    job = reads.get_job(current_db(), job_id)
    if job is None:
        raise ApiError(404, f"job {job_id} not found")
    return job


def step_or_404(job_id: str, step_id: str) -> dict:
    """One query: a step of another job (or of no job) is not found either."""
    step = reads.get_step(current_db(), step_id)
    if step is None or step["job_id"] != job_id:
        raise ApiError(404, f"step {step_id} not found in job {job_id}")
    return step


def definitions() -> tuple[dict[str, Definition], list[str]]:
    """The definitions this app runs, and the files that failed to load."""
    return config.definitions(current_app.config["STEPLINE_DEFINITIONS"])


def loaded_definition(name: str) -> Definition:
    """The definition `name` as this server loads it (its --definitions and
    the built-ins). The one place that decides whether a job's definition can
    be run or re-run here: a job created through the API by another
    deployment, or whose file was removed, cannot, and a page saying so beats
    a control that answers 404. Not loaded: ApiError 404 naming it."""
    definition = definitions()[0].get(name)
    if definition is None:
        raise ApiError(404, f"definition {name!r} is not loaded by this server:"
                            " it cannot be run or re-run here")
    return definition


def definition_unavailable(name: str) -> str | None:
    """For templates (the job header's re-run controls): None when the
    definition `name` is loaded here, else why it cannot be run, in plain words.
    ~65 us (config.definitions lists the folders) of a ~380 us header render,
    once per job event and view (2 loaded cores, timeit in an app context)."""
    try:
        loaded_definition(name)
    except ApiError as exc:
        return exc.message
    return None


def wants_json() -> bool:
    return (request.path.startswith("/api/") or request.path in ("/events", "/ws", "/metrics",
                                                                 "/healthz")
            or request.accept_mimetypes.best == "application/json")


def error_response(status: int, message: str):
    if wants_json():
        return jsonify(error=message), status
    return render_template("error.html", code=status, message=message), status


def status_arg(args, allowed: Sequence[Status]) -> Status | None:
    """`?status=`, one of `allowed` (JOB_STATUSES or TASK_STATUSES: no job
    or task is ever skipped, so the error does not offer it)."""
    raw = args.get("status") or None
    if raw is None:
        return None
    if raw not in allowed:
        raise ApiError(400, f"unknown status {raw!r} (one of {', '.join(allowed)})")
    return Status(raw)


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


def search_arg(args) -> str | None:
    """`?q=`, the text to search for, as the store keeps text: a NUL or a lone
    surrogate becomes U+FFFD, as in stored lines, so both backends find (and
    highlight) the same lines. SQLite's LIKE stopped at a NUL: "%00" matched
    every line; PostgreSQL refused it."""
    return storable_text(args.get("q") or "") or None


def level_arg(args) -> str | None:
    level = args.get("level") or None
    if level is not None and level not in LOG_LEVELS:
        raise ApiError(400, f"unknown level {level!r} (one of {', '.join(LOG_LEVELS)})")
    return level
