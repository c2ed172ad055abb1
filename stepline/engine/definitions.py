"""Job definitions: one TOML file each, validated up front.

A bad file is refused with one message naming the file, the step and the
problem; the other definitions still load.
"""

import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from stepline.engine.params import (
    PARAM_NAME,
    PARAM_REF,
    ParamLimit,
    env_name,
    param_table,
    quoted_placeholder,
    text_problem,
)

# The built-in demos ship inside the package (in a checkout: a link to ../jobs).
BUILTIN_DIR = Path(str(files("stepline") / "jobs"))
STEP_TYPES = ("shell", "python", "generate", "sleep")
FAN_OUT_TYPES = ("python", "generate")  # the types whose steps may have tasks (ctx.spawn)
COMMON_KEYS = {"type", "depends", "on_error", "always_run", "timeout", "retries", "description"}
TYPE_KEYS = {
    "shell": {"run", "env", "cwd"},
    "python": {"call", "config"},
    "generate": {"tasks", "logs_per_task", "log_delay_ms", "failure_rate", "seed", "concurrency"},
    "sleep": {"seconds"},
}
REQUIRED_KEYS = {"shell": "run", "python": "call"}
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_MAX_PARALLEL = 4  # steps of one job running at once, unless `max_parallel` says


class DefinitionError(ValueError):
    """A definition file that cannot be used; the message names file, step, problem."""


@dataclass
class StepDef:
    name: str
    type: str
    spec: dict[str, Any]
    depends: list[str] = field(default_factory=list)
    on_error: str = "fail"
    always_run: bool = False
    retries: int = 0
    timeout_s: float | None = None


@dataclass
class Definition:
    name: str
    path: str
    description: str = ""
    timeout_s: float | None = None
    max_parallel: int = DEFAULT_MAX_PARALLEL
    params: dict[str, Any] = field(default_factory=dict)  # name -> default
    limits: dict[str, ParamLimit] = field(default_factory=dict)  # only the limited ones
    steps: list[StepDef] = field(default_factory=list)


def parse_duration(value: Any) -> float:
    """'30m', '1h30m', '500ms', '10s' or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"bad duration {value!r}: negative")
        return float(value)
    text = str(value).strip()
    parts = DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"bad duration {value!r} (use e.g. 500ms, 10s, 30m, 1h30m)")
    return sum(float(n) * UNITS[u] for n, u in parts)


def load_file(path: Path) -> Definition:
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"{where}: bad TOML: {exc}") from None
    return build_definition(data, where, default_name=path.stem)


def build_definition(data: dict, where: str, default_name: str) -> Definition:
    def fail(problem: str, step: str | None = None) -> DefinitionError:
        at = f"step '{step}': " if step else ""
        return DefinitionError(f"{where}: {at}{problem}")

    unknown = set(data) - {"name", "description", "timeout", "max_parallel", "params", "step"}
    if unknown:
        raise fail(f"unknown key(s) {', '.join(sorted(unknown))}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise fail(f"bad name {name!r}: use letters, digits, _ . -")
    raw_params = data.get("params", {})
    if not isinstance(raw_params, dict):
        raise fail("[params] must be a table")
    params, limits = {}, {}
    for key, value in raw_params.items():
        if not PARAM_NAME.fullmatch(key):  # else {params.KEY} and its env var never work
            raise fail(f"param {key!r}: a name is letters, digits and _,"
                       " not starting with a digit")
        twin = next((k for k in params if k.upper() == key.upper()), None)
        if twin:  # one would overwrite the other's STEPLINE_PARAM_<NAME>
            raise fail(f"params '{twin}' and '{key}' differ only in case:"
                       f" both would be {env_name(key)}")
        if isinstance(value, dict):  # [params.NAME] default = .., min = .., max = ..
            value, limits[key] = param_table(key, value, fail)
        params[key] = value
        if not isinstance(value, str | int | float | bool):
            raise fail(f"param '{key}' must be a string, number or boolean")
        if isinstance(value, float) and not math.isfinite(value):
            raise fail(f"param '{key}' must be a finite number")
        if isinstance(value, str) and (problem := text_problem(value)):
            raise fail(f"param '{key}': the default {problem}")
    timeout_s = None
    if "timeout" in data:
        try:
            timeout_s = parse_duration(data["timeout"])
        except ValueError as exc:
            raise fail(f"timeout: {exc}") from None
    max_parallel = data.get("max_parallel", DEFAULT_MAX_PARALLEL)
    if not isinstance(max_parallel, int) or isinstance(max_parallel, bool) or max_parallel < 1:
        raise fail(f"max_parallel must be a whole number >= 1, not {max_parallel!r}")
    raw_steps = data.get("step", {})
    if not isinstance(raw_steps, dict) or not raw_steps:
        raise fail("no steps: add at least one [step.NAME] table")

    steps = [_build_step(sname, raw, params, fail) for sname, raw in raw_steps.items()]
    names = [s.name for s in steps]
    for step in steps:
        for dep in step.depends:
            if dep not in names:
                raise fail(f"unknown dependency '{dep}'", step.name)
            if dep == step.name:
                raise fail("depends on itself", step.name)
    cycle = _find_cycle({s.name: s.depends for s in steps})
    if cycle:
        raise fail(f"dependency cycle {' -> '.join(cycle)}", cycle[0])
    return Definition(
        name=name, path=where, description=str(data.get("description", "")),
        timeout_s=timeout_s, max_parallel=max_parallel, params=params, limits=limits,
        steps=execution_order(steps),
    )


def _build_step(name: str, raw: Any, params: dict, fail) -> StepDef:
    if not isinstance(raw, dict):
        raise fail("must be a table", name)
    stype = raw.get("type")
    if stype not in STEP_TYPES:
        raise fail(f"unknown type {stype!r} (expected one of {', '.join(STEP_TYPES)})", name)
    allowed = COMMON_KEYS | TYPE_KEYS[stype]
    extra = set(raw) - allowed
    if extra:
        raise fail(f"unknown key(s) for a {stype} step: {', '.join(sorted(extra))}", name)
    required = REQUIRED_KEYS.get(stype)
    if required and not isinstance(raw.get(required), str):
        raise fail(f"missing '{required}' (a string)", name)
    if stype == "python" and not re.fullmatch(r"[\w.]+:\w+", raw["call"]):
        raise fail(f"call {raw['call']!r} must look like 'package.module:function'", name)
    depends = raw.get("depends", [])
    if isinstance(depends, str):
        depends = [depends]
    if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
        raise fail("depends must be a list of step names", name)
    on_error = raw.get("on_error", "fail")
    if on_error not in ("fail", "continue"):
        raise fail(f"on_error must be 'fail' or 'continue', not {on_error!r}", name)
    retries = raw.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise fail("retries must be a whole number >= 0", name)
    timeout_s = None
    if "timeout" in raw:
        try:
            timeout_s = parse_duration(raw["timeout"])
        except ValueError as exc:
            raise fail(f"timeout: {exc}", name) from None
    spec = {k: v for k, v in raw.items() if k in TYPE_KEYS[stype]}
    for ref in PARAM_REF.findall(repr(spec)):
        if ref not in params:
            raise fail(f"uses {{params.{ref}}} but [params] has no '{ref}'", name)
    texts = {key for key, default in params.items() if isinstance(default, str)}
    if stype == "shell" and (unsafe := quoted_placeholder(spec["run"], texts)):
        key, where = unsafe
        raise fail(f"{{params.{key}}} {where} in `run`: write it as a bare word (it is"
                   f" quoted for you), or use \"${env_name(key)}\" there", name)
    if stype == "generate":
        _check_generate(spec, lambda p: fail(p, name))
    return StepDef(
        name=name, type=stype, spec=spec, depends=list(depends), on_error=on_error,
        always_run=bool(raw.get("always_run", False)), retries=retries, timeout_s=timeout_s,
    )


def _check_generate(spec: dict, fail) -> None:
    lowest = {"tasks": 0, "logs_per_task": 0, "log_delay_ms": 0, "seed": 0, "concurrency": 1}
    for key, least in lowest.items():
        value = spec.get(key, least)
        if isinstance(value, str) and PARAM_REF.fullmatch(value):
            continue  # its value is checked when the step runs (steps.run_generate)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise fail(f"{key} must be a whole number >= {least}")
    rate = spec.get("failure_rate", 0.0)
    if not (isinstance(rate, str) and PARAM_REF.fullmatch(rate)):
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
            raise fail("failure_rate must be a number from 0 to 1")


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in graph[node]:
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def execution_order(steps: list[StepDef]) -> list[StepDef]:
    """File order, except that a step never comes before its dependencies."""
    placed: list[StepDef] = []
    done: set[str] = set()
    remaining = list(steps)
    while remaining:
        for step in remaining:
            if all(d in done for d in step.depends):
                placed.append(step)
                done.add(step.name)
                remaining.remove(step)
                break
    return placed


def load_definitions(dirs: list[str | Path]) -> tuple[dict[str, Definition], list[str]]:
    """The built-in definitions, then each user dir. A user file may not take
    a built-in's name (it would silently change what the demos do): it is
    refused with an error. Returns the good ones and one error per bad file."""
    found: dict[str, Definition] = {}
    errors: list[str] = []
    builtin = BUILTIN_DIR.resolve()
    for directory in [BUILTIN_DIR, *map(Path, dirs)]:
        if not directory.is_dir():
            errors.append(f"{directory}: not a directory")
            continue
        is_builtin = directory.resolve() == builtin
        if is_builtin and directory is not BUILTIN_DIR:
            continue  # this checkout's jobs/ IS the built-ins
        for path in sorted(directory.glob("*.toml")):
            try:
                definition = load_file(path)
            except DefinitionError as exc:
                errors.append(str(exc))
                continue
            if definition.name in found:
                errors.append(f"{path}: name '{definition.name}' is already taken by "
                              f"{found[definition.name].path}; rename one of them")
                continue
            found[definition.name] = definition
    return found, errors
