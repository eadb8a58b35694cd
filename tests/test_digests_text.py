"""The fingerprint's text is made piece by piece, with the JSON of values jobs share kept
(digests.definition_json): it must be exactly the JSON of the job's definition, whatever the
values and in whatever order jobs come (a kept piece must never stand for another value)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from qtasks_cli.digests import _SHARED, definition, definition_json, fingerprint
from qtasks_cli.models import CatchUp, Isolation, JobSpec, Overlap, RetryPolicy
from qtasks_cli.schedule import parse_schedule


def _reference(job: JobSpec, machine_zone: bool) -> str:
    plain = definition(job, machine_zone=machine_zone)
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_text = st.text(max_size=12)
_floats = st.floats(allow_nan=True, allow_infinity=True)
_leaf = st.one_of(st.none(), st.booleans(), st.integers(), _floats, _text)
_values = st.recursive(
    _leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)),
    max_leaves=8,
)
_seconds = st.one_of(st.sampled_from([0.0, -0.0, 1.0, 1e-6]), st.floats(0, 1e6))
_delta = _seconds.map(lambda s: timedelta(seconds=s))
_policies = st.builds(
    RetryPolicy,
    retries=st.integers(0, 5),
    on=st.lists(st.sampled_from(["ValueError", "OSError", "a:B"]), max_size=2).map(tuple),
    delay=_delta,
    backoff=st.sampled_from([0.0, -0.0, 1.0, 2.0, 1.5]),
    max_delay=_delta,
    jitter=_delta,
)
_schedules = st.sampled_from(["* * * * *", "0 3 * * *", "every 5s", None])
_zones = st.sampled_from(["UTC", "Europe/Paris", "America/New_York"])


@st.composite
def _jobs(draw: Any) -> JobSpec:
    zone = draw(_zones)
    text = draw(_schedules)
    return JobSpec(
        name=draw(_text),
        entrypoint=draw(st.sampled_from(["m:f", "m:g", "é:ü"])),
        schedule=parse_schedule(text, ZoneInfo(zone)) if text else None,
        timezone=zone,
        args=tuple(draw(st.lists(_values, max_size=3))),
        kwargs=draw(st.dictionaries(_text, _values, max_size=3)),
        retry=draw(_policies),
        timeout=draw(st.one_of(st.none(), _delta)),
        overlap=draw(st.sampled_from(list(Overlap))),
        catch_up=draw(st.sampled_from(list(CatchUp))),
        misfire_grace=draw(_delta),
        generate_handler=draw(st.one_of(st.none(), _text)),
        echo=draw(st.booleans()),
        enabled=draw(st.booleans()),
        description=draw(_text),
        isolation=draw(st.sampled_from(list(Isolation))),
        kill_grace=draw(_delta),
        raw_args=draw(st.one_of(st.none(), st.lists(_values, max_size=2).map(tuple))),
        raw_kwargs=draw(st.one_of(st.none(), st.dictionaries(_text, _values, max_size=2))),
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(_jobs(), min_size=1, max_size=6), st.booleans())
def test_the_text_is_the_json_of_the_definition(jobs: list[JobSpec], machine_zone: bool) -> None:
    for job in jobs:  # several jobs in turn: pieces kept for one serve the next
        assert definition_json(job, machine_zone=machine_zone) == _reference(job, machine_zone)


def test_negative_zero_and_zero_are_kept_apart() -> None:
    """-0.0 == 0.0 in Python, but JSON writes them differently: a piece kept for one must not
    stand for the other."""
    _SHARED.clear()
    for backoff in (0.0, -0.0, 0.0):
        job = JobSpec(name="a", entrypoint="m:f", retry=RetryPolicy(backoff=backoff))
        assert definition_json(job) == _reference(job, False)
        assert fingerprint(job) == fingerprint(JobSpec(**_fields(job)))


def _fields(job: JobSpec) -> dict[str, Any]:
    return {
        name: getattr(job, name) for name in ("name", "entrypoint", "retry", "timeout", "kwargs")
    }
