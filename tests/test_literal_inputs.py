"""Issue 14's hostile cases: a caller's values are data, stored and received literally; secrets
are hidden where they are shown, in keys, bytes and percent-encoded forms too."""

from __future__ import annotations

import json
import os
import string
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from conftest import QTASKS, clean_env
from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli.config import parse_config_text
from qtasks_cli.errors import ConfigError
from qtasks_cli.models import JobSpec
from qtasks_cli.placeholders import expand, unsupported_placeholder
from qtasks_cli.redaction import redact
from qtasks_cli.request import build_call, stored_call
from qtasks_cli.show import _redacted
from qtasks_cli.zones import ZoneError, get_zone, machine_zone

names = st.text(string.ascii_uppercase, min_size=1, max_size=4)
values = st.text(min_size=1, max_size=12).filter(lambda v: "\x00" not in v)


@settings(max_examples=200, deadline=None)
@given(
    caller_env=st.dictionaries(names, values, max_size=3),
    daemon_env=st.dictionaries(names, values, max_size=3),
    data=st.data(),
)
def test_a_callers_value_reaches_the_function_as_given(
    caller_env: dict[str, str], daemon_env: dict[str, str], data: st.DataObject
) -> None:
    """Whatever the caller's and the daemon's environments hold, a caller's string (even one
    made of the caller's ${NAME} values, or holding ``${``) is what the function receives."""
    pieces = list(caller_env.values()) + ["${", "$${", "x", "}"] + [f"${{{n}}}" for n in caller_env]
    note = "".join(data.draw(st.lists(st.sampled_from(pieces), max_size=6)))
    secrets = tuple((v, f"${{{n}}}") for n, v in caller_env.items())
    raw = {f"k{n}": f"${{{n}:-unset}}" for n in caller_env}
    job = JobSpec(
        name="j",
        entrypoint="builtins:print",
        kwargs=dict.fromkeys(raw, "x"),
        raw_kwargs=raw,
        variables=caller_env,
        secrets=secrets,
    )
    given_kwargs = {"note": note, "blob": note.encode("utf-8", "surrogatepass"), note: [note]}
    call = build_call(job, [note], given_kwargs, bind=False, env=caller_env)
    stored_args = json.loads(json.dumps(call.stored_args))
    stored_kwargs = json.loads(json.dumps(call.stored_kwargs))
    later = JobSpec(name="j", entrypoint="builtins:print", raw_kwargs=raw, variables=daemon_env)
    again = stored_call(later, stored_args, stored_kwargs, bind=False, env=daemon_env)
    assert again.args == (note,)
    for key, value in given_kwargs.items():
        assert again.kwargs[key] == value


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def test_show_hides_a_secret_in_keys_bytes_and_strings() -> None:
    secret = "S3cr3tV4lue"
    job = JobSpec(name="j", entrypoint="builtins:print", secrets=((secret, "${TOKEN}"),))
    call = build_call(
        job,
        None,
        {"meta": {secret: 1}, "blob": secret.encode(), "note": f"a {secret} b"},
        bind=False,
        env={},
    )
    assert secret in _shown(call.stored_kwargs)  # stored as given: the caller's data
    shown = _redacted(job, call.stored_kwargs)
    assert secret not in _shown(shown)
    assert b"S3cr3tV4lue".hex() not in _shown(shown)
    assert "UzNjcjN0VjRsdWU" not in _shown(shown)  # its base64
    assert shown["meta"] == {"${TOKEN}": 1}


@settings(max_examples=300, deadline=None)
@given(
    secret=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF), min_size=8, max_size=20),
    safe=st.sampled_from(["", "/", ":@"]),
)
def test_a_percent_encoded_secret_is_hidden(secret: str, safe: str) -> None:
    pairs = ((secret, "${T}"),)
    for form in (quote(secret, safe=safe), quote_plus(secret, safe=safe)):
        text = f"401 for url https://api.example/x?key={form}&b=1"
        hidden = redact(text, pairs)
        assert form not in hidden, hidden
        assert hidden.endswith("&b=1")


# --- huge YAML 1.1 integers: one located line in every field ---------------------------------

HUGE = {
    "hex": "0x" + "f" * 4000,
    "octal": "0" + "7" * 5000,
    "binary": "0b" + "1" * 15000,
    "base-60": "1:" * 2500 + "0",
    "decimal": "9" * 5000,
}
SETTING = "settings: {timezone: UTC, FIELD}\njobs:\n  a: {entrypoint: m:f}\n"
JOB = "settings: {timezone: UTC}\njobs:\n  a: {entrypoint: m:f, FIELD}\n"
FIELDS = {
    "settings.keep_runs": SETTING.replace("FIELD", "keep_runs: VALUE"),
    "settings.max_concurrent": SETTING.replace("FIELD", "max_concurrent: VALUE"),
    "jobs.a.timeout": JOB.replace("FIELD", "timeout: VALUE"),
    "jobs.a.retry": JOB.replace("FIELD", "retry: VALUE"),
    "jobs.a.schedule.hour": JOB.replace("FIELD", "schedule: {hour: VALUE}"),
    "jobs.a.kwargs.n": JOB.replace("FIELD", "kwargs: {n: VALUE}"),
    "jobs.a.args[0]": JOB.replace("FIELD", "args: [VALUE]"),
}


@pytest.mark.parametrize("field", list(FIELDS))
@pytest.mark.parametrize("kind", list(HUGE))
def test_a_huge_integer_is_one_located_problem(tmp_path: Path, field: str, kind: str) -> None:
    (tmp_path / "m.py").write_text("def f(*a, **k):\n    return None\n")
    text = FIELDS[field].replace("VALUE", HUGE[kind])
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, filename="jobs.yaml", base_dir=tmp_path)
    problems = info.value.problems
    assert problems and problems[0].key == field, problems
    assert "more than 4,300 digits" in problems[0].message and problems[0].line >= 1
    assert len(problems[0].message) < 200


def test_the_command_line_refuses_huge_and_undecodable_values(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f(*a, **k):\n    return None\n")
    (tmp_path / "jobs.yaml").write_text("jobs:\n  a: {entrypoint: m:f}\n")
    env = clean_env(PYTHONIOENCODING="utf-8")
    cases = [
        (("--kwarg", "n=" + HUGE["base-60"]), "more than 4,300 digits"),
        (("--arg", HUGE["octal"]), "more than 4,300 digits"),
        (("--kwarg", "s=caf" + b"\xe9".decode("utf-8", "surrogateescape")), "byte 0xe9"),
        (("--enqueue", "--arg", b"\xff".decode("utf-8", "surrogateescape")), "byte 0xff"),
        (("--json-kwargs", '{"s": "\\ud800"}'), "lone UTF-16 surrogate"),
    ]
    for extra, says in cases:
        argv = [os.fsencode(a) for a in (QTASKS, "trigger", "a", "-c", "jobs.yaml", *extra)]
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, timeout=30, env=env)
        err = done.stderr.decode("utf-8", "replace").strip()
        assert done.returncode == 2 and "\n" not in err and says in err, (extra[:1], err)
        assert "Traceback" not in err


# --- sh(1) parameter forms qtasks does not read: refused where written ------------------------


@pytest.mark.parametrize(
    "value",
    [
        "${DB_PASS-fallback}",
        "${DB_PASS:?must be set}",
        "${DB_PASS:=x}",
        "${DB_PASS:+x}",
        "${DB_PASS?}",
        "${U:-${DB_PASS}}",
        "x ${#DB_PASS}",
        "${ DB_PASS }",
    ],
)
def test_an_unsupported_placeholder_is_one_located_problem(tmp_path: Path, value: str) -> None:
    text = JOB.replace("FIELD", 'kwargs: {v: "VALUE"}').replace("VALUE", value)
    (tmp_path / "m.py").write_text("def f(*a, **k):\n    return None\n")
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, filename="jobs.yaml", base_dir=tmp_path, env={"DB_PASS": "pw12"})
    (problem,) = info.value.problems
    assert problem.key == "jobs.a.kwargs.v" and problem.line == 3
    assert "not a placeholder qtasks reads" in problem.message


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from("${}:-?=+AB_ x"), max_size=14))
def test_any_accepted_text_expands_to_no_placeholder_syntax_left_unread(text: str) -> None:
    """What ``unsupported_placeholder`` accepts, ``expand`` reads whole: no ``${`` it did not
    mean survives as a value the function would take for a resolved one."""
    if unsupported_placeholder(text) is not None:
        return
    out, _ = expand(text, {"A": "VAL"}.get)
    stripped = text.replace("$${", "")
    assert out.count("${") <= text.count("$${"), (text, out, stripped)


def test_a_placeholder_as_a_mapping_key_is_refused(tmp_path: Path) -> None:
    text = JOB.replace("FIELD", 'kwargs: {h: {"${HDR}": 1}}')
    (tmp_path / "m.py").write_text("def f(*a, **k):\n    return None\n")
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, filename="jobs.yaml", base_dir=tmp_path, env={"HDR": "x-token"})
    (problem,) = info.value.problems
    assert "mapping key is taken as written" in problem.message and problem.line == 3


# --- the machine's zone as glibc reads $TZ and $TZDIR -----------------------------------------


def test_tz_colon_is_utc_and_tzdir_is_where_zone_files_are_read(tmp_path: Path) -> None:
    assert machine_zone({"TZ": ":"}).name == "UTC"
    assert machine_zone({"TZ": ""}).name == "UTC"
    folder = tmp_path / "zones"
    folder.mkdir()
    kolkata = Path("/usr/share/zoneinfo/Asia/Kolkata")
    if not kolkata.exists():
        pytest.skip("no system zoneinfo")
    (folder / "UTC").write_bytes(kolkata.read_bytes())
    zone = get_zone(machine_zone({"TZ": "UTC", "TZDIR": str(folder)}).name)
    assert datetime(2025, 1, 1, tzinfo=zone).utcoffset() == timedelta(hours=5, minutes=30)
    with pytest.raises(ZoneError, match="not in TZDIR"):
        machine_zone({"TZ": "Europe/Riga", "TZDIR": str(folder)})


@pytest.mark.parametrize("tz", [" ", "::", "Nowhere/City"])
def test_a_bad_tz_is_reported_as_the_environment_variable(tmp_path: Path, tz: str) -> None:
    (tmp_path / "m.py").write_text("def f(*a, **k):\n    return None\n")
    with pytest.raises(ConfigError) as info:
        parse_config_text(
            "jobs:\n  a: {entrypoint: m:f}\n",
            filename="jobs.yaml",
            base_dir=tmp_path,
            env={"TZ": tz},
        )
    (problem,) = info.value.problems
    assert str(problem).startswith("environment variable TZ: "), str(problem)
    assert "jobs.yaml" not in str(problem)


# --- a command line has no YAML comments ------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "passed", "warned"),
    [
        ("note=fix bug #42", "fix bug #42", True),
        ("tag=#urgent", "#urgent", True),
        ("c=---", "---", True),
        ("n=[1, 2] # list", "[1, 2] # list", True),
        ("n='a #b'", "a #b", False),
        ("n=a#b", "a#b", False),
        ("n=null", None, False),
        ("n=42", 42, False),
    ],
)
def test_text_yaml_would_cut_is_passed_whole_with_a_warning(
    capsys: pytest.CaptureFixture[str], given: str, passed: Any, warned: bool
) -> None:
    from qtasks_cli.cli_args import parse_call_args as _parse_call_args

    _, kwargs = _parse_call_args(None, [given], None)
    assert kwargs == {given.split("=", 1)[0]: passed}
    err = capsys.readouterr().err
    assert ("as a comment" in err) is warned and err.count("\n") == int(warned), err


def test_j59_is_refused_where_zoneinfo_and_the_c_library_differ() -> None:
    with pytest.raises(ZoneError, match="February 28 in every year"):
        get_zone("AAA0BBB-1,J59/12,J300")
    get_zone("AAA0BBB-1,J60/12,J300")  # March 1 to both
