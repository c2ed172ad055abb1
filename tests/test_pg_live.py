"""A PostgreSQL web process's live updates never wait for its read pool: the
tailer reads the events AND renders their fragments on its own connection,
so page requests holding every pooled connection (a slow search, a burst of
page loads) cannot hold up a live message."""

import threading

import pytest

from stepline.store import reads
from stepline.store.postgres import POOL_SIZE
from stepline.store.writes import Store
from stepline.web.app import create_app
from stepline.web.subscriptions import QueueSubscription
from stepline.web.views import JobView

from .conftest import make_definition

pytestmark = pytest.mark.one_backend  # always on PostgreSQL


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_live_message_is_rendered_while_every_pooled_connection_is_busy(pg_url):
    store = Store(pg_url)
    job_id = store.create_job(make_definition('[step.s]\ntype = "shell"\nrun = "true"'), {})
    step_id = reads.job_steps(store.db, job_id)[0]["id"]
    app = create_app(pg_url)
    web = app.extensions["stepline"]
    done = threading.Event()
    event_watch = web.hub.event_watch

    def stoppable_watch():  # the tailer thread ends with the test
        watch = event_watch()
        wait = watch.wait

        def stopping(timeout):
            if done.is_set():
                raise SystemExit
            return wait(timeout)
        watch.wait = stopping
        return watch

    web.hub.event_watch = stoppable_watch
    sub = web.hub.subscribe(QueueSubscription(JobView(job_id), "sse"))
    pool = web.store.backend.pool
    held = [pool.getconn() for _ in range(POOL_SIZE)]  # page requests, as it were
    try:
        with store.write() as tx:
            tx.transition("step", step_id, "running")
        # A render through the pool would wait for a connection (up to
        # STEPLINE_BUSY_TIMEOUT, 30 s): this one arrives at once.
        message = sub.get(timeout=10)
        assert message is not None, "no live message while the pool was busy"
        assert message.fields["status"] == "running"
        assert f'id="step-{step_id}"' in message.content
        assert 'data-status="running"' in message.content
    finally:
        for conn in held:
            pool.putconn(conn)
        done.set()
        thread = web.hub._thread
        thread.join(10)
        web.hub._watch.close()
        web.store.close()
        store.close()
