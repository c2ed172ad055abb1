"""HTML pages and the form actions behind their buttons. Routes stay thin:
read, render the page template (which includes the fragment templates)."""

import time
from pathlib import Path

from flask import Blueprint, Response, render_template, request, url_for

from stepline.engine import actions
from stepline.engine.params import ParamError
from stepline.engine.states import JOB_STATUSES, Status
from stepline.store import reads
from stepline.web import charts, logview, render
from stepline.web.http import (
    app_state,
    current_db,
    definitions,
    int_arg,
    job_or_404,
    level_arg,
    loaded_definition,
    search_arg,
    step_or_404,
)
from stepline.web.views import JobsView, jobs_filters

bp = Blueprint("pages", __name__)


def _live(query: str) -> dict:
    """Template values for live.html; ?transport=sse forces the SSE fallback."""
    transport = "sse" if request.args.get("transport") == "sse" else "ws"
    return {"transport": transport, "query": query}


@bp.get("/")
def jobs_page():
    # the jobs list, whatever else the query holds (?job= and ?view= are for /ws, /events)
    filters = jobs_filters(request.args)
    view = JobsView(filters)
    db = current_db()
    jobs, total = view.page_of_jobs(db)
    return render_template("jobs.html", jobs=jobs, total=total,
                           pages=render.page_count(total), filters=filters,
                           counts=reads.status_counts(db), statuses=JOB_STATUSES, oob=False,
                           **_live("&".join(filter(None, ["view=jobs", filters.query()]))))


@bp.get("/jobs/<job_id>")
def job_page(job_id: str):
    job = job_or_404(job_id)
    db = current_db()
    steps = reads.job_steps(db, job_id)
    # Failures first: the first failed step comes already open at its first
    # error line, rendered with the page (no script racing the page load).
    failed = next((s for s in steps if s["status"] == Status.FAILED), None)
    open_log = (failed["id"], logview.panel(db, failed, logview.NO_FILTER)) if failed else None
    return render_template("job.html", job=job, steps=steps, oob=False, open_log=open_log,
                           timeline=charts.timeline(steps, time.time()),
                           **_live(f"job={job_id}"))


def _log_filters(args) -> dict:
    return {"level": level_arg(args), "q": search_arg(args)}


@bp.get("/jobs/<job_id>/steps/<step_id>/panel")
def log_panel(job_id: str, step_id: str):
    """Expanding a step: its log tail (filtered when asked), a failed step at
    its first error, or (?at=<line>, a link to a line) around that line."""
    step = step_or_404(job_id, step_id)
    at = int_arg(request.args, "at", 0) or None
    log = logview.panel(current_db(), step, _log_filters(request.args), at)
    return render.render_log_panel(step, log)


@bp.get("/jobs/<job_id>/steps/<step_id>/lines")
def log_lines(job_id: str, step_id: str):
    """New lines after the panel's cursor, a page of earlier (?before=) or
    later (?later=1) lines, or (?tail=1) the newest lines for a new filter."""
    step = step_or_404(job_id, step_id)
    args = request.args
    filters = _log_filters(args)
    db = current_db()
    if args.get("tail"):
        return _tail(db, step, filters)
    if args.get("before"):
        log = logview.before(db, step, filters, int_arg(args, "before", 0))
        return render.render_log_lines(step, log, "before")
    after = int_arg(args, "after", 0)
    if args.get("later"):
        return render.render_log_lines(step, logview.later(db, step, filters, after), "later")
    if filters == logview.NO_FILTER and step["log_count"] - after > render.WINDOW_LINES:
        # Further behind than the panel keeps in view: the lines in between
        # would be dropped as soon as they were shown, so the panel starts
        # again from the newest lines (one fetch instead of hundreds).
        return _tail(db, step, filters, render.FOLLOW_LINES)
    log = logview.after(db, step, filters, after, int_arg(args, "matches", 0),
                        bool(args.get("over")))
    return render.render_log_lines(step, log, "after")


def _tail(db, step: dict, filters: dict, limit: int = render.TAIL_LINES):
    """The panel's lines replaced by the newest (matching) ones."""
    return (render.render_log_lines(step, logview.tail(db, step, filters, limit), "tail"),
            {"HX-Reswap": "innerHTML"})


# -- buttons ----------------------------------------------------------------------

@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    app_state().store.request_cancel(job_id)
    return Response(status=204)  # the live stream shows the change


@bp.post("/jobs/<job_id>/rerun")
def rerun(job_id: str):
    found, errors = definitions()
    new_id = actions.rerun_job(app_state().store, found, job_id, errors)
    return _go(url_for("pages.job_page", job_id=new_id))


@bp.post("/jobs/<job_id>/delete")
def delete(job_id: str):
    app_state().store.delete_job(job_id)
    return _go(url_for("pages.jobs_page"))


@bp.get("/definitions")
def definitions_page():
    found, errors = definitions()
    return render_template("definitions.html", definitions=found.values(), errors=errors,
                           error=None, values=None)


@bp.get("/definitions/<name>")
def definition_page(name: str):
    """One definition: its steps as a graph, its runs, the run form (pre-filled
    from an earlier job with ?from=<job id>, to re-run with edited params) and
    the file itself."""
    definition = loaded_definition(name)
    values, rerun_of = None, None
    if request.args.get("from"):
        job = job_or_404(request.args["from"])
        values = {k: v for k, v in job["params"].items() if k in definition.params}
        rerun_of = job["id"]
    runs = reads.definition_runs(current_db(), name, limit=HISTORY_RUNS)
    return render_template(
        "definition.html", d=definition, source=Path(definition.path).read_text("utf-8"),
        graph=charts.dependency_graph(definition),
        tall_graph=charts.dependency_graph(definition, tall=True),
        history=charts.run_history(runs, time.time()),
        values=values, error=None, rerun_of=rerun_of)


HISTORY_RUNS = 60  # bars in the run history chart


@bp.post("/definitions/<name>/run")
def run_definition(name: str):
    found, errors = definitions()
    values = {k[len("param."):]: v for k, v in request.form.items() if k.startswith("param.")}
    try:
        job_id = actions.start_job(app_state().store, found, name, values, errors=errors)
    except ParamError as exc:
        if name not in found:
            raise
        return render_template("run_form.html", d=found[name], error=str(exc),
                               values=values), 422
    return _go(url_for("pages.job_page", job_id=job_id))


def _go(url: str) -> Response:
    """htmx follows HX-Redirect; a plain form post follows the 303."""
    if request.headers.get("HX-Request"):
        return Response(status=204, headers={"HX-Redirect": url})
    return Response(status=303, headers={"Location": url})
