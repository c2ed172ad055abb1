"""What a user can do to jobs, shared by the CLI, the pages and the JSON API."""

from typing import Any

from stepline.engine.definitions import Definition, ParamError, resolve_params
from stepline.engine.states import TERMINAL
from stepline.store import reads
from stepline.store.errors import Conflict, NotFound
from stepline.store.writes import Store


def start_job(store: Store, definitions: dict[str, Definition], name: str,
              raw_params: dict[str, Any], rerun_of: str | None = None) -> str:
    if name not in definitions:
        known = ", ".join(sorted(definitions)) or "none"
        raise NotFound(f"no definition named {name!r} (known: {known})")
    if not isinstance(raw_params, dict):
        raise ParamError("params must be an object of name: value")
    definition = definitions[name]
    return store.create_job(definition, resolve_params(definition, raw_params), rerun_of)


def rerun_job(store: Store, definitions: dict[str, Definition], job_id: str) -> str:
    """A new job from the same definition and params (like a workflow re-run)."""
    job = reads.get_job(store.db, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if job["status"] not in TERMINAL:
        raise Conflict(f"job {job_id} is {job['status']}; re-run it once it has finished")
    return start_job(store, definitions, job["definition"], job["params"], rerun_of=job_id)
