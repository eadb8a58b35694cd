"""YAML 1.1's silent readings: refused in durations and schedules, pointed out in arguments.

PyYAML reads ``1:30`` as 90, ``0755`` as 493, ``no`` as false and ``2024-01-01`` as a date.
A user who meant two hours by ``timeout: 2:00`` must never get two minutes."""

from __future__ import annotations

import textwrap
from datetime import date
from pathlib import Path

import pytest
from conftest import run_qtasks
from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli import yamlload, yamltraps
from qtasks_cli.config import parse_config_text
from qtasks_cli.errors import ConfigError

DURATION_KEYS = ["timeout", "misfire_grace", "kill_grace"]


def parse(tmp_path: Path, text: str) -> object:
    return parse_config_text(
        textwrap.dedent(text).lstrip("\n"),
        filename="jobs.yaml",
        base_dir=tmp_path,
        check_imports=False,
        env={"TZ": "UTC"},
    )


def messages(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, text)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("written", "says"),
    [
        ("1:30", "'1:30' is read by YAML as 90 (a base-60 number); write '1m30s' or '1h30m'"),
        ("2:00", "'2:00' is read by YAML as 120 (a base-60 number); write '2m00s' or '2h00m'"),
        ('"1:30"', "'1:30' is not a duration; write '1m30s' or '1h30m'"),
        ("0:30", "'0:30' is not a duration; write '0m30s' or '0h30m'"),
        ("'0:30'", "'0:30' is not a duration; write '0m30s' or '0h30m'"),
        ("1:30:00", "'1:30:00' is read by YAML as 5400 (a base-60 number); write '1h30m00s'"),
        ("0755", "'0755' is read by YAML as 493 (an octal number), not a duration"),
        ("off", "'off' is read by YAML as false (a boolean), not a duration"),
        ("2024-01-01", "'2024-01-01' is read by YAML as 2024-01-01 (a date), not a duration"),
    ],
)
def test_duration_fields_refuse_yaml_11_readings_with_the_line(
    tmp_path: Path, written: str, says: str
) -> None:
    for key in DURATION_KEYS:
        found = messages(tmp_path, f"jobs:\n  j:\n    entrypoint: m:f\n    {key}: {written}\n")
        assert len(found) == 1
        assert found[0].startswith(f"jobs.yaml:4:{len(key) + 7}: jobs.j.{key}: ")
        assert says in found[0]


def test_settings_and_retry_durations_too(tmp_path: Path) -> None:
    found = messages(
        tmp_path,
        """
        settings: {shutdown_grace: 1:30}
        jobs:
          j: {entrypoint: m:f, retry: {retries: 1, delay: 0:30}}
        """,
    )
    assert [m.split(": ", 2)[1] for m in found] == ["settings.shutdown_grace", "jobs.j.retry.delay"]


def test_schedules_refuse_them_and_say_the_cron(tmp_path: Path) -> None:
    found = messages(
        tmp_path,
        """
        jobs:
          a: {entrypoint: m:f, schedule: 1:30}
          b: {entrypoint: m:f, schedule: {hour: 010, minute: 5}}
        """,
    )
    assert "jobs.a.schedule: '1:30' is read by YAML as 90" in found[0]
    assert "for 01:30 every day write '30 1 * * *'" in found[0]
    assert (
        "jobs.b.schedule.hour: '010' is read by YAML as 8 (an octal number); write 10" in found[1]
    )


def test_plain_durations_still_work(tmp_path: Path) -> None:
    config = parse(
        tmp_path,
        "jobs:\n  j: {entrypoint: m:f, timeout: 90, misfire_grace: 1h30m, kill_grace: '2s'}\n",
    )
    job = config.jobs["j"]  # type: ignore[attr-defined]
    assert job.timeout.total_seconds() == 90
    assert job.misfire_grace.total_seconds() == 5400


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 99),
    st.integers(0, 59),
    st.sampled_from(["{}:{:02}", '"{}:{:02}"', "'{}:{:02}'"]),
)
def test_every_clock_like_duration_is_refused_quoted_or_not(
    hours: int, minutes: int, form: str
) -> None:
    written = form.format(hours, minutes)
    text = f"jobs:\n  j:\n    entrypoint: m:f\n    timeout: {written}\n"
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, filename="jobs.yaml", base_dir=Path("/"), check_imports=False)
    (problem,) = info.value.problems
    assert f"write '{hours}m{minutes:02}s' or '{hours}h{minutes:02}m'" in problem.message


def test_arguments_keep_yamls_value_and_validate_says_once_what_it_became(
    tmp_path: Path,
) -> None:
    (tmp_path / "m.py").write_text("def f(*args, **kwargs):\n    pass\n")
    (tmp_path / "jobs.yaml").write_text(
        textwrap.dedent(
            """
            defaults:
              kwargs: {country: no}
            jobs:
              a: {entrypoint: m:f, args: [0755, "no", on]}
              b: {entrypoint: m:f, kwargs: {when: 2024-01-02, n: 1:30}}
            """
        ).lstrip("\n")
    )
    config = parse(tmp_path, (tmp_path / "jobs.yaml").read_text())
    jobs = config.jobs  # type: ignore[attr-defined]
    assert jobs["a"].args == (493, "no", True)
    assert jobs["a"].kwargs == {"country": False}
    assert jobs["b"].kwargs == {"country": False, "when": date(2024, 1, 2), "n": 90}
    result = run_qtasks("validate", str(tmp_path / "jobs.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines == [
        f"{tmp_path / 'jobs.yaml'}:2:21: defaults.kwargs.country: warning: 'country: no' "
        "became False (YAML 1.1 reads no as a boolean); quote it to pass the text",
        f"{tmp_path / 'jobs.yaml'}:4:31: jobs.a.args[0]: warning: '0755' became 493 "
        "(YAML 1.1 reads 0755 as an octal number); quote it to pass the text",
        f"{tmp_path / 'jobs.yaml'}:4:43: jobs.a.args[2]: warning: 'on' became True "
        "(YAML 1.1 reads on as a boolean); quote it to pass the text",
        f"{tmp_path / 'jobs.yaml'}:5:39: jobs.b.kwargs.when: warning: 'when: 2024-01-02' "
        "became datetime.date(2024, 1, 2) (YAML 1.1 reads 2024-01-02 as a date); "
        "quote it to pass the text",
        f"{tmp_path / 'jobs.yaml'}:5:54: jobs.b.kwargs.n: warning: 'n: 1:30' became 90 "
        "(YAML 1.1 reads 1:30 as a base-60 number); quote it to pass the text",
    ]


def test_true_false_and_quoted_text_are_no_trap() -> None:
    tree, _ = yamlload.load("a: true\nb: 'no'\nc: \"0755\"\nd: 10\ne: 1_000\nf: 0\n", "x")
    assert tree is not None
    assert [key for key, (_, value) in tree.value.items() if value.trap] == ["e"]
    assert yamltraps.notes(tree) == []  # 1_000 in an argument is what its writer meant


# Every field that takes a number, and where it sits (column of the value on line 3 or 4).
NUMBER_FIELDS = [
    ("settings: {max_concurrent: %s}\njobs: {j: {entrypoint: m:f}}\n", "settings.max_concurrent"),
    ("settings: {keep_runs: %s}\njobs: {j: {entrypoint: m:f}}\n", "settings.keep_runs"),
    ("settings: {keep_days: %s}\njobs: {j: {entrypoint: m:f}}\n", "settings.keep_days"),
    ("settings: {max_catch_up: %s}\njobs: {j: {entrypoint: m:f}}\n", "settings.max_catch_up"),
    ("settings: {metrics: %s}\njobs: {j: {entrypoint: m:f}}\n", "settings.metrics"),
    ("jobs: {j: {entrypoint: m:f, retry: %s}}\n", "jobs.j.retry"),
    ("jobs: {j: {entrypoint: m:f, retry: {retries: %s}}}\n", "jobs.j.retry.retries"),
    ("jobs: {j: {entrypoint: m:f, retry: {retries: 1, backoff: %s}}}\n", "jobs.j.retry.backoff"),
    ("defaults: {retry: %s}\njobs: {j: {entrypoint: m:f}}\n", "defaults.retry"),
    ("jobs: {j: {entrypoint: m:f, timeout: %s}}\n", "jobs.j.timeout"),
    ("jobs: {j: {entrypoint: m:f, retry: {retries: 1, delay: %s}}}\n", "jobs.j.retry.delay"),
    ("settings: {shutdown_grace: %s}\njobs: {j: {entrypoint: m:f}}\n", "settings.shutdown_grace"),
    ("jobs: {j: {entrypoint: m:f, schedule: {hour: %s}}}\n", "jobs.j.schedule.hour"),
    ("jobs: {j: {entrypoint: m:f, schedule: {minute: [1, %s]}}}\n", "jobs.j.schedule.minute[1]"),
]
NUMBER_TRAPS = [
    ("010", "'010' is read by YAML as 8 (an octal number)"),
    ("0b101", "'0b101' is read by YAML as 5 (a binary number)"),
    ("0x10", "'0x10' is read by YAML as 16 (a hexadecimal number)"),
    ("1__0", "'1__0' is read by YAML as 10 (a number whose _ are dropped)"),
    ("1:30", "'1:30' is read by YAML as 90 (a base-60 number)"),
    ("+0o7", None),  # YAML 1.1 text: refused as text, whatever the field's wording
    ("1_0.5", "'1_0.5' is read by YAML as 10.5 (a number whose _ are dropped)"),
]


@pytest.mark.parametrize(("template", "key"), NUMBER_FIELDS)
@pytest.mark.parametrize(("written", "says"), NUMBER_TRAPS)
def test_every_number_field_refuses_numbers_not_in_plain_digits(
    tmp_path: Path, template: str, key: str, written: str, says: str | None
) -> None:
    text = template % written
    found = messages(tmp_path, text)
    assert len(found) == 1, found
    if says is None:
        return
    line = text[: text.index(written)].count("\n") + 1
    column = len(text[: text.index(written)].rsplit("\n", 1)[-1]) + 1
    assert found[0].startswith(f"jobs.yaml:{line}:{column}: {key}: "), found[0]
    assert says in found[0]
    assert "write " in found[0]


def test_plain_numbers_still_work(tmp_path: Path) -> None:
    config = parse(
        tmp_path,
        "settings: {max_concurrent: 8, keep_days: 1.5, keep_runs: 100, metrics: 9464}\n"
        "jobs: {j: {entrypoint: m:f, retry: {retries: 0, backoff: 2.5}, timeout: 5}}\n",
    )
    assert config.settings.max_concurrent == 8  # type: ignore[attr-defined]
    assert config.settings.keep_days == 1.5  # type: ignore[attr-defined]
    assert config.jobs["j"].retry.retries == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", ["1_0", "1e3", "\u0661\u0660", "\u0661\u0660s", "0x10", "inf"])
def test_a_duration_in_text_is_plain_ascii_digits(text: str) -> None:
    from qtasks_cli.durations import parse_duration
    from qtasks_cli.errors import DurationError

    with pytest.raises(DurationError):
        parse_duration(text)


@settings(max_examples=200, deadline=None)
# Without "!": for the non-specific tag libyaml reads `! x` as text, as the YAML spec says,
# where PyYAML's own parser resolves it like a plain scalar.
@given(st.text(alphabet="ab:#'\"-{}[],&*|>%@ \n\t0123456789", max_size=40))
def test_libyaml_and_python_parsers_agree(text: str) -> None:
    """The fast path composes the same tree as the Python one wherever that one succeeds."""
    fast = yamlload._FastLoader
    if fast is None:
        pytest.skip("PyYAML was built without libyaml")

    def outcome() -> object:
        try:
            tree, problems = yamlload.load(text, "x")
        except ConfigError as exc:
            return ("error", [str(p) for p in exc.problems])
        return (tree and yamlload.plain(tree), [str(p) for p in problems])

    with_c = outcome()
    try:
        yamlload._FastLoader = None
        python_only = outcome()
    finally:
        yamlload._FastLoader = fast
    # libyaml accepts a few texts PyYAML's scanner refuses (such as a trailing tab); a text
    # libyaml refuses is parsed again in Python, so it never fails where Python would not.
    if python_only[0] != "error":
        assert with_c == python_only
    if with_c[0] == "error":
        assert python_only[0] == "error"


def test_a_quoted_clock_time_is_refused_as_a_schedule_too(tmp_path: Path) -> None:
    found = messages(
        tmp_path,
        """
        jobs:
          a: {entrypoint: m:f, schedule: "1:30"}
          b: {entrypoint: m:f, schedule: 0:30}
        """,
    )
    assert (
        "jobs.a.schedule: '1:30' is not a schedule; for 01:30 every day write '30 1 * * *'"
        in (found[0])
    )
    assert (
        "jobs.b.schedule: '0:30' is not a schedule; for 00:30 every day write '30 0 * * *'"
        in (found[1])
    )
