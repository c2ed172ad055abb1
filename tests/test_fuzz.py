"""Hypothesis throws arbitrary definitions and `-p` params at the loader:
the only outcomes allowed are a loaded definition or a clear validation error
that names the file (and the step, where there is one)."""

import json
import math
import os
import subprocess
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepline.cli import UsageError, parse_param_pairs
from stepline.engine.definitions import Definition, DefinitionError, build_definition, load_file
from stepline.engine.params import (
    MAX_TEXT_CHARS,
    ParamError,
    param_env,
    quoted_placeholder,
    resolve_params,
    substitute,
)

from .conftest import make_definition

pytestmark = pytest.mark.one_backend  # definitions and params only

FILE = "fuzz.toml"
STEP_KEYS = ["type", "run", "call", "depends", "on_error", "always_run", "retries", "timeout",
             "args", "tasks", "logs_per_task", "log_delay_ms", "failure_rate", "seed",
             "concurrency", "duration", "env", "cwd", "bogus"]
TYPES = ["shell", "python", "generate", "sleep", "docker", ""]

toml_scalars = st.one_of(
    st.text(max_size=20), st.integers(), st.floats(allow_nan=True), st.booleans(),
    st.sampled_from(["1s", "500ms", "1h30m", "-1s", "{params.n}", "echo {params.s}", "x:y",
                     "stepline.engine.demo:no_such", "fail", "continue"]),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=10,
)
step_tables = st.dictionaries(
    st.sampled_from(STEP_KEYS),
    st.one_of(st.sampled_from(TYPES), st.sampled_from(["a", "b", ["a"], ["b", "a"]]),
              toml_values),
    max_size=8,
)
definitions = st.fixed_dictionaries(
    {"step": st.one_of(st.dictionaries(st.sampled_from(["a", "b", "c", "", "a b"]),
                                       step_tables, max_size=4), toml_values)},
    optional={
        "name": toml_values, "description": toml_values, "timeout": toml_values,
        "params": st.one_of(st.dictionaries(st.sampled_from(["n", "s", "flag"]), toml_scalars),
                            toml_values),
        "surprise": toml_values,
    },
)


def assert_clear(error: DefinitionError) -> None:
    message = str(error)
    assert message.startswith(f"{FILE}: ")
    assert "Traceback" not in message and len(message) < 2000
    assert message[len(FILE) + 2:].strip()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definitions)
def test_any_definition_loads_or_names_its_problem(data):
    try:
        definition = build_definition(data, FILE, default_name="fuzz")
    except DefinitionError as error:
        assert_clear(error)
        return
    assert isinstance(definition, Definition) and definition.steps
    json.dumps(definition.params, allow_nan=False)  # storable as strict JSON


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(bytes.hex),
                 st.sampled_from(['[step.a]\ntype = "shell"\nrun = "echo', '[step.a]\nx=1\n',
                                  'name = "x"\n[step.a]\ntype="sleep"\nduration = "1s"\n'])))
def test_any_file_loads_or_names_its_problem(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("defs") / FILE
    path.write_text(text)
    try:
        load_file(path)
    except DefinitionError as error:
        assert str(error).startswith(f"{path}: ")


def test_undecodable_file_is_a_clear_error(tmp_path):
    path = tmp_path / FILE
    path.write_bytes(b'[step.a]\ntype = "shell"\nrun = "echo \xff\xfe"\n')
    with pytest.raises(DefinitionError, match=rf"^{path}: bad TOML: .*utf-8"):
        load_file(path)


TYPED = make_definition("""
[params]
text = "hello"
count = 3
ratio = 0.5
flag = false
[step.a]
type = "shell"
run = "echo {params.text} {params.count} {params.ratio} {params.flag}"
""")


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.one_of(
    st.text(max_size=30),
    st.tuples(st.sampled_from(["text", "count", "ratio", "flag", " count", "nope", ""]),
              st.one_of(st.text(max_size=20),
                        st.sampled_from(["nan", "inf", "-Infinity", "1e400", "9" * 5000,
                                         "1_000", " 7 ", "yes", "OFF", "0x10", "",
                                         "a\x00b", "\ud800", "x" * (MAX_TEXT_CHARS + 1)])))
    .map(lambda kv: f"{kv[0]}={kv[1]}"),
), max_size=5))
def test_any_cli_params_coerce_or_name_their_problem(pairs):
    try:
        params = resolve_params(TYPED, parse_param_pairs(pairs))
    except UsageError as error:
        assert str(error).startswith("-p ")
        assert "takes KEY=VALUE, got " in str(error) or "is given twice" in str(error)
        return
    except ParamError as error:
        assert str(error).startswith(("param '", "unknown param "))
        assert len(str(error)) < 200  # a 10,001-character value is not repeated back
        return
    for key, default in TYPED.params.items():
        assert type(params[key]) is type(default)
    assert math.isfinite(params["ratio"])
    json.dumps(params, allow_nan=False)
    # what the step puts in argv and the environment, and the pages render
    assert "\x00" not in params["text"] and len(params["text"]) <= MAX_TEXT_CHARS
    params["text"].encode("utf-8")


# Each ends a kind of quoting, a comment or an expression, then runs a command.
HOSTILE = ["'\"$(touch ran)`touch ran`\\", "\ntouch ran #", "a[$(touch ran)]"]
SHELLS = ["/bin/sh", "/bin/bash"]  # dash on Debian; bash is /bin/sh on many others


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["echo ", "x", " ", "'", '"', "\\", "{params.v}", "#", "\n",
                                 "; ", "<<E", "<<-'E'", "<<<", "\nE\n", "\n\tE\n", "$(", ")",
                                 "`", "$'", "$((", "((", "))", "${", "}", "[[ ", " ]]", "$",
                                 "(", "eq", "case x in ", "x) ", ";; ", "esac"]),
                max_size=12).map("".join))
def test_a_command_that_loads_never_runs_a_param(tmp_path, command):
    """What a step really runs (substitute + param_env), checked by dash and
    bash themselves: in a command the definition check lets through, a value
    made to break out runs nothing. (The check alone was fooled by a trial:
    `case` patterns inside "$(...)", dash without $'...'.)"""
    if quoted_placeholder(command, {"v"}) is not None:
        return
    for shell in SHELLS:
        for value in HOSTILE:
            (tmp_path / "ran").unlink(missing_ok=True)
            filled = substitute(command, {"v": value}, quote=True)
            subprocess.run([shell, "-c", filled], cwd=tmp_path, stdin=subprocess.DEVNULL,
                           env={**os.environ, **param_env({"v": value})},
                           capture_output=True, timeout=30)
            assert not (tmp_path / "ran").exists(), (shell, filled, value)


def test_non_finite_numbers_are_refused_where_json_cannot_carry_them():
    with pytest.raises(ParamError, match="finite"):
        resolve_params(TYPED, {"ratio": "nan"})
    with pytest.raises(DefinitionError, match="param 'x' must be a finite number"):
        build_definition(tomllib.loads('[params]\nx = inf\n[step.a]\ntype = "sleep"\n'
                                       'duration = "1s"\n'), FILE, "fuzz")
