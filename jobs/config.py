"""Where the database and definitions live: flags, then environment, then defaults."""

import os

from .definitions import Definition, load_definitions

DEFAULT_DB = "stepline.db"


def db_path(flag: str | None = None) -> str:
    return flag or os.environ.get("STEPLINE_DB") or DEFAULT_DB


def definition_dirs(flag: str | None = None) -> list[str]:
    raw = flag or os.environ.get("STEPLINE_DEFINITIONS") or ""
    return [d for d in raw.split(os.pathsep) if d]


def definitions(flag: str | None = None) -> tuple[dict[str, Definition], list[str]]:
    return load_definitions(definition_dirs(flag))
