"""schemathesis against /api/openapi.json on a real gunicorn server: no 5xx,
every response matches the schema, every documented status is the real one."""

import json
import os
import re
import subprocess
import sys

from stepline.web.openapi import SPEC

from .conftest import make_definition

TOKEN = "fuzz-token"
# CI's fixed seed; a longer hunt by hand: STEPLINE_FUZZ_SEED=N
# STEPLINE_FUZZ_EXAMPLES=300 (the CI failure of session 6, a NUL in a log
# search on PostgreSQL, came from inputs built around that run's job ids).
SEED = os.environ.get("STEPLINE_FUZZ_SEED", "20261122")
EXAMPLES = os.environ.get("STEPLINE_FUZZ_EXAMPLES", "60")


def test_api_matches_its_openapi_schema_under_fuzzing(live_server, store, tmp_path):
    server = live_server(env={"STEPLINE_TOKEN": TOKEN})
    # something to find, cancel, re-run and delete (no worker: they stay put)
    for _ in range(3):
        store.create_job(make_definition('[step.a]\ntype = "shell"\nrun = "echo a"\n'), {})
    report = tmp_path / "report.ndjson"
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", server.url + "/api/openapi.json",
         "-H", f"Authorization: Bearer {TOKEN}",
         "--checks", "all",
         # Two checks judge validation by the schema alone, which cannot say
         # it all: an empty query value means "not given", as in an HTML form
         # (the jobs page's "all statuses" filter sends status=), and which
         # params a run accepts depends on the definition's [params] table.
         # A 400 with {error} is the right answer to both, and is documented.
         "--exclude-checks", "negative_data_rejection,positive_data_acceptance",
         "--max-examples", EXAMPLES, "--seed", SEED, "--workers", "2",
         "--request-timeout", "10", "--no-color",
         "--report", "ndjson", "--report-ndjson-path", str(report)],
        capture_output=True, text=True, timeout=600,
    )
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary
    generated = int(re.search(r"(\d+) generated", result.stdout).group(1))
    assert generated >= 500, summary
    operations = sum(len(methods) for methods in SPEC["paths"].values())
    assert re.search(rf"Tested: {operations}\b", result.stdout), summary  # every operation
    statuses = {event.get("response", {}).get("status_code")
                for line in report.read_text().splitlines()
                for event in _interactions(json.loads(line))}
    assert not {s for s in statuses if s and s >= 500}
    print(f"schemathesis: {generated} requests generated, statuses seen {sorted(statuses)}")


def _interactions(event: dict):
    """Response records anywhere in an ndjson event."""
    stack = [event]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "response" in item and isinstance(item["response"], dict):
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
