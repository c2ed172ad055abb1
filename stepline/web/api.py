"""The JSON API (described by /api/openapi.json), /healthz and /metrics."""

import json
from dataclasses import asdict
from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify, request, stream_with_context

from stepline.engine import actions
from stepline.engine.states import JOB_STATUSES, TASK_STATUSES
from stepline.store import reads
from stepline.web.http import (
    ApiError,
    app_state,
    current_db,
    int_arg,
    job_or_404,
    level_arg,
    search_arg,
    status_arg,
    step_or_404,
)
from stepline.web.http import definitions as loaded_definitions
from stepline.web.openapi import SPEC

bp = Blueprint("api", __name__)


def job_json(job: dict) -> dict:
    return {
        "job_id": job["id"], "definition": job["definition"], "params": job["params"],
        "status": job["status"], "error": job["error"], "version": job["version"],
        "created_at": job["created"], "started_at": job["started"],
        "finished_at": job["finished"], "steps_total": job["steps_total"],
        "steps_done": job["steps_done"], "steps_failed": job["steps_failed"],
        "tasks": job["tasks"], "rerun_of": job["rerun_of"],
    }


def step_json(step: dict) -> dict:
    return {
        "step_id": step["id"], "name": step["name"], "type": step["type"],
        "status": step["status"], "log_count": step["log_count"], "depends": step["depends"],
        "tasks": step["tasks"], "progress": {"done": step["progress_done"],
                                             "total": step["progress_total"]},
        "started_at": step["started"], "finished_at": step["finished"],
        "error": step["error"], "version": step["version"],
    }


@bp.get("/api/openapi.json")
def openapi():
    return jsonify(SPEC)


@bp.get("/api/jobs")
def list_jobs():
    args = request.args
    limit = int_arg(args, "limit", 50, low=1, high=500)
    offset = int_arg(args, "offset", 0)
    jobs, total = reads.list_jobs(current_db(), status=status_arg(args, JOB_STATUSES),
                                  q=search_arg(args), limit=limit, offset=offset)
    return jsonify(jobs=[job_json(j) for j in jobs], total=total, limit=limit, offset=offset)


@bp.get("/api/jobs/<job_id>")
def get_job(job_id: str):
    job = job_or_404(job_id)
    return jsonify({**job_json(job),
                    "steps": [step_json(s) for s in reads.job_steps(current_db(), job_id)]})


@bp.get("/api/jobs/<job_id>/structure")
def structure(job_id: str):
    body = reads.structure_json(current_db(), job_id)
    if body is None:
        raise ApiError(404, f"job {job_id} not found")
    return Response(body, mimetype="application/json")


@bp.get("/api/jobs/<job_id>/steps/<step_id>/logs")
def logs(job_id: str, step_id: str):
    step_or_404(job_id, step_id)
    args = request.args
    after = int_arg(args, "after", 0)
    limit = int_arg(args, "limit", 1000, low=1, high=10_000)
    filters = {"level": level_arg(args), "q": search_arg(args)}
    lines = reads.log_lines(current_db(), step_id, after=after, limit=limit, **filters)
    return jsonify(lines=lines, next_after=lines[-1]["line"] if lines else after,
                   total=reads.count_log_lines(current_db(), step_id, **filters))


@bp.get("/api/jobs/<job_id>/steps/<step_id>/logs.txt")
def logs_txt(job_id: str, step_id: str):
    """`<line> <UTC time> <level> <message>` per line, streamed in batches:
    a 10-million-line log never sits in memory."""
    step = step_or_404(job_id, step_id)
    store = app_state().store

    def lines():
        for row in reads.iter_log_lines(store.db, step_id):
            when = datetime.fromtimestamp(row["ts"], UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
            yield f"{row['line']} {when[:-3]}Z {row['level']:<5} {row['message']}\n"

    # ids only: a step name may hold any character, a header may not
    filename = f"{job_id}-{step['id']}.log"
    return Response(stream_with_context(lines()), mimetype="text/plain",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@bp.get("/api/jobs/<job_id>/steps/<step_id>/tasks")
def tasks(job_id: str, step_id: str):
    step_or_404(job_id, step_id)
    args = request.args
    rows, total = reads.step_tasks(current_db(), step_id, status=status_arg(args, TASK_STATUSES),
                                   offset=int_arg(args, "offset", 0),
                                   limit=int_arg(args, "limit", 50, low=1, high=1000))
    return jsonify(tasks=rows, total=total)


@bp.get("/api/definitions")
def definitions():
    found, errors = loaded_definitions()
    return jsonify(definitions=[
        {"name": d.name, "description": d.description, "params": d.params,
         "limits": {k: asdict(limit) for k, limit in d.limits.items()},
         "steps": [{"name": s.name, "type": s.type, "depends": s.depends} for s in d.steps]}
        for d in found.values()], errors=errors)


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def json_object_body() -> dict:
    """The request's body as a JSON object ({} when empty), strictly: NaN and
    Infinity are not JSON (Python's parser takes them, and /api/jobs then gave
    them back to every client), and nesting too deep for the parser (100,000
    '[' ran out of recursion) is refused too, both as a 400."""
    raw = request.get_data()
    if not raw:
        return {}
    try:
        if not request.is_json:
            raise ValueError("not application/json")
        body = json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError):
        raise ApiError(400, "body must be JSON: {\"params\": {...}}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object: {\"params\": {...}}")
    return body


@bp.post("/api/definitions/<name>/run")
def run(name: str):
    body = json_object_body()
    found, errors = loaded_definitions()
    job_id = actions.start_job(app_state().store, found, name, body.get("params") or {},
                               errors=errors)
    return jsonify(job_id=job_id), 201


@bp.post("/api/jobs/<job_id>/cancel")
def cancel(job_id: str):
    return jsonify(job_id=job_id, status=app_state().store.request_cancel(job_id))


@bp.post("/api/jobs/<job_id>/rerun")
def rerun(job_id: str):
    found, errors = loaded_definitions()
    return jsonify(job_id=actions.rerun_job(app_state().store, found, job_id, errors)), 201


@bp.delete("/api/jobs/<job_id>")
def delete(job_id: str):
    app_state().store.delete_job(job_id)
    return "", 204


@bp.get("/healthz")
def healthz():
    reads.last_seq(current_db())
    return jsonify(ok=True)


@bp.get("/metrics")
def metrics():
    db = current_db()
    lines = ["# HELP stepline_jobs Jobs by status.", "# TYPE stepline_jobs gauge"]
    lines += [f'stepline_jobs{{status="{s}"}} {n}' for s, n in reads.status_counts(db).items()]
    lines += ["# HELP stepline_running_steps Steps running now.",
              "# TYPE stepline_running_steps gauge",
              f"stepline_running_steps {reads.running_steps_count(db)}",
              "# HELP stepline_events_written Events written (highest seq).",
              "# TYPE stepline_events_written counter",
              f"stepline_events_written {reads.last_seq(db)}",
              "# HELP stepline_events_dispatched Events this process fanned out.",
              "# TYPE stepline_events_dispatched counter",
              f"stepline_events_dispatched {app_state().hub.events_seen}",
              "# HELP stepline_live_connections Open live connections in this process.",
              "# TYPE stepline_live_connections gauge"]
    lines += [f'stepline_live_connections{{transport="{t}"}} {n}'
              for t, n in app_state().hub.connection_counts().items()]
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
