"""Parts of the job page fetched on their own: a step's task table (only
while a person has it open: it exists only as this fragment) and the step
timeline (the template the full page includes, re-fetched while it is live)."""

import time

from flask import Blueprint, request

from stepline.engine.states import TASK_STATUSES
from stepline.store import reads
from stepline.web import charts, render
from stepline.web.http import current_db, int_arg, job_or_404, status_arg, step_or_404

bp = Blueprint("parts", __name__)


@bp.get("/jobs/<job_id>/steps/<step_id>/tasks")
def task_table(job_id: str, step_id: str):
    """One page of a step's tasks (?status=failed: the failed only)."""
    step = step_or_404(job_id, step_id)
    status = status_arg(request.args, TASK_STATUSES)
    offset = int_arg(request.args, "offset", 0)
    tasks, total = reads.step_tasks(current_db(), step_id, status=status, offset=offset,
                                    limit=render.TASK_PAGE)
    return render.render_task_table(step, tasks, total, status, offset)


@bp.get("/jobs/<job_id>/timeline")
def timeline(job_id: str):
    """The step timeline, as job_page draws it."""
    job_or_404(job_id)
    return render.render_timeline(charts.timeline(reads.step_times(current_db(), job_id),
                                                  time.time()))
