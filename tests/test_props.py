"""Hypothesis properties: environment interpolation (round trip, defaults, escapes, redaction),
the retry delay formula with jitter, and hostile job files that must only ever give ConfigError.

Durations and schedules have their own property tests (test_durations.py,
test_schedule_props.py).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from qtasks_cli.config import load_config, parse_config_text
from qtasks_cli.errors import ConfigError, ConfigFileError
from qtasks_cli.executor import _retry_delay
from qtasks_cli.models import JobSpec, RetryPolicy

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE = Path("/nonexistent-qtasks-props")


def yaml_quote(value: str) -> str:
    """``value`` as a YAML double-quoted scalar that reads back exactly (``\\U`` for characters
    beyond the BMP: YAML has no surrogate pairs)."""
    out = []
    for char in value:
        code = ord(char)
        if 0x20 <= code < 0x7F and char not in '"\\':
            out.append(char)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def job_with(kwargs: dict[str, str], env: dict[str, str], args: list[str] | None = None) -> JobSpec:
    """One job whose kwargs (quoted so that any text survives YAML) are interpolated."""
    text = "jobs:\n  j:\n    entrypoint: m:f\n    kwargs:\n"
    for key, value in kwargs.items():
        text += f"      {key}: {yaml_quote(value)}\n"
    if args is not None:
        text += f"    args: [{', '.join(yaml_quote(a) for a in args)}]\n"
    config = parse_config_text(
        text, filename="jobs.yaml", base_dir=BASE, check_imports=False, env=env
    )
    return config.jobs["j"]


# Variables qtasks itself reads ($TZ names the zone): a job file's own ${NAME}s are the others.
OWN_ENV = {"TZ", "TZDIR", "TERM", "QTASKS_STATE", "NOTIFY_SOCKET", "JOURNAL_STREAM"}
OWN_ENV |= {"INVOCATION_ID", "WATCHDOG_PID", "WATCHDOG_USEC"}
names = st.from_regex(r"[A-Z_][A-Z0-9_]{0,11}", fullmatch=True).filter(lambda n: n not in OWN_ENV)
# Any text YAML can carry in a JSON-quoted string: no surrogates, no NUL.
values = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)


@PROPS
@given(name=names, value=values)
def test_an_environment_value_arrives_unchanged(name: str, value: str) -> None:
    job = job_with({"token": "${" + name + "}"}, {name: value})
    assert job.kwargs["token"] == value
    if value:
        assert (value, "${" + name + "}") in job.secrets
    else:
        assert job.secrets == ()


@PROPS
@given(
    name=names,
    # A default holding "${" is a nested placeholder, which the file refuses with its line.
    default=st.text(
        st.characters(exclude_characters="}\x00", exclude_categories=("Cs",)), max_size=20
    ).filter(lambda d: "${" not in d),
    value=st.none() | values,
)
def test_defaults_apply_when_unset_or_empty(name: str, default: str, value: str | None) -> None:
    env = {} if value is None else {name: value}
    job = job_with({"x": "${" + name + ":-" + default + "}"}, env)
    expected = value if value else default
    assert job.kwargs["x"] == expected
    if value:
        assert (value, "${" + name + ":-" + default + "}") in job.secrets


# A template is literal text, variables, variables with defaults and `$${` escapes.
@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Var:
    name: str
    default: str | None


@dataclass(frozen=True)
class Escape:
    pass


Token = Lit | Var | Escape
literal_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
tokens = st.one_of(
    st.builds(Lit, st.text(literal_chars, min_size=1, max_size=8)),
    st.builds(
        Var,
        names,
        st.none()
        | st.text(
            st.characters(exclude_characters="}$\x00", exclude_categories=("Cs",)), max_size=6
        ),
    ),
    st.just(Escape()),
)


def render(template: list[Token]) -> str:
    out = ""
    for token in template:
        if isinstance(token, Lit):
            out += token.text
        elif isinstance(token, Escape):
            out += "$${"
        elif token.default is None:
            out += "${" + token.name + "}"
        else:
            out += "${" + token.name + ":-" + token.default + "}"
    return out


def expand(template: list[Token], env: dict[str, str]) -> str:
    out = ""
    for token in template:
        if isinstance(token, Lit):
            out += token.text
        elif isinstance(token, Escape):
            out += "${"
        else:
            out += env.get(token.name) or (token.default or "")
    return out


@PROPS
@given(
    template=st.lists(tokens, max_size=6),
    env=st.dictionaries(names, values, max_size=4),
)
def test_templates_expand_like_the_model(template: list[Token], env: dict[str, str]) -> None:
    text = render(template)
    # Literals must not form syntax with their neighbours: no `${` or `$` + `{` across joins.
    parts = [render([t]) for t in template]
    for i, token in enumerate(template):
        if isinstance(token, Lit):
            assume("${" not in token.text and "$$" not in token.text)
            assume(not token.text.endswith("$"))
            if i > 0:
                assume(not (parts[i - 1].endswith("$") and token.text.startswith("{")))
    missing = {t.name for t in template if isinstance(t, Var) and t.default is None} - set(env)
    if missing:
        with pytest.raises(ConfigError) as info:
            job_with({"x": text}, env)
        assert all(f"'{name}'" in str(info.value) for name in missing)
        for value in env.values():
            if len(value) >= 4 and value not in text:
                assert value not in str(info.value)
        return
    job = job_with({"x": text}, env)
    assert job.kwargs["x"] == expand(template, env)
    used = {t.name for t in template if isinstance(t, Var) and env.get(t.name)}
    assert {value for value, _ in job.secrets} == {env[name] for name in used}


@PROPS
@given(
    text=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=60),
    env=st.dictionaries(names, values, max_size=3),
)
@example(text="${", env={})
@example(text="${A:-}", env={"A": ""})
@example(text="$${A}${A}", env={"A": "v"})
@example(text="${A:-${B}}", env={"B": "x"})
@example(text="", env={"TZ": "0"})
def test_any_text_gives_a_value_or_a_config_error(text: str, env: dict[str, str]) -> None:
    try:
        job = job_with({"x": text}, env, args=[text])
    except ConfigError as exc:
        # A problem is located in the file, or names the environment variable at fault (a bad
        # $TZ is no line of the file).
        assert exc.problems and all(
            p.line >= 1 or p.file.startswith("environment variable ") for p in exc.problems
        )
        return
    assert job.args == (job.kwargs["x"],)
    for value, placeholder in job.secrets:
        assert value and placeholder.startswith("${") and placeholder.endswith("}")


# Secret values, the surrounding text and the placeholders (`${`, upper case, digits, `_`, `}`) use
# disjoint alphabets, so a value can only appear after redaction if redaction missed it. Values
# of 8 characters or more are hidden wherever they occur (shorter ones: qtasks_cli.redaction).
secret_values = st.text("abcdefghijklmnopqrstuvwxyz-.!@#%^&*+=/", min_size=8, max_size=16)
surrounding = st.text(" \t\n:;,()[]<>'\"", max_size=10)


@PROPS
@given(
    secrets=st.dictionaries(names, secret_values, min_size=1, max_size=4),
    around=st.lists(surrounding, min_size=5, max_size=5),
)
def test_redaction_leaves_no_secret_value(secrets: dict[str, str], around: list[str]) -> None:
    kwargs = {f"k{i}": "${" + name + "}" for i, name in enumerate(secrets)}
    job = job_with(kwargs, secrets)
    shown = around[0].join(secrets.values())
    for sep in around[1:]:
        shown = sep + shown + sep
    redacted = job.redact(shown)
    for value in secrets.values():
        assert value not in redacted, (value, redacted)
    assert "${" in redacted


# --- the retry delay ----------------------------------------------------------------------------

seconds = st.floats(min_value=0, max_value=3600, allow_nan=False, allow_infinity=False)


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    return RetryPolicy(
        retries=draw(st.integers(0, 100)),
        delay=timedelta(seconds=draw(seconds)),
        backoff=draw(st.floats(min_value=1.0, max_value=10.0, allow_nan=False)),
        max_delay=timedelta(seconds=draw(seconds)),
        jitter=timedelta(seconds=draw(st.floats(min_value=0, max_value=5, allow_nan=False))),
    )


def exact_base(policy: RetryPolicy, n: int) -> float:
    """min(delay * backoff^(n-1), max_delay), computed without overflowing."""
    delay, cap = policy.delay.total_seconds(), policy.max_delay.total_seconds()
    if delay == 0 or cap == 0:
        return 0.0
    if math.log(delay) + (n - 1) * math.log(policy.backoff) >= math.log(cap):
        return cap
    return delay * policy.backoff ** (n - 1)


def retry_state(n: int) -> Any:
    return SimpleNamespace(attempt_number=n)


@PROPS
@given(policy=policies(), n=st.integers(1, 5000), seed=st.integers(0, 2**32 - 1))
@example(
    policy=RetryPolicy(delay=timedelta(0), backoff=2.0, max_delay=timedelta(seconds=300)),
    n=1100,
    seed=0,
)
def test_retry_delay_is_base_plus_at_most_jitter(policy: RetryPolicy, n: int, seed: int) -> None:
    random.seed(seed)
    delay = _retry_delay(policy, retry_state(n))
    base = exact_base(policy, n)
    jitter = policy.jitter.total_seconds()
    assert base - 1e-9 <= delay <= base + jitter + 1e-9, (base, delay)
    assert delay <= policy.max_delay.total_seconds() + jitter + 1e-9


@PROPS
@given(policy=policies(), upto=st.integers(2, 200))
def test_retry_base_delay_never_decreases_until_the_cap(policy: RetryPolicy, upto: int) -> None:
    bases = [exact_base(policy, n) for n in range(1, upto + 1)]
    for n, base in enumerate(bases, 1):
        try:
            assert policy.base_delay(n) == pytest.approx(base, rel=1e-9, abs=1e-9)
        except OverflowError:
            assert base == policy.max_delay.total_seconds()
    assert all(a <= b + 1e-9 for a, b in itertools.pairwise(bases))
    assert max(bases) <= policy.max_delay.total_seconds() + 1e-9


# --- hostile job files --------------------------------------------------------------------------

VALID = """\
settings:
  timezone: Europe/Berlin
  max_concurrent: 4
defaults:
  retry: {retries: 2, delay: 1s}
jobs:
  report:
    entrypoint: shop.reports:daily
    schedule: "59 23 * * *"
    kwargs: {to: "${OWNER:-owner@example.com}", n: 3}
  sync:
    entrypoint: shop.crm:sync
    schedule: ["*/15 * * * * *", "@startup"]
    retry_on: [ConnectionError]
    timeout: 5m
"""


SYNTAX = [":", "-", "[", "{", "}", "]", "*", "&a", "*a", "!!", "\t", "\n", " ", '"', "'", "#"]
SYNTAX += ["%", "@", "|", ">", "?", "\x00", "\ufeff", "9" * 30, "${X}"]
# Values put in place of a real one: huge, negative, odd types, tags, anchors.
VALUES = ["99999999999d", "1e400", "-1", "-0", ".nan", ".inf", "~", "[]", "{}", "''", "0"]
VALUES += ["!!binary aGk=", "!!python/name:os.system", "&v x", "*v", "2026-01-01", "yes", "0x1F"]
VALUES += ["'every 3000000d'", "'*/0 * * * *'", "[1, [2, [3]]]", "{a: {b: {c: d}}}", '"\\ud800"']


KEYS = ["timeout", "delay", "retries", "retry_on", "schedule", "n", "to", "max_concurrent"]
KEYS += ["timezone", "entrypoint", "retry", "kwargs"]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """The valid file with a few characters deleted, inserted or replaced, or a value swapped
    for a hostile one."""
    text = VALID
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "value", "value", "value"]))
        if op == "value":
            key = draw(st.sampled_from(KEYS)) + ": "
            if key not in text:
                continue
            begin = text.index(key) + len(key)
            stop = min(
                (j for j in (text.find("\n", begin), text.find(",", begin)) if j >= 0),
                default=len(text),
            )
            text = text[:begin] + draw(st.sampled_from(VALUES)) + text[stop:]
            continue
        pos = draw(st.integers(0, len(text)))
        piece = draw(st.sampled_from(SYNTAX))
        if op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 5)) :]
        elif op == "insert":
            text = text[:pos] + piece + text[pos:]
        else:
            text = text[:pos] + piece + text[pos + len(piece) :]
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=mutated())
def test_a_damaged_file_gives_config_error_or_a_config(text: str) -> None:
    try:
        parse_config_text(text, filename="jobs.yaml", base_dir=BASE, check_imports=False, env={})
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert 1 <= problem.line <= text.count("\n") + 2, problem
            assert problem.message and "Traceback" not in problem.message


@pytest.mark.parametrize(
    ("escaped", "expected"),
    [
        ("\\ud83d\\ude00", "\U0001f600"),  # JSON's way to write an emoji: one character
        ("a\\udc00b", None),  # a lone surrogate: not text, a located problem
        ("\\ud83d", None),
    ],
)
def test_surrogate_escapes_are_joined_or_refused(escaped: str, expected: str | None) -> None:
    text = f'jobs:\n  j:\n    entrypoint: m:f\n    kwargs: {{x: "{escaped}"}}\n'
    if expected is None:
        with pytest.raises(ConfigError) as info:
            parse_config_text(text, filename="jobs.yaml", base_dir=BASE, check_imports=False)
        assert info.value.problems[0].line == 4
        str(info.value).encode("utf-8")  # the message itself must be printable text
    else:
        config = parse_config_text(text, filename="jobs.yaml", base_dir=BASE, check_imports=False)
        assert config.jobs["j"].kwargs["x"] == expected


HUGE = [
    "timeout: 99999999999d",
    "misfire_grace: 999999999999999999999999s",
    "kill_grace: 1e20",
    "timeout: 1e309",
    "retry: {retries: 2, delay: 99999999999d}",
    "retry: {retries: 2, max_delay: 99999999999d}",
    "schedule: 'every 99999999999d'",
    "schedule: {second: 99999999999999999999}",
    "retry: {retries: 2, backoff: 1e309}",
]


@pytest.mark.parametrize("line", HUGE)
def test_huge_values_are_located_errors(line: str) -> None:
    text = f"jobs:\n  a:\n    entrypoint: m:f\n    {line}\n"
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, filename="jobs.yaml", base_dir=BASE, check_imports=False, env={})
    assert [p.line for p in info.value.problems] == [4], str(info.value)


@pytest.mark.parametrize("line", ["shutdown_grace: 1e300", "keep_days: 1e309"])
def test_huge_settings_are_located_errors(line: str) -> None:
    text = f"settings:\n  {line}\njobs:\n  a: {{entrypoint: 'm:f'}}\n"
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, filename="jobs.yaml", base_dir=BASE, check_imports=False, env={})
    assert [p.line for p in info.value.problems] == [2], str(info.value)


def test_far_intervals_do_not_crash() -> None:
    """An interval that reaches past year 9999 is refused or simply has no further fires."""
    from datetime import datetime, timezone

    text = "jobs:\n  a:\n    entrypoint: m:f\n    schedule: 'every 3000000d'\n"
    try:
        config = parse_config_text(
            text, filename="jobs.yaml", base_dir=BASE, check_imports=False, env={}
        )
    except ConfigError as exc:
        assert [p.line for p in exc.problems] == [4]
        return
    schedule = config.jobs["a"].schedule
    assert schedule is not None
    assert schedule.next_after(datetime(2026, 1, 1, tzinfo=timezone.utc)) is None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("props")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2000) | st.builds(lambda t: t.encode(), mutated()))
def test_any_bytes_give_config_error_or_a_config(data: bytes, scratch: Path) -> None:
    path = scratch / "jobs.yaml"
    path.write_bytes(data)
    try:
        load_config(path, check_imports=False, env={})
    except (ConfigError, ConfigFileError) as exc:
        assert str(exc)
