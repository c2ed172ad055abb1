"""Install Stepline the way a user does: build the wheel, install it into a
fresh venv, and use it from a directory that is not the checkout."""

import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from .conftest import ROOT, wait_for
from .live_server import free_port

pytestmark = pytest.mark.one_backend  # a built wheel on its own SQLite file

USER_DEFINITION = """
description = "a user's own job, its code in the user's own `jobs` package"
[step.hello]
type = "python"
call = "jobs.nightly:run"
"""
USER_CODE = """
def run(ctx):
    ctx.log("hello from the user's jobs package")
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the venv's bin directory)."""
    base = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(base / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((base / "dist").glob("stepline-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    bin_dir = base / "venv" / "bin"
    subprocess.run([str(bin_dir / "pip"), "install", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True, capture_output=True)
    return wheel, bin_dir


def run_in(directory: Path, bin_dir: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "STEPLINE_DB", "STEPLINE_DEFINITIONS")}
    return subprocess.run([str(bin_dir / "stepline"), *args], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=120, **kwargs)


def test_the_wheel_holds_the_whole_product_and_only_the_stepline_package(installed):
    wheel, bin_dir = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"stepline", "stepline-0.1.0.dist-info"}
    for needed in ("stepline/templates/base.html", "stepline/templates/job.html",
                   "stepline/static/stepline.css", "stepline/static/vendor/htmx.min.js",
                   "stepline/jobs/codebase_classify.toml", "stepline/jobs/load_demo.toml",
                   "stepline/web/gunicorn_conf.py"):
        assert needed in names, needed
    site = next(bin_dir.parent.glob("lib/python*/site-packages"))
    assert not (site / "jobs").exists() and not (site / "app.py").exists()


def test_definitions_from_an_empty_directory(installed, tmp_path):
    _, bin_dir = installed
    result = run_in(tmp_path, bin_dir, "definitions")
    assert result.returncode == 0, result.stderr
    assert "codebase_classify" in result.stdout and "load_demo" in result.stdout


def test_serve_demo_from_an_empty_directory(installed, tmp_path):
    _, bin_dir = installed
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STEPLINE_DB")}
    serve = subprocess.Popen([str(bin_dir / "stepline"), "serve", "--demo", "--port", str(port)],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def page():
            try:
                return requests.get(url + "/", timeout=5)
            except requests.RequestException:
                return None

        home = wait_for(page, timeout=60, what="the home page")
        assert home.status_code == 200 and "codebase_classify" in home.text
        for asset in ("/static/stepline.css", "/static/stepline.js",
                      "/static/vendor/htmx.min.js"):
            assert requests.get(url + asset, timeout=5).status_code == 200, asset

        def demo_done():
            jobs = requests.get(url + "/api/jobs", timeout=5).json()["jobs"]
            demo = [j for j in jobs if j["definition"] == "codebase_classify"]
            return demo and demo[0]["status"] in ("completed", "failed") and demo[0]
        assert wait_for(demo_done, timeout=120, what="the demo")["status"] == "completed"
        assert (tmp_path / "stepline.db").exists()  # in the current directory
    finally:
        serve.send_signal(signal.SIGINT)
        output = serve.communicate(timeout=30)[0]
    assert serve.returncode == 0, output


def test_a_user_project_with_its_own_jobs_package(installed, tmp_path):
    """The most natural name for a project's job code is `jobs`: it must be
    the user's own, both for their python steps and for their imports."""
    _, bin_dir = installed
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "__init__.py").write_text("")
    (jobs / "nightly.py").write_text(USER_CODE)
    (jobs / "nightly.toml").write_text(USER_DEFINITION)

    listed = run_in(tmp_path, bin_dir, "definitions")
    assert "nightly" in listed.stdout and "load_demo" in listed.stdout, listed
    imported = subprocess.run([str(bin_dir / "python"), "-c",
                               "import jobs.nightly; print(jobs.nightly.__file__)"],
                              cwd=tmp_path, capture_output=True, text=True)
    assert imported.stdout.strip() == str(jobs / "nightly.py"), imported

    queued = run_in(tmp_path, bin_dir, "run", "nightly")
    assert queued.returncode == 0, queued.stderr
    worker = run_in(tmp_path, bin_dir, "worker", "--exit-when-idle")
    assert worker.returncode == 0, worker.stderr
    logs = run_in(tmp_path, bin_dir, "logs", queued.stdout.split()[-1])
    assert "hello from the user's jobs package" in logs.stdout, (logs, worker)
