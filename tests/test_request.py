"""One run request: every start path builds a run's arguments through ``qtasks_cli.request``.

The invariant a user relies on: whichever way a run of a job starts (schedule, catch-up,
``trigger``, ``trigger --enqueue``, ``enqueue()``, a queued run, the re-run of an interrupted
run), the function receives the same arguments, and a ``${NAME}`` value never reaches the
state file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, clean_env, run_qtasks
from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli import entrypoints
from qtasks_cli.config import parse_config_text
from qtasks_cli.events import EventBus
from qtasks_cli.models import JobSpec, TriggerKind
from qtasks_cli.placeholders import escape, expand
from qtasks_cli.request import (
    ArgumentsError,
    build_call,
    call_for_start,
    stored_call,
)
from qtasks_cli.store.base import Fire
from qtasks_cli.store.sqlite import SqliteStore
from qtasks_cli.supervisor import Supervisor

SECRET = "s3cr3t'\"\\-ünï-\x07"
T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)

RECORDER = """
import json, os


def report(recipient, token, when, country, blob=b"", note="default", codes=None):
    seen = {"recipient": recipient, "token": token, "when": repr(when), "country": country,
            "blob": repr(blob), "note": note, "codes": repr(codes)}
    with open(os.environ["RECORD_TO"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(seen, sort_keys=True) + "\\n")
"""

JOBS = """
settings:
  timezone: UTC
  shutdown_grace: 0s
jobs:
  report:
    entrypoint: argrec:report
    schedule: '*/10 * * * * *'
    catch_up: all
    overlap: queue
    retry_interrupted: true
    kwargs:
      recipient: owner@example.test
      token: ${API_TOKEN}
      when: 2024-01-02
      country: no
      blob: !!binary aGVsbG8=
      codes: {no: Norway, 1: one}
"""

EXPECTED = {
    "recipient": "owner@example.test",
    "token": SECRET,
    "when": repr(date(2024, 1, 2)),
    "country": False,
    "blob": repr(b"hello"),
    "note": "default",
    # YAML keys are the text written, on every path (`no` and `1` are not False and 1).
    "codes": repr({"no": "Norway", "1": "one"}),
}


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def no_secret_in(db: Path) -> None:
    data = db.read_bytes()
    for encoded in (SECRET.encode(), json.dumps(SECRET).encode(), b"s3cr3t"):
        assert encoded not in data
    with sqlite3.connect(db) as conn:
        for args_json, kwargs_json in conn.execute("SELECT args_json, kwargs_json FROM runs"):
            assert "s3cr3t" not in (args_json or "") + (kwargs_json or "")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "argrec.py").write_text(textwrap.dedent(RECORDER))
    (tmp_path / "jobs.yaml").write_text(textwrap.dedent(JOBS))
    entrypoints.clear_cache()
    sys.modules.pop("argrec", None)
    return tmp_path


# --- in the daemon: schedule, catch-up, queued run, overlap queue, interrupted re-run -------


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class _StepTimer:
    """Steps the fake clock by the supervisor's timeout once started runs have settled."""

    def __init__(self, clock: _Clock, until: datetime) -> None:
        self.clock, self.until = clock, until
        self.supervisor: Supervisor | None = None

    async def wait(self, timeout: float | None, wake: asyncio.Event) -> None:
        assert self.supervisor is not None
        for _ in range(500):
            await asyncio.sleep(0.002)
            if all(t.done() for t in self.supervisor._tasks):
                break
        if wake.is_set():
            wake.clear()
            return
        self.clock.now += timedelta(seconds=3600.0 if timeout is None else timeout)
        if self.clock.now > self.until:
            self.supervisor.request_stop()


async def _life(
    folder: Path,
    start: datetime,
    until: datetime,
    *,
    handed_over: int = 0,
    raw: tuple[list[Any], dict[str, Any]] | None = None,
) -> None:
    env = {"API_TOKEN": SECRET}
    config = parse_config_text(
        (folder / "jobs.yaml").read_text(), filename="jobs.yaml", base_dir=folder, env=env
    )
    clock = _Clock(start)
    timer = _StepTimer(clock, until)
    store = SqliteStore(folder / "state.db", clock=clock)
    await store.open()
    supervisor = Supervisor(config, store=store, bus=EventBus(), clock=clock, timer=timer)  # type: ignore[arg-type]
    timer.supervisor = supervisor
    job = config.jobs["report"]
    for _ in range(handed_over):  # as enqueue() writes them; the second waits (overlap)
        call = build_call(job, env=env)
        await store.enqueue("report", call.stored_args, call.stored_kwargs, start)
    if raw is not None:  # written by hand, as another version of qtasks might have
        await store.enqueue("report", raw[0], raw[1], start)
    await asyncio.wait_for(supervisor.run(), timeout=60)
    await store.close()


async def _crash_leftover(db: Path, scheduled: datetime) -> None:
    store = SqliteStore(db)
    await store.open()
    fire = Fire(
        job="report",
        scheduled=scheduled,
        trigger=TriggerKind.SCHEDULE,
        run_id="dead-run",
        schedule_key="cron:*/10 * * * * *@UTC",
    )
    await store.claim([fire])
    await store.start(fire.run_id, scheduled)
    await store.close()


def test_every_start_path_gives_the_function_the_same_arguments(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = folder / "calls.jsonl"
    monkeypatch.setenv("RECORD_TO", str(record))
    monkeypatch.delenv("API_TOKEN", raising=False)  # the daemon resolves from the job file's env
    db = folder / "state.db"
    # First life: two handed-over requests (the second queues behind the first) and the
    # scheduled fire at 12:00:10.
    asyncio.run(_life(folder, T0, T0 + timedelta(seconds=11), handed_over=2))
    # A run left 'running' by a daemon that died; then down until 12:00:35: catch-up of
    # 12:00:20 and 12:00:30, and the re-run of the interrupted run.
    asyncio.run(_crash_leftover(db, T0 + timedelta(seconds=11)))
    asyncio.run(_life(folder, T0 + timedelta(seconds=35), T0 + timedelta(seconds=36)))
    with sqlite3.connect(db) as conn:
        triggers = sorted(
            trigger
            for trigger, status in conn.execute("SELECT trigger, status FROM runs")
            if status == "succeeded"
        )
    assert triggers == ["catch_up", "catch_up", "queued", "queued", "rerun", "schedule"]
    seen = records(record)
    assert len(seen) == len(triggers)
    assert all(call == EXPECTED for call in seen), seen
    no_secret_in(db)


# --- through the installed command: trigger, trigger --enqueue, enqueue() --------------------


ENQUEUE = """
import sys
import qtasks_cli
from qtasks_cli.errors import QtasksError

try:
    print(qtasks_cli.enqueue("report", config=sys.argv[1], **eval(sys.argv[2])))
except QtasksError as exc:
    print(exc, file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def _enqueue(
    folder: Path, env: dict[str, str], kwargs: str = "{}"
) -> subprocess.CompletedProcess[str]:
    script = folder / "enqueue_it.py"
    script.write_text(ENQUEUE)
    return subprocess.run(
        [sys.executable, str(script), str(folder / "jobs.yaml"), kwargs],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_trigger_enqueue_and_enqueue_api_pass_the_yaml_kwargs(folder: Path) -> None:
    record = folder / "calls.jsonl"
    env = clean_env(API_TOKEN=SECRET, RECORD_TO=str(record))
    # Only by hand: no schedule in the way of counting.
    text = (folder / "jobs.yaml").read_text().replace("    schedule: '*/10 * * * * *'\n", "")
    (folder / "jobs.yaml").write_text(text)
    config = str(folder / "jobs.yaml")
    foreground = run_qtasks("trigger", "report", "-c", config, cwd=folder, env=env)
    assert foreground.returncode == 0, foreground.stderr
    handed = run_qtasks("trigger", "report", "-c", config, "--enqueue", cwd=folder, env=env)
    assert handed.returncode == 0, handed.stderr
    api = _enqueue(folder, env)
    assert api.returncode == 0, api.stderr
    # The same mapping given on the command line means the same.
    keyed = run_qtasks(
        "trigger", "report", "-c", config, "--enqueue", "--kwarg", "codes={no: Norway, 1: one}",
        cwd=folder, env=env,
    )  # fmt: skip
    assert keyed.returncode == 0, keyed.stderr
    assert "key 'no' is kept as the text 'no'" in keyed.stderr
    # Keyword names the function does not take are refused up front on both paths.
    bad_cli = run_qtasks(
        "trigger", "report", "-c", config, "--enqueue", "--kwarg", "nope=1", cwd=folder, env=env
    )
    assert bad_cli.returncode == 2
    assert "nope" in bad_cli.stderr and "Traceback" not in bad_cli.stderr
    bad_api = _enqueue(folder, env, "{'nope': 1}")
    assert bad_api.returncode == 2
    assert "nope" in bad_api.stderr and "Traceback" not in bad_api.stderr
    # A caller's value replaces the file's key by key; a literal ${X} stays literal.
    over = _enqueue(folder, env, "{'note': '${API_TOKEN}', 'country': 'lv'}")
    assert over.returncode == 0, over.stderr
    # The enqueuing process need not hold the secret: the daemon resolves it at start.
    without = _enqueue(folder, clean_env(RECORD_TO=str(record)))
    assert without.returncode == 0, without.stderr
    no_secret_in(folder / ".qtasks" / "state.db")
    daemon = Daemon(["jobs.yaml"], folder, env)
    try:
        daemon.wait_for(lambda _: len(records(record)) >= 6, timeout=60)
    finally:
        daemon.stop()
    seen = records(record)
    assert seen[:4] == [EXPECTED] * 4
    assert seen[4] == {**EXPECTED, "note": "${API_TOKEN}", "country": "lv"}
    assert seen[5] == EXPECTED
    no_secret_in(folder / ".qtasks" / "state.db")


# --- the rule itself --------------------------------------------------------------------------


def _job(**fields: Any) -> JobSpec:
    return JobSpec(name="j", entrypoint="builtins:print", **fields)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_escaped_text_reads_back_exactly(text: str) -> None:
    assert expand(escape(text), lambda name: "VALUE") == (text, [])


json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(max_size=8)
    | st.dates()
    | st.datetimes(timezones=st.none() | st.just(timezone.utc)).filter(lambda d: not d.fold)
)
values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "__qtasks__", "value", "$x"]), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, max_size=3), st.dictionaries(st.sampled_from(["k", "__qtasks__"]), values))
def test_given_values_survive_the_store_exactly(args: list[Any], kwargs: dict[str, Any]) -> None:
    call = build_call(_job(), args, kwargs, bind=False)
    stored = json.loads(json.dumps([call.stored_args, call.stored_kwargs]))
    again = stored_call(_job(), stored[0], stored[1], bind=False)
    assert again.args == tuple(args) == call.args
    assert again.kwargs == kwargs == call.kwargs


def test_merging_rule() -> None:
    job = _job(args=(1, 2), kwargs={"a": 1, "b": 2})
    assert build_call(job, bind=False).args == (1, 2)
    assert build_call(job, [9], bind=False).args == (9,)
    assert build_call(job, None, {"b": 3, "c": 4}, bind=False).kwargs == {"a": 1, "b": 3, "c": 4}


def test_placeholders_are_stored_and_resolved_at_start() -> None:
    job = _job(
        kwargs={"t": "v"},
        raw_kwargs={"t": "${T}", "d": "${D:-dflt}", "lit": "$${T}"},
        variables={"T": "v"},
    )
    call = build_call(job, bind=False, env={})
    assert call.stored_kwargs == {"t": "${T}", "d": "${D:-dflt}", "lit": "$${T}"}
    assert call.kwargs == {"t": "v", "d": "dflt", "lit": "${T}"}
    # A caller's string holding the secret value is stored as given, and received as given
    # whatever the starting process's environment says.
    literal = build_call(job, None, {"t": "xx-v", "u": "${T}"}, bind=False, env={"T": "w"})
    assert literal.stored_kwargs["t"] == "xx-v" and literal.stored_kwargs["u"] == "$${T}"
    again = stored_call(job, [], literal.stored_kwargs, bind=False, env={"T": "w"})
    assert again.kwargs["t"] == "xx-v" and again.kwargs["u"] == "${T}"
    # A variable unset when the run starts fails the run with a clear reason.
    with pytest.raises(ArgumentsError, match="'U' not set"):
        stored_call(job, [], {"t": "${U}"}, bind=False, env={})


@pytest.mark.parametrize(
    ("args", "kwargs", "reason"),
    [
        ([object()], None, "args\\[0\\] is a object"),
        (None, {"x": {1, 2}}, "kwargs.x is a set"),
        (None, {"x": {1: "a"}}, "key 1 that is not text"),
        (None, {"x": [[[[]]]]}, None),
    ],
)
def test_value_types_are_checked_on_every_path(args: Any, kwargs: Any, reason: str | None) -> None:
    if reason is None:
        assert build_call(_job(), args, kwargs, bind=False).kwargs == kwargs
        return
    with pytest.raises(ArgumentsError, match=reason):
        build_call(_job(), args, kwargs, bind=False)


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ArgumentsError, match="nested deeper"):
        build_call(_job(), [deep], bind=False)


def test_signature_binding_is_the_same_for_every_path(tmp_path: Path) -> None:
    (tmp_path / "sigmod.py").write_text("def f(a, b=1):\n    return a\n")
    config = parse_config_text(
        "jobs:\n  j: {entrypoint: sigmod:f}\n", filename="jobs.yaml", base_dir=tmp_path
    )
    job = config.jobs["j"]
    with pytest.raises(ArgumentsError, match="missing a required argument: 'a'"):
        build_call(job)
    with pytest.raises(ArgumentsError, match="nope"):
        call_for_start(job, [1], {"nope": 1})
    assert call_for_start(job, [1], {"b": 2}).kwargs == {"b": 2}


def test_postgres_keeps_placeholders_and_rebuilds_the_same_call(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pg import fresh_schema, postgres_url

    from qtasks_cli import api
    from qtasks_cli.store.postgres import PostgresStore

    url = postgres_url()
    with fresh_schema(url) as schema:
        text = (
            (folder / "jobs.yaml")
            .read_text()
            .replace(
                "  shutdown_grace: 0s\n",
                f"  shutdown_grace: 0s\n  state: {url}\n  schema: {schema}\n",
            )
        )
        env = {"API_TOKEN": SECRET}
        config = parse_config_text(text, filename="jobs.yaml", base_dir=folder, env=env)
        monkeypatch.setenv("API_TOKEN", SECRET)
        run_id = api.enqueue_loaded(config, "report", None, {"note": "given"})

        async def take() -> list[Any]:
            store = PostgresStore(url, schema=schema)
            await store.open()
            try:
                return await store.take_queued(datetime.now(timezone.utc))
            finally:
                await store.close()

        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            stored = conn.execute(
                f'SELECT args_json, kwargs_json FROM "{schema}".runs WHERE run_id = %s', (run_id,)
            ).fetchone()
        assert stored is not None and "s3cr3t" not in "".join(s or "" for s in stored)
        assert "${API_TOKEN}" in stored[1]
        (request,) = asyncio.run(take())
        call = stored_call(config.jobs["report"], request.args, request.kwargs)
        assert call.kwargs["token"] == SECRET
        assert call.kwargs["when"] == date(2024, 1, 2) and call.kwargs["blob"] == b"hello"
        assert call.kwargs["note"] == "given"


def test_the_daemon_builds_a_jobs_own_call_once_per_job_spec(tmp_path: Path) -> None:
    (tmp_path / "ownmod.py").write_text("def f(a, b=1):\n    return a\n")
    text = "jobs:\n  j: {entrypoint: ownmod:f, kwargs: {a: 1}}\n"
    first = parse_config_text(text, filename="jobs.yaml", base_dir=tmp_path).jobs["j"]
    assert call_for_start(first) is call_for_start(first)
    again = parse_config_text(text.replace("a: 1", "a: 2"), filename="jobs.yaml", base_dir=tmp_path)
    assert call_for_start(again.jobs["j"]).kwargs == {"a": 2}  # a reload's spec is built anew
    secret = parse_config_text(
        "jobs:\n  j: {entrypoint: ownmod:f, kwargs: {a: '${A}'}}\n",
        filename="jobs.yaml",
        base_dir=tmp_path,
        env={"A": "x"},
    ).jobs["j"]
    assert call_for_start(secret).kwargs == {"a": "x"}
    assert call_for_start(secret).stored_kwargs == {"a": "${A}"}


def test_a_request_refused_as_it_starts_fails_with_the_reason(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECORD_TO", str(folder / "calls.jsonl"))
    stored = build_call(parse_config_text(
        (folder / "jobs.yaml").read_text(), filename="jobs.yaml", base_dir=folder,
        env={"API_TOKEN": SECRET},
    ).jobs["report"], env={"API_TOKEN": SECRET})  # fmt: skip
    bad = dict(stored.stored_kwargs, nope=1)
    asyncio.run(_life(folder, T0, T0 + timedelta(seconds=5), raw=([], bad)))
    with sqlite3.connect(folder / "state.db") as conn:
        rows = list(conn.execute("SELECT trigger, status, error_type, error FROM runs"))
    assert rows == [
        (
            "queued",
            "failed",
            "ArgumentsError",
            "job 'report': arguments do not fit report(recipient, token, when, country, "
            "blob=b'', note='default', codes=None): got an unexpected keyword argument 'nope'",
        )
    ]
    assert not (folder / "calls.jsonl").exists()
