"""HTML pages and the form actions behind their buttons. Routes stay thin:
read, render the page template (which includes the fragment templates)."""

from flask import Blueprint, Response, current_app, render_template, request

from stepline import config
from stepline.engine import actions
from stepline.engine.definitions import ParamError
from stepline.engine.states import STATUSES
from stepline.store import reads
from stepline.web import render
from stepline.web.http import ApiError, level_arg
from stepline.web.views import JobsFilters, view_from_args

bp = Blueprint("pages", __name__)


def _app():
    return current_app.extensions["stepline"]


def _job_or_404(job_id: str) -> dict:
    job = reads.get_job(_app().store.db, job_id)
    if job is None:
        raise ApiError(404, f"job {job_id} not found")
    return job


def _step_or_404(job_id: str, step_id: str) -> dict:
    step = reads.get_step(_app().store.db, step_id)
    if step is None or step["job_id"] != job_id:
        raise ApiError(404, f"step {step_id} not found in job {job_id}")
    return step


def _live(query: str) -> dict:
    """Template values for live.html; ?transport=sse forces the SSE fallback."""
    transport = "sse" if request.args.get("transport") == "sse" else "ws"
    return {"transport": transport, "query": query}


@bp.get("/")
def jobs_page():
    view = view_from_args(request.args)
    filters: JobsFilters = view.filters
    db = _app().store.db
    jobs, total = view.page_of_jobs(db)
    return render_template("jobs.html", jobs=jobs, total=total,
                           pages=render.page_count(total), filters=filters,
                           counts=reads.status_counts(db), statuses=STATUSES, oob=False,
                           **_live("&".join(filter(None, ["view=jobs", filters.query()]))))


@bp.get("/jobs/<job_id>")
def job_page(job_id: str):
    job = _job_or_404(job_id)
    steps = reads.job_steps(_app().store.db, job_id)
    return render_template("job.html", job=job, steps=steps, oob=False,
                           **_live(f"job={job_id}"))


@bp.get("/jobs/<job_id>/steps/<step_id>/panel")
def log_panel(job_id: str, step_id: str):
    """Expanding a step: its log tail (filtered when asked), as one fragment."""
    step = _step_or_404(job_id, step_id)
    filters = {"level": level_arg(request.args), "q": request.args.get("q") or None}
    db = _app().store.db
    lines = reads.log_lines(db, step_id, limit=render.TAIL_LINES, tail=True, **filters)
    # Fewer than a full page means the scan saw every match: no second scan to count.
    matches = len(lines) if len(lines) < render.TAIL_LINES else None
    return render.render_log_panel(step, lines, filters, matches)


@bp.get("/jobs/<job_id>/steps/<step_id>/lines")
def log_lines(job_id: str, step_id: str):
    """New lines after the panel's cursor, or a page of earlier lines."""
    step = _step_or_404(job_id, step_id)
    args = request.args
    filters = {"level": level_arg(args), "q": args.get("q") or None}
    db = _app().store.db
    if args.get("before"):
        before = _int(args["before"])
        lines = reads.log_lines(db, step_id, before=before, limit=render.TAIL_LINES,
                                  **filters)
        return render.render_log_lines(step, lines, filters, "before")
    after = _int(args.get("after", "0"))
    if not (filters["level"] or filters["q"]) and step["log_count"] - after > render.WINDOW_LINES:
        # Further behind than the panel keeps in view: the lines in between
        # would be dropped as soon as they were shown, so the panel starts
        # again from the newest lines (one fetch instead of hundreds).
        lines = reads.log_lines(db, step_id, limit=render.FOLLOW_LINES, tail=True)
        return (render.render_log_lines(step, lines, filters, "tail"),
                {"HX-Reswap": "innerHTML"})
    lines = reads.log_lines(db, step_id, after=after, limit=render.FOLLOW_LINES, **filters)
    # A full page may not be the end: the panel fetches again from its new cursor.
    more = len(lines) == render.FOLLOW_LINES
    return render.render_log_lines(step, lines, filters, "after", more)


def _int(raw: str) -> int:
    if not raw.isdigit():
        raise ApiError(400, f"expected a line number, got {raw!r}")
    return int(raw)


# -- buttons ----------------------------------------------------------------------

@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    _app().store.request_cancel(job_id)
    return Response(status=204)  # the live stream shows the change


@bp.post("/jobs/<job_id>/rerun")
def rerun(job_id: str):
    definitions, _ = config.definitions(current_app.config["STEPLINE_DEFINITIONS"])
    new_id = actions.rerun_job(_app().store, definitions, job_id)
    return _go(f"/jobs/{new_id}")


@bp.post("/jobs/<job_id>/delete")
def delete(job_id: str):
    _app().store.delete_job(job_id)
    return _go("/")


@bp.get("/definitions")
def definitions_page():
    definitions, errors = config.definitions(current_app.config["STEPLINE_DEFINITIONS"])
    return render_template("definitions.html", definitions=definitions.values(), errors=errors,
                           error=None, values=None)


@bp.post("/definitions/<name>/run")
def run_definition(name: str):
    definitions, _ = config.definitions(current_app.config["STEPLINE_DEFINITIONS"])
    values = {k[len("param."):]: v for k, v in request.form.items() if k.startswith("param.")}
    try:
        job_id = actions.start_job(_app().store, definitions, name, values)
    except ParamError as exc:
        if name not in definitions:
            raise
        return render_template("run_form.html", d=definitions[name], error=str(exc),
                               values=values), 422
    return _go(f"/jobs/{job_id}")


def _go(url: str) -> Response:
    """htmx follows HX-Redirect; a plain form post follows the 303."""
    if request.headers.get("HX-Request"):
        return Response(status=204, headers={"HX-Redirect": url})
    return Response(status=303, headers={"Location": url})
