"""Where things live: the database and the definitions (flags, then
environment, then defaults), and the files that ship inside the package."""

import os
from importlib.resources import files
from pathlib import Path

from stepline.engine.definitions import Definition, load_definitions

DEFAULT_DB = "stepline.db"
# The project's own definitions: a `jobs/` folder in the current directory.
DEFAULT_DEFINITIONS = "jobs"
# templates/, static/ and the built-in jobs/ ship inside the package (a wheel
# copies them in; in a checkout they are links to the top-level folders).
PACKAGE = files("stepline")


def db_path(flag: str | None = None) -> str:
    return flag or os.environ.get("STEPLINE_DB") or DEFAULT_DB


def definition_dirs(flag: str | None = None) -> list[str]:
    """The user's definition folders: --definitions, else STEPLINE_DEFINITIONS,
    else ./jobs when there is one."""
    raw = flag or os.environ.get("STEPLINE_DEFINITIONS")
    if raw is None:
        return [DEFAULT_DEFINITIONS] if Path(DEFAULT_DEFINITIONS).is_dir() else []
    return [d for d in raw.split(os.pathsep) if d]


def definitions(flag: str | None = None) -> tuple[dict[str, Definition], list[str]]:
    return load_definitions(definition_dirs(flag))
