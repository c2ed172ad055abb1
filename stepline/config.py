"""Where things live: the database and the definitions (flags, then
environment, then defaults), and the files that ship inside the package."""

import os
from importlib.resources import files
from pathlib import Path

from stepline.engine.definitions import BUILTIN_DIR, Definition, load_definitions

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


Loaded = tuple[dict[str, Definition], list[str]]
# dirs -> (their files' fingerprint, what loading them gave): the last load only.
_loaded: dict[tuple[str, ...], tuple[tuple, Loaded]] = {}


def definitions(flag: str | None = None) -> Loaded:
    """The definitions and one error per bad file. Parsed once per process and
    again only when a *.toml file was added, removed or changed: a page or API
    call lists the folders (0.1 ms) instead of parsing every file (6.9 ms for
    the two built-ins alone; see bench/RESULTS.md)."""
    dirs = tuple(definition_dirs(flag))
    fingerprint = _fingerprint([str(BUILTIN_DIR), *map(os.path.abspath, dirs)])
    cached = _loaded.get(dirs)
    if cached is None or cached[0] != fingerprint:
        cached = _loaded[dirs] = (fingerprint, load_definitions(list(dirs)))
    found, errors = cached[1]
    return dict(found), list(errors)  # copies: a caller's change stays its own


def _fingerprint(dirs: list[str]) -> tuple:
    """Each dir with the (path, mtime_ns, size) of its *.toml files, or None
    when it cannot be listed (load_definitions reports why)."""
    key = []
    for directory in dirs:
        try:
            with os.scandir(directory) as entries:
                tomls = sorted((entry.path, entry.stat().st_mtime_ns, entry.stat().st_size)
                               for entry in entries if entry.name.endswith(".toml"))
        except OSError:  # also a file removed between listing and stat
            tomls = None
        key.append((directory, tomls))
    return tuple(key)
