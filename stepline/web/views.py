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
from typing import ClassVar
from urllib.parse import urlencode

from stepline.engine.states import JOB_STATUSES
from stepline.store import reads
from stepline.web import render
from stepline.web.http import ApiError, page_arg, search_arg, status_arg
from stepline.web.hub import EVENT_KEYS


def job_states(jobs: list[dict]) -> list[dict]:
    """The `jobs` field of a jobs-list message: each row's status and version."""
    return [{"job_id": j["id"], "status": j["status"], "version": j["version"]} for j in jobs]


def message_fields(seq: int, **known) -> dict:
    """Every key DESIGN's live message has, null where a message (a snapshot,
    a coalesced batch) has no one event to describe."""
    return {**dict.fromkeys(EVENT_KEYS), "seq": seq, "context": "job", "log_refresh": False,
            **known}


@dataclass(frozen=True)
class JobsFilters:
    status: str | None = None
    q: str | None = None
    page: int = 1

    def query(self, **changes) -> str:
        values = {"status": self.status, "q": self.q, "page": self.page, **changes}
        return urlencode({k: v for k, v in values.items() if v and not (k == "page" and v == 1)})


@dataclass(frozen=True)
class PageShown:
    """What a jobs view's last message left on its pages."""

    ids: tuple[str, ...]
    total: int


@dataclass(frozen=True)
class JobsView:
    """One page of the jobs list. It coalesces: at 10 jobs/s a list re-rendered
    per event was 50 messages/s of 7.6 KB and 94 % of the browser's main
    thread, so the hub asks it for one message per window (100 ms, 200 ms in
    a flood) for all the events since the last (`render_batch`,
    `Hub.send_batches`)."""

    filters: JobsFilters
    coalesce: ClassVar[bool] = True

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
        """One event's fragment (SSE replay after a reconnect)."""
        if event["context"] == "job":  # membership or order may change: the whole page
            return self.metrics_and_list(db)[0]
        job = reads.get_job(db, event["job_id"])
        return render.render_job_row(job, oob=True) if job else ""

    def render_batch(self, db, events: list[dict], shown: PageShown | None
                     ) -> tuple[dict, str, PageShown]:
        """ONE message for every event since the last one, given what that
        left on the page (`shown`; None: unknown). Its fields: `seq` is the
        last event's, `context` "job", `job_id`/`step_id`/`status`/`version`
        null (it may cover many jobs), `events` how many events it covers,
        `jobs` [{job_id, status, version}] of the rows it carries, `list`
        whether it replaces the whole list. Its content, from the database
        as it is now, so every page converges to what GET / renders:
        - the rows on this page that had an event, and the rows that entered
          it (a new job, a status that now matches the filter, a job moved
          up by a deletion), upserted in order (`data-order`);
        - a delete for each row that left the page, and the pager;
        - the whole list instead when `shown` is unknown or a page was or
          becomes empty (the "No jobs" row);
        - the counters when a job-level event (a status change, a new or
          deleted job) is among the events."""
        jobs, total = self.page_of_jobs(db)
        now = PageShown(tuple(j["id"] for j in jobs), total)
        whole = shown is None or not shown.ids or not now.ids
        if whole:
            rows = jobs
            content = render.render_job_list(jobs, total, self.filters, oob=True)
        else:
            touched = {e["job_id"] for e in events} | (set(now.ids) - set(shown.ids))
            rows = [j for j in jobs if j["id"] in touched]
            still = set(now.ids)
            left = [i for i in shown.ids if i not in still]
            content = render.render_job_changes(rows, left, total, self.filters,
                                                pager=now != shown)
        if whole or any(e["context"] == "job" for e in events):
            content += render.render_metrics(reads.status_counts(db), oob=True)
        fields = {**message_fields(events[-1]["seq"]), "events": len(events), "list": whole,
                  "jobs": job_states(rows)}
        return fields, content, now

    def snapshot(self, db) -> tuple[dict, str]:
        seq = reads.last_seq(db)
        content, jobs = self.metrics_and_list(db)
        fields = {**message_fields(seq), "snapshot": True, "jobs": job_states(jobs)}
        return fields, content


@dataclass(frozen=True)
class JobView:
    job_id: str
    coalesce: ClassVar[bool] = False  # one message per event: a job page shows each step

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
        if render.has_task_table(step) and (any(step["tasks"].values())
                                            or not event["log_refresh"]):
            # tasks moved, or the step changed (a retry clears its tasks):
            # an open task table re-fetches; a closed one has no such id
            html += render.render_task_trigger(step)
        return html

    def snapshot(self, db) -> tuple[dict, str]:
        seq = reads.last_seq(db)
        job = reads.get_job(db, self.job_id)
        if job is None:
            raise ApiError(404, f"job {self.job_id} not found")
        steps = reads.job_steps(db, self.job_id)
        # Rows first: a <template> parses <tr> only at the start (table mode);
        # anything after them still parses, anything before would drop them.
        # An open task table catches up after a reconnect: its step's trigger
        # (steps that have a task table only; a closed table has no such id).
        content = "".join(render.render_step_row(s, oob=True) for s in steps) + (
            render.render_job_header(job, oob=True)) + "".join(
            render.render_task_trigger(s) for s in steps if render.has_task_table(s))
        # So does an open log panel: the log_refresh events it missed brought
        # lines no later event will (the step may have finished meanwhile).
        content += "".join(render.render_log_trigger(s) for s in steps if s["log_count"])
        fields = {**message_fields(seq, job_id=job["id"], status=job["status"],
                                   version=job["version"]), "snapshot": True,
                  "steps": [{"step_id": s["id"], "name": s["name"], "status": s["status"],
                             "log_count": s["log_count"], "version": s["version"]}
                            for s in steps]}
        return fields, content


def jobs_filters(args) -> JobsFilters:
    return JobsFilters(status_arg(args, JOB_STATUSES), search_arg(args), page_arg(args))


def view_from_args(args) -> JobsView | JobView:
    """The view a live connection asks for: ?job=<id>, or the jobs list."""
    if args.get("job"):
        return JobView(args["job"])
    if args.get("view", "jobs") == "jobs":
        return JobsView(jobs_filters(args))
    raise ApiError(400, "pass ?job=<id> or ?view=jobs")
