"""The CLI as a user runs it, and the demo pipeline end to end."""

import json
from pathlib import Path

from stepline.store import reads
from stepline.store.check import violations
from stepline.web.openapi import SPEC

from .conftest import log_messages, stepline, steps_by_name, wait_job


def test_demo_pipeline_end_to_end(store, db_path, start_worker, tmp_path):
    tree = tmp_path / "project"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "core.py").write_text("class A:\n    def f(self):\n        pass\n\n"
                                          "def g():\n    pass\n")
    (tree / "tests").mkdir()
    (tree / "tests" / "test_core.py").write_text("def test_x():\n    assert True\n")
    (tree / "README.md").write_text("# hi\n")
    start_worker()
    result = stepline(db_path, "run", "codebase_classify", "-p", f"path={tree}", "--wait")
    assert result.returncode == 0, result.stderr + result.stdout
    job_id = result.stdout.splitlines()[0]
    assert "step code_map: completed" in result.stdout
    assert f"job {job_id} completed" in result.stdout
    steps = steps_by_name(store, job_id)
    assert [s for s in steps] == ["import_files", "rule_classify_files", "code_map", "report"]
    assert all(s["status"] == "completed" for s in steps.values())
    classes = log_messages(store, steps["rule_classify_files"]["id"])
    assert "pkg/core.py: source" in classes and "tests/test_core.py: test" in classes
    code_map = log_messages(store, steps["code_map"]["id"])
    assert "pkg/: 1 files, 6 lines, 1 classes, 2 functions" in code_map
    report = log_messages(store, steps["report"]["id"])
    assert any("docs 1" in m and "source 1" in m and "test 1" in m for m in report)


def test_demo_on_stepline_itself_and_load_demo(store, db_path, start_worker):
    start_worker()
    first = stepline(db_path, "run", "codebase_classify")
    load = stepline(db_path, "run", "load_demo", "-p", "tasks=3")
    assert wait_job(store, first.stdout.strip())["status"] == "completed"
    job = wait_job(store, load.stdout.strip(), timeout=60)
    steps = steps_by_name(store, job["id"])
    assert steps["summary"]["status"] == "completed"  # always_run
    assert "load demo finished: 3 tasks" in log_messages(store, steps["summary"]["id"])
    assert steps["fan_out"]["progress_total"] == 3
    assert violations(store.db) == []


def test_cli_errors_are_one_line_exit_2(db_path, tmp_path):
    for args, message in [
        (["run", "nope"], "no definition named 'nope'"),
        (["run", "load_demo", "-p", "tasks=many"], "param 'tasks' must be an integer"),
        (["run", "load_demo", "-p", "bogus=1"], "unknown param 'bogus'"),
        (["run", "load_demo", "-p", "novalue"], "-p takes KEY=VALUE"),
        (["cancel", "missing"], "job missing not found"),
        (["logs", "missing"], "job missing not found"),
        (["prune", "--older-than", "soon"], "bad duration"),
        (["jobs", "--status", "nope"], "invalid choice: 'nope'"),
        (["jobs", "--status", "skipped"], "invalid choice: 'skipped'"),  # a step's, not a job's
        (["jobs", "--definitions", str(tmp_path / "absent")], "absent: not a directory"),
        (["definitions", "--bogus"], "unrecognized arguments: --bogus"),
        (["run"], "the following arguments are required: name"),
    ]:
        result = stepline(db_path, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_definitions_check_reports_bad_files(db_path, tmp_path):
    (tmp_path / "bad.toml").write_text("[step.a]\ntype = 'shell'\n")
    env_args = ["definitions", "--check", "--definitions", str(tmp_path)]
    result = stepline(db_path, *env_args)
    assert result.returncode == 2
    assert "bad.toml: step 'a': missing 'run'" in result.stderr
    assert "load_demo" in result.stdout
    assert stepline(db_path, "definitions", "--check").returncode == 0


def test_run_of_a_file_that_failed_to_load_says_why(db_path, tmp_path):
    """ok1.toml exists but does not load: `run ok1` names the file and its
    problem, as `definitions --check` does, not "no definition named"."""
    (tmp_path / "ok1.toml").write_text('[step.a]\ntype = "shell"\nrun = "echo {params.n}"\n')
    check = stepline(db_path, "definitions", "--check", "--definitions", str(tmp_path))
    problem = f"{tmp_path / 'ok1.toml'}: step 'a': uses {{params.n}} but [params] has no 'n'"
    assert f"stepline: {problem}" in check.stderr.splitlines()
    result = stepline(db_path, "run", "ok1", "--definitions", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == f"stepline: definition 'ok1' did not load: {problem}\n"


def test_definitions_count_steps_and_a_wrong_step_lists_the_job_steps(db_path, tmp_path):
    (tmp_path / "one.toml").write_text('[step.only]\ntype = "shell"\nrun = "true"\n')
    listed = stepline(db_path, "definitions", "--definitions", str(tmp_path)).stdout
    assert [line.split()[1:3] for line in listed.splitlines() if line.startswith("one ")] == [
        ["1", "step"]]
    assert "load_demo                4 steps" in listed
    job_id = stepline(db_path, "run", "load_demo").stdout.strip()
    for command in ("logs", "tasks"):
        result = stepline(db_path, command, job_id, "--step", "nosuch")
        assert result.returncode == 2
        assert result.stderr == (f"stepline: job {job_id} has no step 'nosuch'"
                                 " (known: warm_up, fan_out, flaky, summary)\n")


def test_jobs_logs_cancel_prune(store, db_path, start_worker):
    job_id = stepline(db_path, "run", "load_demo", "-p", "tasks=2").stdout.strip()
    listed = json.loads(stepline(db_path, "jobs", "--json").stdout)  # as GET /api/jobs
    assert [j["job_id"] for j in listed] == [job_id] and listed[0]["status"] == "pending"
    assert set(listed[0]) == set(SPEC["components"]["schemas"]["Job"]["properties"])
    assert stepline(db_path, "cancel", job_id).stdout.strip() == "cancelled"
    assert stepline(db_path, "jobs", "--status", "cancelled").stdout.startswith(job_id)
    again = stepline(db_path, "cancel", job_id)
    assert again.returncode == 2 and "already cancelled" in again.stderr

    start_worker()
    done = stepline(db_path, "run", "codebase_classify", "--wait")
    assert done.returncode == 0
    done_id = done.stdout.splitlines()[0]
    logs = stepline(db_path, "logs", done_id, "--step", "report").stdout
    assert logs.startswith("report |      1 info  files by class:")
    followed = stepline(db_path, "logs", done_id, "--follow")
    assert followed.returncode == 0 and "code_map |" in followed.stdout
    assert stepline(db_path, "prune", "--older-than", "1d").stdout.strip() == "deleted 0 jobs"
    assert stepline(db_path, "prune", "--older-than", "0s").stdout.strip() == "deleted 2 jobs"
    assert reads.list_jobs(store.db)[1] == 0
    assert stepline(db_path, "check").returncode == 0
    assert not Path(db_path + "-missing").exists()
