"""The job file: every key, defaults, interpolation, located errors, import checks, digests."""

from __future__ import annotations

import ast
import dataclasses
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli import entrypoints
from qtasks_cli.config import (
    KNOWN_JOB_KEYS,
    KNOWN_SETTINGS_KEYS,
    default_config_path,
    load_config,
    parse_config_text,
)
from qtasks_cli.digests import fingerprint
from qtasks_cli.errors import ConfigError, ConfigFileError, ScheduleError
from qtasks_cli.models import (
    CatchUp,
    Config,
    Isolation,
    JobSpec,
    Overlap,
    RetryPolicy,
    Settings,
)
from qtasks_cli.schedule import parse_schedule
from qtasks_cli.zones import ZoneError, machine_zone

ENV = {"TZ": "Europe/Berlin"}


def write(tmp_path: Path, text: str, name: str = "jobs.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(
    tmp_path: Path,
    text: str,
    *,
    check_imports: bool = False,
    env: Mapping[str, str] | None = None,
) -> Config:
    path = write(tmp_path, text)
    return load_config(path, check_imports=check_imports, env=ENV if env is None else env)


def problems(
    tmp_path: Path,
    text: str,
    *,
    check_imports: bool = False,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """Every problem as ``LINE:COL: key: message``, after checking they name the file."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, check_imports=check_imports, env=env)
    found = info.value.problems
    assert all(p.file == str(tmp_path / "jobs.yaml") for p in found)
    assert str(info.value) == "\n".join(str(p) for p in found)
    return [str(dataclasses.replace(p, file="")).lstrip(":") for p in found]


def one_problem(tmp_path: Path, text: str, **kwargs: object) -> str:
    found = problems(tmp_path, text, **kwargs)  # type: ignore[arg-type]
    assert len(found) == 1, found
    return found[0]


def minimal(tmp_path: Path, job_yaml: str = "", **kwargs: object) -> JobSpec:
    """The job ``j`` with entrypoint m:f plus ``job_yaml`` lines (indented 4)."""
    extra = textwrap.indent(textwrap.dedent(job_yaml).strip("\n"), "    ")
    config = load(tmp_path, f"jobs:\n  j:\n    entrypoint: m:f\n{extra}\n", **kwargs)  # type: ignore[arg-type]
    return config.jobs["j"]


# --- every key and its default -------------------------------------------------------------------

FULL = """
settings:
  path: [".", "lib"]
  state: .qtasks/state.db
  timezone: Europe/Moscow
  max_concurrent: 4
  shutdown_grace: 45s
  keep_runs: 50
  keep_days: 7.5
  max_catch_up: 10
  node_timeout: 1m
  schema: shop_jobs
defaults:
  timeout: 10m
jobs:
  daily_report:
    entrypoint: shop.reports:daily_report
    schedule: "59 23 * * *"
    timezone: Asia/Tokyo
    args: [1, "two"]
    kwargs: {region: eu, limits: [1, 2]}
    retry: 3
    retry_on: [ConnectionError]
    timeout: 5m
    overlap: queue
    catch_up: all
    misfire_grace: 2h
    generate_handler: shop.crm:log_crm
    echo: true
    on_failure: shop.alerts:notify_owner
    on_success: null
    enabled: false
    description: "Daily sales report to the owner"
    isolation: process
    kill_grace: 7s
    retry_interrupted: true
  minimal:
    entrypoint: shop.reports:ping
"""


def test_every_key_is_read(tmp_path: Path) -> None:
    config = load(tmp_path, FULL)
    assert config.path == tmp_path / "jobs.yaml"
    assert config.settings == Settings(
        path=(tmp_path, tmp_path / "lib"),
        state=str(tmp_path / ".qtasks" / "state.db"),
        timezone="Europe/Moscow",
        max_concurrent=4,
        shutdown_grace=timedelta(seconds=45),
        keep_runs=50,
        keep_days=7.5,
        max_catch_up=10,
        node_timeout=timedelta(minutes=1),
        schema="shop_jobs",
    )
    assert list(config.jobs) == ["daily_report", "minimal"]
    job = config.jobs["daily_report"]
    assert job.schedule is not None
    assert job.schedule.key == parse_schedule("59 23 * * *", job_zone("Asia/Tokyo")).key
    expected = JobSpec(
        name="daily_report",
        entrypoint="shop.reports:daily_report",
        schedule=job.schedule,
        schedule_text="59 23 * * *",
        timezone="Asia/Tokyo",
        args=(1, "two"),
        kwargs={"region": "eu", "limits": [1, 2]},
        retry=RetryPolicy(retries=3, on=("ConnectionError",)),
        timeout=timedelta(minutes=5),
        overlap=Overlap.QUEUE,
        catch_up=CatchUp.ALL,
        misfire_grace=timedelta(hours=2),
        generate_handler="shop.crm:log_crm",
        echo=True,
        on_failure="shop.alerts:notify_owner",
        on_success=None,
        enabled=False,
        description="Daily sales report to the owner",
        isolation=Isolation.PROCESS,
        kill_grace=timedelta(seconds=7),
        retry_interrupted=True,
        line=15,
    )
    assert job == expected
    # The job's own zone drives its schedule: 23:59 in Tokyo is 14:59 UTC.
    start = datetime(2024, 5, 1, tzinfo=timezone.utc)
    assert job.schedule.next_after(start) == datetime(2024, 5, 1, 14, 59, tzinfo=timezone.utc)


def job_zone(name: str) -> object:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def test_a_minimal_job_gets_every_default(tmp_path: Path) -> None:
    config = load(tmp_path, FULL)
    assert config.jobs["minimal"] == JobSpec(
        name="minimal",
        entrypoint="shop.reports:ping",
        timezone="Europe/Moscow",  # the settings' zone
        timeout=timedelta(minutes=10),  # from defaults
        line=36,
    )


def test_settings_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "jobs:\n  j: {entrypoint: m:f}\n", env={"TZ": "Asia/Kolkata"})
    assert config.settings == Settings(
        path=(tmp_path,),
        state=str(tmp_path / ".qtasks" / "state.db"),
        timezone="Asia/Kolkata",
    )
    job = config.jobs["j"]
    assert (job.timezone, job.schedule, job.schedule_text, job.retry) == (
        "Asia/Kolkata",
        None,
        "",
        RetryPolicy(),
    )


def test_local_zone_comes_from_tz_then_the_system(tmp_path: Path) -> None:
    assert machine_zone({"TZ": ":America/New_York"}).name == "America/New_York"
    with pytest.raises(ZoneError, match="Not/AZone"):  # never UTC in silence
        machine_zone({"TZ": "Not/AZone"})
    job_zone(machine_zone({}).name)


def test_settings_path_as_a_string_and_state_urls(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        settings:
          path: ../shared
          state: postgresql://qtasks@db/jobs
        jobs:
          j: {entrypoint: m:f}
        """,
    )
    assert config.settings.path == (tmp_path.parent / "shared",)
    assert config.settings.state == "postgresql://qtasks@db/jobs"
    absolute = load(tmp_path, "settings: {state: /var/lib/q.db}\njobs: {j: {entrypoint: m:f}}\n")
    assert absolute.settings.state == "/var/lib/q.db"


def test_known_keys_cover_the_model() -> None:
    spec_fields = {f.name for f in dataclasses.fields(JobSpec)}
    derived = {"name", "schedule_text", "secrets", "line", "raw_args", "raw_kwargs", "variables"}
    derived.add("_fingerprint")  # a memo (digests.fingerprint), never written
    assert set(KNOWN_JOB_KEYS) == spec_fields - derived | {"retry_on"}
    assert set(KNOWN_SETTINGS_KEYS) == {f.name for f in dataclasses.fields(Settings)}


def test_parse_config_text_and_default_path(tmp_path: Path) -> None:
    config = parse_config_text(
        "jobs: {j: {entrypoint: m:f}}\nsettings: {state: s.db}\n",
        filename="inline.yaml",
        base_dir=tmp_path,
        check_imports=False,
        env=ENV,
    )
    assert config.path == tmp_path / "inline.yaml"
    assert config.settings.state == str(tmp_path / "s.db")
    assert default_config_path({"QTASKS_CONFIG": "/etc/q.yaml"}) == Path("/etc/q.yaml")
    assert default_config_path({}) == Path("jobs.yaml")


def test_top_level_x_keys_hold_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        x-common: &common
          timeout: 1m
          overlap: allow
        jobs:
          a:
            <<: *common
            entrypoint: m:a
            overlap: queue
        """,
    )
    job = config.jobs["a"]
    assert (job.timeout, job.overlap) == (timedelta(minutes=1), Overlap.QUEUE)


# --- schedules ------------------------------------------------------------------------------------


def test_schedule_forms_and_their_text(tmp_path: Path) -> None:
    single = minimal(tmp_path, "schedule: {hour: 23, minute: 59}")
    assert single.schedule_text == "{hour: 23, minute: 59}"
    assert single.schedule is not None
    many = minimal(tmp_path, "schedule: ['0 9 * * mon-fri', every 15m, {hour: [1, 2]}]")
    assert many.schedule_text == "0 9 * * mon-fri; every 15m; {hour: [1, 2]}"
    assert many.schedule is not None
    start = datetime(2024, 5, 6, 0, 0, tzinfo=timezone.utc)  # a Monday
    assert many.schedule.next_after(start) == start + timedelta(minutes=15)


def test_a_job_without_schedule_only_runs_when_triggered(tmp_path: Path) -> None:
    assert minimal(tmp_path, "schedule: null").schedule is None


def test_bad_cron_reports_the_schedule_message_at_the_list_item(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule("61 * * * *", job_zone("UTC"))  # type: ignore[arg-type]
    found = one_problem(
        tmp_path,
        """
        jobs:
          j:
            entrypoint: m:f
            schedule:
              - "0 * * * *"
              - "61 * * * *"
        """,
    )
    assert found == f"6:9: jobs.j.schedule[1]: {info.value}"


# --- defaults ------------------------------------------------------------------------------------


def test_defaults_apply_and_the_job_wins(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        defaults:
          timeout: 10m
          overlap: queue
          kwargs: {region: eu, dry_run: false}
          retry: {retries: 3, delay: 5s, on: [OSError]}
          schedule: "@daily"
        jobs:
          a:
            entrypoint: m:a
          b:
            entrypoint: m:b
            timeout: null
            kwargs: {dry_run: true}
            retry: {delay: 1s}
            schedule: {hour: 5}
        """,
    )
    a, b = config.jobs["a"], config.jobs["b"]
    assert (a.timeout, a.overlap, a.kwargs) == (
        timedelta(minutes=10),
        Overlap.QUEUE,
        {"region": "eu", "dry_run": False},
    )
    assert a.retry == RetryPolicy(retries=3, delay=timedelta(seconds=5), on=("OSError",))
    assert a.schedule_text == "@daily"
    assert (b.timeout, b.overlap) == (None, Overlap.QUEUE)
    assert b.kwargs == {"region": "eu", "dry_run": True}  # mappings merge key by key
    assert b.retry == RetryPolicy(retries=3, delay=timedelta(seconds=1), on=("OSError",))
    assert b.schedule_text == "{hour: 5}"  # a schedule is replaced, never merged


def test_retry_number_and_retry_on_merge_with_default_mappings(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        defaults:
          retry: 2
          retry_on: TimeoutError
        jobs:
          a: {entrypoint: m:a, retry: {delay: 3s}}
          b: {entrypoint: m:b, retry: 5, retry_on: [KeyError, "json:JSONDecodeError"]}
          c: {entrypoint: m:c, retry: {on: [ValueError]}}
          d: {entrypoint: m:d, retry: null}
        """,
    )
    jobs = config.jobs
    assert jobs["a"].retry == RetryPolicy(
        retries=2, on=("TimeoutError",), delay=timedelta(seconds=3)
    )
    assert jobs["b"].retry == RetryPolicy(retries=5, on=("KeyError", "json:JSONDecodeError"))
    assert jobs["c"].retry == RetryPolicy(retries=2, on=("ValueError",))
    assert jobs["d"].retry == RetryPolicy()


def test_full_retry_mapping(tmp_path: Path) -> None:
    job = minimal(
        tmp_path,
        """
        retry:
          retries: 4
          on: [ConnectionError, "httpx:TransportError"]
          delay: 500ms
          backoff: 3
          max_delay: 1m
          jitter: 250ms
        """,
    )
    assert job.retry == RetryPolicy(
        retries=4,
        on=("ConnectionError", "httpx:TransportError"),
        delay=timedelta(milliseconds=500),
        backoff=3.0,
        max_delay=timedelta(minutes=1),
        jitter=timedelta(milliseconds=250),
    )
    assert job.retry.attempts == 5


def test_an_error_in_defaults_is_reported_once_at_the_default(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        defaults:
          timeout: soon
        jobs:
          a: {entrypoint: m:a}
          b: {entrypoint: m:b}
        """,
    )
    assert found == [
        "2:12: defaults.timeout: 'soon' is not a duration (expected seconds or a "
        "duration such as 500ms, 30s, 5m, 2h, 1d or 1h30m)"
    ]


# --- environment interpolation -----------------------------------------------------------------


def test_environment_values_in_args_and_kwargs(tmp_path: Path) -> None:
    job = minimal(
        tmp_path,
        """
        args: ["${TOKEN}", "plain", 7, "${MISSING:-fallback}", "$${LITERAL}"]
        kwargs:
          url: "postgres://app:${PASSWORD}@db/${DB:-shop}"
          nested: {list: ["${TOKEN}", {deep: "x${EMPTY}y"}]}
          empty_default: "${EMPTY:-used}"
        """,
        env={"TOKEN": "t0k3n", "PASSWORD": "hunter2", "EMPTY": "", "TZ": "UTC"},
    )
    assert job.args == ("t0k3n", "plain", 7, "fallback", "${LITERAL}")
    assert job.kwargs == {
        "url": "postgres://app:hunter2@db/shop",
        "nested": {"list": ["t0k3n", {"deep": "xy"}]},
        "empty_default": "used",
    }
    # Only values from the environment are secrets; defaults are in the file anyway.
    assert sorted(job.secrets) == [("hunter2", "${PASSWORD}"), ("t0k3n", "${TOKEN}")]
    assert job.redact("login hunter2 with t0k3n") == "login ${PASSWORD} with ${TOKEN}"


def test_environment_applies_only_to_args_and_kwargs(tmp_path: Path) -> None:
    job = minimal(tmp_path, "description: '${TOKEN}'", env={"TOKEN": "x"})
    assert job.description == "${TOKEN}"
    assert job.secrets == ()


def test_missing_environment_variables_are_located(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        jobs:
          j:
            entrypoint: m:f
            args: [ok, "${NOPE}"]
            kwargs:
              deep: {x: ["a", "${A}-${B}"]}
        """,
        env={},
    )
    assert found == [
        "4:16: jobs.j.args[1]: environment variable 'NOPE' is not set "
        "(give a default with ${NOPE:-value})",
        "6:23: jobs.j.kwargs.deep.x[1]: environment variables 'A', 'B' are not set "
        "(give a default with ${A:-value})",
    ]


# --- located errors ----------------------------------------------------------------------------

ERRORS: list[tuple[str, str, str]] = [
    (
        "unknown job key",
        "jobs:\n  j:\n    entrypoint: m:f\n    timzone: UTC\n",
        "4:5: jobs.j.timzone: unknown key 'timzone' (did you mean 'timezone'?)",
    ),
    (
        "unknown key without a close match",
        "jobs:\n  j:\n    entrypoint: m:f\n    zzzz: 1\n",
        "4:5: jobs.j.zzzz: unknown key 'zzzz' (known keys: entrypoint, schedule, timezone, "
        "args, kwargs, retry, retry_on, timeout, overlap, catch_up, misfire_grace, "
        "generate_handler, echo, on_failure, on_success, enabled, description, isolation, "
        "kill_grace, retry_interrupted)",
    ),
    (
        "unknown settings key",
        "settings:\n  max_concurent: 3\njobs: {j: {entrypoint: m:f}}\n",
        "2:3: settings.max_concurent: unknown key 'max_concurent' (did you mean 'max_concurrent'?)",
    ),
    (
        "unknown top-level key",
        "job:\n  j: {entrypoint: m:f}\njobs: {j: {entrypoint: m:f}}\n",
        "1:1: job: unknown key 'job' (did you mean 'jobs'?)",
    ),
    (
        "unknown retry key",
        "jobs:\n  j:\n    entrypoint: m:f\n    retry: {retries: 2, dealy: 1s}\n",
        "4:25: jobs.j.retry.dealy: unknown key 'dealy' (did you mean 'delay'?)",
    ),
    (
        "unknown zone",
        "jobs:\n  j:\n    entrypoint: m:f\n    timezone: Europe/Moskow\n",
        "4:15: jobs.j.timezone: unknown time zone 'Europe/Moskow' (did you mean 'Europe/Moscow'?)",
    ),
    (
        "settings zone",
        "settings: {timezone: 'Mars/Olympus'}\njobs: {j: {entrypoint: m:f}}\n",
        "1:22: settings.timezone: unknown time zone 'Mars/Olympus'",
    ),
    (
        "jobs is a list",
        "jobs:\n  - entrypoint: m:f\n",
        "2:3: jobs: expected a mapping of job names to jobs, got a list",
    ),
    (
        "job is a string",
        "jobs:\n  j: m:f\n",
        "2:6: jobs.j: expected a mapping with at least 'entrypoint', got a string",
    ),
    (
        "settings is a list",
        "settings: [1]\njobs: {j: {entrypoint: m:f}}\n",
        "1:11: settings: expected a mapping of settings, got a list",
    ),
    (
        "missing entrypoint",
        "jobs:\n  j:\n    schedule: '@daily'\n",
        "2:3: jobs.j: missing 'entrypoint' (the function to run, 'module:function')",
    ),
    (
        "entrypoint without colon",
        "jobs:\n  j:\n    entrypoint: shop.reports.daily\n",
        "3:17: jobs.j.entrypoint: 'shop.reports.daily' is not an entry point; expected "
        "'module:attribute' such as 'shop.reports:daily_report'",
    ),
    (
        "entrypoint is a number",
        "jobs:\n  j:\n    entrypoint: 12\n",
        "3:17: jobs.j.entrypoint: expected a string, got an integer",
    ),
    (
        "bad job name",
        "jobs:\n  daily report:\n    entrypoint: m:f\n",
        "2:3: jobs.daily report: invalid job name 'daily report': use letters, digits, '_', "
        "'.' and '-' (at most 100 characters)",
    ),
    (
        "job name with a tab and an escape: the key path shows them as the message does",
        'jobs:\n  "t\\tt\\e[2J":\n    entrypoint: m:f\n',
        "2:3: jobs.'t\\tt\\x1b[2J': invalid job name 't\\tt\\x1b[2J': use letters, digits, "
        "'_', '.' and '-' (at most 100 characters)",
    ),
    (
        "job name too long",
        f"jobs:\n  {'a' * 101}:\n    entrypoint: m:f\n",
        f"2:3: jobs.{'a' * 101}: invalid job name '{'a' * 101}': use letters, digits, '_', "
        "'.' and '-' (at most 100 characters)",
    ),
    (
        "negative duration",
        "jobs:\n  j:\n    entrypoint: m:f\n    timeout: -5s\n",
        "4:14: jobs.j.timeout: '-5s' is negative (expected seconds or a duration such as "
        "500ms, 30s, 5m, 2h, 1d or 1h30m)",
    ),
    (
        "zero timeout",
        "jobs:\n  j:\n    entrypoint: m:f\n    timeout: 0\n",
        "4:14: jobs.j.timeout: expected a duration > 0, got 0",
    ),
    (
        "duration as a list",
        "jobs:\n  j:\n    entrypoint: m:f\n    kill_grace: [1]\n",
        "4:17: jobs.j.kill_grace: expected a duration such as 30s, 5m or 1h30m, got a list",
    ),
    (
        "negative retries",
        "jobs:\n  j:\n    entrypoint: m:f\n    retry: -1\n",
        "4:12: jobs.j.retry: expected a whole number >= 0, got -1",
    ),
    (
        "retries in a mapping",
        "jobs:\n  j:\n    entrypoint: m:f\n    retry: {retries: 1.5}\n",
        "4:22: jobs.j.retry.retries: expected a whole number >= 0, got a number",
    ),
    (
        "retry as a string",
        "jobs:\n  j:\n    entrypoint: m:f\n    retry: many\n",
        "4:12: jobs.j.retry: expected a number of retries such as 3, or a mapping such as "
        "{retries: 3, delay: 1s}, got 'many'",
    ),
    (
        "backoff below one",
        "jobs:\n  j:\n    entrypoint: m:f\n    retry: {retries: 1, backoff: 0.5}\n",
        "4:34: jobs.j.retry.backoff: expected a number >= 1, got 0.5",
    ),
    (
        "retry_on and retry.on",
        "jobs:\n  j:\n    entrypoint: m:f\n    retry: {on: [KeyError]}\n    retry_on: OSError\n",
        "5:5: jobs.j.retry_on: retry_on repeats retry.on (line 4); give only one",
    ),
    (
        "retry_on not an exception",
        "jobs:\n  j:\n    entrypoint: m:f\n    retry_on: [ValueError, len]\n",
        "4:28: jobs.j.retry_on[1]: 'len' is not an exception class (it is "
        "builtin_function_or_method <built-in function len>)",
    ),
    (
        "retry_on dotted name",
        "jobs:\n  j:\n    entrypoint: m:f\n    retry: {on: httpx.TransportError}\n",
        "4:17: jobs.j.retry.on: 'httpx.TransportError' is not an exception name; expected a "
        "builtin name such as 'ConnectionError' or 'module:Name'; write 'httpx:TransportError'",
    ),
    (
        "overlap value",
        "jobs:\n  j:\n    entrypoint: m:f\n    overlap: skipp\n",
        "4:14: jobs.j.overlap: expected one of skip, queue, allow; got 'skipp'",
    ),
    (
        "catch_up value",
        "jobs:\n  j:\n    entrypoint: m:f\n    catch_up: no\n",
        "4:15: jobs.j.catch_up: expected one of none, latest, all; got False",
    ),
    (
        "isolation value",
        "jobs:\n  j:\n    entrypoint: m:f\n    isolation: thread\n",
        "4:16: jobs.j.isolation: expected one of inline, process; got 'thread'",
    ),
    (
        "echo not a boolean",
        "jobs:\n  j:\n    entrypoint: m:f\n    echo: 'yes'\n",
        "4:11: jobs.j.echo: expected true or false, got a string",
    ),
    (
        "args not a list",
        "jobs:\n  j:\n    entrypoint: m:f\n    args: {a: 1}\n",
        "4:11: jobs.j.args: expected a list of arguments, got a mapping",
    ),
    (
        "kwargs not a mapping",
        "jobs:\n  j:\n    entrypoint: m:f\n    kwargs: [1]\n",
        "4:13: jobs.j.kwargs: expected a mapping of keyword arguments, got a list",
    ),
    (
        "schedule item of the wrong type",
        "jobs:\n  j:\n    entrypoint: m:f\n    schedule: ['@daily', 5]\n",
        "4:26: jobs.j.schedule[1]: expected a cron string such as '59 23 * * *' or a mapping "
        "such as {hour: 23, minute: 59}, got 5",
    ),
    (
        "empty schedule list",
        "jobs:\n  j:\n    entrypoint: m:f\n    schedule: []\n",
        "4:15: jobs.j.schedule: expected a schedule or a list of schedules, got an empty list",
    ),
    (
        "max_concurrent zero",
        "settings: {max_concurrent: 0}\njobs: {j: {entrypoint: m:f}}\n",
        "1:28: settings.max_concurrent: expected a whole number >= 1, got 0",
    ),
    (
        "keep_days zero",
        "settings: {keep_days: 0}\njobs: {j: {entrypoint: m:f}}\n",
        "1:23: settings.keep_days: expected a number > 0, got 0",
    ),
    (
        "keep_runs past a store's 64-bit integer (it turned pruning off in use)",
        "settings: {keep_runs: 9223372036854775808}\njobs: {j: {entrypoint: m:f}}\n",
        "1:23: settings.keep_runs: expected a whole number from 1 to 9223372036854775807, "
        "got 9223372036854775808",
    ),
    (
        "keep_days past a date",
        "settings: {keep_days: 999999999999}\njobs: {j: {entrypoint: m:f}}\n",
        "1:23: settings.keep_days: expected a number > 0 and at most 365,000, got 999999999999",
    ),
    (
        "keep_days infinite",
        "settings: {keep_days: .inf}\njobs: {j: {entrypoint: m:f}}\n",
        "1:23: settings.keep_days: expected a number > 0 and at most 365,000, got inf",
    ),
    (
        "retries with 400 digits",
        "jobs: {j: {entrypoint: m:f, retry: {retries: " + "9" * 400 + "}}}\n",
        "1:46: jobs.j.retry.retries: expected a whole number from 0 to 9223372036854775807, "
        "got a number of 400 digits",
    ),
    (
        "keep_runs boolean",
        "settings: {keep_runs: true}\njobs: {j: {entrypoint: m:f}}\n",
        "1:23: settings.keep_runs: expected a whole number >= 1, got a boolean",
    ),
    (
        "schema not an identifier",
        "settings: {schema: 'my-schema'}\njobs: {j: {entrypoint: m:f}}\n",
        "1:20: settings.schema: expected an SQL identifier (letters, digits, _; at most 63), "
        "got 'my-schema'",
    ),
    (
        "state URL of another database",
        "settings: {state: 'mysql://db/x'}\njobs: {j: {entrypoint: m:f}}\n",
        "1:19: settings.state: expected a file path or a postgresql:// URL, got 'mysql://db/x'",
    ),
    (
        "node_timeout zero",
        "settings: {node_timeout: 0s}\njobs: {j: {entrypoint: m:f}}\n",
        "1:26: settings.node_timeout: expected a duration > 0, got '0s'",
    ),
    ("no jobs key", "settings: {}\n", "1:1: no jobs defined (add a 'jobs' mapping)"),
    ("jobs empty", "jobs: {}\n", "1:7: jobs: no jobs defined"),
    ("jobs null", "jobs:\n", "1:6: jobs: no jobs defined"),
    (
        "top level is a list",
        "- jobs\n",
        "1:1: expected a mapping with a 'jobs' key at the top, got a list",
    ),
    (
        "top level is a scalar",
        "just text\n",
        "1:1: expected a mapping with a 'jobs' key at the top, got a string",
    ),
    (
        "empty document",
        "# nothing here\n",
        "1:1: the file is empty; expected a mapping with a 'jobs' key",
    ),
    (
        "duplicate job",
        "jobs:\n  a: {entrypoint: m:f}\n  a: {entrypoint: m:g}\n",
        "3:3: jobs.a: duplicate key 'a' (lines 2 and 3)",
    ),
    (
        "duplicate nested key",
        "jobs:\n  a:\n    entrypoint: m:f\n    kwargs:\n      x: 1\n      x: 2\n",
        "6:7: jobs.a.kwargs.x: duplicate key 'x' (lines 5 and 6)",
    ),
    (
        "python tag",
        "jobs:\n  a:\n    entrypoint: m:f\n    args: [!!python/object/apply:os.system [ls]]\n",
        "4:12: jobs.a.args[0]: unknown tag '!!python/object/apply:os.system'; qtasks reads "
        "plain YAML only (no tags)",
    ),
    (
        "custom tag",
        "jobs:\n  a:\n    entrypoint: !env ENTRY\n",
        "3:17: jobs.a.entrypoint: unknown tag '!env'; qtasks reads plain YAML only (no tags)",
    ),
    (
        "impossible date",
        "jobs:\n  a:\n    entrypoint: m:f\n    args: [2024-02-30]\n",
        "4:12: jobs.a.args[0]: cannot read '2024-02-30' as a date (day is out of range for month)",
    ),
    (
        "syntax error",
        "jobs:\n  a: {entrypoint: m:f\n",
        "3:1: invalid YAML: while parsing a flow mapping (line 2): expected ',' or '}', "
        "but got '<stream end>'",
    ),
    (
        "tab indentation",
        "jobs:\n\ta: {entrypoint: m:f}\n",
        "2:1: invalid YAML: a tab character; indent YAML with spaces, not tabs",
    ),
    (
        "second document",
        "jobs: {a: {entrypoint: m:f}}\n---\njobs: {}\n",
        "2:1: invalid YAML: a second YAML document; a job file holds one (the first starts at "
        "line 1)",
    ),
    (
        "duplicate anchor",
        "x-a: &base {timeout: 1m}\nx-b: &base {timeout: 2m}\njobs: {a: {entrypoint: m:f}}\n",
        "2:6: invalid YAML: found duplicate anchor 'base' (first defined at line 1)",
    ),
    (
        "colon in a plain value",
        "jobs:\n  a:\n    entrypoint: m:f\n    description: note: this\n",
        "4:22: invalid YAML: mapping values are not allowed here (put a value that contains "
        "': ' in quotes)",
    ),
    (
        "duplicate key on one line",
        "jobs: {a: {entrypoint: m:f, entrypoint: m:g}}\n",
        "1:29: jobs.a.entrypoint: duplicate key 'entrypoint' (twice on line 1)",
    ),
    (
        "control character",
        'jobs:\n  a: {entrypoint: "m:f\x07"}\n',
        "2:23: character U+0007 is not allowed in YAML; write it as an escape inside a "
        "double-quoted string",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_located_error(tmp_path: Path, text: str, expected: str) -> None:
    assert one_problem(tmp_path, text) == expected


def test_every_problem_in_one_pass(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        settings:
          timezone: Europe/Moskow
          keep_runs: 0
        defaults:
          overlapp: skip
        jobs:
          a:
            entrypoint: m:f
            schedule: "0 25 * * *"
            timeout: forever
          b:
            entrypoint: nocolon
            retry: -2
            a: 1
            a: 2
          c: []
        """,
    )
    assert [p.split(": ")[0] + ": " + p.split(": ")[1] for p in found] == [
        "2:13: settings.timezone",
        "3:14: settings.keep_runs",
        "5:3: defaults.overlapp",
        "9:15: jobs.a.schedule",
        "10:14: jobs.a.timeout",
        "12:17: jobs.b.entrypoint",
        "13:12: jobs.b.retry",
        "14:5: jobs.b.a",
        "15:5: jobs.b.a",
        "16:6: jobs.c",
    ]
    assert "unknown key 'a'" in found[7]
    assert "duplicate key 'a' (lines 14 and 15)" in found[8]


def test_problems_in_an_aliased_mapping_are_reported_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        x-base: &base {entrypoint: m:f, overlap: sometimes}
        jobs:
          a: *base
          b: *base
        """,
    )
    # Reported where it is written, once, under the first path that reached it.
    assert found == ["1:42: jobs.a.overlap: expected one of skip, queue, allow; got 'sometimes'"]


# --- the file itself -----------------------------------------------------------------------------


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigFileError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: no such file"
    with pytest.raises(ConfigFileError, match="is a directory"):
        load_config(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_bytes(b"")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:1:1: the file is empty; expected a mapping with a 'jobs' key"


def test_non_utf8_bytes_are_located(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_bytes(b"jobs:\n  a:\n    description: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}:3:21: the file is not UTF-8 text (byte 0xe9 cannot be decoded)"
    )


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_bytes(b"\xef\xbb\xbfjobs: {a: {entrypoint: m:f, description: caf\xc3\xa9}}\n")
    assert load_config(path, check_imports=False).jobs["a"].description == "café"


def test_files_over_ten_megabytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    with path.open("wb") as fh:
        fh.write(b"jobs: {a: {entrypoint: m:f}}\n")
        fh.write(b"#" * (10 * 1024 * 1024))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:1:1: the file is larger than 10 MB"


def test_an_alias_bomb_stops_at_the_budget(tmp_path: Path) -> None:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    text = "\n".join(["x-bomb:", *("  " + line for line in lines), "jobs: {a: {entrypoint: m:f}}"])
    found = one_problem(tmp_path, text)
    # l0..l4 expand to about 74,000 values; l5 (line 7) would pass the budget: its first alias.
    assert found == (
        "7:12: x-bomb.l5[0]: aliases expand to more than 100000 values; refusing to expand "
        "them (an alias bomb?)"
    )


def test_python_tags_are_never_constructed(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    found = problems(
        tmp_path,
        f"""
        jobs:
          a:
            entrypoint: m:f
            args: [!!python/object/apply:os.mkdir ["{target}"]]
            kwargs: !!python/object/new:pathlib.Path ["{target}"]
        """,
    )
    assert [p.split(": ")[0] for p in found] == ["4:12", "5:13"]
    assert not target.exists()


def test_nesting_is_bounded(tmp_path: Path) -> None:
    text = "jobs: {a: {entrypoint: m:f, args: " + "[" * 150 + "]" * 150 + "}}\n"
    # The top mapping, jobs, a and 97 lists make 100 levels; the 98th "[" is one too many.
    assert one_problem(tmp_path, text) == "1:132: invalid YAML: nesting deeper than 100 levels"


# --- import checks -------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Write a uniquely named package beside jobs.yaml; undo its imports afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    entrypoints.clear_cache()

    def make(**files: str) -> str:
        name = f"shop_{uuid.uuid4().hex[:10]}"
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
        for filename, source in files.items():
            (tmp_path / name / f"{filename}.py").write_text(textwrap.dedent(source))
        return name

    yield make
    entrypoints.clear_cache()
    for module in set(sys.modules) - before:
        del sys.modules[module]


CODE = """
    import json

    VALUE = 3

    def report(day, region="eu"):
        return day

    def items(n):
        yield from range(n)

    async def aitems():
        yield 1

    def on_item(item):
        pass

    def no_args():
        pass

    class NotAnError:
        pass
"""


def test_valid_references_import_cleanly(tmp_path: Path, project: Callable[..., str]) -> None:
    pkg = project(jobs=CODE)
    config = load(
        tmp_path,
        f"""
        jobs:
          a:
            entrypoint: {pkg}.jobs:report
            args: [mon]
            on_failure: {pkg}.jobs:on_item
            retry_on: ["json:JSONDecodeError"]
          b:
            entrypoint: {pkg}.jobs:items
            kwargs: {{n: 3}}
            generate_handler: {pkg}.jobs:on_item
            echo: true
          c:
            entrypoint: {pkg}.jobs:aitems
            echo: true
        """,
        check_imports=True,
    )
    assert list(config.jobs) == ["a", "b", "c"]
    assert sys.path[0] == str(tmp_path)  # settings.path defaults to the file's folder


def test_only_scheduled_jobs_need_every_required_argument(
    tmp_path: Path, project: Callable[..., str]
) -> None:
    pkg = project(jobs=CODE)
    found = problems(
        tmp_path,
        f"""
        jobs:
          scheduled:
            entrypoint: {pkg}.jobs:report
            schedule: "@daily"
          triggered:
            entrypoint: {pkg}.jobs:report
        """,
        check_imports=True,
    )
    # A job without a schedule gets its arguments with each trigger.
    assert found == [
        "3:17: jobs.scheduled.entrypoint: arguments do not fit report(day, region='eu'): "
        "missing a required argument: 'day'"
    ]


def test_import_problems_are_located_and_name_the_job(
    tmp_path: Path, project: Callable[..., str]
) -> None:
    pkg = project(jobs=CODE, broken="import json\n\nCONFIG = json.loads('{')\n")
    found = problems(
        tmp_path,
        f"""
        jobs:
          missing_module:
            entrypoint: {pkg}.jbos:report
          missing_attr:
            entrypoint: {pkg}.jobs:reprot
          not_callable:
            entrypoint: {pkg}.jobs:VALUE
          signature:
            entrypoint: {pkg}.jobs:report
            kwargs: {{colour: red}}
          too_many:
            entrypoint: {pkg}.jobs:report
            args: [1, 2, 3]
          import_error:
            entrypoint: {pkg}.broken:run
          handler_without_generator:
            entrypoint: {pkg}.jobs:report
            args: [mon]
            generate_handler: {pkg}.jobs:on_item
            echo: true
          bad_hooks:
            entrypoint: {pkg}.jobs:items
            args: [1]
            generate_handler: {pkg}.jobs:no_args
            on_failure: {pkg}.jobs:VALUE
            on_success: {pkg}.jobs:nothing
          bad_exceptions:
            entrypoint: {pkg}.jobs:no_args
            retry_on: ["{pkg}.jobs:NotAnError", "{pkg}.jobs:Missing"]
        """,
        check_imports=True,
    )
    broken = tmp_path / pkg / "broken.py"
    assert found == [
        f"3:17: jobs.missing_module.entrypoint: module '{pkg}.jbos' not found: package "
        f"'{pkg}' ('{tmp_path / pkg}') has no module 'jbos' (did you mean 'jobs'?)",
        f"5:17: jobs.missing_attr.entrypoint: module '{pkg}.jobs' has no attribute 'reprot' "
        "(did you mean 'report'?)",
        f"7:17: jobs.not_callable.entrypoint: '{pkg}.jobs:VALUE' is not callable (it is int 3)",
        "10:13: jobs.signature.kwargs: arguments do not fit report(day, region='eu'): "
        "got an unexpected keyword argument 'colour'",
        "13:11: jobs.too_many.args: arguments do not fit report(day, region='eu'): "
        "too many positional arguments",
        f"15:17: jobs.import_error.entrypoint: importing '{pkg}.broken' failed: "
        "JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 "
        f"(char 1) (at {broken}:3)",
        f"19:23: jobs.handler_without_generator.generate_handler: generate_handler needs a "
        f"generator entrypoint; '{pkg}.jobs:report' is a sync function, not a generator",
        "20:11: jobs.handler_without_generator.echo: echo: true needs a generator entrypoint; "
        f"'{pkg}.jobs:report' is a sync function, not a generator",
        f"24:23: jobs.bad_hooks.generate_handler: '{pkg}.jobs:no_args' must accept one "
        "argument (each yielded item): too many positional arguments",
        f"25:17: jobs.bad_hooks.on_failure: '{pkg}.jobs:VALUE' is not callable (it is int 3)",
        f"26:17: jobs.bad_hooks.on_success: module '{pkg}.jobs' has no attribute 'nothing'",
        f"29:16: jobs.bad_exceptions.retry_on[0]: '{pkg}.jobs:NotAnError' is not an exception "
        f"class (it is type <class '{pkg}.jobs.NotAnError'>)",
        f"29:51: jobs.bad_exceptions.retry_on[1]: module '{pkg}.jobs' has no attribute 'Missing'",
    ]


def test_a_default_that_breaks_one_job_names_that_job(
    tmp_path: Path, project: Callable[..., str]
) -> None:
    pkg = project(jobs=CODE)
    found = problems(
        tmp_path,
        f"""
        defaults:
          kwargs: {{day: mon}}
        jobs:
          fits: {{entrypoint: {pkg}.jobs:report}}
          breaks: {{entrypoint: {pkg}.jobs:no_args}}
        """,
        check_imports=True,
    )
    assert found == [
        "2:11: defaults.kwargs: job 'breaks': arguments do not fit no_args(): "
        "got an unexpected keyword argument 'day'"
    ]


def test_import_checks_run_beside_other_problems_of_the_job(
    tmp_path: Path, project: Callable[..., str]
) -> None:
    pkg = project(jobs=CODE)
    found = problems(
        tmp_path,
        f"""
        jobs:
          a:
            entrypoint: {pkg}.jobs:reprot
            overlap: sometimes
        """,
        check_imports=True,
    )
    assert [p.split(":")[0] for p in found] == ["3", "4"]


def test_settings_path_folders_go_first_on_sys_path(
    tmp_path: Path, project: Callable[..., str]
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    module = f"solo_{uuid.uuid4().hex[:8]}"
    (lib / f"{module}.py").write_text("def run():\n    return 1\n")
    text = f"settings: {{path: [lib, .]}}\njobs: {{a: {{entrypoint: '{module}:run'}}}}\n"
    load(tmp_path, text, check_imports=True)
    load(tmp_path, text, check_imports=True)
    assert sys.path[:2] == [str(lib), str(tmp_path)]
    assert sys.path.count(str(lib)) == 1
    assert (
        one_problem(
            tmp_path,
            "settings: {path: [nowhere]}\njobs: {a: {entrypoint: 'os:getcwd'}}\n",
            check_imports=True,
        )
        == f"1:19: settings.path[0]: folder '{tmp_path / 'nowhere'}' does not exist"
    )


def test_no_import_skips_every_import_check(tmp_path: Path, project: Callable[..., str]) -> None:
    before = set(sys.modules)
    config = load(
        tmp_path,
        """
        settings: {path: [does_not_exist]}
        jobs:
          a: {entrypoint: "nowhere.at.all:fn", echo: true, retry_on: ["nowhere:Err"]}
        """,
    )
    assert config.jobs["a"].echo is True
    assert not any(m.startswith("nowhere") for m in set(sys.modules) - before)


# --- digest and fingerprint ----------------------------------------------------------------------

BASE = """
jobs:
  a:
    entrypoint: m:a
    schedule: "0 * * * *"
    kwargs: {token: "${TOKEN}"}
  b:
    entrypoint: m:b
"""


def test_digest_is_stable_and_ignores_formatting(tmp_path: Path) -> None:
    first = load(tmp_path, BASE, env={"TOKEN": "one"})
    again = load(tmp_path, BASE, env={"TOKEN": "one"})
    reformatted = load(
        tmp_path,
        "# a comment\njobs:\n  a: {entrypoint: m:a, schedule: '0  *  * * *', "
        "kwargs: {token: '${TOKEN}'}}\n\n  b:   {entrypoint: m:b}\n",
        env={"TOKEN": "one"},
    )
    assert len(first.digest) == 64
    assert first.digest == again.digest == reformatted.digest
    assert fingerprint(first.jobs["a"]) == fingerprint(reformatted.jobs["a"])


def test_secret_values_do_not_enter_the_digest(tmp_path: Path) -> None:
    one = load(tmp_path, BASE, env={"TOKEN": "one"})
    two = load(tmp_path, BASE, env={"TOKEN": "two"})
    assert one.jobs["a"].kwargs != two.jobs["a"].kwargs
    assert one.digest == two.digest


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('schedule: "0 * * * *"', 'schedule: "5 * * * *"'),
        ("entrypoint: m:a", "entrypoint: m:other"),
        ('token: "${TOKEN}"', 'token: "${TOKEN}x"'),
        ("    entrypoint: m:a", "    entrypoint: m:a\n    timeout: 1m"),
        ("    entrypoint: m:a", "    entrypoint: m:a\n    retry: 1"),
        ("    entrypoint: m:a", "    entrypoint: m:a\n    timezone: Asia/Tokyo"),
        ("    entrypoint: m:a", "    entrypoint: m:a\n    enabled: false"),
    ],
)
def test_fingerprint_changes_only_for_the_changed_job(tmp_path: Path, old: str, new: str) -> None:
    before = load(tmp_path, BASE, env={"TOKEN": "one"})
    assert old in BASE
    after = load(tmp_path, BASE.replace(old, new, 1), env={"TOKEN": "one"})
    assert before.digest != after.digest
    assert fingerprint(before.jobs["a"]) != fingerprint(after.jobs["a"])
    assert fingerprint(before.jobs["b"]) == fingerprint(after.jobs["b"])


def test_fingerprint_handles_every_yaml_value(tmp_path: Path) -> None:
    job = minimal(tmp_path, "args: [2024-01-02, !!binary aGk=, .nan, null, {a: [1.5]}]")
    assert job.args[:2] == (date(2024, 1, 2), b"hi")
    assert fingerprint(job) == fingerprint(dataclasses.replace(job, line=99))
    assert fingerprint(job) != fingerprint(dataclasses.replace(job, args=job.args[:2]))


def test_the_fingerprint_is_worked_out_off_the_loop_and_never_goes_stale(
    tmp_path: Path,
) -> None:
    """A reload compares 1,000 jobs' fingerprints on the daemon's loop: each is noted on its
    spec when the file's digest is first asked for (the control thread's first round) and in
    the reload's thread, for the running jobs and the new file's (reloading._ahead), never on
    the loop; a spec made from another by ``replace`` works its own out, whatever it
    changed."""
    from qtasks_cli.digests import _hash, definition
    from qtasks_cli.reloading import _ahead

    config = load(tmp_path, BASE, env={"TOKEN": "one"})
    assert all(job._fingerprint is None for job in config.jobs.values())  # validate: no need
    assert config.digest
    for job in config.jobs.values():
        assert job._fingerprint == _hash(definition(job))
    running = load(tmp_path, BASE, env={"TOKEN": "one"})
    new = load(tmp_path, BASE, env={"TOKEN": "two"})
    _ahead(running.jobs, new, datetime(2026, 1, 1, tzinfo=timezone.utc))
    for spec in [*running.jobs.values(), *new.jobs.values()]:
        assert spec._fingerprint == _hash(definition(spec))
    assert new._digest == new.digest
    job = config.jobs["a"]
    assert fingerprint(job) is job._fingerprint
    moved = dataclasses.replace(job, schedule_text="x", timeout=timedelta(minutes=1))
    assert moved._fingerprint is None
    assert fingerprint(moved) != fingerprint(job)
    assert fingerprint(dataclasses.replace(job, line=99)) == fingerprint(job)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ABCab01+/=@-_.!~ \u00e9", max_size=12))
def test_a_binary_value_is_base64_or_refused_where_it_is_written(text: str) -> None:
    """``!!binary`` reads every character as RFC 4648 base64 (spaces aside): PyYAML's reader
    skipped the others, so ``!!binary "@@@"`` became ``b''`` in silence."""
    import base64
    import tempfile

    compact = "".join(text.split())
    try:
        expected: bytes | None = base64.b64decode(compact, validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        expected = None
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    job_file = f'jobs:\n  j:\n    entrypoint: m:f\n    args: [!!binary "{quoted}"]\n'
    with tempfile.TemporaryDirectory() as folder:
        if expected is None:
            found = problems(Path(folder), job_file)
            assert len(found) == 1 and "jobs.j.args[0]: cannot read" in found[0], found
            assert "as !!binary: not base64" in found[0] and "<unicode string>" not in found[0]
        else:
            assert load(Path(folder), job_file).jobs["j"].args == (expected,)


@given(st.text(max_size=20))
def test_a_key_path_part_is_printable_and_names_one_key(key: str) -> None:
    from qtasks_cli.text import path_part

    shown = path_part(key)
    assert shown.isprintable()
    assert ":" not in shown or shown == repr(key)  # never ends FILE:LINE:COL: key: early
    if shown != key:  # quoted: one key, read back exactly
        assert shown == repr(key) and ast.literal_eval(shown) == key
    else:
        assert key and "." not in key and "\\" not in key


def test_a_nul_byte_in_the_state_is_refused_where_it_is_written(tmp_path: Path) -> None:
    """Second hostile tester: validate passed `state: "a\\0b.db"`, and every other command
    then ended in a ValueError traceback."""
    path = tmp_path / "jobs.yaml"
    path.write_text('settings:\n  state: "a\\0b.db"\njobs:\n  j:\n    entrypoint: m:f\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, check_imports=False)
    (problem,) = caught.value.problems
    assert (problem.line, problem.key) == (2, "settings.state")
    assert "NUL" in problem.message
