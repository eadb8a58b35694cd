"""One set of accepted values and one rule for mapping keys, on every start path.

The invariants: a value a start path accepts reaches the function exactly (the same types, all
the way down, through the store); a value one path refuses, every path refuses, with
ArgumentsError (exit 2), before anything is stored; a mapping written in YAML means the same in
the job file, ``--arg`` and ``--kwarg``; a key given twice is refused everywhere."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections import OrderedDict
from datetime import date, datetime, timedelta, timezone
from enum import IntEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import typer
from conftest import clean_env, run_qtasks
from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli import api, cli
from qtasks_cli.config import parse_config_text
from qtasks_cli.errors import ConfigError
from qtasks_cli.models import JobSpec
from qtasks_cli.request import ArgumentsError, build_call, stored_call
from qtasks_cli.store.base import encode_request
from qtasks_cli.store.sqlite import SqliteStore


class Color(IntEnum):
    RED = 1


class Name(str):
    pass


class Count(int):
    pass


class Ratio(float):
    pass


def _job() -> JobSpec:
    return JobSpec(name="j", entrypoint="builtins:print")


def same(a: Any, b: Any) -> bool:
    """Equal with exactly the same types all the way down (1 == True == Color.RED is not)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return b != b
    return bool(a == b and repr(a) == repr(b))


fixed = [timezone.utc, timezone(timedelta(hours=3)), timezone(timedelta(0), "Z")]
zones = st.sampled_from([None, *fixed, ZoneInfo("Europe/Riga")])
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=4)
    | st.dates()
    | st.datetimes(timezones=zones, allow_imaginary=False)
    | st.tuples(st.integers())
    | st.just(Color.RED)
    | st.builds(Name, st.text(max_size=3))
    | st.builds(Count, st.integers())
    | st.builds(Ratio, st.floats(allow_nan=False))
    | st.sampled_from([10**4300 - 1, -(10**4300) + 1])  # larger ones: see REFUSED
    | st.builds(bytearray, st.binary(max_size=3))
    | st.sets(st.integers(), max_size=2)
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "__qtasks__", "1"]), inner, max_size=3)
        | st.dictionaries(st.integers(0, 2) | st.builds(Name, st.just("n")), inner, max_size=2)
        | st.builds(OrderedDict, st.dictionaries(st.just("o"), inner, max_size=1))
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_a_value_is_refused_or_handed_back_exactly(value: Any) -> None:
    try:
        call = build_call(_job(), [value], {"k": value}, bind=False)
    except ArgumentsError as exc:
        assert "\n" not in str(exc)
        return
    # As the stores keep it: the JSON texts of encode_request, read back.
    args_json, kwargs_json = encode_request("j", call.stored_args, call.stored_kwargs)
    again = stored_call(_job(), json.loads(args_json), json.loads(kwargs_json), bind=False)
    assert same(again.args[0], value) and same(again.kwargs["k"], value), value
    assert same(call.args[0], value) and same(call.kwargs["k"], value)


REFUSED = [
    ((1, 2), "a tuple"),
    (Color.RED, "subclass of int"),
    (Name("x"), "subclass of str"),
    (Ratio(1.5), "subclass of float"),
    (OrderedDict(a=1), "pass dict(value)"),
    ({1: "a"}, "key 1 that is not text"),
    ({Name("k"): "a"}, "that is not text"),
    (datetime(2026, 1, 1, tzinfo=ZoneInfo("Europe/Riga")), "without its zone"),
    (datetime(2026, 10, 25, 3, 30, fold=1), "without its fold"),
    (10**4300, "more than 4,300 digits"),
    (bytearray(b"x"), "bytearray"),
    ({1, 2}, "a set"),
    ("x\ud800", "lone UTF-16 surrogate"),  # as the job file, --kwarg and --json-kwargs refuse it
    ({"k\udce9": 1}, "not UTF-8 text: the byte 0xe9"),  # an undecodable argv/env byte
]


@pytest.mark.parametrize(("value", "says"), REFUSED, ids=[says for _, says in REFUSED])
def test_every_start_path_refuses_the_same_values(tmp_path: Path, value: Any, says: str) -> None:
    (tmp_path / "jobs.yaml").write_text(
        "settings: {timezone: UTC}\njobs:\n  j: {entrypoint: builtins:print}\n"
    )
    config = parse_config_text(
        (tmp_path / "jobs.yaml").read_text(), filename="jobs.yaml", base_dir=tmp_path
    )
    job = config.jobs["j"]
    paths = {
        "trigger": lambda: api.build_call(job, [value], None),
        "enqueue()": lambda: api.enqueue_loaded(config, "j", [value], None),
        "trigger --enqueue (keyword)": lambda: api.enqueue_loaded(config, "j", None, {"x": value}),
        "daemon": lambda: build_call(job, None, {"x": [value]}),
        "stored": lambda: stored_call(job, [value], {}),
    }
    for path, start in paths.items():
        with pytest.raises(ArgumentsError) as info:
            start()
        assert says in str(info.value), (path, str(info.value))
    assert not (tmp_path / ".qtasks" / "state.db").exists() or _queued(tmp_path) == 0


def _queued(folder: Path) -> int:
    import sqlite3

    with sqlite3.connect(folder / ".qtasks" / "state.db") as conn:
        return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])


ACCEPTED_EDGES: list[Any] = [
    10**4300 - 1,
    float("nan"),
    float("-inf"),
    -0.0,
    datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=5, minutes=45))),
    datetime(2026, 1, 1, 12, tzinfo=timezone.utc),
    date(1, 1, 1),
    b"\x00\xff",
    "\x00 ${HOME} \U0001f600",
    {"__qtasks__": "dict", "value": {"x": 1}},
    [[{"a": [b"x"]}]],
]


def test_edge_values_survive_the_sqlite_store_exactly(tmp_path: Path) -> None:
    async def through_store() -> list[Any]:
        store = SqliteStore(tmp_path / "state.db")
        await store.open()
        try:
            for value in ACCEPTED_EDGES:
                call = build_call(_job(), [value], {"k": value}, bind=False)
                await store.enqueue(
                    "j", call.stored_args, call.stored_kwargs, datetime.now(timezone.utc)
                )
            taken = await store.take_queued(datetime.now(timezone.utc), limit=100)
            return [stored_call(_job(), q.args or (), q.kwargs or {}, bind=False) for q in taken]
        finally:
            await store.close()

    calls = asyncio.run(through_store())
    assert len(calls) == len(ACCEPTED_EDGES)
    for call, value in zip(calls, ACCEPTED_EDGES, strict=True):
        assert same(call.args[0], value) and same(call.kwargs["k"], value), value


# --- mapping keys: one rule in the job file and on the command line --------------------------

KEYED = [
    "{1: one, 01: also, no: Norway, ~: nothing, 2024-01-01: day, 0x10: hex, 1:30: clock}",
    "{'1': one, on: yes, null: x, 1.5: f}",
    "[{a: 1}, {b: {c: {d: 1}}}]",
    "{a: &x {b: 1}, c: *x}",
]


@pytest.mark.parametrize("text", KEYED)
def test_yaml_keys_mean_the_same_in_the_job_file_and_on_the_command_line(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = parse_config_text(
        f"settings: {{timezone: UTC}}\njobs:\n  j:\n    entrypoint: m:f\n"
        f"    kwargs: {{x: {text}}}\n",
        filename="jobs.yaml",
        base_dir=tmp_path,
        check_imports=False,
    )
    from_file = config.jobs["j"].kwargs["x"]
    assert same(cli._yaml_value(text, "--kwarg", f"x={text}"), from_file)
    assert same(cli._yaml_value(text, "--arg", text), from_file)
    notes = capsys.readouterr().err
    typed = [w for w in config.warnings if "is kept as the text" in w.message]
    assert notes.count("is kept as the text") == 2 * len(typed)
    # And the run request takes it as it is: text keys only.
    assert build_call(_job(), [from_file], bind=False).args == (from_file,)


@pytest.mark.parametrize(
    "text", ["{a: 1, a: 2}", "{a: {b: 1, b: 2}}", "[{1: x, 1: y}]", "{'1': x, 1: y}"]
)
def test_a_key_given_twice_is_refused_everywhere(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="duplicate key"):
        parse_config_text(
            f"jobs:\n  j:\n    entrypoint: m:f\n    kwargs: {{x: {text}}}\n",
            filename="jobs.yaml",
            base_dir=tmp_path,
            check_imports=False,
        )
    with pytest.raises(typer.Exit):
        cli._yaml_value(text, "--kwarg", f"x={text}")
    for twice in ('{"a": 1, "a": 2}', '{"x": {"b": 1, "b": 2}}'):
        with pytest.raises(typer.Exit):
            cli._json_object(twice)
    with pytest.raises(typer.Exit):
        cli._parse_call_args(None, ["a=1", "a=2"], None)
    with pytest.raises(typer.Exit):
        cli._parse_call_args(None, ["a=1"], '{"a": 2}')


RECORDER = """
import json, os


def f(*args, **kwargs):
    with open(os.environ["RECORD_TO"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps([args, kwargs], sort_keys=True) + "\\n")
"""


def test_the_installed_command_applies_the_rule(tmp_path: Path) -> None:
    (tmp_path / "rec.py").write_text(textwrap.dedent(RECORDER))
    (tmp_path / "jobs.yaml").write_text(
        "settings: {timezone: UTC}\njobs:\n  j:\n    entrypoint: rec:f\n"
        "    kwargs: {codes: {no: Norway, 1: one}}\n"
    )
    record = tmp_path / "calls.jsonl"
    env = clean_env(RECORD_TO=str(record))
    config = str(tmp_path / "jobs.yaml")
    validate = run_qtasks("validate", config, cwd=tmp_path, env=env)
    assert validate.returncode == 0, validate.stderr
    assert "key 'no' is kept as the text 'no' (YAML 1.1 reads no as a boolean)" in validate.stderr
    ok = run_qtasks(
        "trigger", "j", "-c", config, "--kwarg", "more={no: Norway, 1: one}", cwd=tmp_path, env=env
    )
    assert ok.returncode == 0, ok.stderr
    assert "--kwarg 'more={no: Norway, 1: one}': warning: key 'no' is kept" in ok.stderr
    (call,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert call == [
        [],
        {"codes": {"no": "Norway", "1": "one"}, "more": {"no": "Norway", "1": "one"}},
    ]
    for bad in (
        ["--kwarg", "m={a: 1, a: 2}"],
        ["--json-kwargs", '{"a": 1, "a": 2}'],
        ["--kwarg", "a=1", "--kwarg", "a=2"],
        ["--arg", "!!python/tuple [1, 2]"],
        ["--enqueue", "--json-kwargs", '{"n": ' + "9" * 4301 + "}"],
    ):
        result = run_qtasks("trigger", "j", "-c", config, *bad, cwd=tmp_path, env=env)
        assert result.returncode == 2, (bad, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
