"""What the run endpoint makes of a body that is not a strict JSON object:
a 400 with {error}, and no job. Found by a new-user trial: NaN was accepted
(and /api/jobs then gave it back, which strict JSON parsers refuse), and a
deeply nested body was a 500."""

import pytest

from app import create_app
from stepline.store import reads

PARAM = '[step.a]\ntype = "shell"\nrun = "echo {params.ratio}"\n[params]\nratio = 0.5\n'
JSON = "application/json"


@pytest.fixture
def client(db_path, tmp_path):
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "ratio.toml").write_text(PARAM)
    return create_app(db_path, definitions_dir=str(tmp_path / "defs"), token="").test_client()


@pytest.mark.parametrize("body, content_type, message", [
    ('{"params": {"ratio": NaN}}', JSON, "body must be JSON"),
    ('{"params": {"ratio": Infinity}}', JSON, "body must be JSON"),
    ('{"params": {"ratio": -Infinity}}', JSON, "body must be JSON"),
    ("[" * 100_000 + "]" * 100_000, JSON, "body must be JSON"),
    ('{"params": ', JSON, "body must be JSON"),
    (b'{"params": {"ratio": "\xff"}}', JSON, "body must be JSON"),
    ("[1, 2]", JSON, "body must be a JSON object"),
], ids=["NaN", "Infinity", "-Infinity", "nested 100,000 deep", "cut short", "not UTF-8",
        "a list"])
def test_a_body_that_is_not_a_strict_json_object_is_400_and_makes_no_job(
        client, db_path, body, content_type, message):
    response = client.post("/api/definitions/ratio/run", data=body, content_type=content_type)
    assert response.status_code == 400, response.get_data(as_text=True)[:200]
    assert message in response.get_json()["error"]
    assert reads.list_jobs(client.application.extensions["stepline"].store.db)[1] == 0


def test_a_good_body_and_an_empty_one_still_run(client):
    made = client.post("/api/definitions/ratio/run", data='{"params": {"ratio": 0.25}}',
                       content_type=JSON)
    assert made.status_code == 201
    empty = client.post("/api/definitions/ratio/run", content_type=JSON)  # the defaults
    assert empty.status_code == 201
    jobs = client.get("/api/jobs").get_json()["jobs"]
    assert sorted(j["params"]["ratio"] for j in jobs) == [0.25, 0.5]
