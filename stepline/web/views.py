"""What a live page shows: a view is one job, or one page of the jobs list.

A view decides which events concern it and renders the fragment for each;
the hub calls that once per event and shares the result. The pages render
the same templates for their first load.

Status vs content: a message's `status`, `version`, `log_count` are the
event's own (what the row was when the event was written); its `content` is
rendered from the row as it is NOW, which may already be newer, and carries
its own `data-status`/`data-version`. The DOM converges because every
`content` is the latest state and messages arrive in seq order; JSON clients
apply the event fields in seq order and end at the same state. Snapshots
likewise read their seq first and the rows after, so they may be newer than
their seq, never older (README, "Live protocol notes").
"""

from dataclasses import dataclass
from urllib.parse import urlencode

from stepline.store import reads
from stepline.web import render
from stepline.web.http import ApiError, page_arg, status_arg


@dataclass(frozen=True)
class JobsFilters:
    status: str | None = None
    q: str | None = None
    page: int = 1

    def query(self, **changes) -> str:
        values = {"status": self.status, "q": self.q, "page": self.page, **changes}
        return urlencode({k: v for k, v in values.items() if v and not (k == "page" and v == 1)})


@dataclass(frozen=True)
class JobsView:
    filters: JobsFilters

    @property
    def key(self):
        return ("jobs", self.filters)

    def wants(self, event: dict) -> bool:
        return True

    def page_of_jobs(self, db) -> tuple[list[dict], int]:
        f = self.filters
        return reads.list_jobs(db, status=f.status, q=f.q, limit=render.PAGE_SIZE,
                                 offset=(f.page - 1) * render.PAGE_SIZE)

    def metrics_and_list(self, db) -> tuple[str, list[dict]]:
        jobs, total = self.page_of_jobs(db)
        html = render.render_metrics(reads.status_counts(db), oob=True)
        return html + render.render_job_list(jobs, total, self.filters, oob=True), jobs

    def render_event(self, db, event: dict) -> str:
        if event["context"] == "job":  # membership or order may change: the whole page
            return self.metrics_and_list(db)[0]
        job = reads.get_job(db, event["job_id"])
        return render.render_job_row(job, oob=True) if job else ""

    def snapshot(self, db) -> tuple[dict, str]:
        seq = reads.last_seq(db)
        content, jobs = self.metrics_and_list(db)
        fields = {"seq": seq, "context": "job", "job_id": None, "step_id": None,
                  "snapshot": True,
                  "jobs": [{"job_id": j["id"], "status": j["status"], "version": j["version"]}
                           for j in jobs]}
        return fields, content


@dataclass(frozen=True)
class JobView:
    job_id: str

    @property
    def key(self):
        return ("job", self.job_id)

    def wants(self, event: dict) -> bool:
        return event["job_id"] == self.job_id

    def render_event(self, db, event: dict) -> str:
        if event["context"] == "job":
            job = reads.get_job(db, self.job_id)
            return render.render_job_header(job, oob=True) if job else render.render_job_deleted(
                self.job_id)
        step = reads.get_step(db, event["step_id"])
        if step is None:
            return ""
        html = render.render_step_row(step, oob=True)
        if event["log_refresh"]:
            html += render.render_log_trigger(step)
        return html

    def snapshot(self, db) -> tuple[dict, str]:
        seq = reads.last_seq(db)
        job = reads.get_job(db, self.job_id)
        if job is None:
            raise ApiError(404, f"job {self.job_id} not found")
        steps = reads.job_steps(db, self.job_id)
        # Rows first: a <template> parses <tr> only at the start (table mode);
        # anything after them still parses, anything before would drop them.
        content = "".join(render.render_step_row(s, oob=True) for s in steps) + (
            render.render_job_header(job, oob=True))
        fields = {"seq": seq, "context": "job", "job_id": job["id"], "step_id": None,
                  "status": job["status"], "version": job["version"], "snapshot": True,
                  "steps": [{"step_id": s["id"], "name": s["name"], "status": s["status"],
                             "log_count": s["log_count"], "version": s["version"]}
                            for s in steps]}
        return fields, content


def view_from_args(args) -> JobsView | JobView:
    if args.get("job"):
        return JobView(args["job"])
    if args.get("view", "jobs") == "jobs":
        return JobsView(JobsFilters(status_arg(args), args.get("q") or None, page_arg(args)))
    raise ApiError(400, "pass ?job=<id> or ?view=jobs")
