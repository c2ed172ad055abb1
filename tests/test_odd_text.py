"""Text a database cannot hold as it is (a NUL, a lone surrogate) in a search
or an id: both backends answer the same, and never a 500. CI found
`logs?q=%00` a 500 on PostgreSQL; on SQLite the same search matched every
line, since LIKE stopped at the NUL."""

import pytest

from app import create_app
from stepline.store import reads

from .conftest import make_definition


@pytest.fixture
def client_and_step(db_path, store):
    job_id = store.create_job(make_definition('[step.a]\ntype = "shell"\nrun = "true"'), {})
    step_id = reads.job_steps(store.db, job_id)[0]["id"]
    with store.write() as tx:  # stored as U+FFFD, as a step's output with a NUL is
        tx.append_logs(job_id, step_id, [(0, "info", "before\x00after"), (0, "info", "café"),
                                         (0, "info", "plain")])
    return create_app(db_path, token="").test_client(), job_id, step_id


def test_a_search_for_a_nul_finds_the_line_that_had_one(client_and_step):
    client, job_id, step_id = client_and_step
    url = f"/api/jobs/{job_id}/steps/{step_id}/logs"
    found = client.get(f"{url}?q=%00").get_json()["lines"]
    assert [line["message"] for line in found] == ["before\ufffdafter"]
    assert client.get(f"{url}?q=plain%00x").get_json()["lines"] == []  # not a search for "plain"
    page = client.get(f"/jobs/{job_id}/steps/{step_id}/lines?q=%00").get_data(as_text=True)
    assert "before<mark>\ufffd</mark>after" in page and "café" not in page


@pytest.mark.parametrize("bad", ["%00", "a%00b", "%ED%A0%80"])
def test_an_id_that_cannot_be_stored_is_not_found(client_and_step, bad):
    client, job_id, step_id = client_and_step
    assert client.get(f"/api/jobs/{bad}").status_code == 404
    assert client.get(f"/api/jobs/{job_id}/steps/{bad}/logs").status_code == 404
    assert client.get(f"/api/jobs?q={bad}").get_json()["jobs"] == []
