"""What a user can do to jobs, shared by the CLI, the pages and the JSON API."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stepline.engine.definitions import Definition
from stepline.engine.params import ParamError, resolve_params
from stepline.engine.states import TERMINAL
from stepline.store import reads
from stepline.store.errors import Conflict, NotFound
from stepline.store.writes import Store


def start_job(store: Store, definitions: dict[str, Definition], name: str,
              raw_params: dict[str, Any], rerun_of: str | None = None,
              errors: Sequence[str] = ()) -> str:
    """A new pending job. `errors`: the load errors that came with
    `definitions`, so a file that failed to load is named with its problem."""
    if name not in definitions:
        raise NotFound(not_loaded(name, definitions, errors))
    if not isinstance(raw_params, dict):
        raise ParamError("params must be an object of name: value")
    definition = definitions[name]
    return store.create_job(definition, resolve_params(definition, raw_params), rerun_of)


def not_loaded(name: str, definitions: dict[str, Definition], errors: Sequence[str]) -> str:
    """Why there is no definition `name`: its file's load error (each error
    starts with the file's path), else the names there are."""
    for error in errors:
        if Path(error.partition(": ")[0]).name == f"{name}.toml":
            return f"definition {name!r} did not load: {error}"
    known = ", ".join(sorted(definitions)) or "none"
    return f"no definition named {name!r} (known: {known})"


def rerun_job(store: Store, definitions: dict[str, Definition], job_id: str,
              errors: Sequence[str] = ()) -> str:
    """A new job from the same definition and params (like a workflow re-run)."""
    job = reads.get_job(store.db, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if job["status"] not in TERMINAL:
        raise Conflict(f"job {job_id} is {job['status']}; re-run it once it has finished")
    return start_job(store, definitions, job["definition"], job["params"], rerun_of=job_id,
                     errors=errors)
