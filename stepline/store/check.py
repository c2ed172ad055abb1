"""`stepline check`: validate a database against DESIGN.md's invariants."""

from sqlite_utils import Database

from stepline.engine.states import TASK_STATUSES, TERMINAL, Status, sql_list

TERMINAL_SQL = sql_list(TERMINAL)
# one count per task counter: tasks_pending != (tasks whose status is
# 'pending') OR ... (CASE and no aliases in HAVING: SQLite and PostgreSQL alike)
TASK_MISMATCH = " OR ".join(f"s.tasks_{s} != sum(CASE WHEN t.status = '{s}' THEN 1 ELSE 0 END)"
                            for s in TASK_STATUSES)

# (query for the running rows of one table, how a person names one of them)
LEFT_RUNNING = (
    ("SELECT id FROM jobs WHERE status = ?", "job {id}"),
    ("SELECT name, job_id FROM steps WHERE status = ?", "step {name} (job {job_id})"),
    ("SELECT s.name, t.idx, s.job_id FROM tasks t JOIN steps s ON s.id = t.step_id"
     " WHERE t.status = ? ORDER BY s.job_id, s.name, t.idx", "task {name} #{idx} (job {job_id})"),
)


def violations(db: Database, allow_running: bool = False,
               require_owner: bool = False) -> list[str]:
    """Every broken invariant, one message each; empty means healthy.
    `allow_running=False` also reports work left running (after a crash and
    restart nothing may stay running); `require_owner` reports running jobs
    whose worker is not registered (a dead worker's work not yet recovered)."""
    found: list[str] = []
    q = db.query
    for row in q(f"SELECT j.id, j.status, count(*) AS n FROM jobs j JOIN steps s"
                 f" ON s.job_id = j.id WHERE j.status IN {TERMINAL_SQL}"
                 f" AND s.status NOT IN {TERMINAL_SQL} GROUP BY j.id"):
        found.append(f"job {row['id']} is {row['status']} but {row['n']} steps are not terminal")
    for row in q("SELECT s.id, s.log_count, count(l.line) AS n, coalesce(max(l.line), 0) AS mx"
                 " FROM steps s LEFT JOIN logs l ON l.step_id = s.id GROUP BY s.id"
                 " HAVING s.log_count != count(l.line)"
                 " OR s.log_count != coalesce(max(l.line), 0)"):
        found.append(f"step {row['id']}: log_count {row['log_count']}, {row['n']} rows,"
                     f" max line {row['mx']}")
    for row in q(f"SELECT s.id FROM steps s JOIN tasks t ON t.step_id = s.id"
                 f" GROUP BY s.id HAVING {TASK_MISMATCH}"):
        found.append(f"step {row['id']}: task counters disagree with task rows")
    for kind, table, match in (("job", "jobs", "e.context = 'job' AND e.job_id = x.id"),
                               ("step", "steps", "e.step_id = x.id")):
        for row in q(f"SELECT x.id, x.version FROM {table} x WHERE x.version > 1 AND NOT EXISTS"
                     f" (SELECT 1 FROM events e WHERE {match} AND e.version = x.version)"):
            found.append(f"{kind} {row['id']} (version {row['version']}) has no event"
                         " for its current state")
    if not allow_running:  # named as the UI shows them: a task by its step's name and index
        for sql, name in LEFT_RUNNING:
            for row in q(sql, [Status.RUNNING]):
                found.append(f"{name.format(**row)} left running")
    if require_owner:
        for row in q("SELECT id, worker_id FROM jobs WHERE status = ? AND"
                     " coalesce(worker_id, '') NOT IN (SELECT id FROM workers)",
                     [Status.RUNNING]):
            found.append(f"job {row['id']} is running under worker {row['worker_id']},"
                         " which is not registered")
    return found
