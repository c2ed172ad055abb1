import os
from pathlib import Path

import pytest

from stepline.engine import definitions as definitions_module
from stepline.engine.definitions import (
    BUILTIN_DIR,
    DefinitionError,
    load_definitions,
    load_file,
    parse_duration,
)
from stepline.engine.params import ParamError, resolve_params, substitute

pytestmark = pytest.mark.one_backend  # parsing definitions only

BARE = (" in `run`: write it as a bare word (it is quoted for you), or use"
        ' "$STEPLINE_PARAM_PATH" there')
GOOD = """
name = "good"
timeout = "30m"
[params]
path = "."
count = 3
fast = false
[step.a]
type = "shell"
run = "ls {params.path}"
[step.b]
type = "python"
call = "pkg.mod:func"
depends = ["a"]
on_error = "continue"
[step.c]
type = "shell"
run = "echo done"
always_run = true
timeout = "10s"
retries = 2
depends = ["b"]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str) -> tuple[Path, str]:
    """The file `bad.toml` holding `text`, and why it fails to load."""
    path = write(tmp_path, "bad", text)
    with pytest.raises(DefinitionError) as caught:
        load_file(path)
    return path, str(caught.value)


def test_good_definition_loads(tmp_path):
    d = load_file(write(tmp_path, "good", GOOD))
    assert d.name == "good"
    assert d.timeout_s == 1800
    assert [s.name for s in d.steps] == ["a", "b", "c"]
    assert d.steps[1].on_error == "continue" and d.steps[1].depends == ["a"]
    assert d.steps[2].always_run and d.steps[2].timeout_s == 10 and d.steps[2].retries == 2


def test_name_defaults_to_file_stem(tmp_path):
    d = load_file(write(tmp_path, "stem_name", GOOD.replace('name = "good"', "")))
    assert d.name == "stem_name"


@pytest.mark.parametrize("mutation, step, problem", [
    (('type = "python"', 'type = "perl"'), "b", "unknown type 'perl'"),
    (('depends = ["a"]', 'depends = ["nope"]'), "b", "unknown dependency 'nope'"),
    (('depends = ["a"]', 'depends = ["c"]'), "b", "dependency cycle"),
    (('timeout = "10s"', 'timeout = "10 parsecs"'), "c", "bad duration"),
    (('run = "echo done"', 'command = "echo done"'), "c", "unknown key(s) for a shell step"),
    (('call = "pkg.mod:func"', 'call = "not a call"'), "b", "must look like"),
    (('run = "ls {params.path}"', 'run = "ls {params.nope}"'), "a", "no 'nope'"),
    (('on_error = "continue"', 'on_error = "ignore"'), "b", "on_error must be"),
    # a placeholder the shell would not read as a bare word: the value's quoting breaks
    (('run = "ls {params.path}"', 'run = "echo \\"double: {params.path}\\""'), "a",
     "{params.path} is inside double quotes" + BARE),
    (('run = "ls {params.path}"', "run = \"echo 'single: {params.path}'\""), "a",
     "{params.path} is inside single quotes" + BARE),
    (('run = "ls {params.path}"', 'run = "ls \\\\{params.path}"'), "a",
     "{params.path} follows a backslash" + BARE),
    (('run = "ls {params.path}"', 'run = "cat <<E\\n{params.path}\\nE"'), "a",
     "{params.path} is in or after a here-document" + BARE),
    (('run = "ls {params.path}"', 'run = "echo `ls {params.path}`"'), "a",
     "{params.path} comes after a backquote (use $(...) for the command)" + BARE),
    # found by review: a newline in the value ends a comment; bash evaluates
    # a[$(id)] in arithmetic; ${params.x} is a typo the shell reads
    (('run = "ls {params.path}"', 'run = "# copy {params.path}\\nls {params.path}"'), "a",
     "{params.path} is in a comment (a newline in the value would end it)" + BARE),
    (('run = "ls {params.path}"', 'run = "sleep $(( {params.path} * 60 ))"'), "a",
     "{params.path} is inside arithmetic" + BARE),
    (('run = "ls {params.path}"', 'run = "echo ${params.path}"'), "a",
     "{params.path} follows a $" + BARE),
    (('run = "ls {params.path}"', "run = \"echo $'it\\\\'s {params.path}'\""), "a",
     "{params.path} is inside $'...'" + BARE),
])
def test_bad_definition_names_file_step_and_problem(tmp_path, mutation, step, problem):
    path = write(tmp_path, "bad", GOOD.replace(*mutation))
    with pytest.raises(DefinitionError) as info:
        load_file(path)
    message = str(info.value)
    assert str(path) in message
    assert f"step '{step}'" in message
    assert problem in message


def test_max_parallel_defaults_to_four_and_bad_values_name_file_and_problem(tmp_path):
    assert load_file(write(tmp_path, "default", GOOD)).max_parallel == 4
    assert load_file(write(tmp_path, "two", "max_parallel = 2\n" + GOOD)).max_parallel == 2
    for bad, shown in (("0", "0"), ("-1", "-1"), ("1.5", "1.5"), ('"2"', "'2'"),
                       ("true", "True")):
        path = write(tmp_path, "bad", f"max_parallel = {bad}\n" + GOOD)
        with pytest.raises(DefinitionError) as info:
            load_file(path)
        assert str(info.value) == f"{path}: max_parallel must be a whole number >= 1, not {shown}"


def test_generate_concurrency_is_a_whole_number_of_at_least_one(tmp_path):
    step = '[step.gen]\ntype = "generate"\ntasks = 10\n'
    good = load_file(write(tmp_path, "cap", step + "concurrency = 3\n"))
    assert good.steps[0].spec["concurrency"] == 3
    with_param = load_file(write(tmp_path, "param", '[params]\ncap = 2\n' + step
                                 + 'concurrency = "{params.cap}"\n'))
    assert with_param.steps[0].spec["concurrency"] == "{params.cap}"  # checked when it runs
    for bad in ("0", "-1", "1.5", '"3"', "true"):
        path = write(tmp_path, "bad", step + f"concurrency = {bad}\n")
        with pytest.raises(DefinitionError) as info:
            load_file(path)
        assert str(info.value) == (f"{path}: step 'gen': concurrency must be a whole number"
                                   " >= 1")


def test_missing_run_and_bad_toml(tmp_path):
    with pytest.raises(DefinitionError, match=r"step 'a': missing 'run'"):
        load_file(write(tmp_path, "x", '[step.a]\ntype = "shell"\n'))
    with pytest.raises(DefinitionError, match=r"y.toml: bad TOML"):
        load_file(write(tmp_path, "y", "[step.a\n"))


def test_one_bad_file_does_not_stop_the_others(tmp_path):
    write(tmp_path, "good", GOOD)
    write(tmp_path, "broken", "[step.a]\ntype = 'nope'\n")
    found, errors = load_definitions([tmp_path])
    assert "good" in found and "codebase_classify" in found and "load_demo" in found
    assert len(errors) == 1 and "broken.toml" in errors[0] and "unknown type" in errors[0]


def test_builtin_definitions_are_valid():
    found, errors = load_definitions([])
    assert errors == []
    assert {p.stem for p in BUILTIN_DIR.glob("*.toml")} <= set(found)


def test_definitions_are_parsed_once_and_again_when_a_file_changes(tmp_path, monkeypatch):
    """The web app asks for the definitions on every page and API call: it
    parses them on the first, then again only after a *.toml file changed."""
    from app import create_app  # the web layer: only this test needs it

    parsed: list[Path] = []
    parse = definitions_module.load_file
    monkeypatch.setattr(definitions_module, "load_file",
                        lambda path: parsed.append(path) or parse(path))
    defs = tmp_path / "defs"
    defs.mkdir()
    good = write(defs, "good", 'description = "first"\n' + GOOD)
    client = create_app(str(tmp_path / "d.db"), str(defs), token="").test_client()

    def described() -> dict[str, str]:
        body = client.get("/api/definitions").get_json()
        return {d["name"]: d["description"] for d in body["definitions"]}

    assert described()["good"] == "first"
    once = len(parsed)
    assert good in parsed and once == len(parsed) == 1 + len(list(BUILTIN_DIR.glob("*.toml")))
    for _ in range(3):
        described()
        assert client.get("/definitions").status_code == 200
    assert len(parsed) == once, "an unchanged set of files was parsed again"

    good.write_text('description = "second, and longer"\n' + GOOD)
    assert described()["good"] == "second, and longer"
    assert len(parsed) == 2 * once
    # Same size, new time (an editor that rewrites in place): seen too.
    good.write_text('description = "SECOND, and longer"\n' + GOOD)
    stat = good.stat()
    os.utime(good, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert described()["good"] == "SECOND, and longer"
    write(defs, "extra", GOOD.replace('name = "good"', 'name = "extra"'))
    assert "extra" in described()
    good.unlink()
    assert set(described()) >= {"extra"} and "good" not in described()


def test_durations():
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1h30m") == 5400
    assert parse_duration(12) == 12
    for bad in ("", "10", "1x", "-5s", True, "m"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_params_are_coerced_to_their_defaults_type(tmp_path):
    d = load_file(write(tmp_path, "good", GOOD))
    assert resolve_params(d, {"count": "7", "fast": "yes"}) == {
        "path": ".", "count": 7, "fast": True}
    with pytest.raises(ParamError, match="unknown param 'nope'"):
        resolve_params(d, {"nope": "1"})
    with pytest.raises(ParamError, match="param 'count' must be an integer, got 'many'"):
        resolve_params(d, {"count": "many"})


LIMITED = """
[params]
path = "."
[params.tasks]
default = 12
min = 1
max = 100000
description = "how many"
[params.rate]
default = 0.5
max = 1
[step.a]
type = "shell"
run = "echo {params.tasks} {params.rate} {params.path}"
"""


def test_a_param_table_gives_default_and_limits(tmp_path):
    d = load_file(write(tmp_path, "limited", LIMITED))
    assert d.params == {"path": ".", "tasks": 12, "rate": 0.5}
    assert (d.limits["tasks"].min, d.limits["tasks"].max) == (1, 100000)
    assert d.limits["tasks"].description == "how many"
    assert resolve_params(d, {"tasks": "100000", "rate": "-4"})["tasks"] == 100000
    with pytest.raises(ParamError, match=r"^param 'tasks' must be from 1 to 100000, got '-3'$"):
        resolve_params(d, {"tasks": "-3"})
    with pytest.raises(ParamError, match=r"^param 'tasks' must be from 1 to 100000, got 100001$"):
        resolve_params(d, {"tasks": 100001})
    with pytest.raises(ParamError, match=r"^param 'rate' must be at most 1, got '7'$"):
        resolve_params(d, {"rate": "7"})


@pytest.mark.parametrize("table, problem", [
    ("default = 5\nmin = 10\nmax = 1", "param 'n': min 10 is greater than max 1"),
    ("default = 5\nmin = 'one'", "param 'n': min must be a number, got 'one'"),
    ("default = 5\nmax = true", "param 'n': max must be a number, got true"),
    ("default = 0\nmin = 1\nmax = 9", "param 'n': default 0 must be from 1 to 9"),
    ("default = 'x'\nmin = 1", "param 'n': min needs a number default, got 'x'"),
    ("min = 1", "param 'n': missing 'default'"),
    ("default = 1\nmaximum = 3", "param 'n': unknown key(s) maximum"),
])
def test_bad_param_limits_name_file_param_and_problem(tmp_path, table, problem):
    path, error = refused(tmp_path, f"[params.n]\n{table}\n[step.a]\ntype = 'sleep'\n")
    assert error.startswith(f"{path}: {problem}")


def test_shell_substitution_never_writes_a_text_value_into_the_command():
    params = {"path": "x; touch /tmp/pwned", "n": 3, "dry": False}
    assert substitute("ls {params.path} -n {params.n} {params.dry}", params, quote=True) == (
        'ls "${STEPLINE_PARAM_PATH}" -n 3 false')
    assert substitute("{params.n}", params) == 3  # python config keeps the type


@pytest.mark.parametrize("run", [
    'echo "processed {params.n} items"',  # a number is safe in any context
    'sleep $(( {params.n} * 60 ))',
    'echo "lines: $(wc -l < {params.path})"',  # $( ) starts afresh inside "..."
    'grep -c err <<< "$LOG"; ls {params.path}',  # a here-string is not a document
    'echo $((1 << 3)) {params.path}',
    '( cd /tmp && ls {params.path} ) # done',
])
def test_placeholders_the_shell_reads_as_bare_words_load(tmp_path, run):
    """Review of the first scan: these were refused, though safe."""
    text = f'[params]\npath = "."\nn = 3\n[step.a]\ntype = "shell"\nrun = {run!r}\n'
    assert load_file(write(tmp_path, "ok", text)).steps[0].spec["run"] == run


def test_quotes_around_a_placeholder_are_only_refused_in_shell_commands(tmp_path):
    """env, cwd and python config are not read by a shell: quotes there are the author's."""
    text = GOOD.replace('run = "ls {params.path}"', 'run = "ls \'x\' \\"y\\" {params.path}"'
                        '\nenv = { X = "\'{params.path}\'" }\ncwd = "\'{params.path}\'"')
    text = text.replace('call = "pkg.mod:func"', 'call = "pkg.mod:func"\n'
                        'config = { p = "\\"{params.path}\\"" }')
    d = load_file(write(tmp_path, "ok", text))
    assert d.steps[0].spec["env"] == {"X": "'{params.path}'"}
    assert d.steps[1].spec["config"] == {"p": '"{params.path}"'}


@pytest.mark.parametrize("name", ["a-b", "ü", "with space", "<b>x</b>", "1st", ""])
def test_a_param_name_that_is_not_an_identifier_refuses_the_file(tmp_path, name):
    """`{params.a-b}` is never substituted and no STEPLINE_PARAM_A-B is exported:
    what a person types into that input would be lost."""
    path, error = refused(tmp_path, f'[params]\n"{name}" = "x"\n[step.a]\ntype = "sleep"\n')
    assert error == (f"{path}: param {name!r}: a name is letters, digits and _,"
                                 " not starting with a digit")


def test_params_that_differ_only_in_case_refuse_the_file(tmp_path):
    path, error = refused(tmp_path, '[params]\nname = "a"\nNAME = "b"\n[step.a]\ntype = "sleep"\n')
    assert error == (f"{path}: params 'name' and 'NAME' differ only in case:"
                                 " both would be STEPLINE_PARAM_NAME")


@pytest.mark.parametrize("default, problem", [
    ('"a\\u0000b"', "must not contain a NUL character"),
    ('"' + "x" * 10_001 + '"', "must be at most 10,000 characters, got 10,001"),
], ids=["nul", "long"])
def test_a_text_default_obeys_the_run_time_rules(tmp_path, default, problem):
    path, error = refused(tmp_path, f'[params]\nt = {default}\n[step.a]\ntype = "sleep"\n')
    assert error.startswith(f"{path}: param 't': the default {problem}")


def test_the_shipped_and_test_definitions_still_load():
    """The quote and name rules refuse none of the files this project ships or tests with."""
    root = Path(__file__).resolve().parent.parent
    files = [*BUILTIN_DIR.glob("*.toml"), *(root / "tests").rglob("*.toml"),
             *(root / "bench").rglob("*.toml")]
    assert len(files) > 3
    for path in files:
        load_file(path)
