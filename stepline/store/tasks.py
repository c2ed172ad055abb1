"""The tasks table's writes beside the status writer: creating tasks, claiming
them for a worker, and what a dead worker held.

A fan-out step's tasks are made in batches by set-based inserts (no list of
ids in memory), and claimed by any worker: on PostgreSQL with `FOR UPDATE
SKIP LOCKED`, on SQLite inside the claim's BEGIN IMMEDIATE (which already
holds the one write lock). Today PostgreSQL writes are serialised too (the
advisory lock that keeps events in seq order), so SKIP LOCKED never skips;
it keeps two claims apart should that lock ever become narrower. Every
status change goes through `Tx.transition`.
"""

from stepline.engine.states import Status
from stepline.store.reads import claimable_steps
from stepline.store.writes import Tx

# idx first..end-1 as pending tasks of one step: (first, end, step_id, status)
INSERT_RANGE = {
    "sqlite": "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)"
              " INSERT INTO tasks (step_id, idx, status, attempts) SELECT ?, i, ?, 0 FROM n",
    "postgres": "INSERT INTO tasks (step_id, idx, status, attempts)"
                " SELECT r.step_id, i, r.status, 0 FROM (SELECT ?::bigint AS lo,"
                " ?::bigint AS hi, ?::text AS step_id, ?::text AS status) r,"
                " generate_series(r.lo, r.hi - 1) AS i",
}
# No ORDER BY: sorting a million pending tasks for each claim would cost more
# than the tasks. On SQLite the (step_id, status) index hands them over in the
# order they were made; on PostgreSQL the order is the plan's (retried tasks
# may come first).
CLAIM = "SELECT id, idx, attempts FROM tasks WHERE step_id = ? AND status = ? LIMIT ?"
CLAIM_LOCK = {"sqlite": "", "postgres": " FOR UPDATE SKIP LOCKED"}


def add_range(tx: Tx, step_id: str, first: int, count: int) -> None:
    """Create pending tasks idx first..first+count-1 in one statement."""
    if count <= 0:
        return
    tx.conn.execute(INSERT_RANGE[tx.dialect], (first, first + count, step_id, Status.PENDING))
    tx.conn.execute("UPDATE steps SET tasks_pending = tasks_pending + ?, version = version + 1"
                    " WHERE id = ?", (count, step_id))
    tx._touch(step_id)


def set_cap(tx: Tx, step_id: str, cap: int | None) -> None:
    """At most `cap` of the step's tasks running at once, on all workers
    together (None: no cap): `claim` keeps to it."""
    tx.conn.execute("UPDATE steps SET task_cap = ? WHERE id = ?", (cap, step_id))


def add(tx: Tx, step_id: str, count: int) -> list[int]:
    """Create `count` pending tasks after the step's last; returns their ids in order."""
    first = tx.conn.execute(
        "SELECT coalesce(max(idx), -1) + 1 FROM tasks WHERE step_id = ?", (step_id,)
    ).fetchone()[0]
    add_range(tx, step_id, first, count)
    return [r[0] for r in tx.conn.execute(
        "SELECT id FROM tasks WHERE step_id = ? AND idx >= ? ORDER BY idx", (step_id, first)
    ).fetchall()]


def claim(tx: Tx, worker_id: str, limit: int, step_types: list[str]) -> list[dict]:
    """Take up to `limit` pending tasks of running steps of `step_types` for
    `worker_id`: each becomes running, attempts + 1. Each step first gets a
    fair share of the limit (the least served first), then the rest goes to
    whichever still has some: two fan-out steps running side by side (the
    demo's `fan_out` and `flaky`) both progress, where the oldest used to
    take every slot until its last task was handed out. A step with a
    `task_cap` (generate's `concurrency`) gets no more than it leaves room
    for, counting its tasks running on every worker."""
    if limit <= 0 or not step_types:
        return []
    sql, args = claimable_steps(step_types, "id, task_cap - tasks_running")
    # step id -> how many it may take under its cap (no cap: all of the limit)
    under_cap = {step_id: limit if left is None else left
                 for step_id, left in tx.conn.execute(sql + " LIMIT 16", args).fetchall()}
    steps = list(under_cap)
    claimed: list[dict] = []
    taken = dict.fromkeys(steps, 0)
    for share in (max(1, limit // max(1, len(steps))), limit):  # a fair share, then the rest
        for step_id in steps:
            room = min(share, under_cap[step_id]) - taken[step_id]
            room = min(room, limit - len(claimed))
            if room <= 0:
                continue
            rows = tx.conn.execute(CLAIM + CLAIM_LOCK[tx.dialect],
                                   (step_id, Status.PENDING, room)).fetchall()
            if not rows:
                continue
            tx.transition("task", [r[0] for r in rows], Status.RUNNING, worker=worker_id)
            taken[step_id] += len(rows)
            claimed += [{"id": task_id, "step_id": step_id, "idx": idx, "attempt": attempts + 1}
                        for task_id, idx, attempts in rows]
    return claimed


def held_by(tx: Tx, worker_id: str) -> list[tuple]:
    """(task id, job id, step id, attempts, step retries) of each task
    `worker_id` runs, through the running steps (indexed; never a scan of
    every task ever made)."""
    return tx.conn.execute(
        "SELECT t.id, s.job_id, s.id, t.attempts, s.retries FROM steps s JOIN tasks t"
        " ON t.step_id = s.id AND t.status = ? WHERE s.status = ? AND t.worker = ?",
        (Status.RUNNING, Status.RUNNING, worker_id),
    ).fetchall()
