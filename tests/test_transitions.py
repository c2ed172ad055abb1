"""Invariant 1 (one status writer, state + event in one transaction) and 2
(a job is terminal only when all its steps are)."""

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepline.engine.states import (
    TERMINAL,
    TRANSITIONS,
    InvalidTransition,
    Status,
    check_transition,
)
from stepline.store import reads
from stepline.store.check import violations
from stepline.store.errors import Conflict
from stepline.store.writes import Store

from .conftest import make_definition

THREE_STEPS = """
[step.a]
type = "shell"
run = "true"
[step.b]
type = "shell"
run = "true"
[step.c]
type = "shell"
run = "true"
"""
CODE_DIR = Path(__file__).resolve().parent.parent / "stepline"


def test_only_the_transition_function_writes_a_status():
    """Fails if any code path other than Tx.transition updates a status column."""
    writers = []
    for path in CODE_DIR.rglob("*.py"):
        hits = re.findall(r"SET[^\"']*\bstatus\s*=", path.read_text(), re.I)
        writers += [path.name] * len(hits)
    assert writers == ["writes.py"]
    source = (CODE_DIR / "store" / "writes.py").read_text()
    assert len(re.findall(r"SET[^\"']*\bstatus\s*=", source, re.I)) == 1
    transition_body = source.split("def transition(")[1].split("\n    def ")[0]
    assert re.search(r"SET status = \?", transition_body)


def test_table_rejects_everything_it_does_not_list():
    for kind, table in TRANSITIONS.items():
        for current in Status:
            for new in Status:
                allowed = new in table.get(current, ())
                if allowed:
                    check_transition(kind, current, new)
                else:
                    with pytest.raises(InvalidTransition):
                        check_transition(kind, current, new)
    for kind in TRANSITIONS:
        for terminal in TERMINAL:
            assert not TRANSITIONS[kind].get(terminal), f"{kind} leaves terminal {terminal}"


def test_statuses_keep_their_stored_values():
    """The database and the JSON API hold these strings; the enum must not change them."""
    assert [s.value for s in Status] == ["pending", "running", "completed", "failed",
                                         "cancelled", "skipped"]
    assert all(isinstance(s, Status) for s in TERMINAL)
    assert all(isinstance(k, Status) for table in TRANSITIONS.values() for k in table)
    # a status read back from SQLite is a plain str: the table answers it all the same
    check_transition("job", "pending", "running")
    assert "completed" in TERMINAL and "running" not in TERMINAL


def snapshot(store: Store, job_id: str):
    job = reads.get_job(store.db, job_id)
    steps = [(s["status"], s["version"]) for s in reads.job_steps(store.db, job_id)]
    return job["status"], job["version"], steps, reads.last_seq(store.db)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(moves=st.lists(st.tuples(st.sampled_from(["job", 0, 1, 2]),
                                st.sampled_from(list(Status))), max_size=25))
def test_random_transitions_keep_every_invariant(tmp_path_factory, moves):
    store = Store(str(tmp_path_factory.mktemp("sm") / "s.db"))
    job_id = store.create_job(make_definition(THREE_STEPS), {})
    step_ids = [s["id"] for s in reads.job_steps(store.db, job_id)]
    for target, to in moves:
        kind, entity = ("job", job_id) if target == "job" else ("step", step_ids[target])
        before = snapshot(store, job_id)
        try:
            with store.write() as tx:
                tx.transition(kind, entity, to)
        except (InvalidTransition, Conflict):
            assert snapshot(store, job_id) == before  # refused: nothing written
            continue
        after = snapshot(store, job_id)
        events = reads.events_after(store.db, before[3])
        assert len(events) == 1  # exactly one event per transition, same transaction
        event = events[0]
        assert event["status"] == to and event["seq"] == after[3]
        assert event["context"] == ("job" if kind == "job" else "job_step")
        job = reads.get_job(store.db, job_id)
        if job["status"] in TERMINAL:
            assert all(s["status"] in TERMINAL for s in reads.job_steps(store.db, job_id))
        assert violations(store.db, allow_running=True) == []


def test_failed_transaction_writes_neither_state_nor_event(store):
    job_id = store.create_job(make_definition(THREE_STEPS), {})
    seq = reads.last_seq(store.db)
    with pytest.raises(RuntimeError):
        with store.write() as tx:
            tx.transition("job", job_id, "running")
            raise RuntimeError("crash between state and commit")
    assert reads.get_job(store.db, job_id)["status"] == "pending"
    assert reads.last_seq(store.db) == seq


def test_job_cannot_finish_before_its_steps(store):
    job_id = store.create_job(make_definition(THREE_STEPS), {})
    with store.write() as tx:
        tx.transition("job", job_id, "running")
    with pytest.raises(Conflict, match="3 steps not yet terminal"):
        with store.write() as tx:
            tx.transition("job", job_id, "completed")
    assert reads.get_job(store.db, job_id)["status"] == "running"


def test_claim_is_atomic_and_oldest_first(store):
    definition = make_definition(THREE_STEPS)
    first = store.create_job(definition, {})
    second = store.create_job(definition, {})
    assert store.claim_next_job("w1") == first
    assert store.claim_next_job("w2") == second
    assert store.claim_next_job("w3") is None
