"""/structure and the job page for a job of 1,000 steps (#8), plus what each
layer costs (raw SQLite vs store API, fragment render, JSON encode)."""

import json
import sqlite3

import requests

from bench.harness import Store, definition, print_table, temp_db, timed, web
from stepline.store import reads
from stepline.web.frames import Message

STEPS = 1000


def thousand_steps() -> str:
    parts = []
    for i in range(STEPS):
        dep = f'\ndepends = ["s{i - 1}"]' if i else ""
        parts.append(f'[step.s{i}]\ntype = "shell"\nrun = "echo {i}"{dep}\n')
    return "\n".join(parts)



def main():
    with temp_db() as path:
        store = Store(path)
        job_id = store.create_job(definition(thousand_steps()), {})
        with web(path) as server:
            session = requests.Session()
            structure_ms = timed(lambda: session.get(
                f"{server.url}/api/jobs/{job_id}/structure").raise_for_status())
            page_ms = timed(lambda: session.get(f"{server.url}/jobs/{job_id}").raise_for_status())
            size = len(session.get(f"{server.url}/jobs/{job_id}").content)
            # the same job finished: every step has a timeline bar to draw (100 drawn)
            with sqlite3.connect(path) as conn:
                conn.execute("UPDATE steps SET status = 'completed', started = 1e9 + idx,"
                             " finished = 1e9 + idx + 1 WHERE job_id = ?", [job_id])
            done_ms = timed(lambda: session.get(f"{server.url}/jobs/{job_id}").raise_for_status())
            timeline_ms = timed(lambda: session.get(
                f"{server.url}/jobs/{job_id}/timeline").raise_for_status())
        # layer costs, in this process
        raw = sqlite3.connect(path)
        raw_ms = timed(lambda: raw.execute(
            "SELECT * FROM steps WHERE job_id = ? ORDER BY idx", [job_id]).fetchall())
        store_ms = timed(lambda: reads.job_steps(store.db, job_id))
        step = reads.job_steps(store.db, job_id)[0]
        from app import create_app
        from stepline.web import render

        app = create_app(path, token="")
        with app.app_context():
            render_ms = timed(lambda: render.render_step_row(step, oob=True), 300)
            html = render.render_step_row(step, oob=True)
        event = {"seq": 1, "context": "job_step", "job_id": job_id, "step_id": step["id"],
                 "status": "running", "log_refresh": 0, "log_count": 0, "version": 2}
        json_ms = timed(lambda: Message(1, event, html), 300)
        encoded = len(json.dumps({**event, "content": html}))
    print_table("Structure and page of a 1,000-step job", [
        ("GET /api/jobs/<id>/structure, p50", f"{structure_ms:.1f} ms", "<= 20 ms",
         structure_ms <= 20),
        ("GET /jobs/<id> (full page), p50", f"{page_ms:.1f} ms ({size / 1024:.0f} KB)",
         "<= 100 ms", page_ms <= 100),
        ("GET /jobs/<id>, all 1,000 steps finished (timeline drawn), p50",
         f"{done_ms:.1f} ms", "<= 100 ms", done_ms <= 100),
        ("GET /jobs/<id>/timeline (its live re-fetch), p50", f"{timeline_ms:.1f} ms", "-", True),
        ("layer: raw sqlite3 SELECT of 1,000 steps", f"{raw_ms:.2f} ms", "-", True),
        ("layer: store API (reads.job_steps)", f"{store_ms:.2f} ms "
         f"({store_ms / raw_ms:.1f}x raw)", "-", True),
        ("layer: render one step_row fragment", f"{render_ms * 1000:.0f} us", "-", True),
        ("layer: JSON-encode one live message (both forms)",
         f"{json_ms * 1000:.0f} us ({encoded} bytes)", "-", True),
    ])


if __name__ == "__main__":
    main()
